#!/usr/bin/perl
# websocket_pass against a scripted upstream (lib/WsUpstream.pm) that records
# what it receives and misbehaves on demand: the upstream handshake (Host,
# Origin, extra headers, subprotocols, path), masking towards the upstream,
# failed upstream handshakes (502/504), frames right behind the 101, the
# close handshake started by the upstream, violations on either leg, and
# either side vanishing.
#
# The upstream picks its behaviour from the last path segment of the
# request it gets (the client's URI is passed when the URL has no path):
# /p/MODE?id=N.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MIME::Base64 qw(decode_base64);
use WsNginx;
use WsClient qw(build_frame);
use WsTest;
use WsUpstream;

sub frame { WsUpstream::Conn::frame(@_) }

my %mode = (
    # echo every data frame as it came, record everything
    record => sub { $_[0]->handshake; $_[0]->echo_loop },
    # the subprotocol is the second one the client offered
    'proto-second' => sub {
        my $c = shift;
        my @offered = split /\s*,\s*/, $c->header('Sec-WebSocket-Protocol') // '';
        $c->handshake(protocol => $offered[1]);
        $c->echo_loop;
    },
    'proto-bogus' => sub { $_[0]->handshake(protocol => 'bogus'); $_[0]->wait_eof },
    status200     => sub { $_[0]->handshake(status => 200); $_[0]->wait_eof },
    status404     => sub { $_[0]->handshake(status => 404); $_[0]->wait_eof },
    badaccept     => sub { $_[0]->handshake(accept => 'dGhpcyBpcyB3cm9uZw=='); $_[0]->wait_eof },
    noaccept      => sub { $_[0]->handshake(accept => undef); $_[0]->wait_eof },
    noupgrade     => sub {
        my $c = shift;
        my $a = $c->accept_key;
        $c->handshake(raw => "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            . "Sec-WebSocket-Accept: $a\r\n\r\n");
        $c->wait_eof;
    },
    # the 101 arrives a few bytes at a time
    dribble => sub {
        my $c = shift;
        my $a = $c->accept_key;
        my $resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            . "Connection: Upgrade\r\nSec-WebSocket-Accept: $a\r\n\r\n";
        for (my $i = 0; $i < length $resp; $i += 7) {
            $c->send_raw(substr($resp, $i, 7));
            sleep 0.01;
        }
        $c->echo_loop;
    },
    # header names and tokens in unusual case, extra tokens and headers
    casey => sub {
        my $c = shift;
        my $a = $c->accept_key;
        $c->handshake(raw => "HTTP/1.1 101 Switching Protocols\r\nServer: scripted\r\n"
            . "upgrade: WebSocket\r\nCONNECTION: keep-alive, Upgrade\r\n"
            . "sec-websocket-accept: $a\r\nX-Other: 1\r\n\r\n");
        $c->echo_loop;
    },
    bighead => sub {
        my $c = shift;
        $c->handshake(headers => [ 'X-Padding' => 'p' x 20000 ]);
        $c->wait_eof;
    },
    noconnection => sub {
        my $c = shift;
        my $a = $c->accept_key;
        $c->handshake(raw => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            . "Sec-WebSocket-Accept: $a\r\n\r\n");
        $c->wait_eof;
    },
    extension => sub {
        my $c = shift;
        $c->handshake(headers => [ 'Sec-WebSocket-Extensions' => 'permessage-deflate' ]);
        $c->wait_eof;
    },
    # answers after 1 s
    slowanswer => sub { my $c = shift; sleep 1; $c->handshake; $c->note(answered => time); $c->echo_loop },
    # reads and records, never answers anything
    deaf => sub {
        my $c = shift;
        $c->handshake;
        while (my $f = $c->recv_frame(timeout => 10)) {
            $c->push_note(frames => $f);
            $c->note(close_code => WsUpstream::Conn::close_code($f) // -1) if $f->{opcode} == 8;
        }
        $c->note(eof => $c->is_eof ? 1 : 0, eof_at => time);
    },
    # more upstream violations
    toobig     => sub { my $c = shift; $c->handshake; $c->send_binary('T' x 70000); $c->wait_close; $c->wait_eof },
    badclose   => sub { my $c = shift; $c->handshake; $c->send_close(1005); $c->wait_close; $c->wait_eof },
    closeshort => sub { my $c = shift; $c->handshake; $c->send_frame(opcode => 8, payload => "\x03"); $c->wait_close; $c->wait_eof },
    bigping    => sub { my $c = shift; $c->handshake; $c->send_frame(opcode => 9, payload => 'p' x 126); $c->wait_close; $c->wait_eof },
    fragping   => sub { my $c = shift; $c->handshake; $c->send_frame(opcode => 9, fin => 0, payload => 'p'); $c->wait_close; $c->wait_eof },
    orphancont => sub { my $c = shift; $c->handshake; $c->send_frame(opcode => 0, payload => 'orphan'); $c->wait_close; $c->wait_eof },
    # both sides close at once
    closeboth => sub {
        my $c = shift;
        $c->handshake(then => frame(opcode => 8, payload => pack('n', 1000)));
        $c->wait_close;
        $c->wait_eof;
    },
    # data, then TCP gone, all in the first write
    eagerdrop => sub { my $c = shift; $c->handshake(then => frame(payload => 'only this')); $c->close },
    # a message after its close frame: must not reach the client
    afterclose => sub {
        my $c = shift;
        $c->handshake;
        $c->send_raw(frame(opcode => 8, payload => pack('n', 4002)) . frame(payload => 'after close'));
        my $reply = $c->wait_close;
        $c->note(close_reply => WsUpstream::Conn::close_code($reply));
        $c->wait_eof;
    },
    # close frame, then TCP gone at once
    closedrop => sub { my $c = shift; $c->handshake; $c->send_close(1000, 'gone'); $c->close },
    badreason => sub { my $c = shift; $c->handshake; $c->send_close(1000, "\xff"); $c->wait_close; $c->wait_eof },
    splitutf8 => sub {
        my $c = shift;
        $c->handshake;
        $c->send_raw(frame(fin => 0, opcode => 1, payload => "caf\xc3")
            . frame(fin => 1, opcode => 0, payload => "\xa9 \xf0\x9f")
            );
        $c->echo_loop;
    },
    badsplit => sub {
        my $c = shift;
        $c->handshake;
        $c->send_raw(frame(fin => 0, opcode => 1, payload => "ok \xe2\x9c")
            . frame(fin => 1, opcode => 0, payload => "A"));
        $c->wait_close;
        $c->wait_eof;
    },
    # on a close from nginx, the upstream breaks the protocol itself
    badtail => sub {
        my $c = shift;
        $c->handshake;
        $c->echo_loop(on_close => sub { $_[0]->send_frame(payload => 'masked tail', mask => 1) });
    },
    garbage    => sub { $_[0]->send_raw("SSH-2.0-OpenSSH_9.6\r\n\r\n"); $_[0]->wait_eof },
    closeearly => sub { $_[0]->close },
    silent     => sub { $_[0]->wait_eof(timeout => 10) },
    # a 101 and two frames in the same write
    eager => sub {
        my $c = shift;
        $c->handshake(then => frame(payload => 'first, right behind the 101')
            . frame(opcode => 2, payload => "\x00second"));
        $c->echo_loop;
    },
    # a 101 and ~110 KB of frames in the same write
    eagerbig => sub {
        my $c = shift;
        $c->handshake(then => join('', map { frame(opcode => 2, payload => pack('N', $_) . ('e' x 996)) } 1 .. 50)
            . frame(opcode => 1, payload => 'E' x 60000));
        $c->echo_loop;
    },
    # the upstream starts the close handshake
    close1000 => sub {
        my $c = shift;
        $c->handshake;
        $c->send_close(1000, 'upstream done');
        my $reply = $c->wait_close(timeout => 5);
        $c->note(close_reply => WsUpstream::Conn::close_code($reply));
        $c->wait_eof(timeout => 5);
    },
    # upstream violations
    masked  => sub { my $c = shift; $c->handshake; $c->send_frame(payload => 'masked!', mask => 1); $c->wait_close; $c->wait_eof },
    opcode  => sub { my $c = shift; $c->handshake; $c->send_frame(opcode => 3, payload => 'x'); $c->wait_close; $c->wait_eof },
    badutf8 => sub { my $c = shift; $c->handshake; $c->send_text("bad \xff\xfe utf-8"); $c->wait_close; $c->wait_eof },
    rsv     => sub { my $c = shift; $c->handshake; $c->send_frame(rsv => 4, payload => 'rsv'); $c->wait_close; $c->wait_eof },
    # the upstream sends a message, then drops TCP without a close
    drop => sub { my $c = shift; $c->handshake; $c->send_text('last words'); sleep 0.2; $c->close },
    # on a close from nginx, the upstream still sends a message, then answers
    tail => sub {
        my $c = shift;
        $c->handshake;
        $c->echo_loop(on_close => sub { $_[0]->send_text('tail after close') });
    },
    # fragments and a ping in between, from the upstream
    frags => sub {
        my $c = shift;
        $c->handshake;
        $c->send_raw(frame(fin => 0, opcode => 1, payload => 'ab')
            . frame(opcode => 9, payload => 'mid')
            . frame(fin => 0, opcode => 0, payload => 'cd')
            . frame(fin => 1, opcode => 0, payload => 'ef'));
        $c->echo_loop;
    },
);

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my ($m) = ($c->path // '') =~ m{/([\w-]+)(?:\?.*)?\z};
    ($mode{ $m // '' } // $mode{record})->($c);
});
my $UP = $up->port;
my $DEAD = WsNginx::free_port();

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
upstream scripted {
    server 127.0.0.1:$UP;
}

server {
    listen 127.0.0.1:%%PORT_0%%;

    # no path in the URL: the client's URI is passed
    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /fixed {
        websocket_pass ws://127.0.0.1:$UP/up/stream?from=url;
    }

    location /hdr/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_pass_host backend.example:8080;
        websocket_pass_origin http://origin.example;
        websocket_pass_header X-Remote-Addr \$remote_addr;
        websocket_pass_header X-Static "static value";
        websocket_pass_header X-From-Client \$http_x_client;
        websocket_pass_header X-Empty \$http_x_absent;
    }

    location /hostvar/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_pass_host \$http_x_backend_host;
        websocket_pass_origin "\$scheme://\$http_x_backend_host";
    }

    location /unmasked/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_pass_send_unmasked on;
    }

    location /down/ {
        websocket_pass ws://127.0.0.1:$DEAD;
    }

    location /named/ {
        websocket_pass ws://scripted;
    }

    location /short/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout 1s;
    }

    # URLs with variables
    location /var/ {
        websocket_pass ws://127.0.0.1:$UP/v/\$arg_m;
    }

    location /varup/ {
        websocket_pass ws://\$arg_up;
    }

    location /varname/ {
        websocket_pass ws://\$arg_h:$UP;
    }

    location /slow/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_connect_timeout 1s;
    }
}
EOF_CONF

