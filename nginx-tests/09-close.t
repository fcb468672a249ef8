#!/usr/bin/perl
# The closing handshake (RFC 6455 sections 5.5.1, 7.4): a client close is
# answered with the same code, then the server closes TCP; bad close
# payloads get 1002 (bad length or code) or 1007 (bad UTF-8 reason);
# whatever the client sends after its close is ignored.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0, '/ws' => []));

sub f { build_frame(@_) }
sub v { violation($port, @_) }

# --- valid codes are echoed ------------------------------------------------------------
for my $code (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999) {
    my $ws = ws_open($port, '/ws');
    $ws->send_close($code, "reason $code");
    my $t0 = time;
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, $code, "close $code echoed");
    is($ws->{close_frame} && $ws->{close_frame}{masked}, 0, "close $code: reply not masked");
    ok($ws->{close_frame} && $ws->{close_frame}{fin}, "close $code: reply has FIN");
    ok($ws->wait_eof(3), "close $code: TCP closed");
    cmp_ok(time - $t0, '<', 1, "close $code: TCP closed at once after the close exchange");
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_close;
    my ($got, $reason) = $ws->recv_close(timeout => 3);
    ok($ws->{close_frame}, 'empty close answered with a close');
    ok(!defined $got || $got == 1000, 'empty close: reply is empty or 1000')
        or diag "got $got";
    ok($ws->wait_eof(3), 'empty close: TCP closed');
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_close(1000, '');
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1000, 'close with a code and no reason: echoed');
}
{
    my $reason = 'r' x 123;    # payload of exactly 125 bytes
    my $ws = ws_open($port, '/ws');
    $ws->send_close(4001, $reason);
    my ($got, $r) = $ws->recv_close(timeout => 3);
    is($got, 4001, 'close with a 123-byte reason (125-byte payload): code echoed');
    cmp_ok(length($ws->{close_frame}{payload} // ''), '<=', 125, '... reply fits a control frame');
    ok($ws->wait_eof(3), '... TCP closed');
}
{
    my $reason = ("\xe2\x82\xac" x 41);    # 123 bytes of 3-byte characters
    my $ws = ws_open($port, '/ws');
    $ws->send_close(1000, $reason);
    my ($got, $r) = $ws->recv_close(timeout => 3);
    is($got, 1000, 'close with a 123-byte UTF-8 reason: code echoed');
    ok(utf8::decode(my $copy = $r // ''), '... reply reason is valid UTF-8');
}
{
    # a close frame sent one byte per write
    my $ws = ws_open($port, '/ws');
    $ws->send_raw($_), sleep(0.002) for split //, close_frame(1001, 'slowly');
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1001, 'close sent one byte per write: echoed');
    ok($ws->wait_eof(3), '... TCP closed');
}

# --- messages before the close are echoed, anything after it is ignored ----------------
{
    my $ws = ws_open($port, '/ws');
    $ws->send_text('last words');
    $ws->send_close(1000);
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'last words', 'message before close is still echoed');
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1000, '... then the close');
    ok($ws->wait_eof(3), '... then EOF');
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(f(opcode => 1, payload => 'one') . f(opcode => 1, payload => 'two')
        . close_frame(1000) . f(opcode => 1, payload => 'after') . f(opcode => 9, payload => 'ping?')
        . f(opcode => 2, payload => 'x' x 1000));
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1000, 'data after close in the same write: close echoed');
    is_deeply([ map { $_->{payload} } $ws->skipped ], [ 'one', 'two' ],
        '... only the messages before the close were echoed');
    ok($ws->wait_eof(3), '... then EOF');
    is(length $ws->buffer, 0, '... and nothing after the close reply');
}
{
    my $ws = ws_open($port, '/ws');
    $ws->send_raw(close_frame(1000) . f(opcode => 1, payload => "\xff") . f(opcode => 1, payload => 'x', rsv => 4));
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1000, 'violations after close: ignored, the close is answered with 1000');
    ok($ws->wait_eof(3), '... then EOF');
    is(length $ws->buffer, 0, '... and no second close');
}
{
    # a client that keeps writing after the close exchange
    my $ws = ws_open($port, '/ws');
    $ws->send_close(1000);
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1000, 'client writing after the close exchange: close echoed');
    $ws->send_text('too late') for 1 .. 3;
    ok($ws->wait_eof(3), '... the server closes TCP anyway');
    is(length $ws->buffer, 0, '... without echoing');
}

# --- server-initiated close: the client's reply ends the connection at once -------------
{
    my $ws = ws_open($port, '/ws');
    $ws->send_frame(opcode => 1, payload => 'x', rsv => 2);
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, 1002, 'server-initiated close: 1002');
    my $t0 = time;
    $ws->send_close(1002);
    ok($ws->wait_eof(3), 'server-initiated close: TCP closed after the client replies');
    cmp_ok(time - $t0, '<', 1, '... at once');
    is(length $ws->buffer, 0, '... and the reply is not answered again');
}

# --- bad close payloads ------------------------------------------------------------------
v('close with a 1-byte payload', '/ws', f(opcode => 8, payload => "\x03"), 1002);
v('close with a 1-byte payload 0xE8', '/ws', f(opcode => 8, payload => "\xe8"), 1002);
for my $code (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535) {
    v("close with invalid code $code", '/ws', close_frame($code), 1002);
}
v('close with invalid code 1005 and a reason', '/ws', close_frame(1005, 'no status'), 1002);
v('invalid UTF-8 in a close reason', '/ws', close_frame(1000, "\xc0\xaf"), 1007);
v('close reason with 0xFF', '/ws', close_frame(1001, "bye \xff"), 1007);
v('close reason ending inside a character', '/ws', close_frame(1000, "euro \xe2\x82"), 1007);
v('close reason with a surrogate', '/ws', close_frame(4000, "\xed\xa0\x80"), 1007);
v('close with a 124-byte reason (126-byte payload)', '/ws', close_frame(1000, 'r' x 124), 1002);

finish($t, $port, \@workers);

done_testing;
