#!/usr/bin/perl
# UTF-8 in text messages (RFC 6455 section 8.1): invalid UTF-8 ends in close
# 1007, also when the bad sequence spans fragments, and it is caught as soon
# as the bad bytes arrive (fail fast), not when the frame or message is
# complete. Valid text, however it is split, is echoed unchanged.

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

# --- valid text is echoed byte for byte ------------------------------------------
my @valid = (
    [ 'ASCII with NUL and DEL',        "a\x00b\x7f" ],
    [ 'U+0080 (first 2-byte)',         "\xc2\x80" ],
    [ 'U+07FF (last 2-byte)',          "\xdf\xbf" ],
    [ 'U+0800 (first 3-byte)',         "\xe0\xa0\x80" ],
    [ 'U+D7FF (before surrogates)',    "\xed\x9f\xbf" ],
    [ 'U+E000 (after surrogates)',     "\xee\x80\x80" ],
    [ 'U+FEFF (BOM)',                  "\xef\xbb\xbf" ],
    [ 'U+FFFD',                        "\xef\xbf\xbd" ],
    [ 'U+FFFE and U+FFFF (nonchars)',  "\xef\xbf\xbe\xef\xbf\xbf" ],
    [ 'U+10000 (first 4-byte)',        "\xf0\x90\x80\x80" ],
    [ 'U+10FFFF (last code point)',    "\xf4\x8f\xbf\xbf" ],
    [ 'mixed script',                  "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80" ],
);
{
    my $ws = ws_open($port, '/ws');
    for my $case (@valid) {
        my ($name, $bytes) = @$case;
        $ws->send_text($bytes);
        my $m = $ws->recv_message(timeout => 3);
        ok($m && $m->{opcode} == 1 && $m->{payload} eq $bytes, "valid UTF-8 echoed: $name");
    }
    # binary messages are not UTF-8 checked
    $ws->send_binary("\xff\xfe\xc0\xaf\xed\xa0\x80");
    my $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{opcode} == 2 && $m->{payload} eq "\xff\xfe\xc0\xaf\xed\xa0\x80",
        'binary message with invalid UTF-8 bytes: echoed, not checked');
    $ws->send_raw(frags(2, "\xe2", "\x28"));
    $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{payload} eq "\xe2\x28", 'fragmented binary with a broken sequence: echoed');
    bye($ws, 'valid UTF-8');
}

