#!/usr/bin/perl
# Fragmented messages (RFC 6455 section 5.4): reassembled and echoed with
# their type and content; control frames between fragments are answered at
# once; a continuation without a message, or a new data frame inside one,
# is a protocol error (1002).

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

# --- reassembly ---------------------------------------------------------------------
{
    my $ws = ws_open($port, '/ws');
    $ws->send_frame(fin => 0, opcode => 1, payload => 'frag-');
    $ws->send_frame(fin => 0, opcode => 0, payload => 'ment-');
    $ws->send_frame(fin => 1, opcode => 0, payload => 'ed');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 1, 'fragmented text: opcode text');
    is($m && $m->{payload}, 'frag-ment-ed', 'fragmented text: content reassembled');
    is($m && $m->{masked}, 0, 'fragmented text: reply not masked');

    my $bin = join '', map { chr($_ % 256) } 1 .. 3000;
    $ws->send_frame(fin => 0, opcode => 2, payload => substr($bin, 0, 1000));
    $ws->send_frame(fin => 1, opcode => 0, payload => substr($bin, 1000));
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 2, 'fragmented binary: opcode binary');
    ok($m && $m->{payload} eq $bin, 'fragmented binary: content reassembled');

    # two fragmented messages and a whole one in a single write
    $ws->send_raw(frags(1, 'one-', 'a') . frags(2, "\x00\x01", "\x02") . f(opcode => 1, payload => 'three'));
    my @got;
    for (1 .. 3) { my $x = $ws->recv_message(timeout => 3) or last; push @got, "$x->{opcode}:$x->{payload}" }
    is_deeply(\@got, [ '1:one-a', "2:\x00\x01\x02", '1:three' ],
        'fragmented messages back to back in one write: echoed in order');

    # a single-fragment "fragmented" message: FIN on the first frame is normal;
    # FIN clear then an empty final continuation is the same message
    $ws->send_raw(frags(1, 'alone', ''));
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'alone', 'message closed by an empty final continuation');
    bye($ws, 'reassembly');
}

# --- control frames between fragments -----------------------------------------------
{
    my $ws = ws_open($port, '/ws');
    # a ping between fragments is answered at once, before the message ends
    $ws->send_frame(fin => 0, opcode => 1, payload => 'before ');
    $ws->send_ping('mid');
    my ($pong, @data);
    while (my $fr = $ws->recv_frame(timeout => 3)) {
        if ($fr->{opcode} == 10) { $pong = $fr; last }
        push @data, $fr;
    }
    ok($pong, 'ping inside a fragmented message: pong before the message is finished');
    is($pong && $pong->{payload}, 'mid', '... with the ping payload');
    $ws->send_frame(fin => 1, opcode => 0, payload => 'after');
    my $text = join '', map { $_->{payload} } @data;
    my $done = grep { $_->{fin} } @data;
    until ($done) {
        my $fr = $ws->recv_frame(timeout => 3) or last;
        $text .= $fr->{payload};
        $done = $fr->{fin};
    }
    is($text, 'before after', '... and the message is echoed whole afterwards');

    # a ping in every gap of a 5-fragment message: 4 pongs while it is open
    $ws->send_frame(fin => 0, opcode => 2, payload => 'A');
    my @pongs;
    for my $i (1 .. 4) {
        $ws->send_ping("gap $i");
        my $fr = $ws->recv_frame(timeout => 3) or last;
        push @pongs, $fr->{opcode} == 10 ? $fr->{payload} : "opcode $fr->{opcode}";
        $ws->send_frame(fin => $i == 4 ? 1 : 0, opcode => 0, payload => chr(65 + $i));
    }
    is_deeply(\@pongs, [ map { "gap $_" } 1 .. 4 ], 'a ping in each gap: each answered at once');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'ABCDE', '... and the message is echoed afterwards');
    is($m && $m->{opcode}, 2, '... as binary');

    # an unsolicited pong between fragments is ignored
    $ws->send_raw(f(opcode => 1, fin => 0, payload => 'x') . f(opcode => 10, payload => 'unasked')
        . f(opcode => 0, payload => 'y'));
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 1, 'pong between fragments ignored: next frame is the echo');
    is($m && $m->{payload}, 'xy', '... of the whole message');
    bye($ws, 'interleaved');
}
{
    # a close between fragments: the close is answered, the message abandoned
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(f(opcode => 1, fin => 0, payload => 'unfinished') . f(opcode => 8, payload => pack('n', 1000)));
    expect_close($ws, 'close between fragments', 1000);
    ok(!grep({ $_->{fin} && $_->{opcode} <= 2 } $ws->skipped),
        'close between fragments: the unfinished message is not echoed as complete');
}

