#!/usr/bin/perl
# The websocket_pass keepalive pool: websocket_keepalive,
# websocket_keepalive_timeout, websocket_keepalive_backlog and
# websocket_keepalive_pool, against the scripted upstream
# (WsUpstream::Conn::serve), which counts the TCP connections it accepts
# (one record each, with the handshake it read) and records every frame.
#
# When the client closes normally and the upstream leg is clean, nginx
# answers the close itself and keeps the upstream connection (the upstream
# sees no close frame); a later session with the same upstream handshake
# reuses it without a new connection or handshake. Checked: reuse and its
# limits (LRU of N idle, identical handshakes only, pool names), what ends a
# pooled connection (its timeout, the upstream closing or sending data; a
# ping is answered), unclean client closes, and the backlog (waiting in
# line, 503 past it, 504 when the turn never comes).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time sleep);
use WsClient;
use WsTest;
use WsUpstream;

# the first subprotocol offered is chosen; then an echo that can sit in a pool
my $handler = sub {
    my ($c) = @_;
    my ($first) = split /\s*,\s*/, $c->header('Sec-WebSocket-Protocol') // '';
    $c->handshake(defined $first && length $first ? (protocol => $first) : ());
    $c->serve(idle => 40);
};
my $up = WsUpstream->new(handler => $handler);
my $UP = $up->port;
my $up2 = WsUpstream->new(handler => $handler);    # for the backlog
my $UP2 = $up2->port;

my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    # no path in the URLs below: the client's URI is passed

    # the default pool name (127.0.0.1:$UP)
    location /def/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 4;
    }

    # a pool of its own for every URI
    location /ka/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 4;
        websocket_keepalive_pool \$uri;
    }

    location /noka/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /ka0/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 0;
    }

    location /short/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 4;
        websocket_keepalive_timeout 1s;
        websocket_keepalive_pool \$uri;
    }

    # the same upstream handshake, two pool names
    location /poolA/ {
        websocket_pass ws://127.0.0.1:$UP/shared;
        websocket_keepalive 4;
        websocket_keepalive_pool A;
    }

    location /poolB/ {
        websocket_pass ws://127.0.0.1:$UP/shared;
        websocket_keepalive 4;
        websocket_keepalive_pool B;
    }

    location /poolvar/ {
        websocket_pass ws://127.0.0.1:$UP/shared-var;
        websocket_keepalive 4;
        websocket_keepalive_pool pool-\$arg_p;
    }

    # one pool, handshakes that differ
    location /hs/ {
        websocket_pass ws://127.0.0.1:$UP/hs;
        websocket_keepalive 8;
        websocket_keepalive_pool hs;
        websocket_pass_header X-Tag \$http_x_tag;
    }

    location /bl/ {
        websocket_pass ws://127.0.0.1:$UP2;
        websocket_keepalive 1;
        websocket_keepalive_backlog 1;
        websocket_connect_timeout 2s;
    }
}
EOF_CONF

# --- helpers --------------------------------------------------------------------

