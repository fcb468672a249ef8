#!/usr/bin/perl
# Hostile input: seeded random bytes after a valid handshake (and instead of
# one), a handshake pipelined with frames, clients that vanish in the middle
# of a frame, absurd lengths, and 200 violations at once. Every session must
# end with a close frame or EOF, no connection may stay open past the
# timeout, the worker must survive, and error.log must stay clean.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;
use WsTest qw(worker_sockets sockets_back_to);

my $TIMEOUT = 2;    # websocket_timeout below

my ($t, $port, @workers) = start_nginx(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    # after its close frame the server half-closes and waits for the
    # client's close at most lingering_timeout (nginx's, 5s by default)
    lingering_timeout 1s;

    location /ws {
        websocket_echo;
        websocket_timeout 2s;
    }
}
EOF_CONF

sub f { build_frame(@_) }

my $base = worker_sockets($t);
my $have_proc = $base >= 0;
note "worker holds $base sockets when idle";

# A close code that may legitimately come back: the RFC error codes, 1001 on
# the timeout, or the code of a close frame that the random bytes happened to
# contain.
sub plausible_code {
    my ($c) = @_;
    return 1 unless defined $c;    # empty close
    return ($c >= 1000 && $c <= 1003) || ($c >= 1007 && $c <= 1011) || ($c >= 3000 && $c <= 4999);
}

