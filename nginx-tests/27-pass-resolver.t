#!/usr/bin/perl
# websocket_pass URLs with variables: an IP address with its port, the name
# of an upstream{} block, and host names resolved at run time by nginx's
# `resolver` against a tiny DNS responder (lib/WsDns.pm) that answers A
# queries for backend.test with 127.0.0.1, an empty answer for its other
# types, and NXDOMAIN for every other name. Failures: NXDOMAIN, no
# `resolver`, a DNS server that never answers (resolver_timeout), a client
# that leaves while its name is being resolved.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient;
use WsTest;
use WsUpstream;
use WsDns;

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    $c->echo_loop(timeout => 20);
});
my $UP = $up->port;
my $DEAD = WsNginx::free_port();

my $dns = WsDns->new(a => { 'backend.test' => ['127.0.0.1'] });
my $DNS = $dns->port;

# a DNS server that never answers: a bound UDP socket nobody reads
my $mute = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'udp')
    or die "cannot bind a UDP port: $!";
my $MUTE = $mute->sockport;

my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF_CONF");
upstream myblock {
    server 127.0.0.1:$UP;
}

server {
    listen 127.0.0.1:%%PORT_0%%;

    location /ip/ {
        set \$up 127.0.0.1:$UP;
        websocket_pass ws://\$up/r/ip;
    }

    location /block/ {
        set \$up myblock;
        websocket_pass ws://\$up/r/block;
    }

    location /dns/ {
        resolver 127.0.0.1:$DNS ipv6=off;
        set \$h backend.test;
        websocket_pass ws://\$h:$UP/r/dns;
    }

    # A and AAAA are asked; AAAA gets an empty answer
    location /dns6/ {
        resolver 127.0.0.1:$DNS;
        set \$h backend.test;
        websocket_pass ws://\$h:$UP/r/dns6;
    }

    location /arg/ {
        resolver 127.0.0.1:$DNS ipv6=off;
        websocket_pass ws://\$arg_h:$UP/r/arg;
    }

    location /nx/ {
        resolver 127.0.0.1:$DNS ipv6=off;
        set \$h nxdomain.test;
        websocket_pass ws://\$h:$UP/r/nx;
    }

    # resolved, but nothing listens on the port
    location /dnsdead/ {
        resolver 127.0.0.1:$DNS ipv6=off;
        set \$h backend.test;
        websocket_pass ws://\$h:$DEAD/r/dnsdead;
    }

    location /noresolver/ {
        set \$h backend.test;
        websocket_pass ws://\$h:$UP/r/noresolver;
    }

    location /mute/ {
        resolver 127.0.0.1:$MUTE ipv6=off;
        resolver_timeout 1s;
        set \$h backend.test;
        websocket_pass ws://\$h:$UP/r/mute;
    }

    location /static/ {
        websocket_pass ws://127.0.0.1:$UP/r/static;
    }
}
EOF_CONF

