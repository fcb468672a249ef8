#!/usr/bin/perl
# Protocol violations by the client end in a close frame with the RFC 6455
# code (1002, 1007, 1009), then the TCP connection is closed; the worker
# survives.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsNginx;
use WsClient qw(build_frame);

my $t = WsNginx->new(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    location /ws {
        websocket_echo;
    }

    location /small {
        websocket_echo;
        websocket_max_recv_len 100;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

sub f { build_frame(@_) }

# violation($name, $path, $bytes, @acceptable_codes)
sub violation {
    my ($name, $path, $bytes, @codes) = @_;
    my $ws = WsClient->connect(port => $port, path => $path);
    unless (($ws->status // 0) == 101) {
        fail("$name: handshake");
        return;
    }
    $ws->send_raw($bytes);
    my ($code) = $ws->recv_close(timeout => 3);
    my $want = join(' or ', @codes);
    ok(defined $code && grep({ $code == $_ } @codes), "$name: close $want")
        or diag 'got ' . ($code // ($ws->{close_frame} ? 'empty close' : 'no close frame: ' . ($ws->error // '')));
    ok($ws->wait_eof(3), "$name: TCP closed");
}

# --- 1002 protocol error -------------------------------------------------------
violation('unmasked text frame', '/ws', f(opcode => 1, payload => 'hi', mask => 0), 1002);
violation('unmasked ping',       '/ws', f(opcode => 9, payload => 'hi', mask => 0), 1002);
violation('RSV1 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 4), 1002);
violation('RSV2 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 2), 1002);
violation('RSV3 set', '/ws', f(opcode => 1, payload => 'hi', rsv => 1), 1002);
violation('RSV bit on a control frame', '/ws', f(opcode => 9, payload => 'hi', rsv => 4), 1002);
for my $op (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF) {
    violation(sprintf('reserved opcode 0x%X', $op), '/ws', f(opcode => $op, payload => 'x'), 1002);
}
violation('ping with a 126-byte payload',  '/ws', f(opcode => 9, payload => 'p' x 126), 1002);
violation('pong with a 126-byte payload',  '/ws', f(opcode => 10, payload => 'p' x 126), 1002);
violation('close with a 126-byte payload', '/ws',
    f(opcode => 8, payload => pack('n', 1000) . ('r' x 124)), 1002);
violation('fragmented ping (FIN clear)', '/ws', f(opcode => 9, fin => 0, payload => 'p'), 1002);
violation('continuation without a message', '/ws', f(opcode => 0, payload => 'orphan'), 1002);
violation('new text frame inside a fragmented message', '/ws',
    f(opcode => 1, fin => 0, payload => 'a') . f(opcode => 1, payload => 'b'), 1002);
violation('new binary frame inside a fragmented message', '/ws',
    f(opcode => 2, fin => 0, payload => 'a') . f(opcode => 2, payload => 'b'), 1002);
violation('close with a 1-byte payload', '/ws', f(opcode => 8, payload => "\x03"), 1002);
for my $code (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535) {
    violation("close with invalid code $code", '/ws',
        f(opcode => 8, payload => pack('n', $code)), 1002);
}

# --- 1007 invalid UTF-8 ------------------------------------------------------------
my @bad_utf8 = (
    [ 'byte 0xFF',                   "ab\xffcd" ],
    [ 'lone continuation byte',      "\x80" ],
    [ 'overlong "/"',                "\xc0\xaf" ],
    [ 'overlong 3-byte NUL',         "\xe0\x80\x80" ],
    [ 'UTF-16 surrogate',            "\xed\xa0\x80" ],
    [ 'code point above U+10FFFF',   "\xf4\x90\x80\x80" ],
    [ 'truncated sequence at end',   "euro \xe2\x82" ],
);
for my $case (@bad_utf8) {
    my ($name, $bytes) = @$case;
    violation("invalid UTF-8 text ($name)", '/ws', f(opcode => 1, payload => $bytes), 1007);
}
violation('invalid UTF-8 in a later fragment', '/ws',
    f(opcode => 1, fin => 0, payload => 'fine ') . f(opcode => 0, payload => "\xff"), 1007);
violation('fragmented text ending inside a character', '/ws',
    f(opcode => 1, fin => 0, payload => "a\xe2") . f(opcode => 0, payload => "\x82"), 1007);
violation('invalid UTF-8 in a close reason', '/ws',
    f(opcode => 8, payload => pack('n', 1000) . "\xc0\xaf"), 1007);

# --- 1009 too big -------------------------------------------------------------------
{
    my $ws = WsClient->connect(port => $port, path => '/small');
    $ws->send_text('s' x 100);
    my $m = $ws->recv_message(timeout => 3);
    is($m && length $m->{payload}, 100, 'max_recv_len 100: a 100-byte frame is echoed');
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
}
violation('max_recv_len 100: 101-byte text', '/small', f(opcode => 1, payload => 's' x 101), 1009);
violation('max_recv_len 100: 101-byte binary', '/small', f(opcode => 2, payload => 'b' x 101), 1009);
violation('default limit 65535: 65536-byte binary', '/ws', f(opcode => 2, payload => "\0" x 65536), 1009);
violation('length field of 1 GiB, rejected on the header alone', '/ws',
    f(opcode => 2, payload => 'tiny', len_override => 1 << 30), 1009);
violation('64-bit length with the top bit set', '/ws',
    substr(f(opcode => 2, payload => ''), 0, 1) . "\xff" . "\x80" . ("\0" x 7) . 'mask', 1002, 1009);

# --- the worker survived all of this -------------------------------------------------
{
    my $ws = WsClient->connect(port => $port, path => '/ws');
    is($ws->status, 101, 'after the violations: new session upgraded');
    $ws->send_text('alive');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'alive', 'after the violations: echo works');
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
    is_deeply([$t->worker_pids], \@workers, 'the worker process is the same one');
}

$t->stop;
is($t->forced_stop, undef, 'nginx stopped gracefully');
is_deeply([$t->check_error_log], [], 'no alerts in error.log');

done_testing;
