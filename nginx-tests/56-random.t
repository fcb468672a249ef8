#!/usr/bin/perl
# Masking keys and Sec-WebSocket-Key values come from a strong source
# (RFC 6455 §5.3, §10.3): over many frames and handshakes every bit
# position takes both values about half of the time, and nothing repeats.
# nginx's ngx_random() (libc random(), 31 bits) fails this: the top bit of
# every 32-bit draw is never set.
#   - the masks websocket_pass puts on frames towards the upstream;
#   - the keys of its upstream handshakes;
#   - the masks of websocket_send_masked on an echo.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MIME::Base64 qw(decode_base64);
use WsClient;
use WsTest;
use WsUpstream;

my $FRAMES = 1200;
my $HANDSHAKES = 100;

# Collects the mask of every frame until "done", then answers "ok" with
# the masks, 4 bytes each, in one binary message.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    my $masks = '';
    while (my $f = $c->recv_frame(timeout => 10)) {
        last if $f->{opcode} == 8;
        if ($f->{opcode} == 1 && $f->{payload} eq 'done') {
            $c->send_binary($masks);
            next;
        }
        $masks .= $f->{masked} ? $f->{mask_key} : 'none';
    }
    $c->send_close(1000);
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    location /pass {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /masked {
        websocket_echo;
        websocket_send_masked on;
    }

    location /ws {
        websocket_echo;
    }
}
EOF_CONF

# bits_balanced(\@words_as_bytes, $name): each bit position of the byte
# strings is set in 30-70 % of them (at n = 100 that is 4 standard
# deviations from the mean; a fixed bit is 50).
sub bits_balanced {
    my ($values, $name) = @_;
    my $n = @$values;
    my $bits = 8 * length $values->[0];
    my @ones = (0) x $bits;
    for my $v (@$values) {
        my $b = unpack('B*', $v);
        $ones[$_] += substr($b, $_, 1) for 0 .. $bits - 1;
    }
    my @off = grep { $ones[$_] < 0.3 * $n || $ones[$_] > 0.7 * $n } 0 .. $bits - 1;
    is_deeply(\@off, [], "$name: every one of $bits bits is set in 30-70 % of $n")
        or diag('bit: ones = ' . join(', ', map { "$_: $ones[$_]" } @off));
}

sub all_distinct {
    my ($values, $name) = @_;
    my %seen;
    my @repeats = grep { $seen{$_}++ } @$values;
    is(scalar @repeats, 0, "$name: no value repeats");
}

# --- masks towards the upstream ------------------------------------------------
{
    my $ws = ws_open($port, '/pass');
    $ws->send_binary("m$_") for 1 .. $FRAMES;
    $ws->send_text('done');
    my $m = $ws->recv_message(timeout => 10);
    ok($m && $m->{opcode} == 2, 'the upstream reports the masks it saw');
    my $blob = $m ? $m->{payload} : '';
    my @masks = unpack('(a4)*', $blob);
    is(scalar @masks, $FRAMES, "$FRAMES masked frames reached the upstream");
    ok(!grep({ $_ eq 'none' } @masks), 'every frame towards the upstream is masked');
    bits_balanced(\@masks, 'pass masks');
    all_distinct(\@masks, 'pass masks');
    $ws->send_close(1000);
    $ws->recv_close;
}

# --- upstream handshake keys -----------------------------------------------------
{
    for (1 .. $HANDSHAKES) {
        my $ws = ws_open($port, '/pass');
        $ws->send_close(1000);
        $ws->recv_close;
    }
    my @keys;
    for (1 .. 50) {
        @keys = map { $_->{headers}{'sec-websocket-key'} // () } $up->records;
        last if @keys >= $HANDSHAKES + 1;
        select undef, undef, undef, 0.1;
    }
    cmp_ok(scalar @keys, '>=', $HANDSHAKES + 1, 'every upstream handshake was recorded');
    my @raw = map { decode_base64($_) } @keys;
    is(scalar(grep { length $_ != 16 } @raw), 0, 'every key is base64 of 16 bytes');
    bits_balanced(\@raw, 'handshake keys');
    all_distinct(\@raw, 'handshake keys');
}

# --- websocket_send_masked on an echo -----------------------------------------------
{
    my $ws = ws_open($port, '/masked');
    $ws->send_binary("e$_") for 1 .. $FRAMES;
    my @masks;
    while (@masks < $FRAMES) {
        my $f = $ws->recv_frame(timeout => 10) or last;
        push @masks, $f->{masked} ? $f->{mask_key} : 'none';
    }
    is(scalar @masks, $FRAMES, "$FRAMES echoes arrived");
    ok(!grep({ $_ eq 'none' } @masks), 'every echo is masked');
    bits_balanced(\@masks, 'send_masked masks');
    all_distinct(\@masks, 'send_masked masks');
    $ws->send_close(1000);
    $ws->recv_close;
}

finish($t, $port, \@workers);
$up->stop;
done_testing;
