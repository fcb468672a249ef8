#!/usr/bin/perl
# Faults: floods towards a client that does not read. 23-pass-backpressure.t
# with more data, tiny frames, and websocket_echo too: while the client
# reads nothing for 3 s (receive buffer 8 KiB, nginx `listen ... sndbuf=8k`)
#   - websocket_pass: the scripted upstream writes 32 MiB in 64000-byte
#     frames as fast as nginx takes them, or 1,000,000 one-byte frames;
#   - websocket_echo: the client writes 32 MiB of 64000-byte messages, or
#     1,000,000 one-byte messages, as fast as nginx takes them;
# the worker's VmRSS stays under its idle value + 8 MiB. Then the client
# reads: everything arrives intact, frame for frame and in order, and the
# session closes normally. A client that never reads is cut by
# websocket_timeout (2 s here): the worker releases the connection (and,
# for pass, the upstream's) and logs "client timed out while we were sending".

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest qw(:DEFAULT worker_sockets sockets_back_to rss_kib);
use WsUpstream;
use WsValgrind;

my $BIG_FRAMES = 512;
my $BIG_LEN = 64000;
my $TINY = 3_000_000;
my $RSS_CAP = 8 * 1024;    # kB over the idle value

# rss_growth_ok($growth_kib, $name): the worker's VmRSS grew by less than
# $RSS_CAP; skipped under valgrind or ASan, whose own memory is in VmRSS.
sub rss_growth_ok {
    my ($growth, $name) = @_;
    SKIP: {
        skip "under valgrind or ASan VmRSS is not the worker's memory", 1 if WsValgrind::checking();
        cmp_ok($growth, '<', $RSS_CAP, $name);
    }
}
my $HOLD = 3;              # seconds the client does not read
my $SHORT = 2;             # websocket_timeout of /short

my $BLOCK = join '', map { chr int rand 256 } 1 .. $BIG_LEN - 4;
sub payload { pack('N', $_[0]) . $BLOCK }
# The server's (unmasked) frames of the big and the tiny flood.
my $BIG_STREAM = join '', map { build_frame(opcode => 2, payload => payload($_), mask => 0) } 1 .. $BIG_FRAMES;
my $TINY_FRAME = "\x81\x01x";

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my $path = $c->path // '';
    $c->handshake;
    if ($path =~ m{/(big|tiny|forever)}) {
        my $what = $1;
        $c->set_sndbuf(65536);
        my $go = $c->recv_frame(timeout => 10);
        $c->note(go => $go && $go->{payload}, flood_at => time);
        my $ok;
        if ($what eq 'big') { $ok = $c->send_raw($BIG_STREAM) }
        elsif ($what eq 'tiny') { $ok = $c->send_raw($TINY_FRAME x $TINY) }
        else { 1 while $ok = $c->send_binary($BLOCK) }
        $c->note(flooded => $ok ? 1 : 0, write_error => $c->{write_error}, done_at => time);
        return unless $ok;
    }
    $c->echo_loop(timeout => 20);
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%% sndbuf=8k;
    lingering_timeout 1s;

    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout 10s;
    }
    location /short/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout ${SHORT}s;
    }
    location /ws {
        websocket_echo;
        websocket_timeout 10s;
    }
    location /shortecho {
        websocket_echo;
        websocket_timeout ${SHORT}s;
    }
}
EOF_CONF
is(scalar @workers, 1, 'one worker');
my $W = $workers[0];

# A warm-up session on each path, so that first-use allocations do not count.
for my $path ('/p/warm', '/ws') {
    my $ws = ws_open($port, $path);
    echo_ok($ws, 2, 'w' x 65000, "warm-up $path");
    bye($ws, "warm-up $path");
}
my $base_sockets = worker_sockets($t);

# hold($name, $base, $code): runs $code (writes, or nothing) for $HOLD s
# while the client reads nothing; VmRSS of the worker stays under $base +
# cap. 1 test.
sub hold {
    my ($name, $base, $step) = @_;
    my $max = $base;
    my $t0 = time;
    while (time - $t0 < $HOLD) {
        $step ? $step->() : sleep 0.05;
        my $r = rss_kib($W) // next;
        $max = $r if $r > $max;
    }
    rss_growth_ok($max - $base, "$name: the worker's VmRSS grows by less than 8 MiB "
        . "($base -> max $max kB)");
}

# read_stream($ws, $name, $want, \$out, $base): the client reads until it has
# length($want) bytes (writing what is left of $$out meanwhile), EOF or
# 20 s (times the slowdown under valgrind or ASan); what it read equals
# $want, and the worker's VmRSS stayed under $base + cap all along. 2 tests.
sub read_stream {
    my ($ws, $name, $want, $out, $base) = @_;
    my $max = $base;
    my $fh = $ws->socket;
    my $got = $ws->buffer;
    $ws->{buf} = '';
    my $deadline = time + WsValgrind::scaled(20);
    my $t0 = time;
    while (length $got < length $want && time < $deadline) {
        my $wsel = $out && length $$out ? IO::Select->new($fh) : undef;
        my ($r, $w) = IO::Select::select(IO::Select->new($fh), $wsel, undef, 1);
        if ($w && @$w) {
            my $n = syswrite($fh, $$out, 1 << 20);
            substr($$out, 0, $n, '') if $n;
        }
        if ($r && @$r) {
            my $n = sysread($fh, $got, 1 << 20, length $got);
            last if defined $n && $n == 0;
            last if !defined $n && $! != EAGAIN && $! != EINTR;
        }
        my $rss = rss_kib($W);
        $max = $rss if defined $rss && $rss > $max;
    }
    my $ok = length $got == length $want && $got eq $want;
    my $detail = sprintf '%d of %d bytes in %.1fs', length $got, length $want, time - $t0;
    ok($ok, "$name: the client reads everything, intact, frame for frame and in order ($detail)") or do {
        my $i = 0;
        $i++ while $i < length $got && substr($got, $i, 1) eq substr($want, $i, 1);
        diag "first difference at byte $i";
    };
    rss_growth_ok($max - $base, "$name: while the client reads, the worker's VmRSS grows by less "
        . "than 8 MiB ($base -> max $max kB)");
    return $ok;
}

