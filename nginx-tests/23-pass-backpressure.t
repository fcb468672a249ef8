#!/usr/bin/perl
# websocket_pass backpressure: when one side does not read, the relay stops
# reading the other side instead of buffering. A scripted upstream sends
# ~8 MiB as fast as it can to a client that does not read for 2 s (small
# receive buffer, nginx `listen ... sndbuf=8k`): the worker's VmRSS must not
# grow by the amount sent, and afterwards the client gets everything intact
# and in order. Then the same the other way round: an upstream that does not
# read for 2 s while the client sends ~8 MiB.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha1_hex);
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest;
use WsUpstream;
use WsValgrind;

my $FRAMES = 130;
my $FRAME_LEN = 65000;                        # under the default 64k limit
my $TOTAL = $FRAMES * $FRAME_LEN;             # ~8 MiB
my $RSS_LIMIT = 4 * 1024 * 1024;

my $BLOCK = join '', map { chr int rand 256 } 1 .. $FRAME_LEN - 4;
sub payload { my $i = shift; pack('N', $i) . ($BLOCK ^ (chr($i % 251) x length $BLOCK)) }

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my $path = $c->path // '';
    if ($path =~ m{/flood}) {
        # wait for the client's "go", then write everything as fast as the
        # socket takes it
        $c->handshake;
        my $go = $c->recv_frame(timeout => 10);
        $c->note(go => $go ? $go->{payload} : undef);
        for my $i (1 .. $FRAMES) {
            $c->send_binary(payload($i)) or last;
            $c->note(sent => $i) if $i % 8 == 0 || $i == $FRAMES;
        }
        $c->note(sent_all => time);
        $c->echo_loop(record => 0, timeout => 20);
    } elsif ($path =~ m{/sink}) {
        # do not read for a while, then read and digest everything
        $c->handshake;
        sleep 2.5;
        $c->note(reading => time);
        my ($n, $sha, $bad) = (0, Digest::SHA->new(1), 0);
        while ($n < $FRAMES) {
            my $f = $c->recv_frame(timeout => 15) or last;
            $bad++ unless $f->{opcode} == 2 && $f->{masked};
            $sha->add($f->{payload});
            $n++;
        }
        $c->note(received => $n, bad => $bad);
        $c->send_text("got $n bad $bad sha " . $sha->hexdigest);
        $c->echo_loop(record => 0, timeout => 20);
    } else {
        $c->handshake;
        $c->echo_loop(record => 0);
    }
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%% sndbuf=8k rcvbuf=8k;

    location / {
        websocket_pass ws://127.0.0.1:$UP;
    }
}
EOF_CONF
is(scalar @workers, 1, 'one worker');

sub rss_kib {
    open my $fh, '<', "/proc/$workers[0]/status" or return undef;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)\s+kB/ }
    return undef;
}

# A warm-up session, so that first-use allocations do not count.
{
    my $ws = ws_open($port, '/warmup');
    echo_ok($ws, 2, 'w' x 65000, 'warm-up');
    bye($ws, 'warm-up');
}

# --- the upstream floods, the client does not read ---------------------------------
{
    my $ws = ws_open($port, '/flood', rcvbuf => 8192);
    my $base = rss_kib();
    ok(defined $base, "worker VmRSS readable ($base kB)");
    $ws->send_text('go');
    my $max = $base;
    my $t0 = time;
    while (time - $t0 < 2) {
        sleep 0.05;
        my $r = rss_kib() // next;
        $max = $r if $r > $max;
    }
    my $r = $up->wait_record(path => qr{/flood}, timeout => 0) // {};
    my $sent = ($r->{sent} // 0) * $FRAME_LEN;
    note sprintf 'after 2 s the upstream had written at least %d of %d bytes; worker VmRSS %d -> max %d kB',
        $sent, $TOTAL, $base, $max;
    SKIP: {
        skip 'under valgrind or ASan VmRSS is not the worker\'s memory', 1 if WsValgrind::checking();
        cmp_ok(($max - $base) * 1024, '<', $RSS_LIMIT,
            'client not reading: the worker does not buffer the upstream flood (VmRSS growth < 4 MiB)')
            or diag "VmRSS grew from $base kB to $max kB";
    }

    my @bad;
    my $got = 0;
    my $t1 = time;
    for my $i (1 .. $FRAMES) {
        my $m = $ws->recv_message(timeout => 10);
        unless ($m) { push @bad, "message $i: none (" . ($ws->error // '') . ')'; last }
        push @bad, "message $i: opcode $m->{opcode}" unless $m->{opcode} == 2;
        if ($m->{payload} ne payload($i)) {
            my $seq = length $m->{payload} >= 4 ? unpack('N', $m->{payload}) : -1;
            push @bad, "message $i: wrong payload (length " . length($m->{payload}) . ", seq $seq)";
            last if @bad > 5;
        }
        $got += length $m->{payload};
    }
    is($got, $TOTAL, "the client then reads all $TOTAL bytes");
    is_deeply(\@bad, [], 'every message intact and in order');
    note sprintf 'reading took %.2fs', time - $t1;
    echo_ok($ws, 1, 'after the flood', 'flood session still relays');
    bye($ws, 'flood');
}

# --- the client floods, the upstream does not read ---------------------------------
{
    my $ws = ws_open($port, '/sink');
    my $all = join '', map { build_frame(opcode => 2, payload => payload($_)) } 1 .. $FRAMES;
    my $want_sha = sha1_hex(join '', map { payload($_) } 1 .. $FRAMES);
    my $fh = $ws->socket;
    my $base = rss_kib();
    my $max = $base;
    my $off = 0;
    my $t0 = time;
    my $next_sample = 0;
    my $written_at_2s;
    my $deadline = $t0 + 20;
    while ($off < length $all && time < $deadline) {
        my $n = syswrite($fh, $all, length($all) - $off, $off);
        if (defined $n) { $off += $n }
        elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) { last }
        else { IO::Select->new($fh)->can_write(0.05) }
        if (time - $t0 < 2 && time >= $next_sample) {
            my $r = rss_kib();
            $max = $r if defined $r && $r > $max;
            $next_sample = time + 0.05;
        } elsif (!defined $written_at_2s && time - $t0 >= 2) {
            $written_at_2s = $off;
        }
    }
    is($off, length $all, 'the client could write everything once the upstream read');
    note sprintf 'in the first 2 s the client wrote %d of %d bytes; worker VmRSS %d -> max %d kB',
        $written_at_2s // $off, length $all, $base, $max;
    SKIP: {
        # valgrind's own memory (translations, shadow memory of what the
        # worker touches) grows the VmRSS of the process it runs; ASan's
        # quarantine keeps freed memory
        skip 'under valgrind or ASan VmRSS is not the worker\'s memory', 1 if WsValgrind::checking();
        cmp_ok(($max - $base) * 1024, '<', $RSS_LIMIT,
            'upstream not reading: the worker does not buffer the client flood (VmRSS growth < 4 MiB)')
            or diag "VmRSS grew from $base kB to $max kB";
    }
    my $m = $ws->recv_message(timeout => 15);
    is($m && $m->{payload}, "got $FRAMES bad 0 sha $want_sha",
        'the upstream got every message intact, masked and in order');
    bye($ws, 'sink');
}

finish($t, $port, \@workers, '/echo');
$up->stop;

done_testing;