my $id = 0;

# session($path_prefix, $mode, %connect_options) -> ($ws, $tag)
sub session {
    my ($prefix, $m, %o) = @_;
    my $tag = 'id=' . ++$id;
    my $sep = $m =~ /\?/ ? '&' : '?';
    my $ws = WsClient->connect(port => $port, path => "$prefix/$m$sep$tag", %o);
    return ($ws, qr/[?&]\Q$tag\E\z/);
}

sub rec_of {
    my ($tag, %o) = @_;
    return $up->wait_record(path => $tag, %o);
}

# --- what the upstream handshake carries ------------------------------------------
{
    my ($ws, $tag) = session('/p', 'record', origin => 'http://client.example',
        extra_headers => [ 'X-Client' => 'from the client' ]);
    is($ws->status, 101, 'defaults: 101');
    ok($ws->accept_ok, 'defaults: the client gets the Sec-WebSocket-Accept of its own key');
    my $r = rec_of($tag);
    ok($r, 'defaults: the upstream got a request') or diag 'records: ' . $up->count;
    $r //= {};
    is($r->{method}, 'GET', 'upstream request: GET');
    is($r->{version}, '1.1', 'upstream request: HTTP/1.1');
    like($r->{path} // '', qr{\A/p/record\?id=\d+\z}, "upstream request: the client's URI (no path in the URL)");
    is($r->{headers}{host}, "127.0.0.1:$UP", 'upstream request: Host is the URL host:port');
    like($r->{headers}{upgrade} // '', qr/\Awebsocket\z/i, 'upstream request: Upgrade: websocket');
    like($r->{headers}{connection} // '', qr/\bupgrade\b/i, 'upstream request: Connection: upgrade');
    is($r->{headers}{'sec-websocket-version'}, '13', 'upstream request: Sec-WebSocket-Version: 13');
    my $key = $r->{headers}{'sec-websocket-key'} // '';
    ok($key =~ m{\A[A-Za-z0-9+/]{22}==\z} && length(decode_base64($key)) == 16,
        'upstream request: Sec-WebSocket-Key is base64 of 16 bytes') or diag "key '$key'";
    is($r->{headers}{origin}, 'http://client.example', "upstream request: the client's Origin");
    ok(!exists $r->{headers}{'sec-websocket-protocol'}, 'upstream request: no subprotocol when the client offered none');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'), 'client: no subprotocol in the 101');
    bye($ws, 'defaults');
}
{
    my ($ws, $tag) = session('/p', 'record');
    is($ws->status, 101, 'no Origin from the client: 101');
    my $r = rec_of($tag) // {};
    ok(!exists $r->{headers}{origin}, 'no Origin from the client: none sent upstream');
    bye($ws, 'no origin');
}
{
    my $ws = WsClient->connect(port => $port, path => '/fixed/ignored?q=client');
    is($ws->status, 101, 'URL with a path: 101');
    my $r = $up->wait_record(path => qr{^/up/}) // {};
    is($r->{path}, '/up/stream?from=url', "URL with a path: the URL's path and query are sent, not the client's");
    bye($ws, 'url path');
}
{
    my ($ws, $tag) = session('/hdr', 'record', origin => 'http://client.example',
        extra_headers => [ 'X-Client' => 'client value' ]);
    is($ws->status, 101, 'pass_host / pass_origin / pass_header: 101');
    my $r = rec_of($tag) // {};
    my $h = $r->{headers} // {};
    is($h->{host}, 'backend.example:8080', 'websocket_pass_host sets Host');
    is($h->{origin}, 'http://origin.example', "websocket_pass_origin replaces the client's Origin");
    is($h->{'x-remote-addr'}, '127.0.0.1', 'websocket_pass_header with $remote_addr');
    is($h->{'x-static'}, 'static value', 'websocket_pass_header with a literal value');
    is($h->{'x-from-client'}, 'client value', 'websocket_pass_header with $http_x_client');
    ok(!exists $h->{'x-empty'}, 'websocket_pass_header with an empty value: left out');
    my @names = map { lc } @{ $r->{header_names} // [] };
    is(scalar(grep { $_ eq 'host' } @names), 1, 'exactly one Host header');
    is(scalar(grep { $_ eq 'origin' } @names), 1, 'exactly one Origin header');
    bye($ws, 'headers');
}
{
    my ($ws, $tag) = session('/hostvar', 'record',
        extra_headers => [ 'X-Backend-Host' => 'chosen.example' ]);
    is($ws->status, 101, 'websocket_pass_host with a variable: 101');
    my $r = rec_of($tag) // {};
    is($r->{headers}{host}, 'chosen.example', 'websocket_pass_host $http_x_backend_host');
    is($r->{headers}{origin}, 'http://chosen.example', 'websocket_pass_origin with variables');
    bye($ws, 'host variable');
}
{
    my ($ws, $tag) = session('/named', 'record');
    is($ws->status, 101, 'upstream{} name in the URL: 101');
    my $r = rec_of($tag) // {};
    is($r->{headers}{host}, 'scripted', 'upstream{} name in the URL: Host is the name');
    bye($ws, 'named upstream');
}

# --- URLs with variables --------------------------------------------------------
{
    my $ws = WsClient->connect(port => $port, path => '/var/x?m=record');
    is($ws->status, 101, 'URL with a variable in the path: 101');
    my $r = $up->wait_record(path => qr{^/v/}) // {};
    is($r->{path}, '/v/record', 'URL with a variable in the path: the evaluated path is sent');
    is($r->{headers}{host}, "127.0.0.1:$UP", 'URL with a variable: Host from the evaluated URL');
    echo_ok($ws, 1, 'via a variable URL', 'variable URL');
    bye($ws, 'variable URL');
}
{
    my ($ws, $tag) = session('/varup', 'record?up=scripted&x=1');
    is($ws->status, 101, 'URL whose host variable names an upstream{}: 101');
    my $r = rec_of($tag) // {};
    is($r->{headers}{host}, 'scripted', 'host variable naming an upstream{}: Host is the name');
    like($r->{path} // '', qr{^/varup/record\?up=scripted&x=1&id=}, "host variable, no path: the client's URI is sent");
    bye($ws, 'variable upstream name');
}
{
    # No resolver is configured: a name that is not an upstream{} cannot be
    # resolved (and nothing is looked up).
    my ($ws) = session('/varname', 'record?h=no-such-upstream.invalid');
    is($ws->status, 502, 'host variable with a name and no resolver: 502');
    ($ws) = session('/varup', 'record?up=http://x');
    ok(($ws->status // 0) == 500 || ($ws->status // 0) == 502,
        'variable URL that evaluates to a non-ws URL: 500 or 502') or diag 'status ' . ($ws->status // 'none');
}

# --- subprotocols -------------------------------------------------------------------
{
    my ($ws, $tag) = session('/p', 'proto-second', protocols => [ 'chat', 'superchat', 'v3' ]);
    is($ws->status, 101, 'subprotocol chosen upstream: 101');
    is($ws->header('Sec-WebSocket-Protocol'), 'superchat', 'the client sees the subprotocol the upstream chose');
    my $r = rec_of($tag) // {};
    is($r->{headers}{'sec-websocket-protocol'}, 'chat, superchat, v3',
        "the client's offered subprotocols are forwarded in order");
    echo_ok($ws, 1, 'with a subprotocol', 'subprotocol session');
    bye($ws, 'subprotocol');
}
{
    my ($ws) = session('/p', 'record', protocols => [ 'chat' ]);
    is($ws->status, 101, 'offered, none chosen upstream: 101');
    ok(!defined $ws->header('Sec-WebSocket-Protocol'), 'offered, none chosen upstream: no subprotocol for the client');
    bye($ws, 'none chosen');
}

# --- upstream handshake failures ----------------------------------------------------
sub status_is {
    my ($prefix, $m, $want, $name, %o) = @_;
    my $t0 = time;
    my ($ws, $tag) = session($prefix, $m, %o);
    my $dt = time - $t0;
    is($ws->status, $want, $name) or diag 'status line: ' . ($ws->status_line // 'none');
    return ($ws, $dt, $tag);
}
status_is('/p', 'proto-bogus', 502, 'upstream chooses a subprotocol the client did not offer: 502',
    protocols => [ 'chat' ]);
status_is('/p', 'proto-bogus', 502, 'upstream chooses a subprotocol when none was offered: 502');
status_is('/p', 'status200', 502, 'upstream answers 200: 502');
status_is('/p', 'status404', 502, 'upstream answers 404: 502');
status_is('/p', 'badaccept', 502, 'upstream sends a wrong Sec-WebSocket-Accept: 502');
status_is('/p', 'noaccept', 502, 'upstream sends no Sec-WebSocket-Accept: 502');
status_is('/p', 'noupgrade', 502, 'upstream 101 without Upgrade: websocket: 502');
status_is('/p', 'garbage', 502, 'upstream answers garbage: 502');
status_is('/p', 'closeearly', 502, 'upstream closes before answering: 502');
{
    my ($ws, $dt) = status_is('/down', 'record', 502, 'upstream down (connection refused): 502');
    cmp_ok($dt, '<', 2, 'upstream down: answered at once');
}
{
    my ($ws, $dt, $tag) = status_is('/slow', 'silent', 504,
        'upstream accepts but never answers: 504 (websocket_connect_timeout 1s)', timeout => 10);
    cmp_ok($dt, '>=', 0.9, 'the 504 does not come before ~1 s') or diag sprintf '%.3fs', $dt;
    cmp_ok($dt, '<', 3, 'the 504 comes within 3 s') or diag sprintf '%.3fs', $dt;
    my $r = rec_of($tag, until => 'eof', timeout => 3) // {};
    is($r->{eof}, 1, 'after the 504 nginx closed the upstream connection');
}
status_is('/p', 'bighead', 502, 'upstream response head over 16 KiB: 502');
status_is('/p', 'noconnection', 502, 'upstream 101 without Connection: upgrade: 502');
status_is('/p', 'extension', 502, 'upstream 101 with an extension that was not offered: 502');
{
    my ($ws) = status_is('/p', 'dribble', 101, 'upstream 101 arriving 7 bytes at a time: 101');
    ok($ws->accept_ok, 'dribbled 101: the client gets its own accept key');
    echo_ok($ws, 1, 'after a dribbled 101', 'dribbled 101');
    bye($ws, 'dribbled 101');
}
{
    my ($ws) = status_is('/p', 'casey', 101, 'upstream 101 with headers in odd case and extra tokens: 101');
    echo_ok($ws, 1, 'odd case', 'odd-case 101');
    bye($ws, 'odd-case 101');
}
{
    # The client's handshake is checked before anything goes upstream.
    my $before = $up->count;
    my ($ws) = session('/p', 'record', headers => { 'Sec-WebSocket-Version' => '8' });
    is($ws->status, 426, 'bad client version: 426 before connecting upstream');
    ($ws) = session('/p', 'record', method => 'POST');
    is($ws->status, 405, 'POST: 405 before connecting upstream');
    ($ws) = session('/p', 'record', headers => { 'Sec-WebSocket-Key' => 'short' });
    is($ws->status, 400, 'bad client key: 400 before connecting upstream');
    sleep 0.3;
    is($up->count, $before, 'rejected client handshakes never reached the upstream');
}
for my $re (qr/failed the handshake/, qr/timed out/) {
    my @l = $t->grep_error_log($re);
    ok(@l && !grep({ !/\[error\]/ } @l), "upstream failure '$re' logged at error level")
        or diag join "\n", @l;
}

# --- frames in both directions: masking, fragments, control frames ----------------
{
    my ($ws, $tag) = session('/p', 'record');
    my @texts = map { "masked message $_ " . ('m' x ($_ * 10)) } 1 .. 5;
    for (@texts) {
        $ws->send_frame(opcode => 1, payload => $_, mask_key => 'ABCD');
        $ws->recv_message(timeout => 3);
    }
    $ws->send_frame(opcode => 2, payload => 'B' x 70, mask_key => "\0\0\0\0");
    my $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{payload} eq 'B' x 70, 'zero mask key from the client: relayed');

    # fragments from the client: relayed frame by frame, the echo returns
    # them as they came
    $ws->send_frame(fin => 0, opcode => 1, payload => 'one ');
    $ws->send_frame(fin => 0, opcode => 0, payload => 'two ');
    $ws->send_frame(fin => 1, opcode => 0, payload => 'three');
    my @f = map { $ws->recv_frame(timeout => 3) } 1 .. 3;
    is_deeply([ map { $_ ? "$_->{fin}/$_->{opcode}/$_->{payload}" : 'none' } @f ],
        [ '0/1/one ', '0/0/two ', '1/0/three' ],
        'fragments from the upstream reach the client frame by frame');

    # ping from the client: relayed, not answered by nginx
    $ws->send_ping('client ping');
    my $f = $ws->recv_frame(timeout => 0.5);
    ok(!$f, 'ping: nginx does not answer it itself (the upstream does not answer pings)')
        or diag "got opcode $f->{opcode} '$f->{payload}'";
    # ping from the upstream, pong from the client
    $ws->send_text('cmd:ping:upstream ping');
    $f = $ws->recv_frame(timeout => 3);
    ok($f && $f->{opcode} == 9 && $f->{payload} eq 'upstream ping', "the upstream's ping reaches the client");
    $ws->send_pong('upstream ping');
    $ws->send_text('sync');
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'sync', 'session goes on after the pings');
    bye($ws, 'frames');

    my $r = rec_of($tag, until => 'close_code') // {};
    my @fr = @{ $r->{frames} // [] };
    my @data = grep { $_->{opcode} == 1 && $_->{payload} =~ /^masked message/ } @fr;
    is(scalar @data, 5, 'upstream got the 5 messages');
    is(scalar(grep { $_->{masked} } @data), 5, 'client-to-upstream frames are masked');
    is_deeply([ map { $_->{payload} } @data ], \@texts, 'upstream got the payloads intact');
    is(scalar(grep { $_->{mask_key} eq 'ABCD' } @data), 0, "nginx re-masked them: not the client's mask key");
    my %keys = map { $_->{mask_key} => 1 } @data;
    cmp_ok(scalar(keys %keys), '>=', 2, 'the mask key changes between frames');
    my @frag = grep { $_->{payload} =~ /^(?:one |two |three)$/ } @fr;
    is_deeply([ map { "$_->{fin}/$_->{opcode}" } @frag ], [ '0/1', '0/0', '1/0' ],
        'client fragments reach the upstream frame by frame');
    my ($ping) = grep { $_->{opcode} == 9 } @fr;
    ok($ping && $ping->{payload} eq 'client ping' && $ping->{masked}, "the client's ping reached the upstream, masked");
    my ($pong) = grep { $_->{opcode} == 10 } @fr;
    ok($pong && $pong->{payload} eq 'upstream ping', "the client's pong reached the upstream");
    is($r->{close_code}, 1000, 'the upstream got close 1000');
}
{
    my ($ws, $tag) = session('/unmasked', 'record');
    echo_ok($ws, 1, 'sent unmasked upstream', 'websocket_pass_send_unmasked on');
    $ws->send_ping('p');
    bye($ws, 'unmasked');
    my $r = rec_of($tag, until => 'close_code') // {};
    my @fr = @{ $r->{frames} // [] };
    ok(@fr >= 3, 'unmasked: upstream got the frames');
    is(scalar(grep { $_->{masked} } @fr), 0, 'websocket_pass_send_unmasked on: every frame upstream is unmasked');
    ok((grep { $_->{payload} eq 'sent unmasked upstream' } @fr), 'unmasked: payload intact');
}
{
    my ($ws) = session('/p', 'frags');
    is($ws->status, 101, 'fragments from the upstream: 101');
    my @f = map { $ws->recv_frame(timeout => 3) } 1 .. 4;
    is_deeply([ map { $_ ? "$_->{fin}/$_->{opcode}/$_->{payload}" : 'none' } @f ],
        [ '0/1/ab', '1/9/mid', '0/0/cd', '1/0/ef' ],
        'upstream fragments and the ping between them reach the client as they were sent');
    is(scalar(grep { $_ && $_->{masked} } @f), 0, 'frames to the client are unmasked');
    bye($ws, 'upstream fragments');
}

# --- frames right behind the 101 ------------------------------------------------------
{
    my ($ws) = session('/p', 'eager');
    is($ws->status, 101, 'eager upstream: 101');
    my $m1 = $ws->recv_message(timeout => 3);
    my $m2 = $ws->recv_message(timeout => 3);
    is($m1 && $m1->{payload}, 'first, right behind the 101', 'frames sent with the 101 reach the client (1)');
    ok($m2 && $m2->{opcode} == 2 && $m2->{payload} eq "\x00second", 'frames sent with the 101 reach the client (2)');
    echo_ok($ws, 1, 'and then', 'eager upstream, later');
    bye($ws, 'eager');
}

# --- the client's frames pipelined behind its handshake ----------------------------
{
    my $key = WsClient::random_key();
    my $path = '/p/slowanswer?id=' . ++$id;
    my $raw = "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n"
        . build_frame(opcode => 1, payload => 'early bird')
        . build_frame(opcode => 2, payload => 'second early');
    my $ws = WsClient->connect(port => $port, raw => $raw, key => $key);
    is($ws->status, 101, 'frames pipelined behind the handshake (upstream answers after 1 s): 101');
    my $m1 = $ws->recv_message(timeout => 3);
    my $m2 = $ws->recv_message(timeout => 3);
    is($m1 && $m1->{payload}, 'early bird', 'pipelined frames are relayed once the upstream answered (1)');
    is($m2 && $m2->{payload}, 'second early', 'pipelined frames are relayed once the upstream answered (2)');
    bye($ws, 'pipelined behind the handshake');
}

{
    my ($ws) = session('/p', 'eagerbig');
    is($ws->status, 101, 'upstream sends ~110 KB with its 101: 101');
    my @got;
    for (1 .. 51) { my $m = $ws->recv_message(timeout => 3) or last; push @got, $m }
    my $ok = grep { $got[$_ - 1] && $got[$_ - 1]{payload} eq pack('N', $_) . ('e' x 996) } 1 .. 50;
    is($ok, 50, 'upstream sends ~110 KB with its 101: 50 small frames intact, in order');
    ok($got[50] && $got[50]{opcode} == 1 && $got[50]{payload} eq 'E' x 60000,
        'upstream sends ~110 KB with its 101: then the 60000-byte text');
    bye($ws, 'big burst with the 101');
}
{
    # ~50 KB of frames pipelined behind the handshake, more than a request
    # header buffer; the upstream answers after 1 s
    my $key = WsClient::random_key();
    my $path = '/p/slowanswer?id=' . ++$id;
    my @msgs = map { "pipelined $_ " . ('q' x 5000) } 1 .. 10;
    my $raw = "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n"
        . join('', map { build_frame(opcode => 1, payload => $_) } @msgs);
    my $ws = WsClient->connect(port => $port, raw => $raw, key => $key);
    is($ws->status, 101, '50 KB pipelined behind the handshake: 101');
    my @got;
    for (1 .. 10) { my $m = $ws->recv_message(timeout => 3) or last; push @got, $m->{payload} }
    is_deeply(\@got, \@msgs, '50 KB pipelined behind the handshake: every message relayed in order');
    bye($ws, '50 KB pipelined');
}

# --- the client goes away while the upstream handshake is under way ----------------
{
    my ($ws, $tag) = session('/slow', 'silent', timeout => 0.2);
    ok(!defined $ws->status, 'client gives up while the upstream is silent');
    $ws->close;
    my $t0 = time;
    my $r = rec_of($tag, until => 'eof', timeout => 5) // {};
    is($r->{eof}, 1, 'client gone during the upstream handshake: the upstream connection is closed');
    cmp_ok(time - $t0, '<', 2.5, '... by websocket_connect_timeout at the latest');
}
{
    my ($ws, $tag) = session('/p', 'slowanswer', timeout => 0.2);
    ok(!defined $ws->status, 'client gives up before the upstream answers');
    $ws->close;
    my $r = rec_of($tag, until => 'answered', timeout => 3) // {};
    ok($r->{answered}, 'the upstream answered 101 after the client left');
    $r = rec_of($tag, until => sub { exists $_[0]{loop_end} || exists $_[0]{close_code} },
        timeout => 5) // {};
    ok($r->{loop_end} || defined $r->{close_code},
        'client gone before the 101: the upstream connection is closed or closed with a close frame')
        or diag explain $r;
    ok(!defined $r->{close_code} || $r->{close_code} == 1001,
        '... with 1001 if a close frame is sent') or diag "close code $r->{close_code}";
}

# --- the upstream closes first ------------------------------------------------------
{
    my ($ws, $tag) = session('/p', 'close1000');
    is($ws->status, 101, 'upstream closes first: 101');
    my ($code, $reason) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'upstream closes first: client gets 1000');
    is($reason, 'upstream done', 'upstream closes first: the reason is relayed');
    ok(!$ws->wait_eof(0.3), 'upstream closes first: TCP stays open until the client answers');
    $ws->send_close(1000);
    ok($ws->wait_eof(3), 'upstream closes first: EOF after the client answered');
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_reply}, 1000, "the client's close answer reached the upstream");
    is($r->{eof}, 1, 'nginx closed the upstream connection');
}

# --- violations by the upstream -----------------------------------------------------
for my $case ([ 'masked', 1002, 'masked frame from the upstream' ],
              [ 'opcode', 1002, 'reserved opcode from the upstream' ],
              [ 'rsv', 1002, 'RSV bit from the upstream' ],
              [ 'badutf8', 1007, 'invalid UTF-8 text from the upstream' ],
              [ 'toobig', 1009, 'frame over websocket_max_payload_len from the upstream' ],
              [ 'badclose', 1002, 'close code 1005 from the upstream' ],
              [ 'closeshort', 1002, '1-byte close payload from the upstream' ],
              [ 'bigping', 1002, '126-byte ping from the upstream' ],
              [ 'fragping', 1002, 'fragmented ping from the upstream' ],
              [ 'orphancont', 1002, 'continuation without a message from the upstream' ]) {
    my ($m, $code, $name) = @$case;
    my ($ws, $tag) = session('/p', $m);
    is($ws->status, 101, "$name: 101");
    expect_close($ws, "$name: the client gets 1014 (Bad Gateway)", 1014);
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_code}, $code, "$name: the upstream gets close $code");
    is($r->{eof}, 1, "$name: the upstream connection is closed");
}
{
    my ($ws) = session('/p', 'drop');
    is($ws->status, 101, 'upstream drops TCP: 101');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'last words', 'upstream drops TCP: the message before it arrives');
    expect_close($ws, 'upstream drops TCP without close', 1011);
}
{
    my ($ws) = session('/p', 'eagerdrop');
    is($ws->status, 101, 'upstream sends a frame with its 101 and drops TCP: 101');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'only this', 'upstream drops TCP right after the 101: its frame arrives');
    expect_close($ws, 'upstream drops TCP right after the 101', 1011);
}
{
    my ($ws, $tag) = session('/p', 'closeboth');
    is($ws->status, 101, 'both close at once: 101');
    $ws->send_close(1000, 'client side');
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'both close at once: the client gets close 1000');
    ok($ws->wait_eof(3), 'both close at once: TCP closed');
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_code}, 1000, "both close at once: the upstream gets the client's close");
    is($r->{eof}, 1, 'both close at once: upstream connection closed');
}
{
    my ($ws, $tag) = session('/p', 'afterclose');
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 4002, 'upstream sends data after its close: the close arrives');
    is(scalar(grep { $_->{opcode} == 1 } $ws->skipped), 0, '... and nothing before it');
    $ws->send_close(4002);
    my $f = $ws->recv_frame(timeout => 1);
    ok(!$f, 'the data the upstream sent after its close is not relayed')
        or diag "got opcode $f->{opcode} '$f->{payload}'";
    ok($ws->wait_eof(3), 'upstream data after close: TCP closed');
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_reply}, 4002, "upstream data after close: the client's answer reached the upstream");
}

