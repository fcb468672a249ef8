#!/usr/bin/perl
# The opening handshake: 101 with a correct Sec-WebSocket-Accept, and the
# rejection statuses 400 / 405 / 426 for defective requests (subprotocols
# and Origin checks, with 403, are in 11-subprotocol-origin.t).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsTest;
use WsClient qw(accept_key http_request);

my ($t, $port, @workers) = start_nginx(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    location /ws {
        websocket_echo;
    }

    location /plain {
        return 200 "plain\n";
    }
}
EOF_CONF

sub ws { WsClient->connect(port => $port, path => '/ws', @_) }

# --- accept-key computation (the harness itself, RFC 6455 section 1.3) ----
is(accept_key('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=',
    'harness computes the RFC 6455 sample accept key');

# --- a good handshake -----------------------------------------------------
{
    my $ws = ws();
    is($ws->status, 101, 'valid handshake: 101') or diag $ws->response_head;
    like($ws->header('Upgrade') // '', qr/^websocket$/i, 'valid handshake: Upgrade: websocket');
    like($ws->header('Connection') // '', qr/\bupgrade\b/i, 'valid handshake: Connection: upgrade');
    is($ws->header('Sec-WebSocket-Accept'), accept_key($ws->key),
        'valid handshake: Sec-WebSocket-Accept matches the key');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'),
        'valid handshake: no subprotocol when none was asked for');

    $ws->send_text('after handshake');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'after handshake', 'valid handshake: session echoes');
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'valid handshake: close answered');
}

{
    my $ws = ws(key => 'dGhlIHNhbXBsZSBub25jZQ==');
    is($ws->status, 101, 'RFC sample key: 101');
    is($ws->header('Sec-WebSocket-Accept'), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=',
        'RFC sample key: accept is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
}

{
    my $ws = ws(headers => { Upgrade => 'WebSocket', Connection => 'keep-alive, Upgrade' });
    is($ws->status, 101, 'Upgrade is case-insensitive, Connection is a token list');
    ok($ws->accept_ok, '... and the accept key is right');
}

{
    my $ws = ws(headers => { Connection => 'UPGRADE' });
    is($ws->status, 101, 'Connection token is case-insensitive');
}

# --- wrong method: 405 ----------------------------------------------------
for my $method (qw(POST PUT DELETE)) {
    my $ws = ws(method => $method, headers => { 'Content-Length' => 0 });
    is($ws->status, 405, "$method: 405");
}

# --- version: 426 with Sec-WebSocket-Version: 13 ---------------------------
for my $case ([ 'missing version', undef ], [ 'version 8', '8' ], [ 'version 12', '12' ],
              [ 'version 14', '14' ], [ 'version garbage', 'x' ]) {
    my ($name, $v) = @$case;
    my $ws = ws(headers => { 'Sec-WebSocket-Version' => $v });
    is($ws->status, 426, "$name: 426");
    like($ws->header('Sec-WebSocket-Version') // '', qr/^\s*13\s*$/,
        "$name: response carries Sec-WebSocket-Version: 13");
}

# --- any other defect: 400 -------------------------------------------------
my @bad = (
    [ 'missing key',            { 'Sec-WebSocket-Key' => undef } ],
    [ 'empty key',              { 'Sec-WebSocket-Key' => '' } ],
    [ 'key not base64',         { 'Sec-WebSocket-Key' => 'not*base64*at*all!!!!==' } ],
    [ 'key of 15 bytes',        { 'Sec-WebSocket-Key' => MIME::Base64::encode_base64('x' x 15, '') } ],
    [ 'key of 17 bytes',        { 'Sec-WebSocket-Key' => MIME::Base64::encode_base64('x' x 17, '') } ],
    [ 'key of 32 bytes',        { 'Sec-WebSocket-Key' => MIME::Base64::encode_base64('x' x 32, '') } ],
    [ 'missing Upgrade',        { Upgrade => undef } ],
    [ 'Upgrade: h2c',           { Upgrade => 'h2c' } ],
    [ 'missing Connection',     { Connection => undef } ],
    [ 'Connection: keep-alive', { Connection => 'keep-alive' } ],
    [ 'Connection: upgraded',   { Connection => 'upgraded' } ],
);
for my $case (@bad) {
    my ($name, $h) = @$case;
    my $ws = ws(headers => $h);
    is($ws->status, 400, "$name: 400") or diag $ws->request;
}

{
    my $ws = ws(http_version => '1.0');
    is($ws->status, 400, 'HTTP/1.0: 400');
}

# --- plain requests elsewhere are untouched ---------------------------------
{
    my ($st, $h, $body) = http_request($port,
        "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    is($st, 200, 'non-websocket location: 200');
    is($body, "plain\n", 'non-websocket location: body');
}
{
    my ($st) = http_request($port,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    ok($st == 400 || $st == 426, "plain GET on an echo location is rejected ($st)");
}

finish($t, $port, \@workers);

done_testing;
