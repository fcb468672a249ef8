#!/usr/bin/perl
# Interoperability with a real client library: interop/ws_client.py drives
# websocket_echo with Python's `websockets` (text, binary, 1 MiB messages,
# fragmented messages, ping/pong, subprotocol negotiation, close 1000) and
# prints one line per check; each line is a test here. It runs three times:
# plain echo (the library's permessage-deflate offer declined), echo with
# `websocket_deflate on`, and websocket_pass with it on both legs; with
# compression the library must have seen RSV1 frames both ways.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsTest;

my $script = "$FindBin::Bin/interop/ws_client.py";

# `make test` installs websockets with pip when it is missing.
my $probe = `python3 -c 'import websockets' 2>&1`;
if ($? != 0) {
    my ($why) = reverse grep { length } split /\n/, $probe // '';
    plan skip_all => "Python 'websockets' is not importable (python3 -c 'import websockets' failed: "
        . ($why // 'python3 not found') . "); 'make test' installs it, or: python3 -m pip install websockets";
}
note 'python websockets ' . `python3 -c 'import websockets; print(websockets.__version__)' 2>&1`;

my @interop = ('websocket_max_payload_len 2m', 'websocket_protocols chat superchat');
my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'      => [],
    '/interop' => [@interop],
    '/deflate' => [@interop, 'websocket_deflate on'],
) . <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_1%%;
    websocket_deflate on;
    websocket_max_payload_len 2m;
    location /pass { websocket_pass ws://127.0.0.1:%%PORT_0%%/deflate; }
}
EOF_CONF

my @common = (
    [ 'handshake',         'handshake completes' ],
    [ 'subprotocol',       'subprotocol "chat" negotiated from ["nope", "chat"]' ],
    [ 'text',              'UTF-8 text echoed' ],
    [ 'binary',            'binary with every byte value echoed' ],
    [ 'empty-text',        'empty text echoed' ],
    [ 'binary-1mib',       '1 MiB binary echoed' ],
    [ 'text-1mib',         '1 MiB text echoed' ],
    [ 'fragmented-text',   'fragmented text (an iterable) echoed as one message' ],
    [ 'fragmented-binary', 'fragmented binary of 280000 bytes echoed' ],
    [ 'ping',              'ping answered with pong' ],
    [ 'in-order',          '100 messages echoed in order' ],
    [ 'close',             'close 1000 answered with 1000, TCP closed' ],
);
my @runs = (
    [ 'echo', "ws://127.0.0.1:$port/interop", [],
      [ 'no-extension', 'permessage-deflate offer declined (not configured)' ] ],
    [ 'echo, deflate', "ws://127.0.0.1:$port/deflate", ['deflate'],
      [ 'extension', 'permessage-deflate negotiated' ],
      [ 'compressed-frames', 'frames with RSV1 received and sent' ] ],
    [ 'pass, deflate', 'ws://127.0.0.1:' . $t->port(1) . '/pass', ['deflate'],
      [ 'extension', 'permessage-deflate negotiated' ],
      [ 'compressed-frames', 'frames with RSV1 received and sent' ] ],
);
for my $run (@runs) {
    my ($label, $url, $args, @extra) = @$run;
    my ($rc, $finished, @lines) = run_captured(40, undef, 'python3', $script, $url, @$args);
    push @lines, 'not ok run killed after 40s' unless $finished;
    my %result;
    for (@lines) {
        if (/^(not ok|ok) (\S+)\s*(.*)$/) { $result{$2} = [ $1 eq 'ok', $3 ] }
        else { diag "client: $_" }
    }
    for my $c (@common, @extra) {
        my ($name, $desc) = @$c;
        my $r = $result{$name};
        ok($r && $r->[0], "websockets, $label: $desc")
            or diag $r ? "client said: $r->[1]" : "no '$name' line from the client";
        note "$name: $r->[1]" if $r && length $r->[1];
    }
    ok(!exists $result{run}, "websockets, $label: the client ran to the end")
        or diag "client said: $result{run}[1]";
    is($rc, 0, "websockets, $label: client exit status 0");
}

finish($t, $port, \@workers);

done_testing;