{
    my ($ws) = session('/p', 'closedrop');
    my ($code, $reason) = $ws->recv_close(timeout => 3);
    is($code, 1000, 'upstream sends close and drops TCP at once: the client gets its 1000')
        or diag 'got ' . close_desc($ws, $code);
    is($reason, 'gone', '... with its reason');
    $ws->send_close(1000);
    ok($ws->wait_eof(3), 'upstream sends close and drops TCP: EOF after the client answered');
}
{
    # the message ends inside a 4-byte character: invalid as a whole
    my ($ws) = session('/p', 'splitutf8');
    my $f = $ws->recv_frame(timeout => 3);
    ok($f && $f->{opcode} == 1 && !$f->{fin} && $f->{payload} eq "caf\xc3",
        'upstream fragment splitting a character: relayed as it came');
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1014, 'upstream text message ending inside a character: the client gets 1014')
        or diag 'got ' . close_desc($ws, $code);
    ok($ws->wait_eof(3), '... TCP closed');
}
{
    my ($ws, $tag) = session('/p', 'badsplit');
    expect_close($ws, 'invalid UTF-8 across upstream fragments: the client gets 1014', 1014);
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_code}, 1007, 'invalid UTF-8 across upstream fragments: the upstream gets 1007');
}
{
    my ($ws, $tag) = session('/p', 'badreason');
    expect_close($ws, 'invalid UTF-8 in the close reason from the upstream: the client gets 1014', 1014);
    my $r = rec_of($tag, until => 'eof') // {};
    is($r->{close_code}, 1007, 'invalid close reason from the upstream: the upstream gets 1007');
}
{
    my ($ws, $tag) = session('/p', 'record');
    $ws->send_close(4321, 'the reason');
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 4321, 'client close 4321: answered with 4321');
    ok($ws->wait_eof(3), 'client close 4321: TCP closed');
    my $r = rec_of($tag, until => 'close_code') // {};
    my ($cf) = grep { $_->{opcode} == 8 } @{ $r->{frames} // [] };
    is($cf && $cf->{payload}, pack('n', 4321) . 'the reason', "the client's close code and reason reach the upstream");
    ok($cf && $cf->{masked}, "the client's close reaches the upstream masked");
}
{
    my ($ws, $tag) = session('/p', 'record');
    $ws->send_close(1000);
    $ws->close;
    my $r = rec_of($tag, until => 'close_code') // {};
    is($r->{close_code}, 1000, 'client sends close and drops TCP at once: the upstream gets 1000');
}