sub rec_of { $up->wait_record(path => $_[0], timeout => $_[1] // 3) }

# one relayed session: 101, two echoes, the close. 10 + 2 + 2 tests.
sub relay_ok {
    my ($path, $name) = @_;
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, "$name: 101") or do {
        diag $t->grep_error_log(qr/\[error\]/);
        fail("$name: skipped") for 1 .. 13;
        return;
    };
    ok($ws->accept_ok, "$name: Sec-WebSocket-Accept");
    echo_ok($ws, 1, "text via $path", "$name: text");
    echo_ok($ws, 2, "\x00\x01binary\xff", "$name: binary");
    bye($ws, $name);
}

# --- variables with an address or an upstream{} name ------------------------
{
    my $n = $up->count;
    relay_ok('/ip/x', 'set $up 127.0.0.1:PORT');
    my $r = rec_of(qr{^/r/ip$}) // {};
    is($r->{headers}{host}, "127.0.0.1:$UP", 'address variable: Host is the address');
    is($up->count, $n + 1, 'address variable: one upstream connection');
}
{
    relay_ok('/block/x', 'set $up myblock');
    my $r = rec_of(qr{^/r/block$}) // {};
    ok($r->{path}, 'upstream{} name in a variable: the block\'s server got the handshake');
    is($r->{headers}{host}, 'myblock', 'upstream{} name in a variable: Host is the name');
}
is(scalar($dns->queries), 0, 'no DNS query for an address or an upstream{} name');

# --- host names through the resolver ----------------------------------------
{
    relay_ok('/dns/x', 'resolved backend.test');
    my $r = rec_of(qr{^/r/dns$}) // {};
    is($r->{headers}{host}, "backend.test:$UP", 'resolved name: Host is the name and port');
    is_deeply([ $dns->queries ], ['backend.test A'], 'resolved name: one A query (ipv6=off)');

    relay_ok('/dns/y', 'backend.test again');
    is_deeply([ $dns->queries ], ['backend.test A'], 'the second session is resolved from the cache');
    is(scalar(grep { ($_->{path} // '') eq '/r/dns' } $up->records), 2,
        'two sessions, two upstream connections');
}
{
    relay_ok('/dns6/x', 'resolver with IPv6 on');
    my %q = map { $_ => 1 } $dns->queries;
    ok($q{'backend.test AAAA'}, 'IPv6 on: AAAA asked too (empty answer)');
}
{
    relay_ok('/arg/x?h=backend.test', 'host from $arg_h');
    relay_ok('/arg/x?h=BACKEND.Test', 'host from $arg_h, upper case');
}

# --- resolution failures ---------------------------------------------------
{
    my $t0 = time;
    my $ws = WsClient->connect(port => $port, path => '/nx/x');
    is($ws->status, 502, 'NXDOMAIN: 502');
    cmp_ok(time - $t0, '<', 2, 'NXDOMAIN: answered at once');
    ok(scalar $t->grep_error_log(qr/\[error\].*"nxdomain\.test" could not be resolved/),
        'NXDOMAIN: error.log says "could not be resolved"')
        or diag $t->grep_error_log(qr/nxdomain/);
    ok((grep { $_ eq 'nxdomain.test A' } $dns->queries), 'NXDOMAIN: the name was asked');
}
{
    my $ws = WsClient->connect(port => $port, path => '/arg/x?h=other.test');
    is($ws->status, 502, 'NXDOMAIN for a name from $arg_h: 502');
}
{
    my $ws = WsClient->connect(port => $port, path => '/dnsdead/x');
    is($ws->status, 502, 'resolved name, nothing listening on the port: 502');
    ok(scalar $t->grep_error_log(qr/\[error\].*(?:refused|failed).*127\.0\.0\.1:$DEAD/),
        'resolved name, refused connect: logged with the resolved address')
        or diag $t->grep_error_log(qr/dnsdead/);
}
{
    my $ws = WsClient->connect(port => $port, path => '/noresolver/x');
    is($ws->status, 502, 'a host name without `resolver`: 502');
    ok(scalar $t->grep_error_log(qr/\[error\].*no resolver defined/),
        'no resolver: error.log says "no resolver defined"');
    ok(!(grep { /noresolver/ } map { $_->{path} // '' } $up->records),
        'no resolver: nothing reached the upstream');
}
{
    my $t0 = time;
    my $ws = WsClient->connect(port => $port, path => '/mute/x', timeout => 6);
    my $dt = time - $t0;
    is($ws->status, 502, 'DNS server that never answers: 502');
    cmp_ok($dt, '>=', 0.8, 'never answered: not before resolver_timeout 1s') or diag sprintf '%.2fs', $dt;
    cmp_ok($dt, '<', 2.5, 'never answered: soon after resolver_timeout 1s') or diag sprintf '%.2fs', $dt;
    ok(scalar $t->grep_error_log(qr/\[error\].*"backend\.test" could not be resolved.*timed out/i),
        'never answered: error.log says it timed out')
        or diag $t->grep_error_log(qr/backend\.test/);
}
{
    # the client leaves while its name is being resolved
    my $ws = WsClient->connect(port => $port, path => '/mute/leave', timeout => 0.3);
    ok(!defined $ws->status, 'client gives up while the name is being resolved');
    $ws->close;
    sleep 1.3;    # past resolver_timeout: the query must have been cancelled
    my $ws2 = WsClient->connect(port => $port, path => '/dns/after');
    is($ws2->status, 101, 'after a client left during resolution: a new session works');
    bye($ws2, 'after leaving');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors');

finish($t, $port, \@workers, '/static/end');
$up->stop;
$dns->stop;

done_testing;