sub recs { my ($u, $path) = @_; grep { ($_->{path} // '') eq $path } $u->records }
sub nconn { scalar recs(@_) }
sub alive { scalar grep { !exists $_->{end} } recs(@_) }
sub data_of { [ map { $_->{payload} } grep { $_->{opcode} < 8 } @{ $_[0]{frames} // [] } ] }

# Waits until the record of $u/$path with $pred is there; undef after $timeout.
sub wait_rec {
    my ($u, $path, $pred, $timeout) = @_;
    my $deadline = time + ($timeout // 3);
    while (1) {
        my ($r) = grep { $pred->($_) } recs($u, $path);
        return $r if $r || time > $deadline;
        sleep 0.02;
    }
}

# A session that the pool may serve: 101 with the right accept key, one
# echo per payload, then the client's close answered with the same code
# and TCP closed. 6 + 5 per payload tests.
sub session_ok {
    my ($path, $name, $payloads, %o) = @_;
    my $code = exists $o{code} ? $o{code} : 1000;
    my $ws = WsClient->connect(port => $port, path => $path, %{ $o{connect} // {} });
    is($ws->status, 101, "$name: 101") or do {
        diag join "\n", $t->grep_error_log(qr/\[error\]/);
        fail("$name: skipped") for 1 .. 5 + 5 * @$payloads;
        return;
    };
    ok($ws->accept_ok, "$name: Sec-WebSocket-Accept of its own key");
    is($ws->header('Sec-WebSocket-Protocol'), $o{protocol}, "$name: subprotocol " . ($o{protocol} // 'none'));
    echo_ok($ws, $_ =~ /\A\x00/ ? 2 : 1, $_, "$name: '" . substr($_, 0, 12) . "'") for @$payloads;
    $ws->send_close($code, defined $code ? 'client done' : undef);
    my ($got) = $ws->recv_close(timeout => 3);
    if (defined $code) {
        is($got, $code, "$name: close $code answered with $code") or diag 'got ' . close_desc($ws, $got);
    } else {
        ok(!defined $got && $ws->{close_frame}, "$name: empty close answered with a close")
            or diag 'got ' . close_desc($ws, $got);
    }
    ok($ws->wait_eof(3), "$name: TCP closed");
    return $ws;
}

# A handshake sent without waiting for the answer.
sub start_handshake {
    my ($path) = @_;
    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
        or die "connect: $!";
    my $req = "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
    syswrite($s, $req) == length $req or die "write: $!";
    return { s => $s, key => $key, req => $req, buf => '' };
}

# True when some answer (or EOF) is already there.
sub answered { IO::Select->new($_[0]{s})->can_read(0) ? 1 : 0 }

# Reads the answer head of a started handshake: (status, time it was
# complete, a WsClient for the session when 101).
sub finish_handshake {
    my ($p, $timeout) = @_;
    my $deadline = time + $timeout;
    while ($p->{buf} !~ /\r\n\r\n/) {
        my $left = $deadline - time;
        last if $left <= 0 || !IO::Select->new($p->{s})->can_read($left);
        my $n = sysread($p->{s}, $p->{buf}, 65536, length $p->{buf});
        last unless $n;
    }
    my $at = time;
    return (undef, $at) unless $p->{buf} =~ s/\A(.*?)\r\n\r\n//s;
    my ($status, $h, $sl) = WsClient::_parse_head($1);
    return ($status, $at) unless $status == 101;
    $p->{s}->blocking(0);
    my $ws = bless {
        fh => $p->{s}, port => $port, key => $p->{key}, buf => $p->{buf}, eof => 0,
        timeout => 5, request => $p->{req}, chunk => 0, delay => 0, interleaved => [],
        status => $status, headers => $h, status_line => $sl,
        accept_ok => ($h->{'sec-websocket-accept'} // '') eq WsClient::accept_key($p->{key}),
    }, 'WsClient';
    return ($status, $at, $ws);
}

# --- sequential sessions share one connection --------------------------------------
{
    my @codes = (1000, 1000, 4001, 1001, undef);
    for my $i (1 .. 5) {
        session_ok('/def/seq', "default pool, session $i", [ "seq $i", "\x00bin $i" ],
            code => $codes[$i - 1], protocol => 'chat',
            connect => { protocols => [ 'chat', 'superchat' ] });
    }
    is(nconn($up, '/def/seq'), 1, '5 sequential sessions with websocket_keepalive 4: one upstream connection');
    my ($r) = recs($up, '/def/seq');
    $r //= {};
    is_deeply(data_of($r), [ map { ("seq $_", "\x00bin $_") } 1 .. 5 ],
        "every session's messages went over it, in order");
    is(scalar(grep { $_->{opcode} == 8 } @{ $r->{frames} // [] }), 0, 'the upstream saw no close frame');
    is(scalar(grep { !$_->{masked} } @{ $r->{frames} // [] }), 0, 'every frame towards it was masked');
    ok(!exists $r->{end}, 'the upstream connection is still open');
}
{
    for my $i (1 .. 5) {
        session_ok('/noka/seq', "no keepalive, session $i", ["plain $i"]);
    }
    my @r = recs($up, '/noka/seq');
    is(scalar @r, 5, 'without websocket_keepalive: 5 sessions, 5 upstream connections');
    @r = map {
        my $id = $_->{id};
        wait_rec($up, '/noka/seq', sub { $_[0]{id} == $id && exists $_[0]{end} }) // $_
    } @r;
    is_deeply([ map { $_->{close_code} // 'none' } @r ], [ (1000) x 5 ],
        'without keepalive: every upstream connection got the close 1000');
    is_deeply([ map { $_->{end} // 'open' } @r ], [ ('eof') x 5 ], 'without keepalive: every one was closed');

    session_ok('/ka0/seq', "websocket_keepalive 0, session $_", ["zero $_"]) for 1 .. 2;
    is(nconn($up, '/ka0/seq'), 2, 'websocket_keepalive 0: no pooling');
}
{
    my $ok = 0;
    for my $i (1 .. 50) {
        my $ws = WsClient->connect(port => $port, path => '/ka/fifty');
        next unless ($ws->status // 0) == 101 && $ws->accept_ok;
        $ws->send_text("fifty $i");
        my $m = $ws->recv_message(timeout => 3);
        next unless $m && $m->{payload} eq "fifty $i";
        $ws->send_close(1000);
        my ($code) = $ws->recv_close(timeout => 3);
        $ok++ if defined $code && $code == 1000 && $ws->wait_eof(3);
    }
    is($ok, 50, '50 sequential sessions: all upgraded, echoed and closed');
    is(nconn($up, '/ka/fifty'), 1, '50 sequential sessions: one upstream connection');
    my ($r) = recs($up, '/ka/fifty');
    is(scalar @{ data_of($r // {}) }, 50, '... which carried all 50 messages');
}

# --- concurrent sessions, LRU -------------------------------------------------------
{
    my @ws = map { WsClient->connect(port => $port, path => '/ka/conc') } 1 .. 6;
    is_deeply([ map { $_->status } @ws ], [ (101) x 6 ], '6 concurrent sessions: all 101');
    is(nconn($up, '/ka/conc'), 6, '6 concurrent sessions: 6 upstream connections');
    my $echoed = 0;
    for my $i (1 .. 6) {
        $ws[$i - 1]->send_text("conc $i");
        my $m = $ws[$i - 1]->recv_message(timeout => 3);
        $echoed++ if $m && $m->{payload} eq "conc $i";
    }
    is($echoed, 6, '6 concurrent sessions: each echoed on its own');
    my $closed = 0;
    for my $i (1 .. 6) {
        $ws[$i - 1]->send_close(1000);
        my ($code) = $ws[$i - 1]->recv_close(timeout => 3);
        $closed++ if defined $code && $code == 1000 && $ws[$i - 1]->wait_eof(3);
        sleep 0.05;    # a clear order of release
    }
    is($closed, 6, '6 concurrent sessions: all closes answered');
    my $deadline = time + 3;
    sleep 0.05 while alive($up, '/ka/conc') > 4 && time < $deadline;
    sleep 0.3;
    is(alive($up, '/ka/conc'), 4, 'after all closed: 4 stay open at the upstream (websocket_keepalive 4)');
    my @gone = sort map { @{ data_of($_) } } grep { exists $_->{end} } recs($up, '/ka/conc');
    is_deeply(\@gone, [ 'conc 1', 'conc 2' ], 'the least recently used two were closed');

    @ws = map { WsClient->connect(port => $port, path => '/ka/conc') } 1 .. 4;
    is_deeply([ map { $_->status } @ws ], [ (101) x 4 ], '4 concurrent sessions again: all 101');
    is(nconn($up, '/ka/conc'), 6, '... on the 4 pooled connections, none new');
    $echoed = 0;
    for my $i (1 .. 4) {
        $ws[$i - 1]->send_text("again $i");
        my $m = $ws[$i - 1]->recv_message(timeout => 3);
        $echoed++ if $m && $m->{payload} eq "again $i";
        $ws[$i - 1]->send_close(1000);
        $ws[$i - 1]->recv_close(timeout => 3);
    }
    is($echoed, 4, '... and each echoes');
    my @used = grep { grep { /^again/ } @{ data_of($_) } } recs($up, '/ka/conc');
    is(scalar @used, 4, '... each on a different connection');
}

# --- what ends a pooled connection -------------------------------------------------
for my $case ([ 'drop', 'the upstream closes TCP', 'dropped' ],
              [ 'close:1001', 'the upstream sends a close frame', 'eof' ],
              [ 'text:unsolicited', 'the upstream sends a text frame', 'eof' ]) {
    my ($cmd, $name, $end) = @$case;
    my ($path) = '/ka/end-' . ($cmd =~ /^(\w+)/)[0];
    session_ok($path, "$name: first session", ["cmd:after:0.3:$cmd"]);
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{end}, $end, "$name while pooled: the connection is closed"
        . ($end eq 'eof' ? ' by nginx' : ''));
    sleep 0.2;
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, "$name: the next session gets 101");
    echo_ok($ws, 1, 'fresh', "$name: the next session");
    is(nconn($up, $path), 2, "$name: ... over a new connection");
    bye($ws, "$name: next session");
}
ok(scalar $t->grep_error_log(qr/closing pooled upstream connection/),
    'error.log says when a pooled connection is closed');
{
    my $path = '/ka/ping';
    session_ok($path, 'ping while pooled: first session', ['cmd:after:0.3:ping:are you there']);
    my $r = wait_rec($up, $path, sub { $_[0]{pongs} }, 3) // {};
    my ($pong) = @{ $r->{pongs} // [] };
    is($pong && $pong->{payload}, 'are you there', 'a ping from the upstream to a pooled connection: pong');
    ok($pong && $pong->{masked}, '... masked');
    sleep 0.3;
    my ($now) = recs($up, $path);
    ok($now && !exists $now->{end}, 'the connection stays open after the ping');
    session_ok($path, 'after a ping', ['after ping']);
    is(nconn($up, $path), 1, 'after a ping: the pooled connection is reused');
}
{
    # three 125-byte pings in one write (they do not arrive in one small read)
    my $path = '/ka/pings';
    session_ok($path, 'three pings at once while pooled: first session', ['cmd:after:0.3:pings:3']);
    my $r = wait_rec($up, $path, sub { @{ $_[0]{pongs} // [] } >= 3 || exists $_[0]{end} }, 3) // {};
    {
        is_deeply([ map { substr $_->{payload}, 0, 3 } @{ $r->{pongs} // [] } ], [ '001', '002', '003' ],
            'three 125-byte pings to a pooled connection: three pongs, in order');
        ok(!exists $r->{end}, 'three pings at once: the connection stays pooled');
    }
}
{
    # a ping whose header and payload arrive 0.1 s apart
    my $path = '/ka/splitping';
    session_ok($path, 'split ping while pooled: first session', ['cmd:after:0.3:splitping:in two parts']);
    my $r = wait_rec($up, $path, sub { $_[0]{pongs} || exists $_[0]{end} }, 3) // {};
    {
        is(($r->{pongs} // [])->[0]{payload}, 'in two parts', 'a ping in two TCP segments to a pooled connection: pong');
        ok(!exists $r->{end}, 'a ping in two TCP segments: the connection stays pooled');
    }
}
{
    # the message and the close in one write: the upstream's echo of it
    # reaches the pooled connection, which must then not serve the next
    # session with that stale message
    my $path = '/ka/stale';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'message + close in one write: 101');
    $ws->send_raw(WsClient::build_frame(opcode => 1, payload => 'late echo')
        . WsClient::build_frame(opcode => 8, payload => pack('n', 1000)));
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'message + close in one write: close answered');
    ok($ws->wait_eof(3), '... TCP closed');
    sleep 0.3;
    $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'the next session: 101');
    $ws->send_text('mine');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'mine', "the next session's first message is its own echo, nothing stale")
        or diag 'got ' . ($m ? "'$m->{payload}'" : 'nothing');
    bye($ws, 'after message + close');
}
{
    # handshake and a frame in one write, on a reused connection
    my $path = '/ka/pipelined';
    session_ok($path, 'pipelined: first session', ['first']);
    my $key = 'dGhlIHNhbXBsZSBub25jZQ==';
    my $raw = "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n"
        . WsClient::build_frame(opcode => 1, payload => 'right behind the handshake');
    my $ws = WsClient->connect(port => $port, path => $path, key => $key, raw => $raw);
    is($ws->status, 101, 'handshake + frame in one write, reused connection: 101');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'right behind the handshake', '... the frame is relayed');
    bye($ws, 'pipelined on a reused connection');
    is(nconn($up, $path), 1, '... over the pooled connection');
}
{
    my $path = '/short/timeout';
    session_ok($path, 'keepalive_timeout 1s', ['short']);
    my $t0 = time;
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 4) // {};
    is($r->{end}, 'eof', 'websocket_keepalive_timeout 1s: the pooled connection is closed');
    my $dt = ($r->{end_at} // 99) - $t0;
    cmp_ok($dt, '>=', 0.8, '... not before 1 s') or diag sprintf '%.2fs', $dt;
    cmp_ok($dt, '<', 2.5, '... within 2.5 s') or diag sprintf '%.2fs', $dt;

    $path = '/short/reuse';
    session_ok($path, 'keepalive_timeout 1s, reused in time', ['r1']);
    sleep 0.6;
    session_ok($path, 'keepalive_timeout 1s, reused in time again', ['r2']);
    sleep 0.6;
    session_ok($path, 'keepalive_timeout 1s, reused a third time', ['r3']);
    is(nconn($up, $path), 1, 'sessions 0.6 s apart: one connection (each release restarts the timeout)');
}

# --- pools and handshakes that never share --------------------------------------------
{
    session_ok('/poolA/x', 'pool A', ['a1']);
    session_ok('/poolB/x', 'pool B', ['b1']);
    is(nconn($up, '/shared'), 2, 'the same handshake in pools A and B: two connections');
    session_ok('/poolA/x', 'pool A again', ['a2']);
    session_ok('/poolB/x', 'pool B again', ['b2']);
    is(nconn($up, '/shared'), 2, 'each pool reuses its own');
    is_deeply([ sort map { join ',', @{ data_of($_) } } recs($up, '/shared') ], [ 'a1,a2', 'b1,b2' ],
        'pool A and pool B sessions never crossed');

    session_ok('/poolvar/x?p=one', 'pool from a variable, one', ['v1']);
    session_ok('/poolvar/y?p=one', 'pool from a variable, one again', ['v2']);
    session_ok('/poolvar/x?p=two', 'pool from a variable, two', ['v3']);
    is(nconn($up, '/shared-var'), 2, 'websocket_keepalive_pool with a variable: a pool per value');
}
{
    my @variants = (
        [ 'tag a',        { extra_headers => [ 'X-Tag' => 'a' ] }, undef ],
        [ 'tag b',        { extra_headers => [ 'X-Tag' => 'b' ] }, undef ],
        [ 'tag a, chat',  { extra_headers => [ 'X-Tag' => 'a' ], protocols => ['chat'] }, 'chat' ],
        [ 'tag a, other', { extra_headers => [ 'X-Tag' => 'a' ], protocols => ['other'] }, 'other' ],
        [ 'tag a, origin', { extra_headers => [ 'X-Tag' => 'a' ], origin => 'http://o.example' }, undef ],
    );
    for my $round (1, 2) {
        for my $v (@variants) {
            my ($name, $connect, $proto) = @$v;
            session_ok('/hs/x', "handshake $name, round $round", ["$name $round"],
                connect => $connect, protocol => $proto);
        }
    }
    my @r = recs($up, '/hs');
    is(scalar @r, 5, '5 different upstream handshakes in one pool: 5 connections, reused in round 2');
    is_deeply([ sort map { join ',', @{ data_of($_) } } @r ],
        [ sort map { "$_->[0] 1,$_->[0] 2" } @variants ],
        'each handshake came back to its own connection');
}

# --- unclean client closes do not pool --------------------------------------------------
{
    my $path = '/ka/unclean-drop';
    my $ws = WsClient->connect(port => $port, path => $path);
    echo_ok($ws, 1, 'about to vanish', 'client drops TCP');
    $ws->close;
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{close_code}, 1001, 'client drops TCP: the upstream gets close 1001');
    is($r->{end}, 'eof', 'client drops TCP: the upstream connection is closed, not pooled');
}
{
    my $path = '/ka/unclean-violation';
    violation($port, 'client sends an unmasked frame', $path,
        WsClient::build_frame(opcode => 1, payload => 'bare', mask => 0), 1002);
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{close_code}, 1002, 'client protocol violation: the upstream gets close 1002');
    is($r->{end}, 'eof', 'client protocol violation: the upstream connection is closed, not pooled');
}
{
    # the client closes in the middle of its own fragmented message
    my $path = '/ka/unclean-midmsg';
    my $ws = WsClient->connect(port => $port, path => $path);
    $ws->send_frame(fin => 0, opcode => 1, payload => 'part');
    my $f = $ws->recv_frame(timeout => 3);
    ok($f && !$f->{fin}, 'a fragment from the client was relayed (and echoed)');
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'close inside a fragmented message: the client gets 1000');
    ok($ws->wait_eof(3), '... TCP closed');
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{close_code}, 1000, 'close inside a fragmented message: relayed to the upstream');
    is($r->{end}, 'eof', '... and the connection is closed, not pooled');
}
{
    # the upstream is in the middle of a fragmented message when the client closes
    my $path = '/ka/unclean-upfrag';
    my $ws = WsClient->connect(port => $port, path => $path);
    $ws->send_text('cmd:frag:half');
    my $m = $ws->recv_message(timeout => 3);
    my $f = $ws->recv_frame(timeout => 3);
    ok($f && !$f->{fin} && $f->{payload} eq 'half', 'the upstream sent half a message');
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'client closes while an upstream message is half sent: 1000');
    my $r = wait_rec($up, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{close_code}, 1000, '... the close is relayed to the upstream');
    is($r->{end}, 'eof', '... and its connection is closed, not pooled');
}
{
    # each of those left nothing in its pool: a new session connects afresh
    for my $path ('/ka/unclean-drop', '/ka/unclean-violation', '/ka/unclean-midmsg') {
        session_ok($path, "after the unclean end ($path)", ['again']);
        is(nconn($up, $path), 2, "after the unclean end ($path): a new connection");
    }
}

# --- websocket_keepalive_backlog -------------------------------------------------
{
    my $path = '/bl/one';
    my $a = WsClient->connect(port => $port, path => $path);
    is($a->status, 101, 'backlog: the first session holds the only connection');
    echo_ok($a, 1, 'first', 'backlog: first session');

    my $b = start_handshake($path);
    sleep 0.4;
    ok(!answered($b), 'backlog: a second session waits (no answer while the first is open)');

    my $t0 = time;
    my $c = WsClient->connect(port => $port, path => $path);
    is($c->status, 503, 'backlog 1 full: a third session gets 503');
    cmp_ok(time - $t0, '<', 1, '... at once');
    ok(scalar $t->grep_error_log(qr/\[error\].*too many waiting connect operations/),
        'error.log: "too many waiting connect operations"');

    $a->send_close(1000);
    my ($code) = $a->recv_close(timeout => 3);
    my $closed_at = time;
    is($code, 1000, 'backlog: the first session closes');
    my ($status, $at, $bws) = finish_handshake($b, 3);
    is($status, 101, 'backlog: the waiting session gets 101 once the first closed');
    cmp_ok($at - $closed_at, '<', 1, '... at once') or diag sprintf '%.2fs', $at - $closed_at;
    ok($bws && $bws->accept_ok, '... with the accept key of its own key');
    is(nconn($up2, $path), 1, "... on the first session's connection");
    echo_ok($bws, 1, 'second', 'backlog: the waiting session') if $bws;

    my $d = start_handshake($path);
    my $d0 = time;
    ($status, $at) = finish_handshake($d, 5);
    is($status, 504, 'backlog: a session whose turn never comes gets 504');
    cmp_ok($at - $d0, '>=', 1.8, '... not before websocket_connect_timeout 2s') or diag sprintf '%.2fs', $at - $d0;
    cmp_ok($at - $d0, '<', 3.5, '... soon after it') or diag sprintf '%.2fs', $at - $d0;
    ok(scalar $t->grep_error_log(qr/\[error\].*websocket_connect_timeout/), 'error.log says why');

    if ($bws) {
        $bws->send_close(1000);
        $bws->recv_close(timeout => 3);
    }
    sleep 0.1;
    # another handshake: the idle connection of the first gives its place up
    my $e = WsClient->connect(port => $port, path => '/bl/two');
    is($e->status, 101, 'backlog: a session with another handshake gets 101 (pool full with an idle one)');
    my $r = wait_rec($up2, $path, sub { exists $_[0]{end} }, 3) // {};
    is($r->{end}, 'eof', '... the idle connection of the other handshake was closed for it');
    is(nconn($up2, '/bl/two'), 1, '... and it opened its own');

    # a waiting session gets a new connection when the holder drops TCP
    my $g = start_handshake('/bl/two');
    sleep 0.3;
    ok(!answered($g), 'backlog: a session waits behind a session that will vanish');
    $e->close;
    ($status, $at, my $gws) = finish_handshake($g, 3);
    is($status, 101, 'backlog: the holder dropped TCP: the waiting session gets 101');
    is(nconn($up2, '/bl/two'), 2, "... on a new connection (the dropped session's was closed)");
    echo_ok($gws, 1, 'after the drop', 'backlog: after the drop') if $gws;

    # a waiting client that leaves gives its place in line up
    my $w1 = start_handshake('/bl/two');
    sleep 0.3;
    close $w1->{s};
    sleep 0.3;
    my $w2 = start_handshake('/bl/two');
    sleep 0.3;
    my ($early) = answered($w2) ? finish_handshake($w2, 1) : ();
    {
        ok(!defined $early, 'backlog: after a waiting client left, the next one waits in line (no 503)')
            or diag "got $early";
    }
    if ($gws) {
        $gws->send_close(1000);
        $gws->recv_close(timeout => 3);
    }
    SKIP: {
        skip 'the session after the one that left was refused', 1 if defined $early;
        my ($late) = finish_handshake($w2, 3);
        is($late, 101, 'backlog: ... and gets 101 when the holder closes');
    }
}

# --- a reload closes the idle pooled connections of the old worker -----------------------
{
    my ($r) = recs($up, '/def/seq');
    ok($r && !exists $r->{end}, 'before the reload: the /def/seq connection is pooled');
    ok($t->reload, 'reload');
    @workers = $t->worker_pids;
    $r = wait_rec($up, '/def/seq', sub { exists $_[0]{end} }, 5) // {};
    is($r->{end}, 'eof', 'after the reload: the old worker closed its pooled connection');
    session_ok('/def/seq', 'after the reload', ['new worker'], protocol => 'chat',
        connect => { protocols => ['chat'] });
    is(nconn($up, '/def/seq'), 2, 'after the reload: a new connection');
}

is(scalar(grep { $_->{handler_error} } $up->records, $up2->records), 0,
    'the scripted upstreams had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records, $up2->records;

finish($t, $port, \@workers, '/noka/end');
{
    # the worker exited: every pooled connection was closed
    my $deadline = time + 3;
    sleep 0.05 while grep({ !exists $_->{end} } $up->records, $up2->records) && time < $deadline;
    my @open = grep { !exists $_->{end} } $up->records, $up2->records;
    is(scalar @open, 0, 'nginx stopped: every pooled upstream connection was closed')
        or diag join ', ', map { $_->{path} // '?' } @open;
}
$up->stop;
$up2->stop;

done_testing;