# --- websocket_timeout on the relay ---------------------------------------------------
{
    my ($ws, $tag) = session('/short', 'record');
    is($ws->status, 101, 'idle relay (websocket_timeout 1s): 101');
    my $t0 = time;
    my ($code) = $ws->recv_close(timeout => 4);
    my $dt = time - $t0;
    is($code, 1001, 'idle relay: the client gets close 1001') or diag 'got ' . close_desc($ws, $code);
    cmp_ok($dt, '>=', 0.9, 'idle relay: not before the timeout') or diag sprintf '%.2fs', $dt;
    cmp_ok($dt, '<', 3, 'idle relay: within timeout + 2 s') or diag sprintf '%.2fs', $dt;
    $ws->send_close(1001);
    ok($ws->wait_eof(3), 'idle relay: TCP closed');
    my $r = rec_of($tag, until => 'close_code') // {};
    is($r->{close_code}, 1001, 'idle relay: the upstream gets close 1001 too');
}
{
    # traffic on one leg only keeps the session? Not specified; only check
    # that a deaf upstream cannot hold a closing client for ever
    my ($ws, $tag) = session('/short', 'deaf');
    is($ws->status, 101, 'deaf upstream: 101');
    $ws->send_close(1000);
    my $t0 = time;
    ok($ws->wait_eof(5), 'deaf upstream never answers the close: the client is closed anyway');
    cmp_ok(time - $t0, '<', 4, '... within websocket_timeout + 2 s') or diag sprintf '%.2fs', time - $t0;
    my $r = rec_of($tag, until => 'eof', timeout => 3) // {};
    is($r->{close_code}, 1000, "deaf upstream: it got the client's close 1000");
    is($r->{eof}, 1, 'deaf upstream: its connection is closed');
}

