#!/usr/bin/perl
# websocket_echo: messages come back unchanged (content, type), unmasked;
# ping -> pong; large messages, a slow reader, websocket_send_masked.
# Fragmentation is in 07-fragmentation.t, the close handshake in 09-close.t.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'     => [],
    '/big'    => ['websocket_max_payload_len 2m'],
    '/masked' => ['websocket_send_masked on'],
)
    # A tiny socket send buffer, so that a slow reader really makes the
    # server's writes return EAGAIN.
    . echo_server('1 sndbuf=8k', '/big' => ['websocket_max_payload_len 2m']));

sub ws { my $path = shift // '/ws'; ws_open($port, $path, @_) }

# --- simple messages --------------------------------------------------------
{
    my $ws = ws();
    echo_ok($ws, 1, 'hello', 'text');
    echo_ok($ws, 2, join('', map { chr } 0 .. 255), 'binary, all byte values');
    echo_ok($ws, 1, '', 'empty text');
    echo_ok($ws, 2, '', 'empty binary');
    echo_ok($ws, 1, 'x' x 125, 'text of 125 bytes (7-bit length)');
    echo_ok($ws, 1, 'y' x 126, 'text of 126 bytes (16-bit length)');
    echo_ok($ws, 2, "\0" x 65535, 'binary of 65535 bytes (the default limit)');
    my $utf8 = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x98\x80";    # héllo wörld ✓ 😀
    echo_ok($ws, 1, $utf8, 'UTF-8 text');
    bye($ws, 'simple');
}

# --- several messages in one write come back in order ----------------------
{
    my $ws = ws();
    $ws->send_raw(join '', map { build_frame(opcode => 1, payload => "msg-$_") } 1 .. 20);
    my @got;
    for (1 .. 20) {
        my $m = $ws->recv_message(timeout => 3) or last;
        push @got, $m->{payload};
    }
    is_deeply(\@got, [ map { "msg-$_" } 1 .. 20 ], 'pipelined messages echoed in order');
    bye($ws, 'pipelined');
}

# --- a frame dribbled in a few bytes at a time (partial reads) ---------------------
{
    my $ws = ws();
    my $payload = join '', map { chr(65 + $_ % 26) } 1 .. 1000;
    my $frame = build_frame(opcode => 1, payload => $payload);
    my $pos = 0;
    my $step = 1;
    while ($pos < length $frame) {
        $ws->send_raw(substr($frame, $pos, $step));
        $pos += $step;
        $step = $pos < 10 ? 1 : 97;
        Time::HiRes::sleep(0.005);
    }
    my $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{payload} eq $payload, 'frame sent in small pieces: echoed intact');
    bye($ws, 'dribbled');
}

# --- ping / pong --------------------------------------------------------------
{
    my $ws = ws();
    ping_pong_ok($ws, 'ping');
    bye($ws, 'ping');
}

# --- server-side masking -----------------------------------------------------------
{
    my $ws = ws('/masked');
    $ws->send_text('mask me');
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{masked}, 1, 'websocket_send_masked on: reply is masked');
    is($f && $f->{payload}, 'mask me', 'websocket_send_masked on: payload intact');
    my $bin = join '', map { chr(($_ * 7) % 256) } 1 .. 3000;
    $ws->send_binary($bin);
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{masked}, 1, 'websocket_send_masked on: binary reply is masked');
    ok($f && $f->{opcode} == 2 && $f->{payload} eq $bin, 'websocket_send_masked on: 3000 bytes intact');
    $ws->send_ping('masked pong?');
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 10, 'websocket_send_masked on: ping answered');
    is($f && $f->{masked}, 1, 'websocket_send_masked on: pong is masked');
    is($f && $f->{payload}, 'masked pong?', 'websocket_send_masked on: pong payload intact');
    bye($ws, 'masked');
}

# --- 1 MiB messages with websocket_max_payload_len 2m --------------------------
my $MiB = 1024 * 1024;
my $bin = '';
{
    my $block = join '', map { chr int rand 256 } 1 .. 4096;
    $bin .= $block ^ (chr($_ % 256) x 4096) for 1 .. 256;
}
my $text = '';
{
    my $unit = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x98\x80 ";    # 24 bytes
    $text = $unit x int($MiB / length $unit);
    $text .= 'a' x ($MiB - length $text);
}
is(length $bin, $MiB, 'test data: 1 MiB binary');
is(length $text, $MiB, 'test data: 1 MiB text');

{
    my $ws = ws('/big');
    echo_ok($ws, 2, $bin, '1 MiB binary');
    echo_ok($ws, 1, $text, '1 MiB UTF-8 text');
    bye($ws, '1 MiB');
}

# --- slow reader: the server must cope with a peer that reads slowly -------------
{
    my $ws = ws('/big', port => $t->port(1), rcvbuf => 16384);
    my $t0 = time;
    ok($ws->send_binary($bin), 'slow reader: 1 MiB sent');
    $ws->read_slowly(1024, 0.0005);
    my $m = $ws->recv_message(timeout => 15);
    $ws->read_slowly(0);
    ok($m, 'slow reader: message received');
    is($m && $m->{opcode}, 2, 'slow reader: binary');
    ok($m && $m->{payload} eq $bin, 'slow reader: 1 MiB intact, read 1 KiB at a time')
        or diag 'got ' . ($m ? length $m->{payload} : 0) . ' bytes';
    note sprintf 'slow read took %.2fs', time - $t0;

    # and the session is still fine afterwards
    echo_ok($ws, 1, 'still here', 'after slow read');
    bye($ws, 'slow reader');
}

finish($t, $port, \@workers);

done_testing;
