#!/usr/bin/perl
# What an idle session costs the worker. With `access_log off` nothing
# needs the HTTP request after the 101, so it is freed (its pool is 8 KiB);
# and no idle session keeps a read, message or write buffer, whatever size
# its last message had. Measured as the worker's RSS growth per session
# over N sessions that each echoed one 4 KiB message and then went idle.
# With the access log on, the request is freed as well: only what its log
# line needs is kept to the end (66-detached-log.t checks the line).
# The sessions then still echo, and nginx's lingering close still applies
# to a session without its request (a close we start is not lost to a
# reset while the client keeps sending).
# Sessions that limit_conn counts, behind realip, drop their request too:
# they only carry limit_conn's and realip's cleanups to their end. One with
# a cleanup that cannot be carried (open_file_cache's, from an `if -f`)
# keeps its request: that location shows the measurement can see a
# request's worth of memory.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use WsClient qw(build_frame);
use WsTest;
use WsTest qw(rss_kib);
use WsValgrind;

my $N = 240;

# The two echo locations both nginx instances below serve.
my $ECHOES = <<'EOF';
    location /lean {
        websocket_echo;
        access_log off;
    }
    location /logged {
        websocket_echo;
        access_log %%TESTDIR%%/logged.log;
    }
EOF

my ($t, $port, @workers) = start_nginx(worker_connections => 4096, conf => <<"EOF");
limit_conn_zone \$binary_remote_addr zone=perip:1m;

server {
    listen 127.0.0.1:%%PORT_0%%;
$ECHOES
    location /lean-counted {
        websocket_echo;
        access_log off;
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        limit_conn perip 1000;
    }
    location /lean-timeout {
        websocket_echo;
        access_log off;
        websocket_timeout 1s;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;
    root %%TESTDIR%%;
    open_file_cache max=10;
    if (-f \$document_root/nginx.conf) {
        set \$found 1;
    }
    location /lean-kept {
        websocket_echo;
        access_log off;
    }
}
EOF
my ($worker) = @workers;

# idle_sessions($port, $worker, $n, $path, %ws_open_options) -> (KiB per
# session, @sessions): opens $n/4 sessions to $path, then $n more, each
# echoing one 4 KiB message, and measures the worker's RSS growth over the
# $n once all are idle (the first ones take the one-off costs: allocator
# arenas, free lists).
sub idle_sessions {
    my ($port, $worker, $N, $path, %o) = @_;
    my ($before, @open, $echoed);
    for my $i (1 .. $N + $N / 4) {
        if ($i == $N / 4 + 1) {
            sleep 0.3;
            $before = rss_kib($worker);
        }
        my $ws = ws_open($port, $path, %o);
        my $payload = sprintf('%05d', $i) x 820;
        $ws->send_frame(opcode => 2, payload => $payload);
        my $m = $ws->recv_message(timeout => 5);
        $echoed++ if $m && $m->{payload} eq $payload;
        push @open, $ws;
    }
    sleep 0.5;
    my $growth = rss_kib($worker) - $before;
    is($echoed, $N + $N / 4, "$path: each session echoed a 4 KiB message");
    return ($growth / $N, @open);
}

my ($lean, @lean) = idle_sessions($port, $worker, $N, '/lean');
my ($logged, @logged) = idle_sessions($port, $worker, $N, '/logged');
my ($counted, @counted) = idle_sessions($port, $worker, $N, '/lean-counted',
    headers => { 'X-Real-IP' => '10.1.2.3' });
my ($kept, @kept) = idle_sessions($t->port(1), $worker, $N, '/lean-kept');
note sprintf('worker RSS per idle session: %.2f KiB with access_log off, %.2f KiB with it on, '
    . '%.2f KiB with it off, limit_conn and realip, %.2f KiB with it off and an open file cached',
    $lean, $logged, $counted, $kept);
SKIP: {
    skip 'memory is not measurable under valgrind or ASan', 4 if WsValgrind::checking();
    cmp_ok($lean, '<=', 4, 'access_log off: at most 4 KiB per idle session (request and buffers freed)');
    cmp_ok($counted, '<=', 4, 'access_log off, limit_conn and realip: at most 4 KiB per idle session');
    cmp_ok($kept - $lean, '>=', 4, 'access_log off, a cleanup that cannot be carried: the request is kept');
    cmp_ok($logged, '<=', 4,
        'access_log on: at most 4 KiB per idle session (request freed, what its log line needs kept)');
}

# Idle sessions of both kinds still work, and close cleanly.
my ($ok, $bye) = (0, 0);
for my $ws (@lean, @logged, @counted, @kept) {
    $ws->send_text('again');
    my $m = $ws->recv_message(timeout => 5);
    $ok++ if $m && $m->{payload} eq 'again';
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 5);
    $bye++ if ($code // 0) == 1000 && $ws->wait_eof(5);
}
is($ok, @lean + @logged + @counted + @kept, 'every idle session echoes again');
is($bye, @lean + @logged + @counted + @kept, 'every session closes with 1000, then TCP closes');

# A session without its request that the server closes (idle timeout,
# 1001) while the client keeps sending: the close frame arrives intact and
# the connection ends with a FIN (lingering close), not a reset.
{
    my $ws = ws_open($port, '/lean-timeout');
    sleep 1.3;
    $ws->send_raw(build_frame(opcode => 1, payload => 'late ' x 200, mask => 1)) for 1 .. 20;
    my ($code) = $ws->recv_close(timeout => 5);
    is($code, 1001, 'idle timeout without the request: close 1001 arrives');
    ok($ws->wait_eof(5), '... then the server closes TCP');
    unlike($ws->error // '', qr/reset/i, '... with a FIN, not a reset');
}

# websocket_pass in a nginx of its own (the memory freed above would be
# reused): each session holds the client leg, the upstream leg and the
# echo behind it, all in the one worker.
{
    my $NP = 120;
    my ($t2, $port2, @w2) = start_nginx(worker_connections => 4096, conf => <<"EOF");
server {
    listen 127.0.0.1:%%PORT_0%%;
$ECHOES
    location /pass-lean {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/lean;
        access_log off;
    }
    location /pass-logged {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/logged;
        access_log %%TESTDIR%%/logged.log;
    }
}
EOF
    my ($plean, @plean) = idle_sessions($port2, $w2[0], $NP, '/pass-lean');
    my ($plogged, @plogged) = idle_sessions($port2, $w2[0], $NP, '/pass-logged');
    note sprintf('worker RSS per idle pass session and its echo: %.2f KiB with access_log off, '
        . '%.2f KiB with it on', $plean, $plogged);
    SKIP: {
        skip 'memory is not measurable under valgrind or ASan', 2 if WsValgrind::checking();
        cmp_ok($plean, '<=', 6, 'pass, access_log off: at most 6 KiB per idle session, its echo included');
        cmp_ok($plogged, '<=', 8,
            'pass, access_log on: at most 8 KiB per idle session, its echo included (requests freed)');
    }
    my $bye = 0;
    for my $ws (@plean, @plogged) {
        $ws->send_close(1000);
        my ($code) = $ws->recv_close(timeout => 5);
        $bye++ if ($code // 0) == 1000 && $ws->wait_eof(5);
    }
    is($bye, scalar(@plean) + scalar(@plogged), 'pass: every session closes with 1000, then TCP closes');
    finish($t2, $port2, \@w2, '/pass-lean');
}

finish($t, $port, \@workers, '/lean');
done_testing();