{
    my @l = $t->grep_error_log(qr/websocket: upstream: /);
    ok(@l && !grep({ !/\[error\]/ } @l), 'upstream violations are logged at error level')
        or diag join "\n", @l;
}

# --- the client vanishes / misbehaves ---------------------------------------------------
{
    my ($ws, $tag) = session('/p', 'record');
    echo_ok($ws, 1, 'about to vanish', 'client drops TCP');
    $ws->close;
    my $r = rec_of($tag, until => 'close_code') // {};
    is($r->{close_code}, 1001, 'client drops TCP: the upstream gets close 1001');
    $r = rec_of($tag, until => 'eof') // {};
    is($r->{eof}, 1, 'client drops TCP: the upstream connection is closed');
}
# The upstream ('tail') still sends a message after nginx's close; it
# reaches the client before the client's close.
for my $case ([ 'unmasked frame', 1002, sub { $_[0]->send_frame(payload => 'bare', mask => 0) } ],
              [ 'invalid UTF-8', 1007, sub { $_[0]->send_text("x\xc0\xafy") } ],
              [ 'frame over the limit', 1009, sub { $_[0]->send_binary('L' x 70000) } ],
              [ 'reserved opcode', 1002, sub { $_[0]->send_frame(opcode => 11, payload => '') } ],
              [ 'invalid close code', 1002, sub { $_[0]->send_close(1004) } ]) {
    my ($name, $code, $send) = @$case;
    my ($ws, $tag) = session('/p', 'tail');
    is($ws->status, 101, "client $name: 101");
    $send->($ws);
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 1, "client $name: what the upstream still sends reaches the client")
        or diag 'got ' . ($m ? "opcode $m->{opcode}" : $ws->error // 'nothing');
    is($m && $m->{payload}, 'tail after close', "client $name: ... its payload");
    expect_close($ws, "client $name", $code);
    my $r = rec_of($tag, until => 'close_code') // {};
    is($r->{close_code}, $code, "client $name: the upstream got close $code");
}

