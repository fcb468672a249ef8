#!/usr/bin/perl
# Hostile peers, part TLS and deflate (issue 15, points 4 and 5).
#
# TLS writes must be retried with the same bytes: a client with a small
# receive buffer writes 3,000 messages of 1,000 bytes over TLS before it
# reads any, then reads every echo. nginx's SSL_write() meets a full socket
# while more output queues behind it; OpenSSL wants the retry with the same
# buffer, which a queue that grows (or is compacted) moves. Checked on a
# TLS echo (`listen ... ssl sndbuf=8k`) and through websocket_pass to a
# wss:// echo of the same nginx: every echo arrives, in order, and no
# "bad write retry" (or any [crit]) is logged.
#
# A fragmented compressed message is limited by what it inflates to: a
# 20 KB text in 20,001 compressed fragments (one byte each, sync-flushed,
# ~140 KB on the wire) echoes intact under the default 64 KiB limit; a
# message at a 1 KiB limit sent one byte per fragment (the worst case of the
# rule, ~7 bytes per byte) is echoed; a message whose compressed payload
# exceeds the documented bound (8 x websocket_max_recv_len + 1 KiB) with
# empty flushes that inflate to nothing gets 1009.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Compress::Raw::Zlib;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF IPPROTO_TCP TCP_NODELAY
    inet_aton pack_sockaddr_in);
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame OP_TEXT OP_CONT OP_CLOSE);
use WsNginx;
use WsTest;
use WsValgrind qw(scaled);

plan skip_all => 'the openssl command is needed' if system('openssl version >/dev/null 2>&1') != 0;
plan skip_all => 'IO::Socket::SSL is needed' unless eval { require IO::Socket::SSL; 1 };
my ($NGINX) = WsNginx->locate;
plan skip_all => 'nginx without http_ssl_module' unless `'$NGINX' -V 2>&1` =~ /--with-http_ssl_module/;

my $t = WsNginx->new(worker_processes => 1, conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%% ssl sndbuf=8k;
    ssl_certificate %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;

    location /echo {
        websocket_echo;
    }

    location /echo-1s {
        websocket_echo;
        websocket_timeout 1s;
    }
}

# the client's leg over TLS too; the upstream leg to the TLS echo above
server {
    listen 127.0.0.1:%%PORT_1%% ssl sndbuf=8k;
    ssl_certificate %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;

    location /pass {
        websocket_pass wss://127.0.0.1:%%PORT_0%%/echo;
    }
}

server {
    listen 127.0.0.1:%%PORT_2%%;

    location /deflate {
        websocket_echo;
        websocket_deflate on;
    }

    location /deflate-1k {
        websocket_echo;
        websocket_deflate on;
        websocket_max_payload_len 1k;
    }
}
EOF_CONF

my $D = $t->testdir;
{
    my $out = `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 -subj /CN=localhost -keyout '$D/localhost.key' -out '$D/localhost.crt' 2>&1`;
    die "openssl req failed:\n$out" if $? != 0;
}

$t->start;
my @workers = $t->worker_pids;
my ($TLS, $PASS, $PLAIN) = map { $t->port($_) } 0 .. 2;

# --- a TLS client that writes before it reads -------------------------------------

