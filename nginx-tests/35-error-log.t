#!/usr/bin/perl
# Error-log levels: what the peer does wrong is [info] (a client protocol
# violation, a rejected handshake, a client leaving), what fails us is
# [error] (an unreachable upstream, an upstream breaking the protocol), and a
# normal session logs nothing at warn or above. Each case looks only at the
# lines it added to error.log (level info).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(build_frame OP_TEXT OP_BINARY);
use WsTest;
use WsUpstream;

sub frame { WsUpstream::Conn::frame(@_) }

# /pass/ok...: echo. /pass/masked, /pass/opcode: answer the first message
# with a masked frame, a reserved opcode.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    my $path = $c->path // '';
    if ($path =~ m{^/pass/(masked|opcode)}) {
        my $mode = $1;
        my $f = $c->recv_frame(timeout => 10) or return;
        $c->send_raw($mode eq 'masked'
            ? frame(opcode => OP_TEXT, payload => $f->{payload}, mask => 1)
            : frame(opcode => 3, payload => $f->{payload}));
        $c->wait_close(timeout => 5);
        $c->wait_eof(timeout => 5);
        return;
    }
    $c->echo_loop(timeout => 15);
});
my $UP = $up->port;
my $DEAD = WsNginx::free_port();    # nothing listens there