# --- valid sequences split across fragments ------------------------------------------
{
    my $ws = ws_open($port, '/ws');
    my $grin = "\xf0\x9f\x98\x80";    # U+1F600, 4 bytes
    my @splits = (
        [ '1|3',     [ "a\xf0", "\x9f\x98\x80b" ] ],
        [ '2|2',     [ "a\xf0\x9f", "\x98\x80b" ] ],
        [ '3|1',     [ "a\xf0\x9f\x98", "\x80b" ] ],
        [ '1|1|1|1', [ "a\xf0", "\x9f", "\x98", "\x80b" ] ],
        [ 'alone, 1 byte per fragment', [ split //, $grin ] ],
        [ 'with empty fragments between', [ "\xf0", '', "\x9f\x98", '', "\x80" ] ],
    );
    for my $case (@splits) {
        my ($name, $pieces) = @$case;
        $ws->send_raw(frags(1, @$pieces));
        my $m = $ws->recv_message(timeout => 3);
        my $want = join '', @$pieces;
        ok($m && $m->{opcode} == 1 && $m->{payload} eq $want,
            "4-byte character split across fragments ($name): echoed");
    }
    # a 3-byte character split over three fragments
    $ws->send_frame(fin => 0, opcode => 1, payload => "euro \xe2");
    $ws->send_frame(fin => 0, opcode => 0, payload => "\x82");
    $ws->send_frame(fin => 1, opcode => 0, payload => "\xac!");
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, "euro \xe2\x82\xac!", 'UTF-8 character split across fragments accepted');

    # a long text whose fragment boundaries fall inside characters
    my $text = "\xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80\xc3\xa9" x 50;
    my @pieces = unpack('(a7)*', $text);
    $ws->send_raw(frags(1, @pieces));
    $m = $ws->recv_message(timeout => 3);
    ok($m && $m->{payload} eq $text, '600 bytes of mixed UTF-8 in 7-byte fragments: echoed');

    # a frame dribbled in one byte per write, splitting characters between reads
    my $raw = f(opcode => 1, payload => "\xf0\x9f\x98\x80\xe2\x82\xac");
    for my $byte (split //, $raw) { $ws->send_raw($byte); sleep 0.002 }
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, "\xf0\x9f\x98\x80\xe2\x82\xac", 'UTF-8 frame sent one byte per write: echoed');
    bye($ws, 'split characters');
}

# --- invalid UTF-8: 1007 --------------------------------------------------------------
my @bad_utf8 = (
    [ 'byte 0xFF',                   "ab\xffcd" ],
    [ 'byte 0xFE',                   "\xfe" ],
    [ 'lone continuation byte',      "\x80" ],
    [ 'continuation byte after ASCII', "a\xbfb" ],
    [ 'overlong "/"',                "\xc0\xaf" ],
    [ 'overlong 2-byte NUL',         "\xc0\x80" ],
    [ 'overlong with 0xC1',          "\xc1\xbf" ],
    [ 'overlong 3-byte NUL',         "\xe0\x80\x80" ],
    [ 'overlong 3-byte U+07FF',      "\xe0\x9f\xbf" ],
    [ 'overlong 4-byte U+FFFF',      "\xf0\x8f\xbf\xbf" ],
    [ 'UTF-16 surrogate',            "\xed\xa0\x80" ],
    [ 'UTF-16 low surrogate U+DFFF', "\xed\xbf\xbf" ],
    [ 'surrogate pair as 6 bytes',   "\xed\xa0\xbd\xed\xb8\x80" ],
    [ 'code point above U+10FFFF',   "\xf4\x90\x80\x80" ],
    [ 'lead byte 0xF5',              "\xf5\x80\x80\x80" ],
    [ '5-byte sequence',             "\xf8\x88\x80\x80\x80" ],
    [ '2-byte lead then ASCII',      "\xc3(" ],
    [ '3-byte lead then ASCII',      "\xe2\x82(" ],
    [ 'truncated sequence at end',   "euro \xe2\x82" ],
    [ 'truncated 4-byte at end',     "\xf0\x9f\x98" ],
    [ 'valid text then 0xFF',        ("valid " x 20) . "\xff" ],
);
for my $case (@bad_utf8) {
    my ($name, $bytes) = @$case;
    v("invalid UTF-8 text ($name)", '/ws', f(opcode => 1, payload => $bytes), 1007);
}
v('invalid UTF-8 in a later fragment', '/ws',
    f(opcode => 1, fin => 0, payload => 'fine ') . f(opcode => 0, payload => "\xff"), 1007);
v('fragmented text ending inside a character', '/ws',
    f(opcode => 1, fin => 0, payload => "a\xe2") . f(opcode => 0, payload => "\x82"), 1007);
v('bad continuation across a fragment boundary', '/ws',
    frags(1, "\xe2", "\x28\xa1"), 1007);
v('4-byte sequence broken in its third fragment', '/ws',
    frags(1, "\xf0", "\x9f", "(", "\x80"), 1007);
v('surrogate split across fragments', '/ws', frags(1, "\xed", "\xa0\x80"), 1007);
v('above U+10FFFF split across fragments', '/ws', frags(1, "\xf4", "\x90\x80\x80"), 1007);
v('message ending inside a character, then empty final fragment', '/ws',
    frags(1, "ok \xf0\x9f", ''), 1007);
v('invalid UTF-8 in a 100 KiB text', '/big',
    f(opcode => 1, payload => ('x' x 70000) . "\xc0\xaf" . ('y' x 30000)), 1007);
{
    # the good message before the bad one is still echoed
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(f(opcode => 1, payload => 'good') . f(opcode => 1, payload => "\xff"));
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'good', 'valid message before an invalid one: echoed');
    expect_close($ws, '... then', 1007);
}

