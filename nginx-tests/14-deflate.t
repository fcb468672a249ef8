#!/usr/bin/perl
# permessage-deflate (RFC 7692): negotiation answers (and 400 for a malformed
# offer), compressed echo with RSV1 on the first frame only, the minimum
# length, context takeover on and off, fragmented compressed messages, a
# decompression bomb (1009), data that does not inflate and invalid UTF-8
# after inflating (1007), RSV1 where it is not allowed (1002), and
# websocket_pass compressing each leg on its own (an upstream that declines,
# one that agrees, and a keepalive pool, which offers no context takeover).
# Compression is done here with Perl's core Compress::Raw::Zlib.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Compress::Raw::Zlib;
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => echo_server(0,
    '/ws'         => [],
    '/plain'      => [],
    '/echo'       => ['websocket_deflate on'],
    '/min0'       => ['websocket_deflate on', 'websocket_deflate_min_length 0'],
    '/notakeover' => ['websocket_deflate on', 'websocket_deflate_context_takeover off'],
    '/w10'        => ['websocket_deflate on', 'websocket_deflate_window_bits 10',
                      'websocket_deflate_level 9'],
    '/small'      => ['websocket_deflate on', 'websocket_max_payload_len 1k'],
) . <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_1%%;
    location /echo { websocket_deflate on; websocket_deflate_min_length 0; websocket_echo; }
    location /plain { websocket_echo; }
}
server {
    listen 127.0.0.1:%%PORT_2%%;
    websocket_deflate on;
    location /pass { websocket_pass ws://127.0.0.1:%%PORT_1%%/echo; }
    location /pass_plain { websocket_pass ws://127.0.0.1:%%PORT_1%%/plain; }
    location /pass_pool {
        websocket_keepalive 1;
        websocket_pass ws://127.0.0.1:%%PORT_1%%/echo;
    }
}
EOF_CONF
my $pass_port = $t->port(2);

my $OFFER = 'permessage-deflate; client_max_window_bits';

# A compressor/decompressor pair standing for the client's side.
sub deflater {
    my (%o) = @_;
    my ($d, $st) = Compress::Raw::Zlib::Deflate->new(
        -WindowBits => -($o{bits} // 15), -AppendOutput => 1, -Level => 6);
    die "deflate: $st" unless $st == Z_OK;
    return $d;
}
sub inflater {
    my (%o) = @_;
    my ($i, $st) = Compress::Raw::Zlib::Inflate->new(
        -WindowBits => -($o{bits} // 15), -AppendOutput => 1, -ConsumeInput => 1,
        -LimitOutput => 0);
    die "inflate: $st" unless $st == Z_OK;
    return $i;
}
# compress($d, $data, $fin): one frame's payload, sync-flushed; the tail
# 00 00 ff ff stripped at the end of the message.
sub compress {
    my ($d, $data, $fin) = @_;
    my $out = '';
    $d->deflate($data, $out) == Z_OK or die 'deflate failed';
    $d->flush($out, Z_SYNC_FLUSH) == Z_OK or die 'flush failed';
    $out =~ s/\x00\x00\xff\xff\z// if $fin // 1;
    return $out;
}
sub inflate {
    my ($i, $data) = @_;
    my $in = $data . "\x00\x00\xff\xff";
    my $out = '';
    my $st = $i->inflate($in, $out);
    die "inflate failed: $st" unless $st == Z_OK || $st == Z_STREAM_END || $st == Z_BUF_ERROR;
    return $out;
}

sub deflate_open {
    my ($path, %o) = @_;
    return ws_open($o{port} // $port, $path,
        extra_headers => ['Sec-WebSocket-Extensions', $o{offer} // $OFFER]);
}

# A message that compresses well but not to nothing.
my $TEXT = join('', map { "{\"id\":$_,\"name\":\"user$_\",\"tags\":[\"a\",\"b\"]}," } 1 .. 40);

# --- negotiation ----------------------------------------------------------------------
my @answers = (
    ['/echo', 'permessage-deflate', 'permessage-deflate'],
    ['/echo', $OFFER, 'permessage-deflate; client_max_window_bits=15'],
    ['/echo', 'permessage-deflate; client_max_window_bits=10',
        'permessage-deflate; client_max_window_bits=10'],
    ['/echo', 'permessage-deflate; server_max_window_bits=12',
        'permessage-deflate; server_max_window_bits=12'],
    ['/echo', 'permessage-deflate; server_no_context_takeover',
        'permessage-deflate; server_no_context_takeover'],
    ['/echo', 'x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, '
        . 'permessage-deflate; client_no_context_takeover',
        'permessage-deflate; client_no_context_takeover'],
    ['/echo', 'permessage-deflate; x=1', undef],
    ['/echo', 'permessage-deflate; server_max_window_bits=8', undef],
    ['/echo', 'x-webkit-deflate-frame', undef],
    ['/notakeover', $OFFER, 'permessage-deflate; server_no_context_takeover; '
        . 'client_no_context_takeover; client_max_window_bits=15'],
    ['/w10', $OFFER, 'permessage-deflate; server_max_window_bits=10; client_max_window_bits=10'],
    ['/plain', $OFFER, undef],
);
for my $a (@answers) {
    my ($path, $offer, $want) = @$a;
    my $ws = WsClient->connect(port => $port, path => $path,
        extra_headers => ['Sec-WebSocket-Extensions', $offer]);
    is($ws->status, 101, "$path offered \"$offer\": 101");
    is($ws->header('sec-websocket-extensions'), $want,
        "$path offered \"$offer\": " . ($want // 'declined'));
    $ws->close;
}
for my $bad ('permessage-deflate;', 'permessage-deflate; a="b c"', 'permessage deflate') {
    my $ws = WsClient->connect(port => $port, path => '/echo',
        extra_headers => ['Sec-WebSocket-Extensions', $bad]);
    is($ws->status, 400, "malformed offer \"$bad\": 400");
    $ws->close;
}
{
    my $ws = WsClient->connect(port => $port, path => '/plain',
        extra_headers => ['Sec-WebSocket-Extensions', 'permessage-deflate;']);
    is($ws->status, 101, 'websocket_deflate off: the header is not even parsed');
    $ws->close;
}

# --- compressed echo ------------------------------------------------------------------
# round_trip($ws, $d, $i, $opcode, $data, $name): sends $data compressed,
# expects it back compressed. Returns the compressed reply's length. 3 tests.
sub round_trip {
    my ($ws, $d, $i, $opcode, $data, $name) = @_;
    $ws->send_frame(opcode => $opcode, rsv => 4, payload => compress($d, $data));
    my $m = $ws->recv_message(timeout => 5);
    ok($m, "$name: reply") or return 0;
    is($m->{rsv}, 4, "$name: reply has RSV1");
    my $plain = eval { inflate($i, $m->{payload}) } // '';
    ok($plain eq $data, "$name: reply inflates to what was sent (" . length($data) . ' bytes)')
        or diag 'got ' . length($plain) . ' bytes';
    return length $m->{payload};
}

{
    my $ws = deflate_open('/echo');
    my ($d, $i) = (deflater(), inflater());
    my $first = round_trip($ws, $d, $i, 1, $TEXT, 'text');
    ok($first > 0 && $first < length($TEXT) / 3, "text: compressed well ($first bytes)");
    my $second = round_trip($ws, $d, $i, 1, $TEXT, 'the same text again');
    ok($second < $first / 2, "context takeover: the repeat is tiny ($second bytes vs $first)");
    round_trip($ws, $d, $i, 2, join('', map { chr($_ % 251) } 1 .. 60000), "binary, 60000 bytes");
    # Below websocket_deflate_min_length (64) the reply goes out plain.
    $ws->send_frame(opcode => 1, rsv => 4, payload => compress($d, 'short'));
    my $m = $ws->recv_message(timeout => 5);
    is($m && $m->{rsv}, 0, 'a 5-byte message is answered uncompressed');
    is($m && $m->{payload}, 'short', '... with its text');
    # An uncompressed message on a compressed connection is fine too.
    $ws->send_frame(opcode => 1, payload => $TEXT);
    $m = $ws->recv_message(timeout => 5);
    is($m && $m->{rsv}, 4, 'a plain message is echoed compressed');
    is($m && eval { inflate($i, $m->{payload}) }, $TEXT, '... and inflates to it');
    # Fragmented: RSV1 on the first frame only, a ping in between.
    my @parts = (substr($TEXT, 0, 500), substr($TEXT, 500, 700), substr($TEXT, 1200));
    $ws->send_frame(fin => 0, opcode => 1, rsv => 4, payload => compress($d, $parts[0], 0));
    $ws->send_frame(fin => 0, opcode => 0, payload => compress($d, $parts[1], 0));
    $ws->send_ping('mid');
    $ws->send_frame(fin => 1, opcode => 0, payload => compress($d, $parts[2], 1));
    my $pong = $ws->recv_frame(timeout => 5);
    is($pong && $pong->{opcode}, 10, 'fragmented: the ping is answered in between');
    is($pong && $pong->{rsv}, 0, '... with a plain pong');
    $m = $ws->recv_message(timeout => 5);
    is($m && $m->{rsv}, 4, 'fragmented: echoed compressed');
    is($m && eval { inflate($i, $m->{payload}) }, $TEXT, 'fragmented: content kept');
    bye($ws, 'compressed session');
}
{
    my $ws = deflate_open('/min0');
    my ($d, $i) = (deflater(), inflater());
    $ws->send_frame(opcode => 1, rsv => 4, payload => compress($d, 'short'));
    my $m = $ws->recv_message(timeout => 5);
    is($m && $m->{rsv}, 4, 'websocket_deflate_min_length 0: a 5-byte message is compressed');
    is($m && eval { inflate($i, $m->{payload}) }, 'short', '... and inflates');
    $ws->send_frame(opcode => 2, rsv => 4, payload => compress($d, ''));
    $m = $ws->recv_message(timeout => 5);
    is($m && $m->{payload}, "\x00", 'an empty message compresses to one 0x00 byte');
    bye($ws, 'min_length 0');
}
{
    my $ws = deflate_open('/notakeover');
    # client_no_context_takeover binds us too: a fresh compressor per message.
    my $i = inflater();
    my @sizes = map { round_trip($ws, deflater(), $i, 1, $TEXT, "no takeover, message $_") } 1 .. 2;
    is($sizes[1], $sizes[0], 'context takeover off: the repeat is as big as the first');
    bye($ws, 'no context takeover');
}
{
    my $ws = deflate_open('/w10', offer => $OFFER);
    my ($d, $i) = (deflater(bits => 10), inflater(bits => 10));
    round_trip($ws, $d, $i, 1, $TEXT x 20, 'window bits 10, level 9');
    bye($ws, 'window bits 10');
}

# --- violations -----------------------------------------------------------------------
sub deflate_violation {
    my ($name, $path, $bytes, $code) = @_;
    my $ws = deflate_open($path);
    $ws->send_raw($bytes);
    expect_close($ws, $name, $code);
}
{
    my $bomb = compress(deflater(), "\0" x (4 << 20));
    ok(length($bomb) < 8192, 'a 4 MiB bomb compresses to ' . length($bomb) . ' bytes');
    deflate_violation('bomb over websocket_max_payload_len 1k', '/small',
        build_frame(opcode => 2, rsv => 4, payload => $bomb), 1009);
    deflate_violation('1024 bytes inflated is within the limit, 1025 is not', '/small',
        build_frame(opcode => 2, rsv => 4, payload => compress(deflater(), 'x' x 1025)), 1009);
    my $ws = deflate_open('/small');
    $ws->send_frame(opcode => 2, rsv => 4, payload => compress(deflater(), 'x' x 1024));
    my $m = $ws->recv_message(timeout => 5);
    is($m && length(inflate(inflater(), $m->{payload})), 1024, '1024 bytes at a 1k limit: echoed');
    bye($ws, 'at the limit');
}
deflate_violation('data that does not inflate', '/echo',
    build_frame(opcode => 2, rsv => 4, payload => "\xff\xff\xff\xff\x07"), 1007);
deflate_violation('invalid UTF-8 after inflating', '/echo',
    build_frame(opcode => 1, rsv => 4, payload => compress(deflater(), "ok \xc3\x28 no")), 1007);
deflate_violation('RSV1 on a continuation frame', '/echo',
    build_frame(fin => 0, opcode => 1, rsv => 4, payload => compress(deflater(), 'ab', 0))
    . build_frame(opcode => 0, rsv => 4, payload => compress(deflater(), 'cd')), 1002);
deflate_violation('RSV1 on a ping', '/echo', build_frame(opcode => 9, rsv => 4, payload => 'x'), 1002);
deflate_violation('RSV2 with permessage-deflate', '/echo',
    build_frame(opcode => 1, rsv => 2, payload => 'x'), 1002);
violation($port, 'RSV1 when nothing was negotiated', '/plain',
    build_frame(opcode => 1, rsv => 4, payload => compress(deflater(), 'x')), 1002);

# --- websocket_pass: each leg on its own ----------------------------------------------
for my $case (['/pass', 'upstream agrees'], ['/pass_plain', 'upstream declines'],
              ['/pass_pool', 'keepalive pool']) {
    my ($path, $name) = @$case;
    for my $round (1 .. 2) {
        my $ws = deflate_open($path, port => $pass_port);
        is($ws->header('sec-websocket-extensions'),
            'permessage-deflate; client_max_window_bits=15', "pass, $name ($round): negotiated");
        my ($d, $i) = (deflater(), inflater());
        round_trip($ws, $d, $i, 1, $TEXT, "pass, $name ($round)");
        round_trip($ws, $d, $i, 2, 'b' x 60_000, "pass, $name ($round), 60000 bytes");
        bye($ws, "pass, $name ($round)");
    }
}
{
    my $ws = WsClient->connect(port => $pass_port, path => '/pass');
    is($ws->status, 101, 'pass: a client that offers nothing');
    ok(!defined $ws->header('sec-websocket-extensions'), '... gets no extension');
    echo_ok($ws, 1, $TEXT, 'pass, plain client, compressed upstream leg');
    bye($ws, 'pass, plain client');
}
finish($t, $port, \@workers);
done_testing();
