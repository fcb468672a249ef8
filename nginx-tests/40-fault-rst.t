#!/usr/bin/perl
# Faults: TCP resets. A client that resets its connection (SO_LINGER 0, then
# close) in the middle of a frame, of a fragmented message, of the handshake
# or while nginx writes to it, on websocket_echo and on websocket_pass: the
# worker releases the connection at once (its sockets in /proc/<worker>/fd
# back to the idle count well before websocket_timeout), pass closes the
# upstream connection too (the scripted upstream hears close 1001 and EOF,
# or just EOF before the upgrade). Then the upstream resets in the middle of
# a message: the client gets close 1011 (the upstream went away; 1014 is for
# an upstream that breaks the protocol), then EOF, and error.log an [error] line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame http_request);
use WsTest qw(:DEFAULT worker_sockets sockets_back_to rss_kib tagged_session);
use WsUpstream;

sub frame { WsUpstream::Conn::frame(@_) }

# The upstream's behaviour comes from the path it gets: /p/MODE?id=N.
my %mode = (
    # echo and record; a close is answered, then EOF is awaited (echo_loop)
    record => sub { $_[0]->handshake; $_[0]->echo_loop(timeout => 15) },
    # never answers the handshake; notes when nginx closes the connection
    hold => sub {
        my $c = shift;
        $c->wait_eof(timeout => 8);
        $c->note(eof_at => time);
    },
    # resets instead of answering the handshake
    rsthandshake => sub { $_[0]->reset_close },
    # writes as fast as nginx takes it until the connection is gone
    flood => sub {
        my $c = shift;
        $c->handshake;
        my $n = 0;
        while ($c->send_binary('F' x 60000)) { $n++ }
        $c->note(sent => $n, write_error => $c->{write_error}, gone_at => time);
    },
    # half of a 50000-byte binary frame, then a reset
    rstframe => sub {
        my $c = shift;
        $c->handshake;
        my $f = frame(opcode => 2, payload => 'R' x 50000);
        $c->send_raw(substr($f, 0, 20000));
        sleep 0.3;
        $c->reset_close;
    },
    # two bytes of a frame header, then a reset
    rstheader => sub {
        my $c = shift;
        $c->handshake;
        $c->send_raw("\x82\x7e");
        sleep 0.3;
        $c->reset_close;
    },
    # the first fragment of a message, then a reset
    rstfrag => sub {
        my $c = shift;
        $c->handshake;
        $c->send_frame(fin => 0, opcode => 1, payload => 'first part');
        sleep 0.3;
        $c->reset_close;
    },
);

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my ($m) = ($c->path // '') =~ m{^/p/(\w+)};
    ($mode{ $m // '' } // $mode{record})->($c);
});
my $UP = $up->port;

my $TIMEOUT = 5;    # websocket_timeout: every release below must come well before it

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%% sndbuf=8k;
    client_header_timeout ${TIMEOUT}s;
    lingering_timeout 1s;

    location /ws {
        websocket_echo;
        websocket_timeout ${TIMEOUT}s;
    }

    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout ${TIMEOUT}s;
        websocket_connect_timeout 10s;
    }
}
EOF_CONF
is(scalar @workers, 1, 'one worker');

my $base = worker_sockets($t);
note "the worker holds $base sockets when idle";
my $have_proc = $base > 0;

# released($name): the worker holds no more sockets than when idle, within
# 1.5 s (websocket_timeout and client_header_timeout are 5 s). 1 test.
sub released {
    my ($name) = @_;
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        my $took = sockets_back_to($t, $base, 1.5);
        ok(defined $took, "$name: the worker released the connection"
            . (defined $took ? sprintf(' (%.2fs)', $took) : ''))
            or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base when idle";
    }
}

