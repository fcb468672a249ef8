#!/usr/bin/perl
# websocket_pass relaying to the module's own websocket_echo (a second
# server{} of the same nginx): text, binary, empty, fragmented and 1 MiB
# messages, ping -> pong through the echo, close codes both ways, pipelined
# messages in order, 50 sessions at once, violations on either leg.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;

my ($t, $port, @workers) = start_nginx(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/echo;
    }

    location /big {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/big;
        websocket_max_payload_len 2m;
    }

    # the relay allows 2m, the echo behind it only the default 64k
    location /small-upstream {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/echo;
        websocket_max_payload_len 2m;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;

    location /echo {
        websocket_echo;
    }

    location /big {
        websocket_echo;
        websocket_max_payload_len 2m;
    }
}
EOF_CONF

sub ws { my $path = shift // '/pass'; ws_open($port, $path, @_) }

# --- the handshake ------------------------------------------------------------------
{
    my $ws = WsClient->connect(port => $port, path => '/pass');
    is($ws->status, 101, 'pass: 101');
    ok($ws->accept_ok, 'pass: Sec-WebSocket-Accept matches the client key');
    like($ws->header('Upgrade') // '', qr/^websocket$/i, 'pass: Upgrade: websocket');
    like($ws->header('Connection') // '', qr/\bupgrade\b/i, 'pass: Connection: upgrade');
    bye($ws, 'handshake');
}

# --- simple messages ----------------------------------------------------------------
{
    my $ws = ws();
    echo_ok($ws, 1, 'hello through the relay', 'text');
    echo_ok($ws, 2, join('', map { chr } 0 .. 255), 'binary, all byte values');
    echo_ok($ws, 1, '', 'empty text');
    echo_ok($ws, 2, '', 'empty binary');
    echo_ok($ws, 1, 'y' x 126, 'text of 126 bytes (16-bit length)');
    echo_ok($ws, 2, "\xAB" x 65535, 'binary of 65535 bytes');
    echo_ok($ws, 1, "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80", 'UTF-8 text');
    bye($ws, 'simple');
}

# --- fragmented messages ------------------------------------------------------------
{
    my $ws = ws();
    $ws->send_frame(fin => 0, opcode => 1, payload => 'frag-');
    $ws->send_frame(fin => 0, opcode => 0, payload => 'ment-');
    $ws->send_frame(fin => 1, opcode => 0, payload => 'ed');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 1, 'fragmented text: opcode text');
    is($m && $m->{payload}, 'frag-ment-ed', 'fragmented text: content kept');

    my $bin = join '', map { chr(($_ * 13) % 256) } 1 .. 5000;
    $ws->send_frame(fin => 0, opcode => 2, payload => substr($bin, 0, 1))
        && $ws->send_frame(fin => 0, opcode => 0, payload => '')
        && $ws->send_frame(fin => 1, opcode => 0, payload => substr($bin, 1));
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{opcode}, 2, 'fragmented binary: opcode binary');
    ok($m && $m->{payload} eq $bin, 'fragmented binary (1 byte, empty, rest): content kept');

    # A character split across fragments is valid; the echo validates it
    # across the relayed fragments.
    $ws->send_frame(fin => 0, opcode => 1, payload => "\xe2\x9c");
    $ws->send_frame(fin => 1, opcode => 0, payload => "\x93!");
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, "\xe2\x9c\x93!", 'UTF-8 character split across fragments: kept');

    # A ping between fragments goes through to the echo, which answers at
    # once: the pong arrives before the message.
    $ws->send_frame(fin => 0, opcode => 1, payload => 'before-');
    $ws->send_ping('in the middle');
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 10, 'ping between fragments: pong arrives before the message ends');
    is($f && $f->{payload}, 'in the middle', 'ping between fragments: pong payload');
    $ws->send_frame(fin => 1, opcode => 0, payload => 'after');
    $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'before-after', 'ping between fragments: message kept');
    bye($ws, 'fragmented');
}

# --- ping / pong relayed -----------------------------------------------------------
{
    my $ws = ws();
    # the echo behind the relay answers the pings and ignores the pong
    ping_pong_ok($ws, 'ping relayed');
    bye($ws, 'ping');
}

# --- close codes --------------------------------------------------------------------
for my $case ([ 4001, 'app says bye' ], [ 1000, '' ], [ 1001, 'going' ], [ 3000, 'x' ]) {
    my ($code, $reason) = @$case;
    my $ws = ws();
    $ws->send_close($code, $reason);
    my ($got) = $ws->recv_close(timeout => 3);
    is($got, $code, "close $code relayed to the echo and its answer relayed back");
    ok($ws->wait_eof(3), "close $code: TCP closed after the close handshake");
}
{
    my $ws = ws();
    $ws->send_close();
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 8, 'empty close: a close comes back');
    ok($ws->wait_eof(3), 'empty close: TCP closed');
}

