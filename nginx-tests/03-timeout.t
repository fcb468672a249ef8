#!/usr/bin/perl
# websocket_timeout: an idle session, or one stalled in the middle of a
# frame, gets close 1001 and is closed; an active one is kept open; a client
# that stops reading is cut after the timeout (write timeout).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsTest;
use WsClient;
use Socket ();

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'   => ['websocket_timeout 1s'],
    '/long' => [],
)
    # A tiny socket send buffer, so that the echo's writes block.
    . echo_server('1 sndbuf=8k', '/ws' => ['websocket_timeout 1s']));

sub ws { my $path = shift // '/ws'; ws_open($port, $path) }

# --- idle connection ---------------------------------------------------------
{
    my $t0 = time;
    my $ws = ws();
    my ($code) = $ws->recv_close(timeout => 4);
    my $elapsed = time - $t0;
    is($code, 1001, 'idle session: close 1001');
    cmp_ok($elapsed, '>=', 0.8, 'idle session: not closed before the timeout');
    cmp_ok($elapsed, '<', 3, sprintf('idle session: closed within 3 s (%.2fs)', $elapsed));
    ok($ws->wait_eof(2), 'idle session: TCP closed');
}

# --- active connection ---------------------------------------------------------
{
    my $ws = ws();
    my $t0 = time;
    my ($sent, $ok, $closed) = (0, 0, 0);
    while (time - $t0 < 2.1) {
        sleep 0.3;
        $sent++;
        $ws->send_text("tick $sent");
        my $m = $ws->recv_message(timeout => 1);
        if (!$m) { last }
        if ($m->{opcode} == 8) { $closed = 1; last }
        $ok++ if $m->{payload} eq "tick $sent";
    }
    cmp_ok($sent, '>=', 6, "active session: sent $sent messages over 2 s");
    is($ok, $sent, 'active session: every message echoed');
    ok(!$closed, 'active session: not closed by the timeout');

    # once idle again, the timer still fires
    my $t1 = time;
    my ($code) = $ws->recv_close(timeout => 4);
    is($code, 1001, 'active session gone idle: close 1001');
    cmp_ok(time - $t1, '<', 3, 'active session gone idle: within 3 s');
    ok($ws->wait_eof(2), 'active session gone idle: TCP closed');
}

# --- pings count as activity too --------------------------------------------------
{
    my $ws = ws();
    my $t0 = time;
    my $pongs = 0;
    while (time - $t0 < 1.8) {
        sleep 0.3;
        $ws->send_ping('p');
        my $f = $ws->recv_frame(timeout => 1) or last;
        last unless $f->{opcode} == 10;
        $pongs++;
    }
    cmp_ok($pongs, '>=', 5, "pinging session: $pongs pongs, not closed");
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'pinging session: normal close');
}

# --- a half-sent frame does not keep the connection alive ------------------------
{
    my $ws = ws();
    $ws->send_raw(substr(WsClient::build_frame(opcode => 1, payload => 'abcdef'), 0, 4));
    my $t0 = time;
    ok($ws->wait_eof(4), 'stalled frame: connection closed');
    cmp_ok(time - $t0, '<', 3, sprintf('stalled frame: within 3 s (%.2fs)', time - $t0));
}

# Partial frames of every kind, then silence: close 1001 and TCP close within
# websocket_timeout (1 s) + 2 s. All are stalled at once.
{
    my $f = \&WsClient::build_frame;
    my $big = $f->(opcode => 2, payload => 'b' x 50000);
    my @cases = (
        [ 'first header byte only', "\x81" ],
        [ '16-bit length incomplete', substr($f->(opcode => 1, payload => 'x' x 300), 0, 3) ],
        [ '64-bit length incomplete', substr($f->(opcode => 2, payload => 'x' x 70000), 0, 6) ],
        [ 'mask key incomplete', substr($f->(opcode => 1, payload => 'abc'), 0, 4) ],
        [ 'payload incomplete', substr($big, 0, 20000) ],
        [ 'ping payload incomplete', substr($f->(opcode => 9, payload => 'p' x 100), 0, 50) ],
        [ 'close payload incomplete', substr($f->(opcode => 8, payload => pack('n', 1000) . 'bye'), 0, 7) ],
        [ 'fragmented message never finished', $f->(opcode => 1, fin => 0, payload => 'start') ],
        [ 'one byte short', substr($big, 0, length($big) - 1) ],
    );
    my @ws = map { my $w = ws(); $w->send_raw($_->[1]); $w } @cases;
    my $t0 = time;
    for my $i (0 .. $#cases) {
        my $name = $cases[$i][0];
        my ($code) = $ws[$i]->recv_close(timeout => $t0 + 3 - time);
        is($code, 1001, "stalled, $name: close 1001");
        ok($ws[$i]->wait_eof($t0 + 3.5 - time), "stalled, $name: TCP closed");
        my $el = time - $t0;
        cmp_ok($el, '<', 3, sprintf("stalled, %s: within timeout + 2 s (%.2fs)", $name, $el));
    }
}

