#!/usr/bin/perl
# websocket_pass to wss:// upstreams: ssl server{} blocks of the same nginx
# running websocket_echo, with certificates made for this test by the
# openssl CLI (a CA, server certificates for localhost and alt.test, a
# client certificate, and a second, untrusted CA with its own localhost and
# client certificates). Checked: the relay over TLS (text, binary, 1 MiB),
# certificate verification (trusted CA, another CA, a name that does not
# match, no trusted certificate configured -> nginx -t fails), SNI (which
# certificate the upstream presents, and $ssl_server_name it logs), client
# certificates towards an upstream with ssl_verify_client, plain/TLS
# mismatches, and the keepalive pool over TLS (through a stream{} TLS
# terminator in front of the scripted upstream, which counts connections).
#
# SNI picks the upstream's certificate; the server{} that handles the
# upstream request is still chosen by its Host header (nginx's rule), which
# is the URL's host: 127.0.0.1:PORT selects the default server (alt.test),
# an upstream{} named "localhost" sends Host: localhost.
#
# The websocket_ssl_* files are named relative to the configuration's
# directory here; absolute names are checked on their own at the end (they
# reach OpenSSL as C strings, so each must end where its name ends).

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

plan skip_all => 'the openssl command is needed' if system('openssl version >/dev/null 2>&1') != 0;

# What the nginx binary was built with: ssl is needed; the stream{} TLS
# terminator (for the keepalive part) only when stream is built in.
my ($NGINX) = WsNginx->locate;
my $V = `'$NGINX' -V 2>&1`;
plan skip_all => 'nginx without http_ssl_module' unless $V =~ /--with-http_ssl_module/;
my $STREAM = $V =~ /--with-stream(?=\s|\z)/ ? 1 : 0;

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    $c->serve(idle => 25);
});
my $UP = $up->port;

# a TCP port that accepts (in the kernel) and never speaks: a TLS handshake stalls
my $stall = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
    Listen => 16, ReuseAddr => 1) or die "listen: $!";
my $STALL = $stall->sockport;

my $t = WsNginx->new(worker_processes => 1,
    main_conf => $STREAM ? <<"EOF_MAIN" : '', conf => <<"EOF_CONF");
stream {
    # TLS in front of the scripted upstream: one TCP connection to it per
    # TLS connection from nginx
    server {
        listen 127.0.0.1:%%PORT_5%% ssl;
        ssl_certificate %%TESTDIR%%/localhost.crt;
        ssl_certificate_key %%TESTDIR%%/localhost.key;
        proxy_pass 127.0.0.1:$UP;
    }
}
EOF_MAIN
log_format sni '\$request_uri sni=\$ssl_server_name server=\$server_name';

upstream localhost {
    server 127.0.0.1:%%PORT_1%%;
}

server {
    listen 127.0.0.1:%%PORT_0%%;

    # no path in the URLs: the client's URI is passed

    location /plain/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
    }

    location /big/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        websocket_max_payload_len 2m;
    }

    location /verify/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
        websocket_ssl_server_name localhost;
    }

    location /verify-alt/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
        websocket_ssl_server_name alt.test;
    }

    # SNI and the verified name from the URL's host
    location /by-url-host/ {
        websocket_pass wss://localhost;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
    }

    location /verify-other/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
        websocket_ssl_server_name other;
    }

    # the name verified is the URL's IP address; no SNI is sent
    location /verify-ip/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
    }

    location /rogue/ {
        websocket_pass wss://127.0.0.1:%%PORT_3%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
        websocket_ssl_server_name localhost;
    }

    location /rogue-trusted/ {
        websocket_pass wss://127.0.0.1:%%PORT_3%%;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate rogue-ca.crt;
        websocket_ssl_server_name localhost;
    }

    location /rogue-noverify/ {
        websocket_pass wss://127.0.0.1:%%PORT_3%%;
    }

    location /nocert/ {
        websocket_pass wss://127.0.0.1:%%PORT_2%%;
    }

    location /clientcert/ {
        websocket_pass wss://127.0.0.1:%%PORT_2%%;
        websocket_ssl_certificate client.crt;
        websocket_ssl_certificate_key client.key;
    }

    location /rogue-clientcert/ {
        websocket_pass wss://127.0.0.1:%%PORT_2%%;
        websocket_ssl_certificate rogue-client.crt;
        websocket_ssl_certificate_key rogue-client.key;
    }

    location /ws-to-tls/ {
        websocket_pass ws://127.0.0.1:%%PORT_1%%;
    }

    # without the access log: the session frees its request, and so does
    # the TLS echo behind it (the default server of the TLS port)
    location /lean/ {
        websocket_pass wss://127.0.0.1:%%PORT_1%%;
        access_log off;
    }

    location /wss-to-plain/ {
        websocket_pass wss://127.0.0.1:%%PORT_4%%;
        websocket_connect_timeout 3s;
    }

    location /tls-stall/ {
        websocket_pass wss://127.0.0.1:$STALL;
        websocket_connect_timeout 1s;
    }

    location /ka/ {
        websocket_pass wss://127.0.0.1:%%PORT_5%%/pooled;
        websocket_keepalive 2;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate ca.crt;
        websocket_ssl_server_name localhost;
    }

    location /noka/ {
        websocket_pass wss://127.0.0.1:%%PORT_5%%/unpooled;
    }
}

