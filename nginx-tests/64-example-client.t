#!/usr/bin/perl
# examples/client: the seed's client example, a module of its own (a cdylib
# that depends on this crate with default-features = false) built only on
# the public client API: an HTTP location (`websocket_copy <uri>`) whose
# content handler connects to a WebSocket upstream, receives a frame, sends
# `copy: <data>`, closes (or, with ?keepalive=1, pools the connection) and
# answers the request with what it received. Checked against scripted
# upstreams: the answer carries the upstream's frame, the upstream got the
# copy and a close; a second pooled request reports "reused" and makes no
# new connection; refused, 403, silent and mute upstreams and a bad URI give
# error answers. Over wss:// (an nginx TLS server in front of the upstream
# that wants a client certificate): ssl_verify with server_name, and the
# connect's client_cert/client_priv_key.

use strict;
use warnings;
use FindBin;
use File::Basename qw(dirname);
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use WsNginx;
use WsTest;
use WsUpstream;

my (undef, $module) = WsNginx->locate;
my $example = ($module ne '' ? dirname($module) : '') . '/libngx_websocket_example_client.so';
plan skip_all => "no example module next to the module ($example; make examples)"
    unless -f $example;

# Greets with "hello <id>.<n>" after the handshake and when asked with
# "again" (the example asks on a pooled connection); answers a close.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake(protocol => 'copy');
    my $n = 1;
    $c->send_text('hello ' . $c->id . ".$n");
    while (my $f = $c->recv_frame(timeout => 15)) {
        $c->push_note(frames => $f);
        if ($f->{opcode} == 8) {
            $c->note(close_code => WsUpstream::Conn::close_code($f) // -1);
            $c->send_close(1000);
            return;
        }
        if ($f->{opcode} == 1 && $f->{payload} eq 'again') {
            $n++;
            $c->send_text('hello ' . $c->id . ".$n");
        }
    }
    $c->note(end => $c->is_eof ? 'eof' : 'timeout');
});
my $UP = $up->port;
my $forbidden = WsUpstream->new(handler => sub { $_[0]->handshake(status => 403) });
my $FORBIDDEN = $forbidden->port;
my $silent = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake(protocol => 'copy');
    $c->recv_frame(timeout => 10);
    $c->note(end => $c->is_eof ? 'eof' : 'timeout');
});
my $SILENT = $silent->port;
my $mute = WsUpstream->new(handler => sub { sleep 10 });    # never answers the handshake
my $MUTE = $mute->port;
my $REFUSED = WsNginx::free_port();

my $TLS = system('openssl version >/dev/null 2>&1') == 0
    && `'${\ (WsNginx->locate)[0]}' -V 2>&1` =~ /--with-http_ssl_module/;