# Violations in the middle of a fragmented message: the first fragment was
# relayed (and echoed back as a fragment by 'record').
for my $case ([ 'invalid UTF-8 across fragments', 1007, [ fin => 1, opcode => 0, payload => 'A' ] ],
              [ 'new message inside a fragmented one', 1002, [ fin => 1, opcode => 1, payload => 'second' ] ]) {
    my ($name, $code, $second) = @$case;
    my ($ws, $tag) = session('/p', 'record');
    $ws->send_frame(fin => 0, opcode => 1, payload => "ok \xe2\x9c");
    my $f = $ws->recv_frame(timeout => 3);
    ok($f && !$f->{fin} && $f->{opcode} == 1, "client $name: the first fragment went through");
    $ws->send_frame(@$second);
    expect_close($ws, "client $name", $code);
    my $r = rec_of($tag, until => 'close_code') // {};
    is($r->{close_code}, $code, "client $name: the upstream got close $code");
}

# The client breaks the protocol, then the upstream does too (a masked frame
# after nginx's close): the client must still get a close frame.
{
    for my $case ([ 'unmasked frame', 1002, sub { $_[0]->send_frame(payload => 'bare', mask => 0) } ],
                  [ 'invalid UTF-8 across fragments', 1007, sub {
                        $_[0]->send_frame(fin => 0, opcode => 1, payload => "ok \xe2\x9c");
                        $_[0]->recv_frame(timeout => 3);
                        $_[0]->send_frame(fin => 1, opcode => 0, payload => 'A') } ]) {
        my ($name, $code, $send) = @$case;
        my ($ws, $tag) = session('/p', 'badtail');
        $send->($ws);
        my ($got) = $ws->recv_close(timeout => 3);
        is($got, $code, "client $name, then an upstream violation: the client gets its own close $code")
            or diag 'got ' . close_desc($ws, $got);
        ok($ws->wait_eof(3), "client $name, then an upstream violation: TCP closed");
    }
}

{
    my @l = $t->grep_error_log(qr/websocket: client: /);
    ok(@l && !grep({ !/\[info\]/ } @l), 'client violations are logged at info level')
        or diag join "\n", @l;
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers, '/p/record');
$up->stop;

done_testing;