# --- 1 MiB messages ---------------------------------------------------------------
my $MiB = 1024 * 1024;
my $bin = '';
{
    my $block = join '', map { chr int rand 256 } 1 .. 4096;
    $bin .= $block ^ (chr($_ % 256) x 4096) for 1 .. 256;
}
my $text = '';
{
    my $unit = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x98\x80 ";
    $text = $unit x int($MiB / length $unit);
    $text .= 'a' x ($MiB - length $text);
}
{
    my $ws = ws('/big');
    echo_ok($ws, 2, $bin, '1 MiB binary', timeout => 10);
    echo_ok($ws, 1, $text, '1 MiB UTF-8 text', timeout => 10);

    # 1 MiB as 16 fragments of 64 KiB
    my @p = map { substr($bin, $_ * 65536, 65536) } 0 .. 15;
    my $raw = '';
    for my $i (0 .. 15) {
        $raw .= build_frame(fin => $i == 15 ? 1 : 0, opcode => $i ? 0 : 2, payload => $p[$i]);
    }
    $ws->send_raw($raw);
    my $m = $ws->recv_message(timeout => 10);
    ok($m && $m->{opcode} == 2 && $m->{payload} eq $bin, '1 MiB in 16 fragments: kept');
    bye($ws, '1 MiB');
}

# --- 50 messages pipelined in one write come back in order --------------------------
{
    my $ws = ws();
    my @msgs = map { ($_ % 3 ? 'msg-' : 'longer-msg-' . ('.' x ($_ * 37))) . $_ } 1 .. 50;
    $ws->send_raw(join '', map {
        build_frame(opcode => $_ % 2 ? 1 : 2, payload => $msgs[$_ - 1])
    } 1 .. 50);
    my @got;
    for (1 .. 50) {
        my $m = $ws->recv_message(timeout => 3) or last;
        push @got, "$m->{opcode}:$m->{payload}";
    }
    is_deeply(\@got, [ map { ($_ % 2 ? 1 : 2) . ":$msgs[$_ - 1]" } 1 .. 50 ],
        '50 pipelined messages relayed in order with their types');
    bye($ws, 'pipelined');
}

# --- 50 sessions at once --------------------------------------------------------------
{
    my $N = 50;
    my $M = 5;
    my @c;
    for (1 .. $N) {
        my $ws = eval { WsClient->connect(port => $port, path => '/pass') };
        push @c, $ws if $ws && ($ws->status // 0) == 101;
    }
    is(scalar @c, $N, "$N concurrent sessions upgraded");
    my $payload = sub { "session $_[0] message $_[1] " . ('#' x ($_[0] * 11 % 200)) };
    for my $j (0 .. $M - 1) {
        $c[$_]->send_text($payload->($_, $j)) for 0 .. $#c;
    }
    my %idx = map { ("$c[$_]{fh}" => $_) } 0 .. $#c;
    my @got = map { [] } @c;
    my $sel = IO::Select->new(map { $_->socket } @c);
    my $pending = @c;
    my $deadline = time + 10;
    while ($pending && time < $deadline) {
        for my $fh ($sel->can_read(0.5)) {
            my $i = $idx{"$fh"};
            my $ws = $c[$i];
            $ws->pump;
            while (my $f = $ws->try_recv_frame) { push @{ $got[$i] }, $f->{payload} }
            if (@{ $got[$i] } >= $M || $ws->is_eof) { $sel->remove($fh); $pending-- }
        }
    }
    is($pending, 0, "$N sessions: every one answered within 10 s");
    my $ok = grep {
        my $i = $_;
        join("\n", @{ $got[$i] }) eq join("\n", map { $payload->($i, $_) } 0 .. $M - 1);
    } 0 .. $#c;
    is($ok, scalar @c, "$N sessions: each got its $M messages back in order");
    $_->send_close(4000 + $_->{fh}->fileno % 100) for @c;
    my $closed = grep {
        my ($code) = $_->recv_close(timeout => 5);
        defined $code && $code == 4000 + $_->{fh}->fileno % 100 && $_->wait_eof(3);
    } @c;
    is($closed, scalar @c, "$N sessions: each close code relayed back, then EOF");
    $_->close for @c;
}

# --- a violation by the client: the echo upstream hears it, the client gets it ---
{
    my $ws = ws();
    $ws->send_frame(opcode => 1, payload => 'not masked', mask => 0);
    expect_close($ws, 'unmasked client frame', 1002);
}
{
    my $ws = ws();
    $ws->send_text("bad \xff utf-8");
    expect_close($ws, 'invalid UTF-8 from the client', 1007);
}
{
    my $ws = ws();
    $ws->send_binary('x' x 70000);
    expect_close($ws, 'frame over websocket_max_payload_len from the client', 1009);
}
{
    my $ws = ws();
    $ws->send_frame(opcode => 3, payload => 'reserved');
    expect_close($ws, 'reserved opcode from the client', 1002);
}

# --- the upstream's limit: the echo closes 1009, the relay passes it on --------
{
    my $ws = ws('/small-upstream');
    echo_ok($ws, 2, 'z' x 65535, 'small upstream: 65535 bytes pass');
    $ws->send_binary('z' x 100000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1009, 'small upstream: 100000 bytes -> the echo closes with 1009, relayed')
        or diag 'got ' . close_desc($ws, $code);
    $ws->send_close(1009);
    ok($ws->wait_eof(3), 'small upstream: TCP closed after the client answers the close');
}

# --- after all that, the relay still works ---------------------------------------------
{
    my $ws = ws();
    echo_ok($ws, 1, 'still relaying', 'after everything');
    bye($ws, 'final');
}

my @err = $t->grep_error_log(qr/\[error\]/);
is_deeply(\@err, [], 'no [error] lines: nothing went wrong with the upstream')
    or diag join "\n", @err;

finish($t, $port, \@workers, '/pass');

done_testing;