# --- many fragments, empty fragments -------------------------------------------------
{
    my $ws = ws_open($port, '/ws');
    my $s = join '', map { chr(97 + $_ % 26) } 0 .. 999;
    $ws->send_raw(frags(1, split //, $s));
    my $m = $ws->recv_message(timeout => 5);
    is($m && length $m->{payload}, 1000, '1000 fragments of 1 byte: 1000 bytes echoed');
    ok($m && $m->{payload} eq $s, '1000 fragments of 1 byte: content in order');
    is($m && $m->{opcode}, 1, '1000 fragments of 1 byte: text');

    my $b = join '', map { chr($_ % 256) } 0 .. 999;
    $ws->send_raw(frags(2, split //, $b));
    $m = $ws->recv_message(timeout => 5);
    ok($m && $m->{opcode} == 2 && $m->{payload} eq $b, '1000 binary fragments of 1 byte: echoed');

    # the same, each fragment in its own TCP write
    my @pieces = split //, substr($s, 0, 200);
    for my $i (0 .. $#pieces) {
        $ws->send_frame(opcode => $i ? 0 : 1, fin => $i == $#pieces ? 1 : 0, payload => $pieces[$i]);
    }
    $m = $ws->recv_message(timeout => 5);
    is($m && $m->{payload}, substr($s, 0, 200), '200 fragments in 200 writes: echoed');

    $ws->send_raw(frags(1, '', 'a', '', '', 'b', ''));
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'ab', 'empty fragments at the start, middle and end: skipped');
    $ws->send_raw(frags(1, '', '', ''));
    $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{opcode} == 1 && $m->{payload} eq '', 'a message of only empty fragments: empty text echoed');
    $ws->send_raw(frags(2, ('') x 100, 'z'));
    $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{opcode} == 2 && $m->{payload} eq 'z', '100 empty fragments then one byte: binary echoed');
    bye($ws, 'tiny fragments');
}
{
    # fragments larger than the read buffer, message over 64 KiB in total
    my $ws = ws_open($port, '/big');
    my @pieces = map { my $n = $_; join '', map { chr(($_ + $n) % 256) } 1 .. 40000 } 1 .. 5;
    $ws->send_raw(frags(2, @pieces));
    my $m = $ws->recv_message(timeout => 5);
    is($m && length $m->{payload}, 200000, '5 fragments of 40000 bytes: 200000 bytes echoed');
    ok($m && $m->{payload} eq join('', @pieces), '5 fragments of 40000 bytes: content intact');
    bye($ws, 'large fragments');
}

# --- violations ------------------------------------------------------------------------
v('continuation without a message', '/ws', f(opcode => 0, payload => 'orphan'), 1002);
v('continuation with FIN clear, without a message', '/ws', f(opcode => 0, fin => 0, payload => 'o'), 1002);
v('empty continuation without a message', '/ws', f(opcode => 0, payload => ''), 1002);
v('continuation after a finished message', '/ws',
    f(opcode => 1, payload => 'done') . f(opcode => 0, payload => 'more'), 1002);
v('continuation after a finished fragmented message', '/ws',
    frags(1, 'a', 'b') . f(opcode => 0, payload => 'c'), 1002);
v('new text frame inside a fragmented message', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 1, payload => 'b'), 1002);
v('new binary frame inside a fragmented message', '/ws',
    f(opcode => 2, fin => 0, payload => 'a') . f(opcode => 2, payload => 'b'), 1002);
v('binary frame inside a fragmented text message', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 2, fin => 0, payload => 'b'), 1002);
v('new data frame after continuations', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 0, fin => 0, payload => 'b')
        . f(opcode => 1, payload => 'c'), 1002);
v('new empty text frame inside a fragmented message', '/ws',
    f(opcode => 2, fin => 0, payload => 'a') . f(opcode => 1, payload => ''), 1002);
{
    # the message before the violation is echoed, then the close
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(frags(1, 'ok-', 'first') . f(opcode => 0, payload => 'orphan'));
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'ok-first', 'message before an orphan continuation: echoed');
    expect_close($ws, '... then', 1002);
}

finish($t, $port, \@workers);

done_testing;
