#!/usr/bin/perl
# websocket_protocols (the first of the client's subprotocols that the
# location lists is chosen) and websocket_origins (an unlisted Origin gets
# 403).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsClient;
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'     => [],
    '/proto'  => ['websocket_protocols chat superchat'],
    '/origin' => ['websocket_origins http://good.example https://also.example'],
    '/both'   => ['websocket_protocols chat', 'websocket_origins http://good.example'],
));

sub conn { WsClient->connect(port => $port, @_) }

# --- subprotocols -----------------------------------------------------------
{
    my $ws = conn(path => '/proto', protocols => [qw(foo superchat chat)]);
    is($ws->status, 101, 'subprotocol offered: 101');
    is($ws->header('Sec-WebSocket-Protocol'), 'superchat',
        "subprotocol: the client's first acceptable one is chosen");
    ok($ws->accept_ok, 'subprotocol: accept key right');
    echo_ok($ws, 1, 'with a subprotocol', 'subprotocol session');
    bye($ws, 'subprotocol session');
}
{
    my $ws = conn(path => '/proto', protocols => [qw(chat superchat)]);
    is($ws->header('Sec-WebSocket-Protocol'), 'chat',
        'subprotocol: client order wins over the configured order');
}
{
    my $ws = conn(path => '/proto',
        extra_headers => [ 'Sec-WebSocket-Protocol' => 'foo', 'Sec-WebSocket-Protocol' => 'chat' ]);
    is($ws->status, 101, 'subprotocol in two header lines: 101');
    is($ws->header('Sec-WebSocket-Protocol'), 'chat', 'subprotocol: header lines are joined');
}
{
    my $ws = conn(path => '/proto', protocols => ['foo']);
    is($ws->status, 101, 'no acceptable subprotocol: still 101');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'),
        'no acceptable subprotocol: no Sec-WebSocket-Protocol header');
}
{
    my $ws = conn(path => '/proto');
    is($ws->status, 101, 'no subprotocol asked for: 101');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'),
        'no subprotocol asked for: none chosen');
}
{
    my $ws = conn(path => '/proto', protocols => ['CHAT']);
    ok(!defined $ws->header('Sec-WebSocket-Protocol'),
        'subprotocol names are case-sensitive (CHAT is not chat)');
}
{
    my $ws = conn(path => '/ws', protocols => ['chat']);
    is($ws->status, 101, 'websocket_protocols unset: 101');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'),
        'websocket_protocols unset: no subprotocol is chosen');
}

# --- origins ----------------------------------------------------------------
{
    my $ws = conn(path => '/origin', origin => 'http://good.example');
    is($ws->status, 101, 'listed Origin: 101');
    echo_ok($ws, 1, 'from a good origin', 'listed Origin session');
    bye($ws, 'listed Origin session');

    $ws = conn(path => '/origin', origin => 'https://also.example');
    is($ws->status, 101, 'second listed Origin: 101');
    $ws = conn(path => '/origin', origin => 'http://evil.example');
    is($ws->status, 403, 'unlisted Origin: 403');
    ok(!defined $ws->header('Sec-WebSocket-Accept'), 'unlisted Origin: no Sec-WebSocket-Accept');
    $ws = conn(path => '/origin', origin => 'http://good.example.evil');
    is($ws->status, 403, 'Origin with a listed prefix: 403');
    $ws = conn(path => '/origin', origin => 'https://good.example');
    is($ws->status, 403, 'listed host with another scheme: 403');
    $ws = conn(path => '/origin');
    is($ws->status, 403, 'no Origin header at all: 403');
    $ws = conn(path => '/ws', origin => 'http://evil.example');
    is($ws->status, 101, 'websocket_origins unset: any Origin is accepted');
}

# --- both: the origin check comes first, the subprotocol is still negotiated --
{
    my $ws = conn(path => '/both', origin => 'http://good.example', protocols => ['chat']);
    is($ws->status, 101, 'origin and subprotocol: 101');
    is($ws->header('Sec-WebSocket-Protocol'), 'chat', 'origin and subprotocol: chat chosen');
    $ws = conn(path => '/both', origin => 'http://evil.example', protocols => ['chat']);
    is($ws->status, 403, 'bad origin with a good subprotocol: 403');
}

finish($t, $port, \@workers);

done_testing;
