#!/usr/bin/perl
# websocket_pass: the 101 goes out whole before the first relayed frame.
# A 101 larger than the socket can take (64 headers of 4,000 bytes from
# `add_header ... always`) stays partly in nginx's output filters while the
# client reads slowly; an upstream that speaks right after its handshake
# must not have its frame written into the middle of the 101's header.
# A client that never reads the rest of the 101 is closed after
# websocket_timeout.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Time::HiRes qw(time sleep);
use WsClient;
use WsTest;
use WsUpstream;
use WsValgrind qw(scaled);

my $HEADERS = 64;
my $PAD = 'p' x 4000;
my $ADD_HEADERS = join '', map { "        add_header X-Pad-$_ $PAD always;\n" } 1 .. $HEADERS;

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    $c->send_text('hello from upstream');
    $c->serve(idle => 20);
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%% sndbuf=16k;

    location /pass {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout 2s;
$ADD_HEADERS    }

    location /ws {
        websocket_echo;
    }
}
EOF_CONF

# A connected socket with a small receive buffer, the handshake sent.
sub slow_client {
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die "setsockopt: $!";
    connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or die "connect: $!";
    my $key = WsClient::random_key();
    print $s "GET /pass HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
    return ($s, $key);
}

# Reads until $want bytes past the header end or EOF, slowly at first.
sub read_all {
    my ($s, $deadline) = @_;
    my $buf = '';
    while (time < $deadline) {
        my $rin = '';
        vec($rin, fileno $s, 1) = 1;
        next unless select($rin, undef, undef, 0.1);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        my $end = index($buf, "\r\n\r\n");
        last if $end >= 0 && length($buf) >= $end + 4 + 2 + length 'hello from upstream';
    }
    return $buf;
}

{
    my ($s, $key) = slow_client();
    sleep 0.5;    # the upstream has answered and spoken; the 101 is held
    my $buf = read_all($s, time + scaled(10));
    my $end = index($buf, "\r\n\r\n");
    ok($end > 0, 'the whole 101 head arrived');
    my $head = $end > 0 ? substr($buf, 0, $end) : '';
    like($head, qr{\AHTTP/1\.1 101 }, '101 Switching Protocols');
    my @pads = $head =~ /^X-Pad-\d+: (.*?)\r?$/mg;
    is(scalar @pads, $HEADERS, "all $HEADERS padding headers arrived");
    is(scalar(grep { $_ ne $PAD } @pads), 0, 'nothing was written into them');
    my $accept = WsClient::accept_key($key);
    like($head, qr/^Sec-WebSocket-Accept: \Q$accept\E\r?$/m, 'accept key');
    my $rest = $end > 0 ? substr($buf, $end + 4) : '';
    is(substr($rest, 0, 2), "\x81" . chr(length 'hello from upstream'),
        'then the upstream\'s text frame');
    is(substr($rest, 2), 'hello from upstream', 'with its payload');
    close $s;
}

# A client that never reads the rest of the 101: closed within the timeout.
{
    my ($s) = slow_client();
    my $t0 = time;
    sleep 3.5;
    my $buf = '';
    my $eof = 0;
    while (time < $t0 + scaled(10)) {
        my $rin = '';
        vec($rin, fileno $s, 1) = 1;
        next unless select($rin, undef, undef, 0.1);
        my $n = sysread($s, $buf, 65536, length $buf);
        if (!$n) { $eof = 1; last }
    }
    ok($eof, 'a client that does not take the 101 is closed');
    ok(length($buf) < $HEADERS * length($PAD), 'before the whole 101 was sent');
    close $s;
}

finish($t, $port, \@workers);
$up->stop;
done_testing;
