#!/usr/bin/perl
# websocket_timeout: an idle session gets close 1001 and is closed; an
# active one is kept open.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient;

my $t = WsNginx->new(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    location /ws {
        websocket_echo;
        websocket_timeout 1s;
    }

    location /long {
        websocket_echo;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);

sub ws {
    my $path = shift // '/ws';
    my $ws = WsClient->connect(port => $port, path => $path);
    die "handshake failed: " . ($ws->status // 'none') . "\n" unless ($ws->status // 0) == 101;
    return $ws;
}

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

$t->stop;
is($t->forced_stop, undef, 'nginx stopped gracefully');
is_deeply([$t->check_error_log], [], 'no alerts in error.log');

done_testing;