my $tls_conf = $TLS ? <<"EOF_TLS" : '';
    # wss://, verified against ca.crt as "localhost", with a client certificate
    location /tls { websocket_copy wss://127.0.0.1:%%PORT_1%%/tls trusted=%%TESTDIR%%/ca.crt server_name=localhost cert=%%TESTDIR%%/client.crt key=%%TESTDIR%%/client.key; }
    location /tls-nocert { websocket_copy wss://127.0.0.1:%%PORT_1%%/tls trusted=%%TESTDIR%%/ca.crt server_name=localhost; }
    location /tls-other { websocket_copy wss://127.0.0.1:%%PORT_1%%/tls trusted=%%TESTDIR%%/ca.crt server_name=other cert=%%TESTDIR%%/client.crt key=%%TESTDIR%%/client.key; }
}

# TLS in front of the greeting upstream; wants a client certificate of ca.crt
server {
    listen 127.0.0.1:%%PORT_1%% ssl;
    ssl_certificate %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;
    ssl_verify_client on;
    ssl_client_certificate %%TESTDIR%%/ca.crt;
    location / { websocket_pass ws://127.0.0.1:$UP; }
EOF_TLS

my $t = WsNginx->new(
    worker_processes => 1,
    main_conf => "load_module $example;",
    conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;
    location /ws { websocket_echo; }
    location /copy { websocket_copy ws://127.0.0.1:$UP/feed; }
    location /refused { websocket_copy ws://127.0.0.1:$REFUSED/; }
    location /forbidden { websocket_copy ws://127.0.0.1:$FORBIDDEN/; }
    location /silent { websocket_copy ws://127.0.0.1:$SILENT/; }
    location /mute { websocket_copy ws://127.0.0.1:$MUTE/; }
    location /bad { websocket_copy http://127.0.0.1:$UP/; }
$tls_conf}
EOF_CONF

if ($TLS) {
    my $D = $t->testdir;
    open my $fh, '>', "$D/openssl.cnf" or die "openssl.cnf: $!";
    print $fh <<'EOF_CNF';
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[server]
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
EOF_CNF
    close $fh;
    my @ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');
    my $run = sub { my $out = `openssl @_ 2>&1`; die "openssl @_:\n$out" if $? };
    $run->('req', '-x509', @ec, '-config', "$D/openssl.cnf", '-extensions', 'ca',
        '-subj', "'/CN=WsTest CA'", '-days', 3, '-keyout', "$D/ca.key", '-out', "$D/ca.crt");
    for ([qw(localhost localhost server)], ['client', 'wstest client', 'client']) {
        my ($name, $cn, $ext) = @$_;
        $run->('req', '-new', @ec, '-config', "$D/openssl.cnf", '-subj', "'/CN=$cn'",
            '-keyout', "$D/$name.key", '-out', "$D/$name.csr");
        $run->('x509', '-req', '-in', "$D/$name.csr", '-CA', "$D/ca.crt", '-CAkey', "$D/ca.key",
            '-CAcreateserial', '-days', 3, '-extfile', "$D/openssl.cnf", '-extensions', $ext,
            '-out', "$D/$name.crt");
    }
    # the connect's client_cert is read by a worker (nobody when we are root)
    chmod 0644, "$D/client.key", "$D/client.crt";
}
my ($port, @workers);
($t, $port, @workers) = start_nginx($t);

# GET $path -> (status, {lowercased header => value}, body)
sub get {
    my ($path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10)
        or return (0, {}, '');
    print $s "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    local $/;
    my $resp = <$s> // '';
    my ($head, $body) = split /\r\n\r\n/, $resp, 2;
    my ($status) = ($head // '') =~ m{^HTTP/1\.1 (\d+)};
    my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } split /\r\n/, $head // '';
    return ($status // 0, \%h, $body // '');
}

# A new connection, closed after the copy.
my ($status, $h, $body) = get('/copy');
is($status, 200, 'copy: 200');
is($body, "received: hello 1.1\n", 'copy: the answer carries the upstream\'s frame');
is($h->{'x-upstream-connection'}, 'new', 'copy: a new connection');
my $rec = $up->wait_record(until => 'close_code');
ok($rec, 'copy: the upstream got a close');
is($rec && $rec->{close_code}, 1000, 'copy: close 1000');
is($rec && $rec->{path}, '/feed', 'copy: the URI\'s path');
is($rec && $rec->{headers}{'sec-websocket-protocol'}, 'copy', 'copy: the subprotocol offered');
my @frames = $rec ? @{ $rec->{frames} // [] } : ();
is($frames[0] && $frames[0]{payload}, 'copy: hello 1.1', 'copy: the upstream got "copy: <data>"');
ok($frames[0] && $frames[0]{masked}, 'copy: masked, as a client sends');

# Pooled: the second request reuses the first one's connection.
($status, $h, $body) = get('/copy?keepalive=1');
is($status, 200, 'keepalive: 200');
is($body, "received: hello 2.1\n", 'keepalive: first request, a new connection');
is($h->{'x-upstream-connection'}, 'new', 'keepalive: first request says new');
($status, $h, $body) = get('/copy?keepalive=1');
is($status, 200, 'keepalive: second request 200');
is($h->{'x-upstream-connection'}, 'reused', 'keepalive: second request says connection reused');
is($body, "received: hello 2.2\n", 'keepalive: the pooled connection\'s next frame');
is($up->count, 2, 'keepalive: no third upstream connection');
$rec = $up->wait_record(path => qr/feed/, until => sub {
    my $r = shift; $r->{id} == 2 && @{ $r->{frames} // [] } >= 3 });
is(join('|', map { $_->{payload} } @{ $rec ? $rec->{frames} : [] }),
    'copy: hello 2.1|again|copy: hello 2.2', 'keepalive: both copies on one connection');
ok($rec && !exists $rec->{close_code}, 'keepalive: no close frame on a pooled connection');

# Failures answer with error pages.
($status) = get('/refused');
is($status, 502, 'connection refused: 502');
($status) = get('/forbidden');
is($status, 502, 'handshake 403: 502');
ok(scalar $t->grep_error_log(qr/\[error\].*failed the handshake/), 'handshake 403: logged');
my $t0 = time;
($status) = get('/silent');
is($status, 504, 'silent upstream: 504 after the client\'s timeout');
cmp_ok(time - $t0, '>=', 1.5, 'silent upstream: after the 2 s timeout, not at once');

$t0 = time;
($status) = get('/mute');
is($status, 504, 'no handshake answer: 504 (connect timeout)');
cmp_ok(time - $t0, '>=', 1.5, 'no handshake answer: after the 2 s timeout');
ok(scalar $t->grep_error_log(qr/\[error\].*upstream 127\.0\.0\.1:$MUTE timed out/),
    'no handshake answer: logged');
($status) = get('/bad');
is($status, 500, 'not a ws:// URI: 500');
ok(scalar $t->grep_error_log(qr/\[error\].*bad uri/), 'not a ws:// URI: logged');

SKIP: {
    skip 'no openssl, or nginx without ssl', 6 unless $TLS;
    ($status, $h, $body) = get('/tls');
    is($status, 200, 'wss with a client certificate: 200');
    like($body, qr/^received: hello \d+\.1\n\z/, 'wss: the upstream\'s frame through TLS');
    $rec = $up->wait_record(path => qr{^/tls}, until => 'close_code');
    is($rec && $rec->{frames}[0]{payload}, $body =~ s/^received: (.*)\n/copy: $1/r,
        'wss: the upstream got the copy');
    ($status) = get('/tls-nocert');
    is($status, 502, 'wss without the client certificate the upstream wants: 502');
    ($status) = get('/tls-other');
    is($status, 502, 'wss verifying another name: 502');
    ok(scalar $t->grep_error_log(qr/\[error\].*upstream SSL certificate does not match "other"/),
        'wss verifying another name: logged');
}

finish($t, $port, \@workers);
done_testing;
