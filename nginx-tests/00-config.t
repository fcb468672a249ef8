#!/usr/bin/perl
# Configuration parsing: nginx -t accepts every directive in a valid config
# and rejects bad ones with a message naming the directive and its line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsNginx;

my $valid = <<'EOF_CONF';
websocket_max_payload_len 128k;
websocket_timeout 30s;
websocket_send_masked off;

server {
    listen 127.0.0.1:%%PORT_0%%;
    websocket_max_recv_len 64k;
    websocket_max_send_len 1m;

    location /ws {
        websocket_echo;
    }

    location /tuned {
        websocket_echo;
        websocket_max_payload_len 2m;
        websocket_max_recv_len 1m;
        websocket_max_send_len 512k;
        websocket_timeout 5s;
        websocket_send_masked on;
        websocket_protocols chat superchat;
        websocket_origins http://example.com https://example.org;
    }
}
EOF_CONF

{
    my $t = WsNginx->new(conf => $valid);
    my ($rc, $out) = $t->test_config;
    is($rc, 0, 'valid config: nginx -t exits 0') or diag $out;
    like($out, qr/test is successful/, 'valid config: test is successful');

    # The same config really loads and runs.
    ok(eval { $t->start; 1 }, 'valid config: nginx starts') or diag $@;
    $t->stop;
    is($t->forced_stop, undef, 'valid config: graceful stop');
    is_deeply([$t->check_error_log], [], 'valid config: no alerts');
}

# [name, http{} fragment, directive that must be named, marker of the bad line]
my $srv = sub { "server {\n    listen 127.0.0.1:%%PORT_0%%;\n$_[0]\n}\n" };
my @bad = (
    [ 'websocket_echo with an argument',
      $srv->("    location /ws {\n        websocket_echo foo;\n    }"),
      'websocket_echo', 'websocket_echo foo' ],
    [ 'websocket_max_payload_len with a bad size',
      $srv->("    location /ws {\n        websocket_echo;\n        websocket_max_payload_len 2x;\n    }"),
      'websocket_max_payload_len', 'websocket_max_payload_len 2x' ],
    [ 'websocket_max_recv_len with a bad size',
      "websocket_max_recv_len lots;\n" . $srv->(''),
      'websocket_max_recv_len', 'websocket_max_recv_len lots' ],
    [ 'websocket_timeout with a bad time',
      $srv->("    websocket_timeout abc;\n    location /ws { websocket_echo; }"),
      'websocket_timeout', 'websocket_timeout abc' ],
    [ 'websocket_echo at http level',
      "websocket_echo;\n" . $srv->("    location /ws { websocket_echo; }"),
      'websocket_echo', qr/^websocket_echo;/ ],
    [ 'websocket_echo at server level',
      $srv->("    websocket_echo;\n    location /ws { }"),
      'websocket_echo', qr/^\s+websocket_echo;/ ],
    [ 'websocket_send_masked with a bad flag',
      $srv->("    location /ws {\n        websocket_echo;\n        websocket_send_masked maybe;\n    }"),
      'websocket_send_masked', 'websocket_send_masked maybe' ],
    [ 'websocket_protocols without arguments',
      $srv->("    location /ws {\n        websocket_echo;\n        websocket_protocols;\n    }"),
      'websocket_protocols', 'websocket_protocols;' ],
    [ 'websocket_origins without arguments',
      $srv->("    location /ws {\n        websocket_echo;\n        websocket_origins;\n    }"),
      'websocket_origins', 'websocket_origins;' ],
);

for my $case (@bad) {
    my ($name, $conf, $directive, $marker) = @$case;
    my $t = WsNginx->new(conf => $conf);
    my $line = $t->conf_line($marker);
    BAIL_OUT("test bug: marker not found for '$name'") unless $line;
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*"?\Q$directive\E"?.*nginx\.conf:$line\b/,
        "$name: error names $directive and nginx.conf:$line")
        or diag $out;
    unlike($out, qr/unknown directive/, "$name: the directive itself is known");
}

done_testing;
