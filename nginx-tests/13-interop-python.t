#!/usr/bin/perl
# Interoperability with a real client library: interop/ws_client.py drives
# websocket_echo with Python's `websockets` (text, binary, 1 MiB messages,
# fragmented messages, ping/pong, subprotocol negotiation, close 1000) and
# prints one line per check; each line is a test here.

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

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'      => [],
    '/interop' => ['websocket_max_payload_len 2m', 'websocket_protocols chat superchat'],
));

# Runs the script with a hard time limit; returns (exit status, output lines).
sub run_client {
    my ($url, $limit) = @_;
    my ($rc, $finished, @lines) = run_captured($limit, undef, 'python3', $script, $url);
    push @lines, "not ok run killed after ${limit}s" unless $finished;
    return ($rc, @lines);
}

my ($rc, @lines) = run_client("ws://127.0.0.1:$port/interop", 40);

my %result;
for (@lines) {
    if (/^(not ok|ok) (\S+)\s*(.*)$/) { $result{$2} = [ $1 eq 'ok', $3 ] }
    else { diag "client: $_" }
}

my @checks = (
    [ 'handshake',         'handshake completes' ],
    [ 'subprotocol',       'subprotocol "chat" negotiated from ["nope", "chat"]' ],
    [ 'no-extension',      'permessage-deflate offer declined (not configured)' ],
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
for my $c (@checks) {
    my ($name, $desc) = @$c;
    my $r = $result{$name};
    ok($r && $r->[0], "websockets: $desc") or diag $r ? "client said: $r->[1]" : "no '$name' line from the client";
    note "$name: $r->[1]" if $r && length $r->[1];
}
ok(!exists $result{run}, 'websockets: the client ran to the end')
    or diag "client said: $result{run}[1]";
is($rc, 0, 'websockets: client exit status 0');

finish($t, $port, \@workers);

done_testing;