# A TLS WebSocket session on a socket whose receive buffer is set small
# before connecting (so the window nginx may fill stays small). Returns
# the non-blocking IO::Socket::SSL handle and the bytes read after the
# 101's head, or dies.
sub tls_open {
    my ($port, $path) = @_;
    CORE::socket(my $fh, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
    setsockopt($fh, SOL_SOCKET, SO_RCVBUF, pack('i', 4096)) or die "SO_RCVBUF: $!";
    setsockopt($fh, IPPROTO_TCP, TCP_NODELAY, pack('i', 1));
    CORE::connect($fh, pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or die "connect: $!";
    IO::Socket::SSL->start_SSL($fh, SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
        Timeout => scaled(5)) or die "TLS handshake: " . IO::Socket::SSL::errstr();
    print $fh "GET $path HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        . "Sec-WebSocket-Version: 13\r\n\r\n";
    my $head = '';
    while ($head !~ /\r\n\r\n/) {
        my $n = sysread($fh, $head, 1, length $head);
        die "handshake: no answer" unless $n;
    }
    die "handshake: $head" unless $head =~ m{\AHTTP/1\.1 101 };
    $fh->blocking(0);
    return $fh;
}

sub payload { my $i = shift; sprintf('%05d', $i) . ('x' x 995) }

# Writes $n messages of 1,000 bytes without reading until the writes stop
# moving for a while (or all are written), then reads every echo while
# writing the rest. Returns (echoes in order, first out-of-order index or
# undef, the close code if one came, how many messages went out before the
# first read).
sub write_then_read {
    my ($fh, $n) = @_;
    my $out = join '', map { build_frame(opcode => OP_TEXT, payload => payload($_)) } 1 .. $n;
    my ($off, $in, $got, $bad, $close, $before_read) = (0, '', 0, undef, undef, undef);
    my $stalled_since = time;
    my $reading = 0;
    my $deadline = time + scaled(30);
    while ($got < $n && !defined $close && time < $deadline) {
        my $moved = 0;
        if ($off < length $out) {
            my $w = syswrite($fh, $out, 16384, $off);
            if (defined $w && $w > 0) {
                $off += $w;
                $moved = 1;
            } elsif (!defined $w && $! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                last;
            }
        }
        # start reading once everything is written or nothing moved for 1 s
        if (!$reading && ($off == length $out || (!$moved && time - $stalled_since > 1))) {
            $reading = 1;
            $before_read = int($off / 1008);
        }
        $stalled_since = time if $moved;
        if ($reading) {
            my $r = sysread($fh, my $chunk, 65536);
            if (defined $r && $r > 0) {
                $in .= $chunk;
                $moved = 1;
                while (my $f = parse_frame(\$in)) {
                    if ($f->{opcode} == OP_CLOSE) {
                        $close = length $f->{payload} >= 2 ? unpack('n', $f->{payload}) : 1005;
                        last;
                    }
                    $got++;
                    $bad //= $got if $f->{payload} ne payload($got);
                }
            } elsif (defined $r || ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR)) {
                last;    # EOF or an error
            }
        }
        IO::Select::select(IO::Select->new($fh), undef, undef, 0.01) unless $moved || $fh->pending;
    }
    return ($got, $bad, $close, $before_read);
}

# One unmasked frame from the front of $$buf, or undef.
sub parse_frame {
    my ($buf) = @_;
    return undef if length $$buf < 2;
    my ($b0, $b1) = unpack 'CC', $$buf;
    my ($len, $hl) = ($b1 & 0x7f, 2);
    if ($len == 126) {
        return undef if length $$buf < 4;
        ($len, $hl) = (unpack('n', substr($$buf, 2, 2)), 4);
    } elsif ($len == 127) {
        return undef if length $$buf < 10;
        ($len, $hl) = (unpack('Q>', substr($$buf, 2, 8)), 10);
    }
    return undef if length $$buf < $hl + $len;
    my $f = { opcode => $b0 & 0x0f, payload => substr($$buf, $hl, $len) };
    substr($$buf, 0, $hl + $len, '');
    return $f;
}

my $N = 3000;
for my $case ([ 'TLS echo', $TLS, '/echo' ], [ 'pass to a wss:// echo', $PASS, '/pass' ]) {
    my ($name, $port, $path) = @$case;
    my $fh = tls_open($port, $path);
    my ($got, $bad, $close, $before_read) = write_then_read($fh, $N);
    note "$name: " . ($before_read // 0) . " messages written before the first read";
    is($got, $N, "$name: a client that writes $N messages before reading gets every echo");
    is($bad, undef, "$name: in order and intact");
    is($close, undef, "$name: no close frame before the last echo");
    is_deeply([ $t->grep_error_log(qr/\[crit\]|bad write retry/) ], [],
        "$name: no [crit], no bad write retry");
    # the session still works and closes cleanly
    $fh->blocking(1);
    syswrite($fh, build_frame(opcode => OP_CLOSE, payload => pack('n', 1000)));
    my $in = '';
    my $f;
    while (!($f = parse_frame(\$in))) {
        my $r = sysread($fh, $in, 4096, length $in);
        last unless $r;
    }
    is($f && $f->{opcode} == OP_CLOSE ? unpack('n', $f->{payload}) : undef, 1000,
        "$name: the close is answered");
    close $fh;
}

# A session that ends while its TLS write waits for a retry: the client
# writes without reading until the write timeout (1 s) ends the session,
# then reads. nginx's TLS shutdown must not send close_notify behind the
# unfinished record (SSL_shutdown() would fail with "bad write retry").
{
    my $fh = tls_open($TLS, '/echo-1s');
    my $frame = build_frame(opcode => OP_TEXT, payload => payload(1));
    my $t0 = time;
    while (time - $t0 < scaled(2.5)) {
        my $w = syswrite($fh, $frame);
        sleep 0.005 unless defined $w;
    }
    my ($eof, $deadline) = (0, time + scaled(10));
    while (!$eof && time < $deadline) {
        my $r = sysread($fh, my $chunk, 65536);
        if (defined $r) { $eof = 1 if $r == 0 }
        elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) { $eof = 1 }
        else { IO::Select::select(IO::Select->new($fh), undef, undef, 0.05) unless $fh->pending }
    }
    ok($eof, 'write timeout with a TLS write pending: the connection is closed');
    sleep 0.5;
    is_deeply([ $t->grep_error_log(qr/\[crit\]|bad write retry/) ], [],
        'write timeout with a TLS write pending: no [crit], no bad write retry');
    close $fh;
}

# --- a fragmented compressed message ----------------------------------------------

my $OFFER = 'permessage-deflate; client_max_window_bits';

sub deflate_open {
    my ($path) = @_;
    my $ws = WsClient->connect(port => $PLAIN, path => $path,
        headers => { 'Sec-WebSocket-Extensions' => $OFFER });
    die "no 101 on $path" unless ($ws->status // 0) == 101;
    die "deflate not agreed on $path" unless ($ws->header('Sec-WebSocket-Extensions') // '') =~ /permessage-deflate/;
    return $ws;
}

sub deflater {
    my ($d, $st) = Compress::Raw::Zlib::Deflate->new(-WindowBits => -15, -AppendOutput => 1);
    die "deflate: $st" unless $st == Z_OK;
    return $d;
}

# The frames of one text message, each piece compressed and sync-flushed
# (the flush tail stripped from the last, RFC 7692 §7.2.1), RSV1 on the
# first; an undef piece is an empty flush that inflates to nothing.
# Returns (frames, compressed payload bytes).
sub compressed_frags {
    my @pieces = @_;
    my $d = deflater();
    my ($frames, $wire) = ('', 0);
    for my $i (0 .. $#pieces) {
        my $fin = $i == $#pieces;
        my $out = '';
        if (defined $pieces[$i]) {
            $d->deflate($pieces[$i], $out) == Z_OK or die 'deflate failed';
            $d->flush($out, Z_SYNC_FLUSH) == Z_OK or die 'flush failed';
        } else {
            # an empty flush: an empty stored block, which zlib itself
            # would not write again right after a flush
            $out = "\x00\x00\x00\xff\xff";
        }
        $out =~ s/\x00\x00\xff\xff\z// if $fin;
        $wire += length $out;
        $frames .= build_frame(fin => $fin, rsv => $i == 0 ? 4 : 0,
            opcode => $i == 0 ? OP_TEXT : OP_CONT, payload => $out);
    }
    return ($frames, $wire);
}

sub inflate_message {
    my ($payload) = @_;
    my ($i, $st) = Compress::Raw::Zlib::Inflate->new(-WindowBits => -15, -AppendOutput => 1,
        -ConsumeInput => 1, -LimitOutput => 0);
    my $in = $payload . "\x00\x00\xff\xff";
    my $out = '';
    $i->inflate($in, $out);
    return $out;
}

{
    my $text = join '', map { chr(97 + $_ % 26) } 0 .. 19_999;
    my ($frames, $wire) = compressed_frags((split //, $text), '');
    note "20 KB text in 20,001 fragments: $wire compressed bytes";
    cmp_ok($wire, '>', 65536, '20 KB in 20,001 fragments: more compressed bytes than the 64 KiB limit');
    my $ws = deflate_open('/deflate');
    $ws->send_raw($frames, timeout => 20);
    my $m = $ws->recv_message(timeout => 10);
    ok($m && $m->{opcode} == OP_TEXT, '20 KB in 20,001 compressed fragments: a text message comes back')
        or diag $m ? "opcode $m->{opcode} payload " . unpack('H*', substr($m->{payload}, 0, 2)) : 'nothing';
    my $echo = $m && $m->{rsv} & 4 ? inflate_message($m->{payload}) : $m && $m->{payload};
    ok(defined $echo && $echo eq $text, '... intact');
    bye($ws, '20 KB in 20,001 compressed fragments');
}
{
    # the rule's worst case: a message at the limit, one byte per fragment
    my $text = 'k' x 1024;
    my ($frames, $wire) = compressed_frags(split //, $text);
    note "1 KiB, a byte per fragment: $wire compressed bytes";
    my $ws = deflate_open('/deflate-1k');
    $ws->send_raw($frames, timeout => 20);
    my $m = $ws->recv_message(timeout => 10);
    my $echo = $m && $m->{rsv} & 4 ? inflate_message($m->{payload}) : $m && $m->{payload};
    ok(defined $echo && $echo eq $text, '1 KiB limit: 1024 bytes in 1024 compressed fragments echoed');
    bye($ws, '1 KiB in 1024 fragments');
}
{
    # over the bound (8 x 1024 + 1024 bytes) with empty flushes: 1009
    my ($frames, $wire) = compressed_frags('a', (undef) x 2000, 'b');
    note "2002 fragments, 2 bytes of text: $wire compressed bytes";
    cmp_ok($wire, '>', 8 * 1024 + 1024, 'the empty flushes exceed the bound');
    my $ws = deflate_open('/deflate-1k');
    $ws->send_raw($frames, timeout => 20);
    expect_close($ws, 'compressed input over 8 x max_recv_len + 1 KiB', 1009);
}

finish($t, $PLAIN, \@workers, '/deflate');

done_testing;