# write_some($ws, \$out): writes what the socket takes now.
sub write_some {
    my ($ws, $out) = @_;
    return sleep 0.05 unless length $$out;
    my $n = syswrite($ws->socket, $$out, 1 << 20);
    if ($n) { substr($$out, 0, $n, '') }
    else { IO::Select->new($ws->socket)->can_write(0.05) }
}

# --- pass: the upstream floods, the client reads only after 3 s ---------------------------------
for my $case ([ 'big', '32 MiB in 64000-byte frames', $BIG_STREAM ],
              [ 'tiny', "$TINY one-byte frames", $TINY_FRAME x $TINY ]) {
    my ($what, $desc, $want) = @$case;
    my $name = "pass, upstream floods $desc";
    my $ws = ws_open($port, "/p/$what", rcvbuf => 8192);
    my $base = rss_kib($W);
    $ws->send_text('go');
    hold($name, $base);
    my $r = $up->wait_record(path => qr{/p/\Q$what\E$}) // {};
    ok(!$r->{done_at}, "$name: after ${HOLD} s the upstream is still writing (backpressure)");
    read_stream($ws, $name, $want, undef, $base);
    echo_ok($ws, 1, 'after the flood', "$name: the session still relays");
    bye($ws, $name);
    $r = $up->wait_record(path => qr{/p/\Q$what\E$}, until => 'close_code') // {};
    is($r->{flooded}, 1, "$name: the upstream wrote everything");
}

# --- echo: the client floods and reads only after 3 s ----------------------------------------------
for my $case ([ 'big', '32 MiB in 64000-byte messages', $BIG_STREAM,
                join('', map { build_frame(opcode => 2, payload => payload($_)) } 1 .. $BIG_FRAMES) ],
              [ 'tiny', "$TINY one-byte messages", $TINY_FRAME x $TINY,
                "\x81\x81\x12\x34\x56\x78" . chr(ord('x') ^ 0x12) ]) {
    my ($what, $desc, $want, $out) = @$case;
    $out = $out x $TINY if $what eq 'tiny';
    my $name = "echo, client floods $desc";
    my $ws = ws_open($port, '/ws', rcvbuf => 8192);
    my $total = length $out;
    my $base = rss_kib($W);
    hold($name, $base, sub { write_some($ws, \$out) });
    cmp_ok(length $out, '>', 0, sprintf("$name: after ${HOLD} s the client could not write everything "
        . '(%d of %d bytes left: backpressure)', length $out, $total));
    read_stream($ws, $name, $want, \$out, $base);
    is(length $out, 0, "$name: the client wrote everything once it read");
    echo_ok($ws, 1, 'after the flood', "$name: the session still echoes");
    bye($ws, $name);
}

# --- a client that never reads: websocket_timeout ends it -------------------------------------------
{
    my $p = ws_open($port, '/short/forever', rcvbuf => 8192);
    my $e = ws_open($port, '/shortecho', rcvbuf => 8192);
    my $base = rss_kib($W);
    $p->send_text('go');
    my $out = build_frame(opcode => 2, payload => $BLOCK) x 200;
    my $total = length $out;
    my $t0 = time;
    my $max = $base;
    my $echo_gone;
    while (time - $t0 < $SHORT + 3) {
        my $n = syswrite($e->socket, $out, 1 << 20);
        if ($n) { substr($out, 0, $n, '') }
        elsif (!defined $n && $! != EAGAIN && $! != EINTR) { $echo_gone //= time - $t0; last }
        else { IO::Select->new($e->socket)->can_write(0.05) }
        my $r = rss_kib($W);
        $max = $r if defined $r && $r > $max;
    }
    ok(defined $echo_gone, 'echo, client never reads: its writes fail at last (connection closed)');
    cmp_ok($echo_gone // 99, '<', $SHORT + 2.5, sprintf('echo, client never reads: cut after websocket_timeout (%.2fs)',
        $echo_gone // 99));
    rss_growth_ok($max - $base, "never-reading clients: VmRSS grows by less than 8 MiB ($base -> max $max kB)");
    my $r = $up->wait_record(path => qr{/short/forever}, until => 'done_at', timeout => 5) // {};
    ok($r->{write_error}, 'pass, client never reads: the upstream connection is closed ('
        . ($r->{write_error} // 'the upstream is still writing') . ')');
    my $took = ($r->{done_at} // 99) - ($r->{flood_at} // 0);
    ok($took > $SHORT - 0.3 && $took < $SHORT + 2.5,
        sprintf('pass, client never reads: cut after websocket_timeout (%.2fs)', $took));
    ok($p->wait_eof(5), 'pass, client never reads: the client finds its connection closed after what was sent');
    ok($e->wait_eof(5), 'echo, client never reads: the client finds its connection closed after what was sent');
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $base_sockets > 0;
        ok(defined sockets_back_to($t, $base_sockets, 2), 'never-reading clients: the worker released every connection')
            or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base_sockets when idle";
    }
    is(scalar(() = $t->grep_error_log(qr/\[info\].*websocket: client timed out while we were sending/)), 2,
        'never-reading clients: "client timed out while we were sending" logged for each, at info');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
