#!/usr/bin/perl
# nginx's limit_conn counts an upgraded session as one connection for the
# session's whole life, whatever the access log: with
# `limit_conn_zone $binary_remote_addr zone=perip:1m; limit_conn perip 2;`
# two sessions get 101 and the third gets 503 (with nginx's own
# "limiting connections" error line and $limit_conn_status), on echo and on
# pass, in locations that log and in locations with `access_log off` (where
# the session runs without its HTTP request, see ngx_detach.rs). The count
# is released once, when the session ends, on every way it can end: a close
# handshake, a TCP drop, a violation, the idle timeout, and a worker that
# exits on reload (gracefully or by worker_shutdown_timeout). Each location
# goes through several cycles of end one, open one, so a count released
# early, twice or never shows as a wrong answer a few steps later.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use WsNginx;
use WsClient qw(build_frame);
use WsTest;
use WsTest qw(worker_sockets sockets_back_to);
use WsValgrind qw(scaled);

# Every limited location: two sessions at a time per client address, and
# the status limit_conn gave the request in a header of the response.
my $LIMIT = 'limit_conn perip 2; add_header X-Limit $limit_conn_status always;';

my ($t, $port, @workers) = start_nginx(
    main_conf => 'worker_shutdown_timeout 2s;',
    conf => <<"EOF");
limit_conn_zone \$binary_remote_addr zone=perip:1m;

server {
    listen 127.0.0.1:%%PORT_0%%;

    location /echo-logged {
        websocket_echo;
        access_log %%TESTDIR%%/ws.log;
        $LIMIT
    }
    location /echo-lean {
        websocket_echo;
        access_log off;
        $LIMIT
    }
    location /echo-lean-timeout {
        websocket_echo;
        websocket_timeout 1s;
        access_log off;
        $LIMIT
    }
    location /pass-logged {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/inner;
        access_log %%TESTDIR%%/ws.log;
        $LIMIT
    }
    location /pass-lean {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/inner;
        access_log off;
        $LIMIT
    }

    # what the passes reach, from 127.0.0.1 too: not limited
    location /inner {
        websocket_echo;
        access_log off;
    }
    location /ws {
        websocket_echo;
    }
}

# behind a proxy: the client's address comes from X-Real-IP (realip)
server {
    listen 127.0.0.1:%%PORT_1%%;
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Real-IP;

    location /echo-realip {
        websocket_echo;
        access_log off;
        $LIMIT
    }
}
EOF

my $LIMITED = qr/\[error\].*limiting connections by zone "perip"/;

