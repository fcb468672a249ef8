#!/usr/bin/perl
# websocket_status: the module's counters in the Prometheus text format,
# summed over all workers (two here, with reuseport so that sessions land on
# both; the access log's $pid shows they did). After known traffic on a fresh
# nginx every series has an exact value: sessions by kind (active and total),
# data messages and their payload bytes on the client leg, closes by code,
# rejected handshakes by status, upstream connections new and reused. The
# scripted upstream (lib/WsUpstream.pm) stands behind websocket_pass, so
# only the client legs count. The counters survive a reload.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(http_request OP_TEXT OP_CONT OP_PONG);
use WsTest;
use WsUpstream;

# an echo that can sit in nginx's keepalive pool
my $up = WsUpstream->new(handler => sub { $_[0]->handshake; $_[0]->serve(idle => 30) });
my $UP = $up->port;
my $DEAD = WsNginx::free_port();    # nothing listens there

my $t = WsNginx->new(worker_processes => 2, conf => <<"EOF_CONF");
log_format m '\$pid \$status "\$request"';

server {
    listen 127.0.0.1:%%PORT_0%% reuseport;
    access_log %%TESTDIR%%/m.log m;

    location = /metrics {
        websocket_status;
    }

    location /ws {
        websocket_echo;
    }

    location /origin {
        websocket_echo;
        websocket_origins http://good.example;
    }

    location /pass/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /ka/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 2;
    }

    location /dead {
        websocket_pass ws://127.0.0.1:$DEAD;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

# --- helpers ---------------------------------------------------------------------------------

sub fetch {
    my ($method) = @_;
    return http_request($port, ($method // 'GET') . " /metrics HTTP/1.1\r\nHost: localhost\r\n"
        . ($method && $method eq 'POST' ? "Content-Length: 0\r\n" : '') . "Connection: close\r\n\r\n");
}

# 'name{labels}' => value
sub metrics {
    my (undef, undef, $body) = fetch();
    my %m;
    for (split /\n/, $body // '') {
        next if /^#/ || !/\S/;
        $m{$1} = $2 if /^(\S+\{[^}]*\}|\S+)\s+(\S+)$/;
    }
    return \%m;
}

# What every series should read; closes_total lists only the codes seen.
my %exp;
for my $k ('echo', 'pass') {
    $exp{"nginx_websocket_sessions_active{kind=\"$k\"}"} = 0;
    $exp{"nginx_websocket_sessions_total{kind=\"$k\"}"} = 0;
}
for my $d ('in', 'out') {
    $exp{"nginx_websocket_messages_total{direction=\"$d\"}"} = 0;
    $exp{"nginx_websocket_bytes_total{direction=\"$d\"}"} = 0;
}
$exp{"nginx_websocket_handshake_rejects_total{status=\"$_\"}"} = 0 for 400, 403, 405, 426, 502, 503, 504;
$exp{"nginx_websocket_upstream_connects_total{reused=\"$_\"}"} = 0 for 0, 1;
$exp{nginx_websocket_sessions_draining} = 0;

sub add {
    my (%kv) = @_;
    while (my ($k, $v) = each %kv) { $exp{$k} += $v }
}
sub msgs {
    my ($n, $bytes) = @_;
    add('nginx_websocket_messages_total{direction="in"}' => $n,
        'nginx_websocket_messages_total{direction="out"}' => $n,
        'nginx_websocket_bytes_total{direction="in"}' => $bytes,
        'nginx_websocket_bytes_total{direction="out"}' => $bytes);
}
sub closed { add("nginx_websocket_closes_total{code=\"$_[0]\"}" => 1) }
sub started { add("nginx_websocket_sessions_total{kind=\"$_[0]\"}" => 1) }
sub rejected { add("nginx_websocket_handshake_rejects_total{status=\"$_[0]\"}" => 1) }
sub connected { add("nginx_websocket_upstream_connects_total{reused=\"$_[0]\"}" => $_[1] // 1) }

# Every series equals %exp (and no close code we did not cause appears);
# waits up to 3 s for sessions that are ending to be counted. 1 test.
sub metrics_are {
    my ($name) = @_;
    my ($m, @diff);
    my $deadline = time + 3;
    while (1) {
        $m = metrics();
        @diff = ();
        my %keys = map { $_ => 1 } keys %exp, grep { /^nginx_websocket_closes_total/ } keys %$m;
        for my $k (sort keys %keys) {
            my $want = $exp{$k} // 'absent';
            my $got = $m->{$k} // 'absent';
            push @diff, "$k: got $got, expected $want" if $want ne $got;
        }
        last if !@diff || time > $deadline;
        sleep 0.1;
    }
    ok(!@diff, "metrics: $name") or diag join "\n", @diff;
}

# A session: $n text messages of $len bytes (each echoed), then close $code.
sub session {
    my ($path, $n, $len, $code, %o) = @_;
    my $ws = ws_open($port, $path);
    my $ok = 1;
    for my $i (1 .. $n) {
        my $p = substr("$i" x $len, 0, $len);
        $ws->send_text($p);
        my $m = $ws->recv_message(timeout => 3);
        $ok &&= $m && $m->{payload} eq $p;
    }
    if ($o{ping}) {
        $ws->send_ping('hb');
        my $f = $ws->recv_frame(timeout => 3);
        $ok &&= $f && $f->{opcode} == OP_PONG;
    }
    $ws->send_close($code);
    my ($got) = $ws->recv_close(timeout => 3);
    $ok &&= defined $got && $got == $code && $ws->wait_eof(3);
    $ws->close;
    return $ok;
}

# --- a fresh nginx ------------------------------------------------------------------------------
{
    my ($status, $h, $body) = fetch();
    is($status, 200, 'GET /metrics: 200');
    is($h->{'content-type'}, 'text/plain; version=0.0.4', 'Content-Type: text/plain; version=0.0.4');
    for my $f (['sessions_active', 'gauge'], ['sessions_total', 'counter'], ['messages_total', 'counter'],
        ['bytes_total', 'counter'], ['closes_total', 'counter'], ['handshake_rejects_total', 'counter'],
        ['upstream_connects_total', 'counter'], ['sessions_draining', 'gauge'])
    {
        like($body, qr/^# TYPE nginx_websocket_$f->[0] $f->[1]$/m, "# TYPE nginx_websocket_$f->[0] $f->[1]");
    }
    my @bad = grep { !/^#/ && !/^nginx_websocket_\w+(?:\{\w+="[^"]*"\})? \d+$/ } split /\n/, $body;
    is_deeply(\@bad, [], 'every sample is name{label="value"} integer, or name integer');
    metrics_are('all zero on a fresh nginx');
}

# --- echo sessions ------------------------------------------------------------------------------
{
    my $ok = 0;
    for my $i (1 .. 3) {
        # two messages of 10 bytes, a ping (not a data message), close 1000
        $ok += session('/ws', 2, 10, 1000, ping => $i == 1);
        started('echo');
        msgs(2, 20);
        closed(1000);
    }
    is($ok, 3, '3 echo sessions: 2 messages of 10 bytes each, close 1000');

    # one fragmented message of 10 bytes (3 + 7), then close 4000
    my $ws = ws_open($port, '/ws');
    $ws->send_frame(fin => 0, opcode => OP_TEXT, payload => 'abc');
    $ws->send_frame(fin => 1, opcode => OP_CONT, payload => 'defghij');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'abcdefghij', 'a fragmented message of 10 bytes echoed');
    $ws->send_close(4000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 4000, 'close 4000 answered');
    $ws->close;
    started('echo');
    msgs(1, 10);
    closed('other');
    metrics_are('4 echo sessions, 7 messages of 70 bytes each way, closes 1000: 3, other: 1');

    # a session that ends with a TCP drop has no close code
    $ws = ws_open($port, '/ws');
    $ws->send_text('x' x 10);
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'x' x 10, 'a message of 10 bytes echoed, then the client drops TCP');
    $ws->close;
    started('echo');
    msgs(1, 10);
    metrics_are('a session dropped without a close frame counts no close code');
}

# --- pass sessions (scripted upstream: only the client legs count) ------------------------------
{
    my $ok = 0;
    for my $i (1 .. 2) {
        $ok += session("/pass/$i", 1, 7, 1000);
        started('pass');
        msgs(1, 7);
        closed(1000);
        connected(0);
    }
    is($ok, 2, '2 pass sessions: a message of 7 bytes each, close 1000');
    metrics_are('2 pass sessions, 2 new upstream connections');
}

# --- the keepalive pool: sequential sessions reuse upstream connections -------------------------
{
    # Two workers: a session reuses the pooled connection of the worker that
    # takes it; after each worker has one, every later session does.
    my $before = grep { ($_->{path} // '') eq '/ka/seq' } $up->records;
    is($before, 0, 'no /ka/ upstream connection yet');
    my $ok = 0;
    for my $i (1 .. 3) {
        $ok += session('/ka/seq', 1, 5, 1000);
        started('pass');
        msgs(1, 5);
        closed(1000);
    }
    is($ok, 3, '3 sequential pass sessions with websocket_keepalive 2');
    my $new = grep { ($_->{path} // '') eq '/ka/seq' } $up->records;
    ok($new >= 1 && $new <= 2, "... over $new upstream connection(s)");
    connected(0, $new);
    connected(1, 3 - $new);
    metrics_are("keepalive: upstream_connects reused=\"0\" $new, reused=\"1\" " . (3 - $new));
}

# --- rejected handshakes ------------------------------------------------------------------------
{
    my $r = WsClient->connect(port => $port, path => '/ws', headers => { 'Sec-WebSocket-Key' => undef });
    is($r->status, 400, 'no Sec-WebSocket-Key: 400');
    rejected(400);
    $r = WsClient->connect(port => $port, path => '/ws', method => 'POST',
        extra_headers => [ 'Content-Length' => 0 ]);
    is($r->status, 405, 'POST: 405');
    rejected(405);
    $r = WsClient->connect(port => $port, path => '/ws', headers => { 'Sec-WebSocket-Version' => 12 });
    is($r->status, 426, 'version 12: 426');
    rejected(426);
    $r = WsClient->connect(port => $port, path => '/origin', origin => 'http://evil.example');
    is($r->status, 403, 'an Origin not listed: 403');
    rejected(403);
    $r = WsClient->connect(port => $port, path => '/dead');
    is($r->status, 502, 'a dead upstream: 502');
    rejected(502);
    metrics_are('handshake rejects: one each of 400, 403, 405, 426, 502');
}

# --- sessions_active while sessions are open ----------------------------------------------------
{
    my $e = ws_open($port, '/ws');
    started('echo');
    add('nginx_websocket_sessions_active{kind="echo"}' => 1);
    metrics_are('an echo session open: sessions_active{kind="echo"} 1');

    my $p = ws_open($port, '/pass/open');
    started('pass');
    connected(0);
    add('nginx_websocket_sessions_active{kind="pass"}' => 1);
    metrics_are('and a pass session: sessions_active{kind="pass"} 1');

    for my $ws ($e, $p) {
        $ws->send_close(1000);
        $ws->recv_close(timeout => 3);
        $ws->close;
        closed(1000);
    }
    add('nginx_websocket_sessions_active{kind="echo"}' => -1, 'nginx_websocket_sessions_active{kind="pass"}' => -1);
    metrics_are('both closed: sessions_active 0');
}

# --- summed over both workers --------------------------------------------------------------------
{
    my %pids;
    open my $fh, '<', $t->testdir . '/m.log' or die "m.log: $!";
    while (<$fh>) { $pids{$1}++ if /^(\d+) 101 / }
    close $fh;
    my $total = 0;
    $total += $_ for values %pids;
    is($total, $exp{'nginx_websocket_sessions_total{kind="echo"}'} + $exp{'nginx_websocket_sessions_total{kind="pass"}'},
        "the access log has a 101 line per session ($total)");
    is(scalar keys %pids, 2, 'the sessions were served by both workers, and the metrics count them all')
        or diag 'served by: ' . join ', ', map { "$_ ($pids{$_})" } keys %pids;
}

# --- only GET (and HEAD) --------------------------------------------------------------------------
{
    my ($status) = fetch('POST');
    is($status, 405, 'POST /metrics: 405');
    my ($hstatus, $h) = fetch('HEAD');
    is($hstatus, 200, 'HEAD /metrics: 200');
    metrics_are('requests to the status location are not counted');
}

# --- the counters survive a reload ---------------------------------------------------------------
{
    ok($t->reload, 'reload');
    @workers = $t->worker_pids;
    is(scalar @workers, 2, 'two new workers');
    metrics_are('unchanged after the reload');
    ok(session('/ws', 1, 10, 1000), 'an echo session after the reload');
    started('echo');
    msgs(1, 10);
    closed(1000);
    metrics_are('the new workers count on');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
