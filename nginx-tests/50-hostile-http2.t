#!/usr/bin/perl
# HTTP/2 requests that carry the WebSocket upgrade headers (issue 15.1):
# RFC 6455 upgrades HTTP/1.1 only, and an HTTP/2 stream has no connection of
# its own to take over, so such a request gets 400 and one [info] line, never
# a 101, on websocket_echo and on websocket_pass (refused before any upstream
# connection), and is counted in handshake_rejects. Cleartext HTTP/2 with
# prior knowledge and TLS with ALPN h2 (a self-signed certificate made by the
# openssl CLI), with the harness's own HTTP/2 client (lib/WsHttp2.pm). After
# each, the same HTTP/2 connection still serves a request, and a plain
# HTTP/1.1 WebSocket session on the same worker echoes.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsNginx;
use WsClient qw(http_request);
use WsHttp2;
use WsTest;

plan skip_all => 'the openssl command is needed' if system('openssl version >/dev/null 2>&1') != 0;
my ($NGINX) = WsNginx->locate;
my $V = `'$NGINX' -V 2>&1`;
plan skip_all => 'nginx without http_v2_module and http_ssl_module'
    unless $V =~ /--with-http_v2_module/ && $V =~ /--with-http_ssl_module/;
plan skip_all => 'IO::Socket::SSL with ALPN is needed'
    unless eval { require IO::Socket::SSL; IO::Socket::SSL->can_alpn };

# nginx 1.25.1 made HTTP/2 a server directive; before it, a listen parameter
# (which makes a cleartext port HTTP/2 only: HTTP/1.1 has a port of its own).
my ($major, $minor, $patch) = $V =~ m{nginx/(\d+)\.(\d+)\.(\d+)};
my $h2_directive = sprintf('%03d%03d%03d', $major, $minor, $patch) ge '001025001';
my $H2_LISTEN = $h2_directive ? '' : ' http2';
my $H2_ON = $h2_directive ? "    http2 on;\n" : '';

my $t = WsNginx->new(worker_processes => 1, conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    location = /metrics {
        websocket_status;
    }

    location /echo {
        websocket_echo;
    }

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/echo;
    }
}

server {
    listen 127.0.0.1:%%PORT_2%%$H2_LISTEN;
$H2_ON
    location = /metrics {
        websocket_status;
    }

    location /echo {
        websocket_echo;
    }

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/echo;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%% ssl$H2_LISTEN;
$H2_ON    ssl_certificate %%TESTDIR%%/h2.crt;
    ssl_certificate_key %%TESTDIR%%/h2.key;

    location /echo {
        websocket_echo;
    }

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/echo;
    }
}
EOF_CONF

my $D = $t->testdir;
{
    open my $fh, '>', "$D/openssl.cnf" or die "openssl.cnf: $!";
    print $fh "[req]\ndistinguished_name = dn\nprompt = no\n\n[dn]\nCN = localhost\n";
    close $fh;
    my $out = `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 -config '$D/openssl.cnf' -keyout '$D/h2.key' -out '$D/h2.crt' 2>&1`;
    die "openssl req failed:\n$out" if $? != 0;
}

my ($port, @workers);
($t, $port, @workers) = start_nginx($t);
my $tls_port = $t->port(1);
my $h2c_port = $t->port(2);

# 'name{labels}' => value from websocket_status (over HTTP/1.1).
sub metrics {
    my (undef, undef, $body) = http_request($port,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    my %m;
    for (split /\n/, $body // '') {
        $m{$1} = $2 if !/^#/ && /^(\S+)\s+(\S+)$/;
    }
    return \%m;
}

sub rejects_400 { metrics()->{'nginx_websocket_handshake_rejects_total{status="400"}'} // 0 }
sub upstream_connects {
    my $m = metrics();
    return ($m->{'nginx_websocket_upstream_connects_total{reused="0"}'} // 0)
        + ($m->{'nginx_websocket_upstream_connects_total{reused="1"}'} // 0);
}
sub sessions {
    my $m = metrics();
    return join ' ', map { $m->{"nginx_websocket_sessions_total{kind=\"$_\"}"} // 0 } 'echo', 'pass';
}

my $REJECTED = qr/\[info\].*websocket: handshake rejected: WebSocket needs HTTP\/1\.1, not HTTP\/2\b/;

# One HTTP/2 upgrade attempt on $path, then a plain request on the same
# HTTP/2 connection and an HTTP/1.1 WebSocket session on the same path.
# 14 tests (15 over TLS).
sub h2_upgrade_refused {
    my ($tls, $path) = @_;
    my $name = ($tls ? 'TLS, ALPN h2' : 'cleartext, prior knowledge') . ", $path";
    my ($rejects, $connects, $sessions) = (rejects_400(), upstream_connects(), sessions());
    my $logged = () = $t->grep_error_log($REJECTED);

    my $h2 = WsHttp2->connect(port => $tls ? $tls_port : $h2c_port, tls => $tls);
    is($h2->alpn, 'h2', "$name: ALPN chose h2") if $tls;
    my $authority = '127.0.0.1:' . ($tls ? $tls_port : $h2c_port);
    my $res = $h2->request([
        ':method' => 'GET', ':scheme' => $tls ? 'https' : 'http',
        ':path' => $path, ':authority' => $authority,
        'upgrade' => 'websocket', 'connection' => 'upgrade',
        'sec-websocket-key' => 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version' => '13',
    ]);
    isnt($res->{status} // 0, 101, "$name: no 101");
    is($res->{status}, 400, "$name: 400")
        or diag explain { %$res, body => substr($res->{body}, 0, 200) };
    my $now = () = $t->grep_error_log($REJECTED);
    is($now, $logged + 1, "$name: one [info] line: WebSocket needs HTTP/1.1, not HTTP/2")
        or diag join "\n", $t->grep_error_log(qr/websocket:/);
    is(rejects_400(), $rejects + 1, "$name: counted in handshake_rejects{400}");
    is(upstream_connects(), $connects, "$name: no upstream connection");
    is(sessions(), $sessions, "$name: no session started");

    my $next = $h2->request([
        ':method' => 'GET', ':scheme' => $tls ? 'https' : 'http',
        ':path' => $path, ':authority' => $authority,
    ]);
    is($next->{status}, 400, "$name: the HTTP/2 connection still serves: a plain GET on the next stream gets 400")
        or diag explain $next;
    $h2->close;

    my $ws = ws_open($port, $path);
    echo_ok($ws, 1, "after HTTP/2 on $path", "$name: then an HTTP/1.1 session");
    bye($ws, "$name: then an HTTP/1.1 session");
    is_deeply([$t->worker_pids], \@workers, "$name: the same worker");
}

for my $tls (0, 1) {
    h2_upgrade_refused($tls, $_) for '/echo', '/pass';
}

# HTTP/2 is really spoken on both ports (the 400 above is not nginx refusing
# a preface it does not understand).
{
    my $h2 = WsHttp2->connect(port => $h2c_port);
    my $res = $h2->request([':method' => 'GET', ':scheme' => 'http', ':path' => '/metrics',
        ':authority' => "127.0.0.1:$h2c_port"]);
    is($res->{status}, 200, 'cleartext HTTP/2: GET /metrics is 200');
    like($res->{body}, qr/^nginx_websocket_handshake_rejects_total\{status="400"\} 8$/m,
        'the 4 upgrades and the 4 plain GETs over HTTP/2 were counted as rejects');
    $h2->close;
}

finish($t, $port, \@workers, '/echo');

done_testing;