my $t = WsNginx->new(error_log_level => 'info', conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

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

    location /dead {
        websocket_pass ws://127.0.0.1:$DEAD;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

# The lines error.log got since $mark (a length), once $re matched one of
# them (or after 3 s) and 0.2 s more passed for stragglers.
sub mark { length $t->error_log }
sub lines_since {
    my ($mark, $re) = @_;
    my $deadline = time + 3;
    while ($re && time < $deadline) {
        last if grep { $_ =~ $re } split /\n/, substr($t->error_log, $mark);
        sleep 0.05;
    }
    sleep 0.2;
    return split /\n/, substr($t->error_log, $mark);
}
my $WARN_UP = qr/\[(?:warn|error|crit|alert|emerg)\]/;
my $ERROR_UP = qr/\[(?:error|crit|alert|emerg)\]/;

# Checks the new lines: exactly one [info] line matching $re and nothing at
# warn or above. 2 tests.
sub info_once {
    my ($name, $mark, $re) = @_;
    my @l = lines_since($mark, $re);
    my @hit = grep { /\[info\]/ && $_ =~ $re } @l;
    is(scalar @hit, 1, "$name: one [info] line") or diag join "\n", 'new lines:', @l;
    my @worse = grep { $_ =~ $WARN_UP } @l;
    is_deeply(\@worse, [], "$name: nothing at warn or above");
    return @l;
}

# --- normal sessions: nothing at warn or above ----------------------------------------------------
{
    my $m = mark();
    my $ws = ws_open($port, '/ws');
    echo_ok($ws, OP_TEXT, 'hello', 'echo');
    $ws->send_ping('p');
    $ws->recv_frame(timeout => 3);
    bye($ws, 'echo');
    $ws->close;
    my $p = ws_open($port, '/pass/ok/1');
    echo_ok($p, OP_BINARY, "\x00\x01\x02", 'pass');
    bye($p, 'pass');
    $p->close;
    # the close started by the server side
    $p = ws_open($port, '/pass/ok/2');
    $p->send_text('cmd:close:1000');
    my ($code) = $p->recv_close(timeout => 3);
    is($code, 1000, 'pass: the upstream closed with 1000');
    $p->send_close(1000);
    ok($p->wait_eof(3), 'pass: TCP closed');
    $p->close;
    sleep 0.3;
    my @l = lines_since($m);
    my @worse = grep { $_ =~ $WARN_UP } @l;
    is_deeply(\@worse, [], 'normal echo and pass sessions: nothing at warn or above')
        or diag join "\n", @l;
}

# --- a client protocol violation: [info] naming the reason ---------------------------------------
{
    my $m = mark();
    violation($port, 'echo: an unmasked frame', '/ws', build_frame(opcode => OP_TEXT, payload => 'x', mask => 0), 1002);
    my @l = info_once('echo: an unmasked frame', $m, qr/websocket: client sent .*unmasked frame.*1002/);
    like((grep { /unmasked frame/ } @l)[0] // '', qr/while serving WebSocket echo\b/,
        'echo: the line says what the connection was doing');

    $m = mark();
    violation($port, 'echo: a reserved opcode', '/ws', build_frame(opcode => 5, payload => 'x'), 1002);
    info_once('echo: a reserved opcode', $m, qr/websocket: client sent .*reserved opcode 5/);

    $m = mark();
    violation($port, 'echo: invalid UTF-8', '/ws', build_frame(opcode => OP_TEXT, payload => "\xff\xfe"), 1007);
    info_once('echo: invalid UTF-8', $m, qr/websocket: client sent .*invalid utf-8/i);

    $m = mark();
    violation($port, 'pass: an unmasked frame from the client', '/pass/ok/3',
        build_frame(opcode => OP_TEXT, payload => 'x', mask => 0), 1002);
    @l = info_once('pass: an unmasked frame from the client', $m, qr/websocket: client.*unmasked frame/);
    like((grep { /unmasked frame/ } @l)[0] // '', qr/while proxying WebSocket\b/,
        'pass: the line says what the connection was doing');
}

# --- a client that goes away: [info] at most ------------------------------------------------------
{
    my $m = mark();
    my $ws = ws_open($port, '/ws');
    echo_ok($ws, OP_TEXT, 'bye', 'a client that drops TCP');
    $ws->close;
    my $p = ws_open($port, '/pass/ok/4');
    echo_ok($p, OP_TEXT, 'bye', 'a pass client that drops TCP');
    $p->close;
    my @l = lines_since($m, qr{without a close frame.*/pass/ok/4});
    my @info = grep { /\[info\].*without a close frame/ } @l;
    is(scalar @info, 2, 'clients dropping TCP: an [info] line each') or diag join "\n", @l;
    my @worse = grep { $_ =~ $WARN_UP } @l;
    is_deeply(\@worse, [], 'clients dropping TCP: nothing at warn or above') or diag join "\n", @l;
}

# --- handshakes rejected: [info] "handshake rejected" ---------------------------------------------
{
    my @cases = (
        [ 'no Sec-WebSocket-Key', 400, '/ws', headers => { 'Sec-WebSocket-Key' => undef } ],
        [ 'POST', 405, '/ws', method => 'POST', extra_headers => [ 'Content-Length' => 0 ] ],
        [ 'version 8', 426, '/ws', headers => { 'Sec-WebSocket-Version' => 8 } ],
        [ 'an Origin not listed', 403, '/origin', origin => 'http://evil.example' ],
        [ 'no Upgrade header, to pass', 400, '/pass/ok/5', headers => { Upgrade => undef } ],
    );
    for my $c (@cases) {
        my ($name, $status, $path, %o) = @$c;
        my $m = mark();
        my $r = WsClient->connect(port => $port, path => $path, %o);
        is($r->status, $status, "$name: $status");
        info_once("$name", $m, qr/handshake rejected/);
    }
}

# --- an unreachable upstream: [error] with connect() and the address ---------------------------
{
    my $m = mark();
    my $r = WsClient->connect(port => $port, path => '/dead');
    is($r->status, 502, 'unreachable upstream: 502');
    my @l = lines_since($m, qr/\[error\].*connect\(\)/);
    my @hit = grep { /\[error\]/ && /connect\(\)/ && /127\.0\.0\.1:$DEAD\b/ } @l;
    ok(@hit >= 1, "unreachable upstream: an [error] line with connect() and 127.0.0.1:$DEAD")
        or diag join "\n", 'new lines:', @l;
    like($hit[0] // '', qr/refused/i, 'unreachable upstream: ... and the reason (refused)');
}

# --- an upstream protocol violation: [error] -------------------------------------------------------
{
    for my $c ([ 'masked', qr/masked frame/ ], [ 'opcode', qr/reserved opcode 3/ ]) {
        my ($mode, $why) = @$c;
        my $m = mark();
        my $ws = ws_open($port, "/pass/$mode");
        $ws->send_text('provoke');
        expect_close($ws, "upstream $mode violation: the client gets 1014", 1014);
        $ws->close;
        my $r = $up->wait_record(path => qr{^/pass/$mode}, until => 'close_code') // {};
        is($r->{close_code}, 1002, "upstream $mode violation: the upstream gets close 1002");
        my @l = lines_since($m, qr/\[error\].*upstream/);
        my @hit = grep { /\[error\]/ && /websocket: upstream/ && $_ =~ $why } @l;
        is(scalar @hit, 1, "upstream $mode violation: one [error] line naming the upstream and the reason")
            or diag join "\n", 'new lines:', @l;
        my @other = grep { $_ =~ $ERROR_UP && !($_ =~ $why) } @l;
        is_deeply(\@other, [], "upstream $mode violation: no other line at error or above");
    }
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