# A new session to $path: 101 with X-Limit PASSED, checked by an echo. 1 test.
sub admitted {
    my ($path, $name, %o) = @_;
    my $ws = WsClient->connect(port => $port, path => $path, %o);
    my $ok = ($ws->status // 0) == 101 && ($ws->header('X-Limit') // '') eq 'PASSED';
    if ($ok) {
        $ws->send_text('hi');
        my $m = $ws->recv_message(timeout => 3);
        $ok = $m && $m->{payload} eq 'hi';
    }
    ok($ok, "$name: 101, X-Limit PASSED, echoes")
        or diag 'got ' . ($ws->status // 'nothing') . ' X-Limit ' . ($ws->header('X-Limit') // '-');
    return $ws;
}

# A session to $path that limit_conn refuses: 503, X-Limit REJECTED, and
# one more "limiting connections" line in error.log. 3 tests.
sub refused {
    my ($path, $name, %o) = @_;
    my $before = () = $t->grep_error_log($LIMITED);
    my $ws = WsClient->connect(port => $port, path => $path, %o);
    is($ws->status, 503, "$name: the third session gets 503");
    is($ws->header('X-Limit'), 'REJECTED', "$name: ... with \$limit_conn_status REJECTED");
    $ws->close;
    my $after = 0;
    for (1 .. 50) {
        $after = () = $t->grep_error_log($LIMITED);
        last if $after > $before;
        sleep 0.02;
    }
    is($after, $before + 1, "$name: ... and nginx's error line 'limiting connections by zone'");
}

# Waits until the worker holds no more than $n sockets: the sessions that
# ended are closed on its side too (their count released). 1 test.
sub released {
    my ($n, $name) = @_;
    ok(defined sockets_back_to($t, $n, scaled(3)), "$name: the worker closed it")
        or diag 'the worker holds ' . worker_sockets($t) . " sockets, expected $n";
}

# Ends $ws one way or another ($how), then waits for the worker to close it.
sub end_session {
    my ($ws, $how, $sockets, $name) = @_;
    if ($how eq 'close') {
        $ws->send_close(1000);
        $ws->recv_close(timeout => 3);
        $ws->wait_eof(3);
    } elsif ($how eq 'violation') {
        $ws->send_frame(opcode => 1, payload => 'unmasked', mask => 0);
        $ws->recv_close(timeout => 3);
        $ws->wait_eof(3);
    } elsif ($how eq 'timeout') {
        $ws->recv_close(timeout => 5);
        $ws->wait_eof(3);
    }
    $ws->close;    # 'drop' is this alone; it also ends a lingering close
    released($sockets, "$name, $how");
}

# Two sessions admitted, the third refused; then cycles of ending one of the
# two (each way in turn) and opening a new one, which is admitted while the
# next is refused; then both end and two more are admitted.
sub cycles {
    my ($path) = @_;
    my $base = worker_sockets($t);
    my @open = map { admitted($path, "$path: session $_") } 1, 2;
    my $per = (worker_sockets($t) - $base) / 2;    # pass: client, upstream and inner legs
    refused($path, "$path: at first");
    my $n = 0;
    for my $how ('close', 'drop', 'violation', 'close') {
        $n++;
        end_session(shift @open, $how, $base + $per, "$path: cycle $n");
        push @open, admitted($path, "$path: cycle $n, a new session");
        refused($path, "$path: cycle $n");
    }
    end_session(shift @open, 'close', $base + $per, "$path: the end, first");
    end_session(shift @open, 'drop', $base, "$path: the end, second");
    my @again = map { admitted($path, "$path: after all ended, session $_") } 1, 2;
    refused($path, "$path: after all ended");
    end_session(shift @again, 'close', $base + $per, "$path: done, first");
    end_session(shift @again, 'close', $base, "$path: done, second");
}

cycles($_) for qw(/echo-logged /echo-lean /pass-logged /pass-lean);

# --- the idle timeout ends both sessions: their counts go with them --------------------------------
{
    my $path = '/echo-lean-timeout';
    my $base = worker_sockets($t);
    my @open = map { admitted($path, "$path: session $_") } 1, 2;
    refused($path, $path);
    end_session(shift @open, 'timeout', $base + 1, "$path: first");
    end_session(shift @open, 'timeout', $base, "$path: second");
    my @again = map { admitted($path, "$path: after the timeouts, session $_") } 1, 2;
    refused($path, "$path: after the timeouts");
    $_->close for @again;
    released($base, "$path: dropped");
}

# --- realip: the count is the real client's, and the session's error-log
# lines name that client until it ends --------------------------------------------------------------
{
    my $path = '/echo-realip';
    my %from = map { $_ => [port => $t->port(1), headers => { 'X-Real-IP' => $_ }] } qw(10.0.0.1 10.0.0.2);
    my $base = worker_sockets($t);
    my @open = map { admitted($path, "$path: 10.0.0.1, session $_", @{ $from{'10.0.0.1'} }) } 1, 2;
    refused($path, "$path: 10.0.0.1", @{ $from{'10.0.0.1'} });
    my $other = admitted($path, "$path: 10.0.0.2 is counted apart", @{ $from{'10.0.0.2'} });
    my $violations = () = $t->grep_error_log(qr/unmasked frame/);
    end_session(shift @open, 'violation', $base + 2, "$path: 10.0.0.1");
    my @lines = $t->grep_error_log(qr/unmasked frame/);
    like($lines[$violations] // '', qr/\[info\].*client: 10\.0\.0\.1,/,
        "$path: the violation's error line names the real client");
    push @open, admitted($path, "$path: 10.0.0.1, a new session", @{ $from{'10.0.0.1'} });
    refused($path, "$path: 10.0.0.1 again", @{ $from{'10.0.0.1'} });
    end_session(shift @open, 'close', $base + 2, "$path: 10.0.0.1, first");
    end_session(shift @open, 'drop', $base + 1, "$path: 10.0.0.1, second");
    end_session($other, 'close', $base, "$path: 10.0.0.2");
    my @again = map { admitted($path, "$path: 10.0.0.1 after all ended, session $_", @{ $from{'10.0.0.1'} }) } 1, 2;
    refused($path, "$path: 10.0.0.1 after all ended", @{ $from{'10.0.0.1'} });
    $_->close for @again;
    released($base, "$path: dropped");
}

# --- a worker that exits on reload: one session closes gracefully (1001
# answered), the other never answers and is cut by worker_shutdown_timeout.
# The zone outlives the worker, so a count it kept would refuse sessions of
# the new one. ---------------------------------------------------------------------------------------
for my $path (qw(/echo-lean /pass-lean /echo-logged)) {
    my @open = map { admitted($path, "$path, reload: session $_") } 1, 2;
    my @old = $t->worker_pids;
    $t->reload(wait => 0);
    my ($code) = $open[0]->recv_close(timeout => 5);
    is($code, 1001, "$path, reload: close 1001");
    $open[0]->send_close(1001);
    ok($open[0]->wait_eof(5), "$path, reload: the answered session closed");
    ok($open[1]->wait_eof(scaled(5)), "$path, reload: the silent one cut by worker_shutdown_timeout");
    $_->close for @open;
    my $gone;
    for (1 .. 250) {
        $gone = !grep { kill 0, $_ } @old;
        last if $gone && $t->worker_pids;
        sleep 0.02;
    }
    ok($gone, "$path, reload: the old worker exited");
    my @again = map { admitted($path, "$path, after the reload: session $_") } 1, 2;
    refused($path, "$path, after the reload");
    $_->close for @again;
}
@workers = $t->worker_pids;
sleep 0.3;

finish($t, $port, \@workers);
done_testing();