# --- write timeout: a client that stops reading is cut after websocket_timeout ----
# The server's socket send buffer is 8k and the client's receive buffer tiny,
# so the echo's writes block at once; the client sends several MiB without
# ever reading, then waits without reading. nginx must drop the connection
# after websocket_timeout (1 s) without waiting for the client.
{
    my $log_before = length $t->error_log;
    my $ws = WsClient->connect(port => $t->port(1), path => '/ws', rcvbuf => 4096);
    is($ws->status, 101, 'non-reading client: upgraded');
    my $fh = $ws->socket;
    my $msg = WsClient::build_frame(opcode => 2, payload => 'w' x 60000);
    my ($sent, $off, $last_progress) = (0, 0, time);
    my $start = time;
    while ($sent < 8 * 1024 * 1024 && time - $last_progress < 0.5 && time - $start < 8) {
        my $n = syswrite($fh, $msg, length($msg) - $off, $off);
        if (defined $n && $n > 0) {
            $sent += $n;
            $off = ($off + $n) % length $msg;
            $last_progress = time;
            next;
        }
        last if !defined $n && !$!{EAGAIN} && !$!{EWOULDBLOCK} && !$!{EINTR};
        sleep 0.01;
    }
    my $stopped = $last_progress;
    note sprintf 'non-reading client: wrote %d bytes in %.2fs', $sent, $stopped - $start;
    cmp_ok($sent, '>=', 256 * 1024, "non-reading client: sent $sent bytes before blocking");

    # Watch the TCP state without reading: ESTABLISHED (1) until nginx
    # closes or resets the connection.
    my $state = sub {
        my $info = getsockopt($fh, Socket::IPPROTO_TCP(), 11) or return -1;    # TCP_INFO
        return unpack('C', $info);
    };
    my $closed_at;
    while (time - $stopped < 1 + 3 + 1) {
        if ($state->() != 1) { $closed_at = time; last }
        sleep 0.05;
    }
    ok(defined $closed_at, 'non-reading client: nginx closed the connection')
        or diag 'TCP state still ' . $state->();
    my $el = ($closed_at // time) - $stopped;
    cmp_ok($el, '<', 1 + 3, sprintf('non-reading client: cut within timeout + 3 s (%.2fs)', $el));
    cmp_ok($el, '>=', 0.5, 'non-reading client: not cut long before the timeout');
    # The read timer must not run while reading waits for queued output:
    # the write timeout alone cuts a client that does not read.
    cmp_ok($el, '<', 1 + 0.5, sprintf('non-reading client: cut after one websocket_timeout (%.2fs)', $el));
    $ws->close;

    sleep 0.2;
    my @above_info = grep { /\[(?:notice|warn|error|crit|alert|emerg)\]/ }
        split /\n/, substr($t->error_log, $log_before);
    is_deeply(\@above_info, [], 'non-reading client: nothing above info in error.log');
    ok(scalar $t->grep_error_log(qr/\[info\].*timed out/), 'non-reading client: the timeout is logged at info');
}

# --- the default timeout (60s) does not fire early --------------------------------
{
    my $ws = ws('/long');
    sleep 1.5;
    $ws->send_text('still open');
    my $m = $ws->recv_message(timeout => 2);
    is($m && $m->{payload}, 'still open', 'default timeout: idle 1.5 s session still open');
    $ws->send_close(1000);
    $ws->recv_close(timeout => 2);
}

finish($t, $port, \@workers);

done_testing;