# the default server of the TLS port
server {
    listen 127.0.0.1:%%PORT_1%% ssl;
    server_name alt.test;
    ssl_certificate %%TESTDIR%%/alt.crt;
    ssl_certificate_key %%TESTDIR%%/alt.key;
    access_log %%TESTDIR%%/sni.log sni;

    location / {
        websocket_echo;
        websocket_max_payload_len 2m;
        websocket_protocols served-by-alt;
    }

    location /lean/ {
        websocket_echo;
        access_log off;
        websocket_timeout 2s;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%% ssl;
    server_name localhost;
    ssl_certificate %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;
    access_log %%TESTDIR%%/sni.log sni;

    location / {
        websocket_echo;
        websocket_max_payload_len 2m;
        websocket_protocols served-by-localhost;
    }
}

# wants a client certificate signed by the CA
server {
    listen 127.0.0.1:%%PORT_2%% ssl;
    ssl_certificate %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;
    ssl_verify_client on;
    ssl_client_certificate %%TESTDIR%%/ca.crt;

    location / {
        websocket_echo;
    }
}

# a localhost certificate from another CA
server {
    listen 127.0.0.1:%%PORT_3%% ssl;
    ssl_certificate %%TESTDIR%%/rogue-localhost.crt;
    ssl_certificate_key %%TESTDIR%%/rogue-localhost.key;

    location / {
        websocket_echo;
    }
}

# plain
server {
    listen 127.0.0.1:%%PORT_4%%;

    location / {
        websocket_echo;
    }
}
EOF_CONF

# --- certificates -----------------------------------------------------------------
my $D = $t->testdir;
{
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
subjectKeyIdentifier = hash

[server_localhost]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost

[server_alt]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:alt.test

[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
EOF_CNF
    close $fh;
}

sub openssl {
    my @args = @_;
    my $out = `openssl @args 2>&1`;
    die "openssl @args failed:\n$out" if $? != 0;
}

my @EC = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');

sub make_ca {
    my ($name, $cn) = @_;
    openssl('req', '-x509', @EC, '-config', "$D/openssl.cnf", '-extensions', 'ca',
        '-subj', "'/CN=$cn'", '-days', 3,
        '-keyout', "$D/$name.key", '-out', "$D/$name.crt");
}

sub make_cert {
    my ($name, $cn, $ca, $ext) = @_;
    openssl('req', '-new', @EC, '-config', "$D/openssl.cnf", '-subj', "'/CN=$cn'",
        '-keyout', "$D/$name.key", '-out', "$D/$name.csr");
    openssl('x509', '-req', '-in', "$D/$name.csr", '-CA', "$D/$ca.crt", '-CAkey', "$D/$ca.key",
        '-CAcreateserial', '-days', 3, '-extfile', "$D/openssl.cnf", '-extensions', $ext,
        '-out', "$D/$name.crt");
}

make_ca('ca', 'WsTest CA');
make_ca('rogue-ca', 'WsTest Rogue CA');
make_cert('localhost', 'localhost', 'ca', 'server_localhost');
make_cert('alt', 'alt.test', 'ca', 'server_alt');
make_cert('client', 'wstest client', 'ca', 'client');
make_cert('rogue-localhost', 'localhost', 'rogue-ca', 'server_localhost');
make_cert('rogue-client', 'wstest client', 'rogue-ca', 'client');

$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

sub sni_log {
    open my $fh, '<', "$D/sni.log" or return ();
    chomp(my @l = <$fh>);
    return @l;
}

# The upstream's access log line of a URI (written when its session ends).
sub sni_line {
    my ($uri) = @_;
    my $deadline = time + 3;
    while (1) {
        my ($l) = grep { index($_, "$uri ") == 0 } sni_log();
        return $l if defined $l || time > $deadline;
        sleep 0.05;
    }
}

my $id = 0;
sub uri { my ($loc) = @_; "/$loc/s" . ++$id }

# A session that must relay: 101, a text and a binary echo, the close. 14 tests.
sub relay_ok {
    my ($uri, $name, %o) = @_;
    my $ws = WsClient->connect(port => $port, path => $uri, %o);
    is($ws->status, 101, "$name: 101") or do {
        diag join "\n", $t->grep_error_log(qr/\[(?:error|crit|alert)\]/);
        fail("$name: skipped") for 1 .. 13;
        return $ws;
    };
    ok($ws->accept_ok, "$name: Sec-WebSocket-Accept");
    echo_ok($ws, 1, "over TLS: $uri", "$name: text");
    echo_ok($ws, 2, join('', map { chr } 0 .. 255), "$name: binary");
    bye($ws, $name);
    return $ws;
}

# A session that must fail with $status, with $log_re in error.log. 2 tests.
sub fails_ok {
    my ($uri, $status, $log_re, $name) = @_;
    my $ws = WsClient->connect(port => $port, path => $uri, timeout => 6);
    is($ws->status, $status, "$name: $status");
    ok(scalar $t->grep_error_log($log_re), "$name: error.log matches $log_re")
        or diag join "\n", $t->grep_error_log(qr/\[error\]/);
}

# --- the relay over TLS ---------------------------------------------------------
{
    my $u = uri('plain');
    relay_ok($u, 'wss:// without verification');
    like(sni_line($u) // '', qr/sni=- /, 'an IP address in the URL: no SNI sent');
}
{
    my $ws = WsClient->connect(port => $port, path => uri('big'));
    is($ws->status, 101, '1 MiB over TLS: 101');
    my $mib = join '', map { chr(($_ * 7) & 0xFF) } 0 .. (1 << 20) - 1;
    echo_ok($ws, 2, $mib, '1 MiB binary over TLS', timeout => 10);
    my $text = 'T' x (1 << 20);
    echo_ok($ws, 1, $text, '1 MiB text over TLS', timeout => 10);
    # several in a row, pipelined
    $ws->send_text("p$_" . ('x' x 100000)) for 1 .. 5;
    my @got = map { my $m = $ws->recv_message(timeout => 10); $m ? substr($m->{payload}, 0, 2) : 'none' } 1 .. 5;
    is_deeply(\@got, [ map { "p$_" } 1 .. 5 ], '5 pipelined 100 KB messages over TLS, in order');
    bye($ws, '1 MiB over TLS');
}

# --- verification and SNI -------------------------------------------------------
{
    my $u = uri('verify');
    relay_ok($u, 'verify on, trusted CA, server name localhost');
    like(sni_line($u) // '', qr/ sni=localhost /, 'websocket_ssl_server_name localhost is sent as SNI');
}
{
    # alt.test's certificate is presented only when SNI asks for it
    my $u = uri('verify-alt');
    relay_ok($u, 'verify on, server name alt.test');
    like(sni_line($u) // '', qr/ sni=alt\.test /, 'websocket_ssl_server_name alt.test is sent as SNI');
}
{
    my $u = uri('by-url-host');
    my $ws = relay_ok($u, 'verify on, the URL host (upstream{} "localhost") as the name',
        protocols => [ 'served-by-alt', 'served-by-localhost' ]);
    is($ws->header('Sec-WebSocket-Protocol'), 'served-by-localhost',
        'SNI and Host localhost: the localhost server{} handled the session');
    like(sni_line($u) // '', qr/ sni=localhost server=localhost\z/, "the URL's host name is sent as SNI");
}
fails_ok(uri('verify-other'), 502, qr/\[error\].*upstream SSL certificate does not match "other"/,
    'verify on, server name other');
fails_ok(uri('verify-ip'), 502, qr/\[error\].*upstream SSL certificate does not match "127\.0\.0\.1"/,
    'verify on, no server name, IP URL (default certificate alt.test)');
fails_ok(uri('rogue'), 502, qr/\[error\].*upstream SSL certificate verify error/,
    'verify on, certificate from another CA');
relay_ok(uri('rogue-trusted'), 'verify on, the other CA trusted');
relay_ok(uri('rogue-noverify'), 'certificate from another CA, verify off');
{
    my ($l) = $t->grep_error_log(qr/upstream SSL certificate verify error/);
    like($l // '', qr/\(\d+:[^)]+\)/, 'the verify error says why (code: reason)');
}

# --- client certificates ---------------------------------------------------------
fails_ok(uri('nocert'), 502, qr/\[info\].*client sent no required SSL certificate/,
    'upstream wants a client certificate, none configured');
ok(scalar $t->grep_error_log(qr/\[error\].*websocket: .*unexpected status 400.*nocert/),
    'no client certificate: the upstream\'s 400 is logged');
relay_ok(uri('clientcert'), 'client certificate signed by the CA');
{
    my $ws = WsClient->connect(port => $port, path => uri('rogue-clientcert'));
    is($ws->status, 502, 'client certificate from another CA: 502');
    ok(scalar $t->grep_error_log(qr/\[info\].*client SSL certificate verify error/),
        'client certificate from another CA: the upstream server rejected it');
}

# --- plain / TLS mismatches -------------------------------------------------------
{
    my $ws = WsClient->connect(port => $port, path => uri('ws-to-tls'));
    is($ws->status, 502, 'ws:// to a TLS port: 502');
    my $t0 = time;
    $ws = WsClient->connect(port => $port, path => uri('wss-to-plain'), timeout => 6);
    ok(($ws->status // 0) == 502 || ($ws->status // 0) == 504, 'wss:// to a plain port: 502 (or 504)')
        or diag 'status ' . ($ws->status // 'none');
    cmp_ok(time - $t0, '<', 4.5, 'wss:// to a plain port: within websocket_connect_timeout');
}

{
    my $t0 = time;
    my $ws = WsClient->connect(port => $port, path => uri('tls-stall'), timeout => 5);
    my $dt = time - $t0;
    is($ws->status, 504, 'an upstream that never answers the TLS handshake: 504');
    cmp_ok($dt, '>=', 0.9, '... not before websocket_connect_timeout 1s') or diag sprintf '%.2fs', $dt;
    cmp_ok($dt, '<', 2.5, '... soon after it') or diag sprintf '%.2fs', $dt;

    # the client leaves while the TLS handshake is under way
    $ws = WsClient->connect(port => $port, path => uri('tls-stall'), timeout => 0.3);
    ok(!defined $ws->status, 'client gives up during the upstream TLS handshake');
    $ws->close;
    sleep 1.2;
    relay_ok(uri('plain'), 'after a client left during a TLS handshake');
}

# --- TLS on both legs, without the requests ---------------------------------------
# The pass session and the TLS echo behind it run without their HTTP
# requests (access_log off); the echo closes an idle session (1001, with a
# TLS shutdown), which the client hears through the relay.
{
    relay_ok(uri('lean'), 'wss without the requests');
    my $ws = WsClient->connect(port => $port, path => uri('lean'));
    is($ws->status, 101, 'wss without the requests, idle: 101');
    my ($code) = $ws->recv_close(timeout => 6);
    is($code, 1001, 'wss without the requests, idle: the TLS echo closes with 1001 after 2 s');
    $ws->send_close(1001);
    ok($ws->wait_eof(3), 'wss without the requests, idle: TCP closed');
}

# --- the keepalive pool over TLS --------------------------------------------------
SKIP: {
    skip 'nginx without the stream module built in', 52 unless $STREAM;
    my $before = $up->count;
    for my $i (1 .. 3) {
        my $ws = WsClient->connect(port => $port, path => "/ka/$i");
        is($ws->status, 101, "pooled wss session $i: 101");
        ok($ws->accept_ok, "pooled wss session $i: Sec-WebSocket-Accept of its own key");
        echo_ok($ws, 1, "pooled over TLS $i", "pooled wss session $i");
        $ws->send_close(1000);
        my ($code) = $ws->recv_close(timeout => 3);
        is($code, 1000, "pooled wss session $i: close answered");
        ok($ws->wait_eof(3), "pooled wss session $i: TCP closed");
    }
    my @recs = grep { ($_->{path} // '') eq '/pooled' } $up->records;
    is(scalar @recs, 1, '3 sequential wss sessions with websocket_keepalive: one upstream connection')
        or diag 'connections: ' . ($up->count - $before);
    my $r = $recs[-1] // {};
    is_deeply([ map { $_->{payload} } grep { $_->{opcode} != 9 } @{ $r->{frames} // [] } ],
        [ map { "pooled over TLS $_" } 1 .. 3 ], 'all three sessions went over it, no close frame');

    # a ping from the upstream while the TLS connection is pooled
    my $ws = WsClient->connect(port => $port, path => '/ka/ping');
    echo_ok($ws, 1, 'cmd:after:0.3:ping:tls-idle', 'a ping while pooled (command)');
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
    $r = $up->wait_record(path => qr{^/pooled$}, until => 'pongs', timeout => 3) // {};
    my ($pong) = @{ $r->{pongs} // [] };
    is($pong && $pong->{payload}, 'tls-idle', 'a ping to a pooled TLS connection is answered with a pong');
    ok($pong && $pong->{masked}, '... masked');
    $ws = WsClient->connect(port => $port, path => '/ka/after-ping');
    is($ws->status, 101, 'after the ping: 101');
    echo_ok($ws, 1, 'after the ping', 'after the ping');
    bye($ws, 'after the ping');
    is(scalar(grep { ($_->{path} // '') eq '/pooled' } $up->records), 1,
        'after the ping: the pooled TLS connection was still used');

    for my $i (1 .. 2) {
        my $ws = WsClient->connect(port => $port, path => "/noka/$i");
        is($ws->status, 101, "unpooled wss session $i: 101");
        bye($ws, "unpooled wss session $i");
    }
    is(scalar(grep { ($_->{path} // '') eq '/unpooled' } $up->records), 2,
        'without websocket_keepalive: one upstream connection per session');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors');

# --- nginx -t: verification needs a CA bundle ---------------------------------------
{
    my $bad = WsNginx->new(conf => <<'EOF_BAD');
server {
    listen 127.0.0.1:%%PORT_0%%;
    location /x {
        websocket_pass wss://127.0.0.1:%%PORT_1%%/ws;
        websocket_ssl_verify on;
    }
}
EOF_BAD
    my ($rc, $out) = $bad->test_config;
    isnt($rc, 0, 'websocket_ssl_verify on without a trusted certificate: nginx -t fails');
    like($out, qr/websocket_ssl_trusted_certificate/, '... naming websocket_ssl_trusted_certificate');
    like($out, qr/\[emerg\]/, '... as [emerg]');
}

# --- absolute file names in the websocket_ssl_* directives -------------------------
{
    my $abs = WsNginx->new(conf => <<"EOF_ABS");
server {
    listen 127.0.0.1:%%PORT_0%%;
    location /x {
        websocket_pass wss://127.0.0.1:%%PORT_1%%/ws;
        websocket_ssl_certificate $D/client.crt;
        websocket_ssl_certificate_key $D/client.key;
        websocket_ssl_verify on;
        websocket_ssl_trusted_certificate $D/ca.crt;
    }
}
EOF_ABS
    my ($rc, $out) = $abs->test_config;
    {
        is($rc, 0, 'absolute file names in websocket_ssl_certificate / _key / _trusted_certificate: nginx -t accepts them')
            or diag $out;
        unlike($out, qr/client\.crt\Q$D\E/, 'the certificate file name is not run into the key file name');
    }
}

finish($t, $port, \@workers, uri('plain'));
$up->stop;

done_testing;