sub session { my ($m, %o) = @_; tagged_session($port, "/p/$m", %o) }
sub rec_of { my ($tag, %o) = @_; $up->wait_record(path => $tag, %o) // {} }

my $big = build_frame(opcode => 2, payload => 'v' x 30000);
my $handshake = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

# What each client reset leaves before it: [ name, bytes sent first ].
my @mid = (
    [ 'mid-header (1 byte)', "\x82" ],
    [ 'mid-header (masked, 7 of 8 bytes)', substr(build_frame(opcode => 1, payload => 'abc'), 0, 5) ],
    [ 'mid-payload (10000 of 30000 bytes)', substr($big, 0, 10000) ],
    [ 'mid-control-frame', substr(build_frame(opcode => 9, payload => 'p' x 100), 0, 20) ],
    [ 'mid-message (first fragment sent)', build_frame(opcode => 1, fin => 0, payload => 'one') ],
    [ 'mid-message and mid-frame', build_frame(opcode => 1, fin => 0, payload => 'one')
        . substr(build_frame(opcode => 0, payload => 'x' x 1000), 0, 300) ],
);

# --- echo: the client resets mid-frame ------------------------------------------------------
for my $case (@mid) {
    my ($name, $bytes) = @$case;
    my $ws = ws_open($port, '/ws');
    echo_ok($ws, 1, 'before the reset', "echo, reset $name: a message first") if $name =~ /1 byte/;
    $ws->send_raw($bytes);
    sleep 0.1;
    $ws->reset_close;
    released("echo, reset $name");
}

# --- echo: the client resets while nginx writes to it ---------------------------------------
{
    my $ws = ws_open($port, '/ws', rcvbuf => 4096);
    $ws->send_binary('e' x 65000) for 1 .. 4;
    sleep 0.2;
    $ws->reset_close;
    released('echo, reset while the echo is being written');
}

# --- echo: the client resets mid-handshake --------------------------------------------------
for my $cut (5, 40, length($handshake) - 2) {
    my $ws = WsClient->connect(port => $port, raw => substr($handshake, 0, $cut), timeout => 0.3);
    is($ws->status, undef, "echo, reset after $cut handshake bytes: no response yet");
    $ws->reset_close;
    released("echo, reset after $cut handshake bytes");
}

# --- pass: the client resets mid-frame ------------------------------------------------------
for my $case (@mid) {
    my ($name, $bytes) = @$case;
    my ($ws, $tag) = session('record');
    is($ws->status, 101, "pass, reset $name: 101");
    $ws->send_raw($bytes);
    sleep 0.1;
    $ws->reset_close;
    my $r = rec_of($tag, until => 'eof');
    is($r->{close_code}, 1001, "pass, reset $name: the upstream gets close 1001");
    is($r->{eof}, 1, "pass, reset $name: the upstream connection is closed");
    released("pass, reset $name");
}

# --- pass: the client resets while the upstream floods it -----------------------------------
{
    my ($ws, $tag) = session('flood', rcvbuf => 4096);
    is($ws->status, 101, 'pass, reset during an upstream flood: 101');
    sleep 0.5;
    $ws->reset_close;
    my $r = rec_of($tag, until => 'gone_at');
    ok($r->{write_error}, 'pass, reset during an upstream flood: the upstream connection is closed ('
        . ($r->{write_error} // 'no write error') . " after $r->{sent} frames)");
    released('pass, reset during an upstream flood');
}

# --- pass: the client resets mid-handshake --------------------------------------------------
{
    my $before = $up->count;
    my $req = "GET /p/record?id=partial HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConn";
    my $ws = WsClient->connect(port => $port, raw => $req, timeout => 0.3);
    is($ws->status, undef, 'pass, reset mid-request: no response yet');
    $ws->reset_close;
    released('pass, reset mid-request');
    sleep 0.2;
    is($up->count, $before, 'pass, reset mid-request: no upstream connection was made');
}
{
    # the request is complete; the upstream has not answered yet
    my $tag = 'raw=' . time;
    my $req = $handshake =~ s{^GET /ws }{GET /p/hold?$tag }r;
    my $ws = WsClient->connect(port => $port, raw => $req, timeout => 0.5);
    is($ws->status, undef, 'pass, reset while the upstream handshake is under way: no response yet');
    my $r = rec_of(qr/[?&]\Q$tag\E\z/, until => 'request_at');
    ok($r->{request_at}, 'pass, reset while the upstream handshake is under way: the upstream got the request');
    my $t0 = time;
    $ws->reset_close;
    $r = rec_of(qr/[?&]\Q$tag\E\z/, until => 'eof_at', timeout => 8);
    is($r->{eof}, 1, 'pass, reset while the upstream handshake is under way: the upstream connection is closed');
    cmp_ok(($r->{eof_at} // 99) - $t0, '<', 1.5,
        '... at once, not after websocket_connect_timeout (10 s)');
    released('pass, reset while the upstream handshake is under way');
    is(scalar($t->grep_error_log(qr/client closed the connection before the upgrade/)), 1,
        '... logged as a client leaving before the upgrade');
}

# --- the client resets: nothing at warn or above ----------------------------------------------
is_deeply([ $t->grep_error_log(qr/\[(?:warn|error|crit|alert|emerg)\]/) ], [],
    'client resets: nothing logged at warn or above');

# --- pass: the upstream resets ------------------------------------------------------------------
my $errors = () = $t->grep_error_log(qr/\[error\]/);
for my $case ([ 'rstframe', 'mid-payload (20000 of 50000 bytes)' ],
              [ 'rstheader', 'mid-header' ],
              [ 'rstfrag', 'mid-message (first fragment sent)' ]) {
    my ($m, $name) = @$case;
    my ($ws, $tag) = session($m);
    is($ws->status, 101, "upstream resets $name: 101");
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1011, "upstream resets $name: the client gets close 1011")
        or diag 'got ' . close_desc($ws, $code);
    my @data = grep { $_->{opcode} < 8 } $ws->skipped;
    ok(!grep({ $_->{fin} } @data), "upstream resets $name: no message was completed before the close")
        or diag scalar(@data) . ' data frames';
    ok($ws->wait_eof(3), "upstream resets $name: then TCP is closed");
    released("upstream resets $name");
    my @new = $t->grep_error_log(qr/\[error\]/);
    splice @new, 0, $errors;
    $errors += @new;
    is(scalar @new, 2, "upstream resets $name: two [error] lines") or diag join "\n", @new;
    like($new[0] // '', qr/recv\(\) failed \(104: Connection reset by peer\) while proxying WebSocket/,
        "upstream resets $name: nginx's recv() error first");
    like($new[1] // '', qr/websocket: upstream: connection error, closing with 1011.*upstream: "127\.0\.0\.1:$UP"/,
        "upstream resets $name: then the module's, naming the upstream and the close code");
}
{
    my ($status) = http_request($port, "GET /p/rsthandshake HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        . "Sec-WebSocket-Version: 13\r\n\r\n");
    is($status, 502, 'upstream resets instead of answering the handshake: 502');
    released('upstream resets the handshake');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
