#!/usr/bin/perl
# Frame-level rules (RFC 6455 section 5): reserved bits, opcodes, client
# masking, control-frame limits, and the 7/16/64-bit payload length
# encodings. Every violation ends in close 1002, then TCP close.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'  => [],
    '/big' => ['websocket_max_payload_len 256k'],
));

sub f { build_frame(@_) }
sub v { violation($port, @_) }

# --- masking -------------------------------------------------------------------
v('unmasked text frame',   '/ws', f(opcode => 1, payload => 'hi', mask => 0), 1002);
v('unmasked binary frame', '/ws', f(opcode => 2, payload => 'hi', mask => 0), 1002);
v('unmasked empty text frame', '/ws', f(opcode => 1, payload => '', mask => 0), 1002);
v('unmasked ping',         '/ws', f(opcode => 9, payload => 'hi', mask => 0), 1002);
v('unmasked pong',         '/ws', f(opcode => 10, payload => 'hi', mask => 0), 1002);
v('unmasked close',        '/ws', f(opcode => 8, payload => pack('n', 1000), mask => 0), 1002);
v('unmasked continuation', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 0, payload => 'b', mask => 0), 1002);
v('masked text, then an unmasked one', '/ws',
    f(opcode => 1, payload => 'ok') . f(opcode => 1, payload => 'no', mask => 0), 1002);
{
    my $ws = ws_open($port, '/ws');
    $ws->send_frame(opcode => 1, payload => 'zero key', mask_key => "\0\0\0\0");
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'zero key', 'an all-zero masking key is a valid mask');
    $ws->send_frame(opcode => 2, payload => "\xff" x 9, mask_key => "\xff\xff\xff\xff");
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, "\xff" x 9, 'an all-ones masking key unmasks right');
    bye($ws, 'masking keys');
}

# --- reserved bits (no extension negotiated) -----------------------------------
v('RSV1 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 4), 1002);
v('RSV2 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 2), 1002);
v('RSV3 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 1), 1002);
v('all RSV bits set', '/ws', f(opcode => 2, payload => 'hi', rsv => 7), 1002);
v('RSV bit on a control frame', '/ws', f(opcode => 9, payload => 'hi', rsv => 4), 1002);
v('RSV bit on a close frame', '/ws', f(opcode => 8, payload => pack('n', 1000), rsv => 2), 1002);
v('RSV bit on a continuation frame', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 0, payload => 'b', rsv => 4), 1002);
v('RSV bit after a good message', '/ws',
    f(opcode => 1, payload => 'fine') . f(opcode => 1, payload => 'bad', rsv => 1), 1002);
{
    # the good message before the violation is still echoed
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(f(opcode => 1, payload => 'first') . f(opcode => 1, payload => 'x', rsv => 4));
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 1, 'message before an RSV violation: echoed');
    is($m && $m->{payload}, 'first', '... with its payload');
    expect_close($ws, '... then', 1002);
}

# --- opcodes -------------------------------------------------------------------
for my $op (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF) {
    v(sprintf('reserved opcode 0x%X', $op), '/ws', f(opcode => $op, payload => 'x'), 1002);
}
v('reserved data opcode 0x3 with FIN clear', '/ws', f(opcode => 3, fin => 0, payload => 'x'), 1002);
v('reserved control opcode 0xB, empty', '/ws', f(opcode => 0xB, payload => ''), 1002);
v('reserved opcode inside a fragmented message', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 5, payload => 'b'), 1002);

# --- control frames --------------------------------------------------------------
v('ping with a 126-byte payload',  '/ws', f(opcode => 9, payload => 'p' x 126), 1002);
v('pong with a 126-byte payload',  '/ws', f(opcode => 10, payload => 'p' x 126), 1002);
v('close with a 126-byte payload', '/ws',
    f(opcode => 8, payload => pack('n', 1000) . ('r' x 124)), 1002);
v('ping announcing 65535 bytes (16-bit length)', '/ws',
    f(opcode => 9, payload => 'p' x 10, len_override => 65535), 1002);
v('ping announcing 2^32 bytes (64-bit length)', '/ws',
    f(opcode => 9, payload => '', len_override => 4294967296), 1002);
