#!/usr/bin/perl
# websocket_pass configuration: nginx -t accepts a config that uses every
# pass directive (and it runs and relays), and rejects bad URLs, the
# directive outside a location, reserved handshake headers in
# websocket_pass_header, and websocket_echo + websocket_pass in one
# location, naming the directive and its line.
#
# Every host here is 127.0.0.1 or an upstream{} name: nginx resolves the
# URL host while it reads the configuration.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsNginx;
use WsClient;
use WsTest;

my $valid = <<'EOF_CONF';
websocket_connect_timeout 5s;
websocket_pass_header X-Http-Level http;

upstream backend {
    server 127.0.0.1:%%PORT_1%%;
    server 127.0.0.1:%%PORT_2%% backup;
}

server {
    listen 127.0.0.1:%%PORT_0%%;
    websocket_pass_host backend.internal;
    websocket_pass_origin http://server-level.example;

    location /all {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/echo?x=1;
        websocket_connect_timeout 2500ms;
        websocket_pass_header X-Real-IP $remote_addr;
        websocket_pass_header X-Forwarded-For $remote_addr;
        websocket_pass_header X-Request-Id "$connection-$connection_requests";
        websocket_pass_header X-Maybe $http_x_maybe;
        websocket_pass_host $host;
        websocket_pass_origin "https://$host";
        websocket_pass_send_unmasked off;
        websocket_max_payload_len 1m;
        websocket_max_recv_len 512k;
        websocket_max_send_len 256k;
        websocket_timeout 30s;
    }

    location /upstream-block {
        websocket_pass ws://backend/echo;
    }

    location /no-path {
        websocket_pass ws://backend;
    }

    location /unmasked {
        websocket_pass WS://127.0.0.1:%%PORT_1%%/echo;
        websocket_pass_send_unmasked on;
    }

    location = /exact {
        websocket_pass ws://127.0.0.1:%%PORT_1%%;
    }

    location /nested {
        location /nested/inner {
            websocket_pass ws://backend/echo;
        }
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;
    location / {
        websocket_echo;
        websocket_max_payload_len 1m;
    }
}
EOF_CONF

{
    my $t = WsNginx->new(conf => $valid);
    config_accepted($t, 'every pass directive');
    my $port = $t->port(0);
    my @workers = $t->worker_pids;
    for my $path ('/all', '/upstream-block', '/no-path', '/exact', '/nested/inner') {
        my $ws = eval { ws_open($port, $path) };
        ok($ws, "$path: upgraded through the relay") or do { diag $@; next };
        echo_ok($ws, 1, "through $path", "$path: relayed");
        bye($ws, $path);
    }
    {
        my $ws = ws_open($port, '/all');
        $ws->send_binary('m' x 300000);
        # within websocket_max_recv_len 512k, over websocket_max_send_len
        # 256k towards the upstream: it cannot be relayed
        my $m = $ws->recv_message(timeout => 5);
        my ($code) = $m && $m->{opcode} == 8 ? (unpack 'n', $m->{payload}) : ();
        is($code, 1009, '/all: a message over websocket_max_send_len cannot be relayed: 1009')
            or diag 'got ' . ($m ? "opcode $m->{opcode}, " . length($m->{payload}) . ' bytes' : 'nothing');
    }
    {
        # The echo behind it insists on masked frames, as a server must.
        my $ws = ws_open($port, '/unmasked');
        $ws->send_text('unmasked towards the echo');
        my ($code) = $ws->recv_close(timeout => 3);
        is($code, 1002, '/unmasked: the echo upstream refuses unmasked frames with 1002, relayed')
            or diag 'got ' . close_desc($ws, $code);
        $ws->send_close(1002);
        ok($ws->wait_eof(3), '/unmasked: TCP closed after the close handshake');
    }
    finish($t, $port, \@workers, '/all');
}

# [name, http{} fragment, directive that must be named, marker of the bad line]
my @bad = (
    [ 'http:// URL', conf_location("        websocket_pass http://127.0.0.1:1;"),
      'websocket_pass', 'websocket_pass http://' ],
    [ 'wss:// URL without host', conf_location("        websocket_pass wss://;"),
      'websocket_pass', 'websocket_pass wss://;' ],
    [ 'URL without host', conf_location("        websocket_pass ws://;"),
      'websocket_pass', 'websocket_pass ws://;' ],
    [ 'URL with only a port', conf_location("        websocket_pass ws://:8080/x;"),
      'websocket_pass', 'websocket_pass ws://:8080' ],
    [ 'port 99999', conf_location("        websocket_pass ws://127.0.0.1:99999;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:99999' ],
    [ 'port 0', conf_location("        websocket_pass ws://127.0.0.1:0/;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:0' ],
    [ 'port not a number', conf_location("        websocket_pass ws://127.0.0.1:http;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:http' ],
    [ 'URL with user info', conf_location("        websocket_pass ws://user\@127.0.0.1:1;"),
      'websocket_pass', 'websocket_pass ws://user' ],
    [ 'websocket_pass without an argument', conf_location("        websocket_pass;"),
      'websocket_pass', 'websocket_pass;' ],
    [ 'websocket_pass with two arguments', conf_location("        websocket_pass ws://127.0.0.1:1 ws://127.0.0.1:2;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:1 ws' ],
    [ 'websocket_pass at server level',
      conf_server("    websocket_pass ws://127.0.0.1:1;\n    location /ws { }"),
      'websocket_pass', qr/^\s+websocket_pass ws/ ],
    [ 'websocket_pass at http level',
      "websocket_pass ws://127.0.0.1:1;\n" . conf_server("    location /ws { }"),
      'websocket_pass', qr/^websocket_pass ws/ ],
    [ 'websocket_pass twice in a location',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass ws://127.0.0.1:2;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:2' ],
    [ 'websocket_echo then websocket_pass',
      conf_location("        websocket_echo;\n        websocket_pass ws://127.0.0.1:1;"),
      'websocket_pass', 'websocket_pass ws://127.0.0.1:1' ],
    [ 'websocket_pass then websocket_echo',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_echo;"),
      'websocket_echo', qr/^\s+websocket_echo;/ ],
    (map {
        [ "websocket_pass_header $_", conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_header $_ x;"),
          'websocket_pass_header', "websocket_pass_header $_ x" ]
    } qw(Host Upgrade Connection Origin Sec-WebSocket-Key Sec-WebSocket-Version
         Sec-WebSocket-Protocol sec-websocket-accept Sec-WebSocket-Extensions HOST)),
    [ 'websocket_pass_header with an invalid name',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_header \"Bad Name\" x;"),
      'websocket_pass_header', 'websocket_pass_header "Bad Name"' ],
    [ 'websocket_pass_header with one argument',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_header X-Only;"),
      'websocket_pass_header', 'websocket_pass_header X-Only;' ],
    [ 'websocket_pass_host without an argument',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_host;"),
      'websocket_pass_host', 'websocket_pass_host;' ],
    [ 'websocket_pass_origin with two arguments',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_origin a b;"),
      'websocket_pass_origin', 'websocket_pass_origin a b' ],
    [ 'websocket_pass_send_unmasked with a bad flag',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_pass_send_unmasked maybe;"),
      'websocket_pass_send_unmasked', 'websocket_pass_send_unmasked maybe' ],
    [ 'websocket_connect_timeout with a bad time',
      conf_location("        websocket_pass ws://127.0.0.1:1;\n        websocket_connect_timeout soon;"),
      'websocket_connect_timeout', 'websocket_connect_timeout soon' ],
);

config_rejected(@$_) for @bad;

# As for proxy_pass: an upstream{} name with a port in the URL is refused
# ("upstream ... may not have port").
{
    my $conf = "upstream named { server 127.0.0.1:1; }\n"
        . conf_location("        websocket_pass ws://named:8080;");
    my $t = WsNginx->new(conf => $conf);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, 'upstream{} name with a port: nginx -t fails')
        or diag $out;
}

# The URL may contain variables (it is then parsed per request).
for my $url ('ws://127.0.0.1:$server_port/echo', 'ws://$http_x_backend', '$http_x_url',
             'ws://backend_$arg_n/p$uri') {
    my $t = WsNginx->new(conf => conf_location("        websocket_pass $url;"));
    my ($rc, $out) = $t->test_config;
    is($rc, 0, "websocket_pass $url: accepted") or diag $out;
}

done_testing;
