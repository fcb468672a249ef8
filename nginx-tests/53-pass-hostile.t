#!/usr/bin/perl
# websocket_pass against peers that push back or misbehave (issue 15).
# Two-way backpressure: a client writes 239 messages of 60 KB without
# reading, then reads while it writes the rest; through pass to the module's
# own websocket_echo (8 KiB socket buffers), and to a scripted upstream that
# echoes but reads slowly (8 KiB send buffer). The client's receive buffer
# is large (4 MiB), so the relay goes on reading it while the echo falls
# behind: both the relay's output to the echo and the echo's answers back
# up. Every echo must arrive, intact and in order: reading one leg may wait
# only for the other leg's output, never for its own, or the relay and the
# echo wait for each other for good.
# Then an upstream that breaks the protocol: the upstream gets the RFC code
# it earned, the client 1014 (Bad Gateway), then TCP close. Then an upstream
# that stops reading: after websocket_timeout the client gets close 1011 and
# a TCP close (FIN, not a reset), and error.log says why at error level; and
# a client that stops reading: the upstream gets close 1001 (info level).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Errno qw(EAGAIN EWOULDBLOCK EINTR ECONNRESET);
use Socket qw(SOL_SOCKET SO_RCVBUF);
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest qw(:DEFAULT worker_sockets sockets_back_to tagged_session);
use WsUpstream;
use WsValgrind qw(scaled);

my $MESSAGES = 239;
my $LEN = 60_000;
my $TIMEOUT = 2;    # websocket_timeout of /deaf

sub frame { WsUpstream::Conn::frame(@_) }

# Message $i: its number, then a pattern that differs per message.
my $BLOCK = join '', map { chr((($_ * 7) + 13) % 256) } 1 .. $LEN - 4;
sub payload { my $i = shift; pack('N', $i) . ($BLOCK ^ (chr($i % 251) x length $BLOCK)) }

