#!/usr/bin/perl
# Size limits: websocket_max_payload_len (both directions),
# websocket_max_recv_len (frames and whole messages received) and
# websocket_max_send_len (what the echo may send back). At the limit a
# message is echoed; one byte over it ends in close 1009, with a too-long
# frame rejected from its header alone.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'                => [],
    '/payload100'        => ['websocket_max_payload_len 100'],
    '/recv100'           => ['websocket_max_recv_len 100'],
    '/send100'           => ['websocket_max_send_len 100'],
    '/big'               => ['websocket_max_payload_len 2m'],
    '/recv1k_payload100' => ['websocket_max_payload_len 100', 'websocket_max_recv_len 1k'],
) . <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_1%%;
    websocket_max_recv_len 50;

    location /inherit {
        websocket_echo;
    }

    location /override {
        websocket_echo;
        websocket_max_recv_len 60;
    }
}
EOF_CONF

sub f { build_frame(@_) }
sub v { violation($port, @_) }

# echoes($path, $name, $bytes_to_send, $expected_payload, %o)
sub echoes {
    my ($path, $name, $bytes, $want, %o) = @_;
    my $ws = ws_open($o{port} // $port, $path);
    $ws->send_raw($bytes);
    my $m = $ws->recv_message(timeout => 5);
    ok($m && $m->{payload} eq $want, "$name: echoed (" . length($want) . ' bytes)')
        or diag 'got ' . ($m ? length($m->{payload}) . ' bytes' : close_desc($ws));
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
}

# --- websocket_max_payload_len ---------------------------------------------------------
echoes('/payload100', 'max_payload_len 100: 99-byte text', f(opcode => 1, payload => 'p' x 99), 'p' x 99);
echoes('/payload100', 'max_payload_len 100: 100-byte text', f(opcode => 1, payload => 'p' x 100), 'p' x 100);
v('max_payload_len 100: 101-byte text', '/payload100', f(opcode => 1, payload => 'p' x 101), 1009);
v('max_payload_len 100: 101-byte binary', '/payload100', f(opcode => 2, payload => 'p' x 101), 1009);
v('max_payload_len 100: 126-byte binary (16-bit length)', '/payload100',
    f(opcode => 2, payload => 'p' x 126), 1009);
echoes('/ws', 'default limit 65535: 65535-byte binary', f(opcode => 2, payload => "\0" x 65535), "\0" x 65535);
v('default limit 65535: 65536-byte binary', '/ws', f(opcode => 2, payload => "\0" x 65536), 1009);
{
    my $MiB2 = 2 * 1024 * 1024;
    my $data = join '', map { chr($_ % 251) } 1 .. 65536;
    $data = substr($data x 33, 0, $MiB2);
    echoes('/big', 'max_payload_len 2m: 2 MiB binary', f(opcode => 2, payload => $data), $data);
    # one byte over: the header and a little payload are enough
    my $over = f(opcode => 2, payload => 'x' x 1000, len_override => $MiB2 + 1);
    v('max_payload_len 2m: 2 MiB + 1 binary (header and 1000 bytes sent)', '/big', $over, 1009);
}

# --- websocket_max_recv_len -------------------------------------------------------------
echoes('/recv100', 'max_recv_len 100: 100-byte text', f(opcode => 1, payload => 's' x 100), 's' x 100);
v('max_recv_len 100: 101-byte text', '/recv100', f(opcode => 1, payload => 's' x 101), 1009);
v('max_recv_len 100: 101-byte binary', '/recv100', f(opcode => 2, payload => 'b' x 101), 1009);
echoes('/recv1k_payload100', 'max_recv_len 1k over max_payload_len 100: 100 bytes',
    f(opcode => 2, payload => 'k' x 100), 'k' x 100);
v('max_recv_len 1k over max_payload_len 100: 1025 bytes', '/recv1k_payload100',
    f(opcode => 2, payload => 'k' x 1025), 1009);

# whole messages: fragments each under the limit, summed
echoes('/recv100', 'max_recv_len 100: 60 + 40 bytes in two fragments',
    frags(1, 'a' x 60, 'b' x 40), ('a' x 60) . ('b' x 40));
echoes('/recv100', 'max_recv_len 100: 100 fragments of 1 byte', frags(2, ('c') x 100), 'c' x 100);
v('max_recv_len 100: 60 + 41 bytes in two fragments', '/recv100',
    frags(1, 'a' x 60, 'b' x 41), 1009);
v('max_recv_len 100: 101 fragments of 1 byte', '/recv100', frags(2, ('c') x 101), 1009);
v('max_recv_len 100: 4 fragments of 30 bytes', '/recv100', frags(2, ('d' x 30) x 4), 1009);
v('default limit: 2 fragments of 40000 bytes', '/ws', frags(2, ('e' x 40000) x 2), 1009);
{
    # the close comes when the fragment that crosses the limit starts,
    # before its payload is sent
    my $ws = ws_open($port, '/recv100');
    $ws->send_raw(f(opcode => 2, fin => 0, payload => 'f' x 90));
    $ws->send_raw(substr(f(opcode => 0, payload => 'g' x 20), 0, 6));    # header only
    my ($code) = $ws->recv_close(timeout => 2);
    is($code, 1009, 'max_recv_len 100: fragment crossing the limit, header only: 1009')
        or diag 'got ' . close_desc($ws, $code);
    ok($ws->wait_eof(3), '... TCP closed');
}
{
    # a message under the limit after the previous one counts from zero
    my $ws = ws_open($port, '/recv100');
    for my $i (1 .. 5) {
        $ws->send_raw(frags(1, 'h' x 50, 'i' x 50));
    }
    my $n = grep { my $m = $ws->recv_message(timeout => 3); $m && length $m->{payload} == 100 } 1 .. 5;
    is($n, 5, 'max_recv_len 100: five 100-byte messages in a row: each echoed');
    bye($ws, 'limit per message');
}

# --- a huge declared length is rejected from the header alone -----------------------
for my $case ([ '1 GiB', 1 << 30 ], [ '2^40', 2**40 ], [ '2^63-1', 2**63 - 1 ], [ '65536 (16-bit max + 1)', 65536 ]) {
    my ($name, $len) = @$case;
    my $ws = ws_open($port, '/ws');
    my $hdr = "\x82\xff" . pack('NN', int($len / 4294967296), $len % 4294967296);
    if ($len == 2**63 - 1) { $hdr = "\x82\xff\x7f" . ("\xff" x 7) }
    $ws->send_raw($hdr);    # no mask key, no payload
    my $t0 = time;
    my ($code) = $ws->recv_close(timeout => 2);
    is($code, 1009, "declared length $name, header only: 1009")
        or diag 'got ' . close_desc($ws, $code);
    cmp_ok(time - $t0, '<', 1, "declared length $name: rejected at once");
    ok($ws->wait_eof(3), "declared length $name: TCP closed");
}
v('length field of 1 GiB with a tiny payload', '/ws',
    f(opcode => 2, payload => 'tiny', len_override => 1 << 30), 1009);
v('length of 101 on max_recv_len 100, header only', '/recv100', "\x81\xe5", 1009);

# --- websocket_max_send_len: what the echo may send back -------------------------------
echoes('/send100', 'max_send_len 100: 100-byte text', f(opcode => 1, payload => 'o' x 100), 'o' x 100);
for my $case ([ '101-byte text', f(opcode => 1, payload => 'o' x 101) ],
              [ '1000-byte binary', f(opcode => 2, payload => 'o' x 1000) ],
              [ '60 + 41 bytes in two fragments', frags(1, 'a' x 60, 'b' x 41) ]) {
    my ($name, $bytes) = @$case;
    my $ws = ws_open($port, '/send100');
    $ws->send_raw($bytes);
    my $code = expect_close($ws, "max_send_len 100: $name", 1009);
    is(scalar(grep { $_->{opcode} < 8 } $ws->skipped), 0,
        "max_send_len 100: $name: nothing of the message was sent");
}

# --- inheritance from the server level ----------------------------------------------------
echoes('/inherit', 'server-level max_recv_len 50 inherited: 50 bytes',
    f(opcode => 1, payload => 'n' x 50), 'n' x 50, port => $t->port(1));
{
    my $ws = ws_open($t->port(1), '/inherit');
    $ws->send_text('n' x 51);
    expect_close($ws, 'server-level max_recv_len 50 inherited: 51 bytes', 1009);
    $ws = ws_open($t->port(1), '/override');
    $ws->send_text('n' x 60);
    my $m = $ws->recv_message(timeout => 3);
    is($m && length $m->{payload}, 60, 'location max_recv_len 60 overrides the server: 60 bytes echoed');
    $ws->send_text('n' x 61);
    expect_close($ws, 'location max_recv_len 60: 61 bytes', 1009);
}

finish($t, $port, \@workers);

done_testing;