# ends_ok($ws, $name, $deadline): the session ends with a close frame or EOF
# before $deadline, then TCP is closed. 2 tests.
sub ends_ok {
    my ($ws, $name, $deadline) = @_;
    my ($code) = $ws->recv_close(timeout => $deadline - time);
    my $closed = $ws->{close_frame} || $ws->is_eof;
    ok($closed && plausible_code($code), "$name: ended with " . ($ws->{close_frame}
        ? 'close ' . ($code // '(empty)') : $ws->is_eof ? 'EOF' : 'nothing'));
    ok($ws->wait_eof($deadline + 1 - time), "$name: TCP closed");
    return $code;
}

# --- random bytes after a valid handshake ------------------------------------------
{
    my @cases;
    for my $seed (1 .. 8) {
        srand($seed);
        my $len = 1 + int rand 8192;
        push @cases, [ "seed $seed, $len random bytes", join '', map { chr int rand 256 } 1 .. $len ];
    }
    for my $seed (101 .. 104) {
        # a plausible masked header, then random payload bytes: the UTF-8,
        # length and opcode checks get exercised deeper in the frame
        srand($seed);
        my $len = 1 + int rand 2000;
        my $payload = join '', map { chr int rand 256 } 1 .. $len;
        my $op = (1, 2, 0, 8, 9)[$seed % 5];
        push @cases, [ "seed $seed, opcode $op header and $len random bytes",
            f(opcode => $op, payload => $payload, len_override => $op >= 8 ? 125 : undef) ];
    }
    for my $seed (201 .. 204) {
        # valid frames, then random bytes
        srand($seed);
        my $junk = join '', map { chr int rand 256 } 1 .. 64 + int rand 512;
        push @cases, [ "seed $seed, valid frames then junk",
            f(opcode => 1, payload => 'hello') . f(opcode => 9, payload => 'p') . $junk ];
    }
    for my $seed (401 .. 420) {
        # a valid session stream with 1 to 8 random bytes overwritten
        srand($seed);
        my $stream = f(opcode => 1, payload => "h\xc3\xa9llo") . f(opcode => 9, payload => 'ping')
            . f(opcode => 2, fin => 0, payload => 'x' x 300) . f(opcode => 0, payload => 'y' x 10)
            . f(opcode => 1, payload => 'z' x 130) . f(opcode => 8, payload => pack('n', 1000) . 'bye');
        my $n = 1 + int rand 8;
        my @at;
        for (1 .. $n) {
            my $pos = int rand length $stream;
            substr($stream, $pos, 1, chr int rand 256);
            push @at, $pos;
        }
        push @cases, [ "seed $seed, valid stream with $n bytes mutated (at " . join(',', sort { $a <=> $b } @at) . ')',
            $stream ];
    }
    my @ws = map { ws_open($port, '/ws') } @cases;
    $ws[$_]->send_raw($cases[$_][1]) for 0 .. $#cases;
    my $deadline = time + $TIMEOUT + 2;
    for my $i (0 .. $#cases) {
        ends_ok($ws[$i], $cases[$i][0], $deadline);
        $ws[$i]->close;
    }
}

# --- random bytes instead of a handshake ----------------------------------------------
for my $seed (301 .. 304) {
    srand($seed);
    my $junk = join '', map { chr int rand 256 } 1 .. 100 + int rand 2000;
    my $ws = WsClient->connect(port => $port, path => '/ws', raw => $junk . "\r\n\r\n", timeout => 3);
    my $st = $ws->status;
    ok(!defined $st || $st == 400 || $ws->is_eof,
        "seed $seed, random request: 400 or closed (" . ($st // 'no status') . ')');
    ok($ws->wait_eof(3), "seed $seed, random request: TCP closed");
}
{
    my $ws = WsClient->connect(port => $port, path => '/ws',
        raw => "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            . "Sec-WebSocket-Key: \x00\xff\xfe\r\nSec-WebSocket-Version: 13\r\n\r\n");
    ok(($ws->status // 400) == 400, 'binary junk in Sec-WebSocket-Key: 400 or rejected');
}

# --- a handshake pipelined with frames in the same TCP write -----------------------------
my $handshake = sub {
    my ($key) = @_;
    return "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
};
{
    my $key = 'dGhlIHNhbXBsZSBub25jZQ==';
    my $frames = f(opcode => 1, payload => 'pipelined text') . f(opcode => 2, payload => "\x00\x01\x02")
        . f(opcode => 9, payload => 'pipelined ping') . f(opcode => 1, fin => 0, payload => 'frag')
        . f(opcode => 0, payload => 'ment') . f(opcode => 8, payload => pack('n', 1000));
    my $ws = WsClient->connect(port => $port, key => $key, raw => $handshake->($key) . $frames);
    is($ws->status, 101, 'handshake pipelined with frames: 101');
    ok($ws->accept_ok, '... accept key right');
    my @got;
    while (my $fr = $ws->recv_message(timeout => 3)) {
        push @got, "$fr->{opcode}:$fr->{payload}";
        last if $fr->{opcode} == 8;
    }
    is_deeply(\@got, [ '1:pipelined text', "2:\x00\x01\x02", '10:pipelined ping', '1:fragment',
        '8:' . pack('n', 1000) ], '... every pipelined frame answered in order');
    ok($ws->wait_eof(3), '... TCP closed after the close');
}
{
    my $key = 'AAAAAAAAAAAAAAAAAAAAAA==';
    my @msgs = map { join '', map { chr(($_ * 13) % 256) } 1 .. 1000 + $_ } 1 .. 60;
    my $frames = join '', map { f(opcode => 2, payload => $_) } @msgs;
    my $ws = WsClient->connect(port => $port, key => $key, raw => $handshake->($key) . $frames);
    is($ws->status, 101, 'handshake pipelined with 60 KiB of frames: 101');
    my $ok = 0;
    for my $m (@msgs) {
        my $fr = $ws->recv_message(timeout => 3) or last;
        $ok++ if $fr->{payload} eq $m;
    }
    is($ok, 60, '... all 60 messages echoed intact and in order');
    bye($ws, 'pipelined 60 KiB');
}
{
    my $key = 'BBBBBBBBBBBBBBBBBBBBBB==';
    my $ws = WsClient->connect(port => $port, key => $key,
        raw => $handshake->($key) . f(opcode => 1, payload => 'x', rsv => 4));
    is($ws->status, 101, 'handshake pipelined with a violation: 101');
    expect_close($ws, '... then', 1002);
}
{
    # the first frame split across the end of the handshake write
    my $key = 'CCCCCCCCCCCCCCCCCCCCCC==';
    my $frame = f(opcode => 1, payload => 'split after the handshake');
    my $ws = WsClient->connect(port => $port, key => $key, raw => $handshake->($key) . substr($frame, 0, 5));
    is($ws->status, 101, 'handshake with half a frame: 101');
    $ws->send_raw(substr($frame, 5));
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'split after the handshake', '... the frame completed later is echoed');
    bye($ws, 'half a frame pipelined');
}

# --- clients that vanish mid-frame ----------------------------------------------------
{
    my $big = f(opcode => 2, payload => 'v' x 30000);
    my @cases = (
        [ 'half-open (FIN) mid-header', "\x82", 'shutdown' ],
        [ 'half-open (FIN) mid-payload', substr($big, 0, 10000), 'shutdown' ],
        [ 'half-open (FIN) mid-message', f(opcode => 1, fin => 0, payload => 'never ends'), 'shutdown' ],
        [ 'close() mid-payload', substr($big, 0, 10000), 'close' ],
        [ 'reset (RST) mid-payload', substr($big, 0, 10000), 'reset' ],
        [ 'reset (RST) mid-control-frame', substr(f(opcode => 9, payload => 'p' x 100), 0, 20), 'reset' ],
    );
    for my $case (@cases) {
        my ($name, $bytes, $how) = @$case;
        my $ws = ws_open($port, '/ws');
        $ws->send_raw($bytes);
        sleep 0.05;
        if ($how eq 'shutdown') {
            shutdown($ws->socket, 1);
            my $t0 = time;
            ok($ws->wait_eof(3), "$name: the server closes its side too");
            cmp_ok(time - $t0, '<', 1, "$name: at once");
        } else {
            setsockopt($ws->socket, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $how eq 'reset';
            $ws->close;
        }
    }
    {
        # a client that sends a big message and disconnects while the echo is
        # being written to it
        my $ws = ws_open($port, '/ws', rcvbuf => 4096);
        $ws->send_binary('e' x 65000);
        $ws->send_binary('e' x 65000);
        sleep 0.1;
        setsockopt($ws->socket, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        $ws->close;
    }
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        my $took = sockets_back_to($t, $base, $TIMEOUT + 2);
        ok(defined $took, 'vanished clients: the worker released every connection within timeout + 2 s')
            or diag 'worker still holds ' . worker_sockets($t) . " sockets, $base when idle";
    }
}

# --- a client that gets a close frame and then stays silent, socket open ----------------
{
    my @silent = map { ws_open($port, '/ws') } 1 .. 3;
    $silent[0]->send_frame(opcode => 1, payload => 'x', rsv => 4);          # violation
    $silent[1]->send_raw(substr(f(opcode => 2, payload => 'p' x 500), 0, 100));    # stall: 1001
    # $silent[2] sends nothing at all: idle timeout, 1001
    my @want = (1002, 1001, 1001);
    my $deadline = time + $TIMEOUT + 2;
    for my $i (0 .. 2) {
        my ($code) = $silent[$i]->recv_close(timeout => $deadline - time);
        is($code, $want[$i], "silent client $i: close $want[$i]");
        ok($silent[$i]->wait_eof($deadline - time), "silent client $i: the server closed its side");
    }
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        my $took = sockets_back_to($t, $base, 1 + 2);
        ok(defined $took, 'silent clients with open sockets: released within lingering_timeout + 2 s')
            or diag 'worker still holds ' . worker_sockets($t) . " sockets, $base when idle";
    }
    $_->close for @silent;
}

# --- absurd lengths -----------------------------------------------------------------
{
    my $ws = ws_open($port, '/ws');
    $ws->send_raw("\x82\xff\x7f" . ("\xff" x 7) . 'mask' . ('x' x 100));
    my $t0 = time;
    expect_close($ws, '64-bit length of 2^63-1', 1009);
    cmp_ok(time - $t0, '<', 1, '64-bit length of 2^63-1: rejected at once');
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_raw("\x89\xff\x7f" . ("\xff" x 7) . 'mask');
    expect_close($ws, 'ping with a 64-bit length of 2^63-1', 1002);
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_raw("\x01\xff\x7f" . ("\xff" x 7) . 'mask' . "\x00\xff\x7f" . ("\xff" x 7) . 'mask');
    expect_close($ws, 'fragment with a 64-bit length of 2^63-1', 1009);
}

# --- 200 violations at once ------------------------------------------------------------
{
    my @violations = (
        [ 1002, f(opcode => 1, payload => 'x', mask => 0) ],
        [ 1002, f(opcode => 1, payload => 'x', rsv => 4) ],
        [ 1002, f(opcode => 0xB, payload => 'x') ],
        [ 1002, f(opcode => 9, fin => 0, payload => 'x') ],
        [ 1002, f(opcode => 0, payload => 'x') ],
        [ 1002, f(opcode => 8, payload => "\x03") ],
        [ 1002, f(opcode => 8, payload => pack('n', 1005)) ],
        [ 1002, f(opcode => 1, payload => 'hello', len_bits => 16) ],
        [ 1007, f(opcode => 1, payload => "\xc0\xaf") ],
        [ 1007, f(opcode => 8, payload => pack('n', 1000) . "\xff") ],
        [ 1009, f(opcode => 2, payload => 'x', len_override => 1 << 30) ],
        [ 1009, "\x82\xff\x7f" . ("\xff" x 7) . 'mask' ],
    );
    my $N = 200;
    my @c;
    for my $i (0 .. $N - 1) {
        my $ws = eval { WsClient->connect(port => $port, path => '/ws') };
        push @c, $ws if $ws && ($ws->status // 0) == 101;
    }
    is(scalar @c, $N, "$N sessions upgraded");
    my $t0 = time;
    $c[$_]->send_raw($violations[$_ % @violations][1]) for 0 .. $#c;

    my (@code, @done);
    my %idx = map { ("" . $c[$_]->socket => $_) } 0 .. $#c;
    my $sel = IO::Select->new(map { $_->socket } @c);
    my $deadline = time + $TIMEOUT + 2;
    while ($sel->count && time < $deadline) {
        for my $fh ($sel->can_read(0.5)) {
            my $i = $idx{"$fh"};
            my $ws = $c[$i];
            $ws->pump;
            while (my $fr = $ws->try_recv_frame) {
                $code[$i] = length $fr->{payload} >= 2 ? unpack('n', $fr->{payload}) : 'empty'
                    if $fr->{opcode} == 8 && !defined $code[$i];
            }
            if ($ws->is_eof) { $done[$i] = 1; $sel->remove($fh) }
        }
    }
    my $ended = grep { defined $code[$_] || $done[$_] } 0 .. $#c;
    is($ended, $N, "$N violations at once: every session got a close frame or EOF");
    my @wrong = grep { ($code[$_] // 'none') ne $violations[$_ % @violations][0] } 0 .. $#c;
    is(scalar @wrong, 0, "$N violations at once: every close code is the expected one")
        or diag join "\n", map { "session $_: expected $violations[$_ % @violations][0], got "
            . ($code[$_] // 'no close') } @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)];
    my $eof = grep { $done[$_] } 0 .. $#c;
    is($eof, $N, "$N violations at once: every TCP connection closed");
    note sprintf '200 violations handled in %.2fs', time - $t0;
    $_->close for @c;
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        ok(defined sockets_back_to($t, $base, 3), "$N violations at once: the worker released every connection");
    }
}

# --- the worker survived, the log is clean ------------------------------------------------
is_deeply([ $t->grep_error_log(qr/\[(?:alert|crit|emerg)\]|exited on signal|SIG(?:SEGV|ABRT|BUS|FPE|ILL)/) ],
    [], 'no [alert]/[crit]/[emerg]/signal lines in error.log');
finish($t, $port, \@workers);

done_testing;