my %mode = (
    # echoes every frame, reading 16 KiB at a time with a pause after each
    # read; its send buffer is small, so writing its echoes blocks it too
    slow => sub {
        my $c = shift;
        $c->set_sndbuf(8192);
        $c->handshake;
        $c->read_slowly(16384, 0.002);
        my $n = 0;
        while (my $f = $c->recv_frame(timeout => 20)) {
            if ($f->{opcode} == 8) {
                $c->note(close_code => WsUpstream::Conn::close_code($f) // -1);
                $c->send_close(WsUpstream::Conn::close_code($f));
                last;
            }
            $c->send_frame(fin => $f->{fin}, opcode => $f->{opcode}, payload => $f->{payload})
                or last;
            $n++;
        }
        $c->note(echoed => $n);
        $c->wait_eof(timeout => 5);
    },
    # takes the handshake, then never reads (with a small receive buffer,
    # so that the relay's output to it backs up soon)
    deaf => sub {
        my $c = shift;
        setsockopt($c->socket, SOL_SOCKET, SO_RCVBUF, pack('i', 8192));
        $c->handshake;
        sleep scaled($TIMEOUT + 5);
    },
    # sends until nginx takes nothing for 0.5 s, then reads what comes
    flood => sub {
        my $c = shift;
        $c->handshake;
        my $fh = $c->socket;
        $fh->blocking(0);
        my $frame = frame(opcode => 2, payload => 'F' x 60_000);
        my ($pos, $last_write) = (0, time);
        while (time - $last_write < 0.5) {
            my $n = syswrite($fh, $frame, length($frame) - $pos, $pos);
            if ($n) { $pos = ($pos + $n) % length $frame; $last_write = time; next }
            IO::Select->new($fh)->can_write(0.05);
        }
        $c->note(stalled_at => $last_write);
        $c->wait_close(timeout => $TIMEOUT + 5);
        $c->note(close_at => time);
        $c->wait_eof(timeout => 5);
    },
);
# protocol violations, each after one good message
my %violation = (
    rsv     => frame(opcode => 1, rsv => 2, payload => 'rsv2'),
    masked  => frame(opcode => 1, payload => 'masked', mask => 1),
    badutf8 => frame(opcode => 1, payload => "bad \xc0\xaf"),
    toobig  => frame(opcode => 2, payload => 'B' x 70_000),
);
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my ($m) = ($c->path // '') =~ m{^/u/(\w+)};
    $m //= '';
    if (my $bad = $violation{$m}) {
        # then what nginx answers, and its TCP close
        $c->handshake(then => frame(opcode => 1, payload => 'ok') . $bad);
        $c->wait_close(timeout => 5);
        $c->wait_eof(timeout => 5);
    } elsif ($mode{$m}) {
        $mode{$m}->($c);
    } else {
        $c->handshake;
        $c->echo_loop;
    }
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;
    lingering_timeout 1s;

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/echo;
    }

    location /u/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location ~ ^/u/(deaf|flood) {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout ${TIMEOUT}s;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%% rcvbuf=8k sndbuf=8k;

    location /echo {
        websocket_echo;
    }
}
EOF_CONF

my $base = worker_sockets($t);

sub rec_of { my ($tag, %o) = @_; $up->wait_record(path => $tag, %o) // {} }

# two_way($path, $name): writes all messages without reading for as long as
# the relay takes them (until no byte goes out for 1 s), then reads and
# writes the rest at once; every echo must come back intact and in order,
# with no pause of 10 s. 5 tests.
sub two_way {
    my ($path, $name) = @_;
    my $ws = ws_open($port, $path, rcvbuf => 4 << 20);
    my $fh = $ws->socket;
    my $t0 = time;
    my $out = join '', map { build_frame(opcode => 2, payload => payload($_)) } 1 .. $MESSAGES;
    my $off = 0;
    my $idle_since = time;
    while ($off < length $out && time - $idle_since < 1) {
        my $n = syswrite($fh, $out, length($out) - $off, $off);
        if (defined $n) { $off += $n; $idle_since = time; next }
        last unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        IO::Select->new($fh)->can_write(0.05);
    }
    note sprintf '%s: %d of %d bytes written before reading', $name, $off, length $out;

    my ($got, $closed, @bad) = (0, 0);
    my $last_progress = time;
    my $sel = IO::Select->new($fh);
    while ($got < $MESSAGES && !$closed && time - $last_progress < scaled(10)) {
        my ($r, $w) = IO::Select->select($sel, $off < length $out ? $sel : undef, undef, 0.1);
        if ($w && @$w && $off < length $out) {
            my $n = syswrite($fh, $out, length($out) - $off, $off);
            if (defined $n && $n > 0) { $off += $n; $last_progress = time }
        }
        next unless $r && @$r;
        $ws->pump;
        while (my $f = $ws->try_recv_frame) {
            $last_progress = time;
            if ($f->{opcode} == 8) {
                push @bad, 'a close frame after ' . $got . ' echoes';
                $closed = 1;
                last;
            }
            $got++;
            if ($f->{opcode} != 2 || !$f->{fin} || $f->{payload} ne payload($got)) {
                my $seq = length $f->{payload} >= 4 ? unpack('N', $f->{payload}) : -1;
                push @bad, "echo $got: opcode $f->{opcode}, length $f->{length}, number $seq";
            }
        }
        last if $ws->is_eof;
    }
    note sprintf '%s: %d echoes in %.2fs', $name, $got, time - $t0;
    is($off, length $out, "$name: the client wrote all $MESSAGES messages");
    is($got, $MESSAGES, "$name: all $MESSAGES echoes arrived")
        or diag 'stalled' . ($ws->is_eof ? ' and closed: ' . ($ws->error // '') : '');
    is_deeply([ @bad[0 .. ($#bad < 4 ? $#bad : 4)] ], [], "$name: every echo intact and in order");
    bye($ws, $name);
}

# --- two-way backpressure -----------------------------------------------------------
two_way('/pass', 'through pass to our echo');
two_way('/u/slow', 'through pass to a slow scripted echo');

# --- an upstream that breaks the protocol: 1014 to the client -----------------------
for my $case ([ 'rsv', 1002, 'RSV bit from the upstream' ],
              [ 'masked', 1002, 'masked frame from the upstream' ],
              [ 'badutf8', 1007, 'invalid UTF-8 from the upstream' ],
              [ 'toobig', 1009, 'frame over the limit from the upstream' ]) {
    my ($m, $up_code, $name) = @$case;
    my ($ws, $tag) = tagged_session($port, "/u/$m");
    my $msg = $ws->recv_message(timeout => 3);
    is($msg && $msg->{payload}, 'ok', "$name: the message before it is relayed");
    expect_close($ws, "$name: the client gets 1014 (Bad Gateway)", 1014);
    my $r = rec_of($tag, until => 'eof');
    is($r->{close_code}, $up_code, "$name: the upstream gets close $up_code");
    is($r->{eof}, 1, "$name: the upstream connection is closed");
}
like($t->error_log, qr/\[error\].*websocket: upstream: protocol error.*closing with 1002, the client with 1014/,
    'an upstream violation is an [error] naming both codes');

# --- an upstream that stops reading: close 1011 to the client, not a reset ----------
{
    my $ws = ws_open($port, '/u/deaf');
    my $fh = $ws->socket;
    my $frame = build_frame(opcode => 2, payload => 'D' x 60_000);
    # frame after frame until the relay takes nothing for 0.5 s
    my ($written, $pos, $last_write) = (0, 0, time);
    while (time - $last_write < 0.5) {
        my $n = syswrite($fh, $frame, length($frame) - $pos, $pos);
        if ($n) { $written += $n; $pos = ($pos + $n) % length $frame; $last_write = time; next }
        IO::Select->new($fh)->can_write(0.05);
    }
    # then only read
    my ($code, $closed_at, $eof, $reset);
    while (time - $last_write < scaled($TIMEOUT + 5)) {
        IO::Select->new($fh)->can_read(0.1) or next;
        my $n = sysread($fh, $ws->{buf}, 65536, length $ws->{buf});
        if (!defined $n) {
            next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            $reset = $! == ECONNRESET;
            last;
        }
        if ($n == 0) { $eof = 1; last }
        while (my $f = $ws->try_recv_frame) {
            next unless $f->{opcode} == 8;
            $code = length $f->{payload} >= 2 ? unpack('n', $f->{payload}) : -1;
            $closed_at = time;
        }
    }
    note sprintf 'the client wrote %d bytes before the upstream leg stalled', $written;
    is($code, 1011, 'upstream stops reading: the client gets close 1011');
    my $took = ($closed_at // 99) - $last_write;
    ok($took > $TIMEOUT - 0.8 && $took < scaled($TIMEOUT + 1.5),
        sprintf('... websocket_timeout after the relay stopped taking data (%.2fs)', $took));
    ok($eof && !$reset, '... then a TCP close, not a reset');
    ok($t->grep_error_log(qr/\[error\].*websocket: upstream timed out while we were sending, closing with 1011/),
        '... and an [error] line saying why');
    $ws->close;
    SKIP: {
        skip 'no /proc/<worker>/fd', 1 unless $base > 0;
        ok(defined sockets_back_to($t, $base, scaled(3)), '... and both legs are released')
            or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base when idle";
    }
}

# --- a client that stops reading: close 1001 to the upstream -----------------------
{
    my ($ws, $tag) = tagged_session($port, '/u/flood', rcvbuf => 8192);
    my $r = rec_of($tag, until => 'eof', timeout => $TIMEOUT + 8);
    is($r->{close_code}, 1001, 'client stops reading: the upstream gets close 1001');
    my $took = ($r->{close_at} // 99) - ($r->{stalled_at} // 0);
    ok($took < scaled($TIMEOUT + 1.5), sprintf('... websocket_timeout after the relay stopped taking data (%.2fs)', $took));
    is($r->{eof}, 1, '... then a TCP close');
    ok($t->grep_error_log(qr/\[info\].*websocket: client timed out while we were sending, closing the upstream with 1001/),
        '... and an [info] line saying why');
    $ws->close;
}

finish($t, $port, \@workers, '/pass');
$up->stop;

done_testing;