# --- fail fast: the close comes while the frame is still incomplete --------------------
# fail_fast($name, $path, $bytes_sent, $bytes_held_back): sends the first part,
# waits, and expects close 1007 before the rest is sent.
sub fail_fast {
    my ($name, $path, $sent, $rest) = @_;
    my $ws = ws_open($port, $path);
    $ws->send_raw($sent);
    my $t0 = time;
    my ($code) = $ws->recv_close(timeout => 2);
    is($code, 1007, sprintf('fail fast, %s: close 1007 with %d bytes still unsent',
        $name, length $rest)) or diag 'got ' . close_desc($ws, $code);
    cmp_ok(time - $t0, '<', 1.5, "fail fast, $name: close came at once");
    # the rest arriving late changes nothing
    $ws->send_raw($rest);
    ok($ws->wait_eof(3), "fail fast, $name: TCP closed");
}
{
    my $payload = "ok \xff" . ('a' x 996);
    my $frame = f(opcode => 1, payload => $payload);
    # header (2 + 2 length + 4 mask) and the first 4 payload bytes
    fail_fast('0xFF in the first bytes of a 1000-byte frame', '/ws',
        substr($frame, 0, 12), substr($frame, 12));
}
{
    my $frame = f(opcode => 1, payload => "\xc0" . ('a' x 40000));
    fail_fast('0xC0 as the first byte of a 40001-byte frame', '/big',
        substr($frame, 0, 15), substr($frame, 15));
}
{
    my $payload = ('v' x 30000) . "\xed\xa0\x80" . ('w' x 29997);
    my $frame = f(opcode => 1, payload => $payload);
    my $cut = length($frame) - length($payload) + 30000 + 3;    # header, valid text, surrogate
    fail_fast('surrogate after 30000 valid bytes of a 60000-byte frame', '/big',
        substr($frame, 0, $cut), substr($frame, $cut));
}
{
    my $first = f(opcode => 1, fin => 0, payload => 'start ');
    my $cont = f(opcode => 0, fin => 1, payload => "\xf8" . ('z' x 499));
    fail_fast('0xF8 at the start of a continuation frame', '/ws',
        $first . substr($cont, 0, 9), substr($cont, 9));
}
# sequences that are invalid from their second byte on: the first two bytes
# of a character are enough to know
for my $case ([ 'overlong 3-byte lead E0 80', "\xe0\x80" ], [ 'surrogate lead ED A0', "\xed\xa0" ],
              [ 'above U+10FFFF, F4 90', "\xf4\x90" ], [ 'overlong 4-byte lead F0 80', "\xf0\x80" ]) {
    my ($name, $prefix) = @$case;
    my $payload = "ab$prefix" . ("\x80" x 2) . ('c' x 200);
    my $frame = f(opcode => 1, payload => $payload);
    my $cut = length($frame) - length($payload) + 2 + length $prefix;
    fail_fast("$name, rest of the character held back", '/ws', substr($frame, 0, $cut), substr($frame, $cut));
}
{
    # a complete non-final fragment with bad UTF-8: no need to wait for FIN
    my $ws = ws_open($port, '/ws');
    $ws->send_frame(opcode => 1, fin => 0, payload => "abc\xff");
    my ($code) = $ws->recv_close(timeout => 2);
    is($code, 1007, 'fail fast: invalid first fragment of an unfinished message gets 1007')
        or diag 'got ' . close_desc($ws, $code);
    ok($ws->wait_eof(3), 'fail fast, unfinished message: TCP closed');
}

finish($t, $port, \@workers);

done_testing;
