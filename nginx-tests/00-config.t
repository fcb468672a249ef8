#!/usr/bin/perl
# Configuration parsing: nginx -t accepts every directive in a valid config
# and rejects bad ones with a message naming the directive and its line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsNginx;
use WsTest;

my $valid = <<'EOF_CONF';
websocket_max_payload_len 128k;
websocket_timeout 30s;
websocket_send_masked off;
websocket_shutdown_spread 10s;
websocket_max_session_time 1h;

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
        websocket_max_session_time off;
        websocket_shutdown_spread 0;
    }

    location /deflate {
        websocket_echo;
        websocket_deflate on;
        websocket_deflate_level 9;
        websocket_deflate_mem_level 9;
        websocket_deflate_window_bits 8;
        websocket_deflate_context_takeover off;
        websocket_deflate_min_length 1k;
    }
}
EOF_CONF

{
    # nginx -t accepts it, and the same config really loads and runs.
    my $t = WsNginx->new(conf => $valid);
    config_accepted($t, 'valid config');
    $t->stop;
    is($t->forced_stop, undef, 'valid config: graceful stop');
    is_deeply([$t->check_error_log], [], 'valid config: no alerts');
}

# [name, http{} fragment, directive that must be named, marker of the bad line]
my @bad = (
    [ 'websocket_echo with an argument',
      conf_server("    location /ws {\n        websocket_echo foo;\n    }"),
      'websocket_echo', 'websocket_echo foo' ],
    [ 'websocket_max_payload_len with a bad size',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_max_payload_len 2x;\n    }"),
      'websocket_max_payload_len', 'websocket_max_payload_len 2x' ],
    [ 'websocket_max_recv_len with a bad size',
      "websocket_max_recv_len lots;\n" . conf_server(''),
      'websocket_max_recv_len', 'websocket_max_recv_len lots' ],
    [ 'websocket_timeout with a bad time',
      conf_server("    websocket_timeout abc;\n    location /ws { websocket_echo; }"),
      'websocket_timeout', 'websocket_timeout abc' ],
    [ 'websocket_echo at http level',
      "websocket_echo;\n" . conf_server("    location /ws { websocket_echo; }"),
      'websocket_echo', qr/^websocket_echo;/ ],
    [ 'websocket_echo at server level',
      conf_server("    websocket_echo;\n    location /ws { }"),
      'websocket_echo', qr/^\s+websocket_echo;/ ],
    [ 'websocket_send_masked with a bad flag',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_send_masked maybe;\n    }"),
      'websocket_send_masked', 'websocket_send_masked maybe' ],
    [ 'websocket_protocols without arguments',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_protocols;\n    }"),
      'websocket_protocols', 'websocket_protocols;' ],
    [ 'websocket_deflate_level 0',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_deflate_level 0;\n    }"),
      'websocket_deflate_level', 'websocket_deflate_level 0' ],
    [ 'websocket_deflate_level 10',
      "websocket_deflate_level 10;\n" . conf_server(''),
      'websocket_deflate_level', 'websocket_deflate_level 10' ],
    [ 'websocket_deflate_mem_level 0',
      conf_server("    websocket_deflate_mem_level 0;\n    location /ws { websocket_echo; }"),
      'websocket_deflate_mem_level', 'websocket_deflate_mem_level 0' ],
    [ 'websocket_deflate_window_bits 7',
      conf_server("    websocket_deflate_window_bits 7;\n    location /ws { websocket_echo; }"),
      'websocket_deflate_window_bits', 'websocket_deflate_window_bits 7' ],
    [ 'websocket_deflate_window_bits 16',
      conf_server("    websocket_deflate_window_bits 16;\n    location /ws { websocket_echo; }"),
      'websocket_deflate_window_bits', 'websocket_deflate_window_bits 16' ],
    [ 'websocket_deflate with a bad flag',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_deflate yes;\n    }"),
      'websocket_deflate', 'websocket_deflate yes' ],
    [ 'websocket_deflate_min_length with a bad size',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_deflate_min_length big;\n    }"),
      'websocket_deflate_min_length', 'websocket_deflate_min_length big' ],
    [ 'websocket_origins without arguments',
      conf_server("    location /ws {\n        websocket_echo;\n        websocket_origins;\n    }"),
      'websocket_origins', 'websocket_origins;' ],
    [ 'websocket_max_session_time with a bad time',
      conf_server("    websocket_max_session_time forever;\n    location /ws { websocket_echo; }"),
      'websocket_max_session_time', 'websocket_max_session_time forever' ],
    [ 'websocket_max_session_time without a time',
      conf_location("        websocket_echo;\n        websocket_max_session_time;"),
      'websocket_max_session_time', 'websocket_max_session_time;' ],
    [ 'websocket_max_session_time twice',
      conf_location("        websocket_echo;\n        websocket_max_session_time 1h;\n        websocket_max_session_time 2h;"),
      'websocket_max_session_time', 'websocket_max_session_time 2h' ],
    [ 'websocket_shutdown_spread with a bad time',
      conf_server("    websocket_shutdown_spread -1s;\n    location /ws { websocket_echo; }"),
      'websocket_shutdown_spread', 'websocket_shutdown_spread -1s' ],
    [ 'websocket_shutdown_spread with two times',
      conf_location("        websocket_echo;\n        websocket_shutdown_spread 1s 2s;"),
      'websocket_shutdown_spread', 'websocket_shutdown_spread 1s 2s' ],
);

config_rejected(@$_) for @bad;

done_testing;