v('fragmented ping (FIN clear)',  '/ws', f(opcode => 9, fin => 0, payload => 'p'), 1002);
v('fragmented pong (FIN clear)',  '/ws', f(opcode => 10, fin => 0, payload => 'p'), 1002);
v('fragmented close (FIN clear)', '/ws', f(opcode => 8, fin => 0, payload => pack('n', 1000)), 1002);
v('empty ping with FIN clear',    '/ws', f(opcode => 9, fin => 0, payload => ''), 1002);
{
    my $ws = ws_open($port, '/ws');
    $ws->send_ping('c' x 125);
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 10, 'ping of exactly 125 bytes: pong');
    is($f && $f->{payload}, 'c' x 125, 'ping of exactly 125 bytes: payload echoed');
    is($f && $f->{fin}, 1, 'pong has FIN set');

    # a ping split over many TCP writes is still one ping
    my $raw = f(opcode => 9, payload => 'split ping');
    $ws->send_raw($_), sleep(0.002) for split //, $raw;
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{payload}, 'split ping', 'ping sent one byte per write: pong');

    # ten pings in one write: ten pongs, in order
    $ws->send_raw(join '', map { f(opcode => 9, payload => "p$_") } 1 .. 10);
    my @p;
    for (1 .. 10) { my $x = $ws->recv_frame(timeout => 3) or last; push @p, $x->{payload} }
    is_deeply(\@p, [ map { "p$_" } 1 .. 10 ], 'ten pipelined pings: ten pongs in order');
    bye($ws, 'control frames');
}

# --- payload length encodings --------------------------------------------------------
{
    my $ws = ws_open($port, '/big');
    for my $len (0, 1, 125, 126, 127, 65535, 65536, 65537, 200000) {
        my $bits = $len < 126 ? 7 : $len < 65536 ? 16 : 64;
        my $p = join '', map { chr(($_ * 31 + $len) % 256) } 1 .. $len;
        echo_ok($ws, 2, $p, "binary of $len bytes ($bits-bit length)");
    }
    # the length field of the reply uses the minimal encoding too
    for my $case ([125, 2], [126, 4], [65535, 4], [65536, 10]) {
        my ($len, $hlen) = @$case;
        $ws->send_binary('L' x $len);
        $ws->fill($hlen + $len, 3);
        my $b1 = ord substr($ws->buffer . "\0\0", 1, 1);
        my $want = $len < 126 ? $len : $len < 65536 ? 126 : 127;
        is($b1 & 0x7f, $want, "reply to $len bytes: length code $want (header of $hlen bytes)");
        my $fr = $ws->try_recv_frame;
        is($fr && $fr->{length}, $len, "reply to $len bytes: whole frame");
    }
    bye($ws, 'length encodings');
}
v('non-minimal: 5 bytes with a 16-bit length', '/ws',
    f(opcode => 1, payload => 'hello', len_bits => 16), 1002);
v('non-minimal: 125 bytes with a 16-bit length', '/ws',
    f(opcode => 2, payload => 'n' x 125, len_bits => 16), 1002);
v('non-minimal: 200 bytes with a 64-bit length', '/ws',
    f(opcode => 2, payload => 'n' x 200, len_bits => 64), 1002);
v('non-minimal: 65535 bytes with a 64-bit length', '/big',
    f(opcode => 2, payload => 'n' x 65535, len_bits => 64), 1002);
v('non-minimal: 0 bytes with a 64-bit length', '/ws',
    f(opcode => 2, payload => '', len_bits => 64), 1002);
v('non-minimal length on a ping', '/ws',
    f(opcode => 9, payload => 'p', len_bits => 16), 1002);
v('64-bit length with the top bit set', '/ws',
    substr(f(opcode => 2, payload => ''), 0, 1) . "\xff" . "\x80" . ("\0" x 7) . 'mask', 1002);
v('64-bit length of 2^64-1', '/ws',
    substr(f(opcode => 2, payload => ''), 0, 1) . "\xff" . ("\xff" x 8) . 'mask', 1002);

finish($t, $port, \@workers);

done_testing;
