#!/usr/bin/perl
# Faults: a peer that stalls in the middle of a frame. websocket_pass to a
# scripted upstream that sends part of a frame (or of a fragmented message)
# and then nothing: after websocket_timeout (2 s) both legs are closed, the
# client gets close 1001 (what the module sends for a session that stayed
# quiet past websocket_timeout), then EOF, and the upstream gets close 1001
# too, then EOF, also when the stalled upstream does not read at all. The
# same for a client that stalls mid-frame on pass. All stalls run at once.
# websocket_timeout is the quiet time of the whole session: a client that
# keeps talking keeps a stalled upstream's session open, and 1001 follows
# the timeout after it stops. No stall holds a connection: the worker's
# sockets are back to the idle count.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient qw(build_frame);
use WsTest qw(:DEFAULT worker_sockets sockets_back_to rss_kib tagged_session);
use WsUpstream;

sub frame { WsUpstream::Conn::frame(@_) }

my $TIMEOUT = 2;    # websocket_timeout

# how long each stalling upstream stays, reading (and recording) what comes
sub linger_reading {
    my ($c) = @_;
    while (my $f = $c->recv_frame(timeout => 8)) {
        $c->push_note(frames => $f);
        $c->note(close_code => WsUpstream::Conn::close_code($f) // -1, close_at => time)
            if $f->{opcode} == 8;
    }
    $c->note(eof => $c->is_eof ? 1 : 0, eof_at => time);
}

my %mode = (
    record => sub { $_[0]->handshake; $_[0]->echo_loop(timeout => 15) },
    # 1000 bytes of a 5000-byte text frame
    midpayload => sub {
        my $c = shift;
        $c->handshake(then => substr(frame(opcode => 1, payload => 'a' x 5000), 0, 1004));
        $c->note(stalled_at => time);
        linger_reading($c);
    },
    # the first byte of a frame header
    midheader => sub {
        my $c = shift;
        $c->handshake(then => "\x81");
        $c->note(stalled_at => time);
        linger_reading($c);
    },
    # a whole first fragment, then nothing
    midmessage => sub {
        my $c = shift;
        $c->handshake(then => frame(opcode => 2, fin => 0, payload => 'first fragment'));
        $c->note(stalled_at => time);
        linger_reading($c);
    },
    # part of a frame, then neither writes nor reads
    deaf => sub {
        my $c = shift;
        $c->handshake(then => substr(frame(opcode => 2, payload => 'd' x 3000), 0, 100));
        $c->note(stalled_at => time);
        sleep $TIMEOUT + 1.5;
        $c->wait_eof(timeout => 3);
        $c->note(eof_at => time);
    },
);

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my ($m) = ($c->path // '') =~ m{^/p/(\w+)};
    ($mode{ $m // '' } // $mode{record})->($c);
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;
    lingering_timeout 1s;

    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_timeout ${TIMEOUT}s;
    }

    location /ws {
        websocket_echo;
    }
}
EOF_CONF

my $base = worker_sockets($t);
my $have_proc = $base > 0;

sub session { my ($m, %o) = @_; tagged_session($port, "/p/$m", %o) }
sub rec_of { my ($tag, %o) = @_; $up->wait_record(path => $tag, %o) // {} }

# watch(@sessions): reads every session's frames at once until each has a
# close frame and EOF, or for timeout + 4 s. Each session is a hash with ws;
# it gets frames (before the close), code (undef when no close or an empty
# one), closed_at, eof_at.
sub watch {
    my (@s) = @_;
    my %of = map { ("" . $_->{ws}->socket => $_) } @s;
    my $sel = IO::Select->new(map { $_->{ws}->socket } @s);
    my $deadline = time + $TIMEOUT + 4;
    while ($sel->count && time < $deadline) {
        for my $fh ($sel->can_read(0.1)) {
            my $x = $of{"$fh"};
            my $ws = $x->{ws};
            $ws->pump;
            while (my $f = $ws->try_recv_frame) {
                next if $x->{closed_at};
                if ($f->{opcode} == 8) {
                    $x->{closed_at} = time;
                    $x->{code} = length $f->{payload} >= 2 ? unpack('n', $f->{payload}) : undef;
                    $x->{close_len} = length $f->{payload};
                } else {
                    push @{ $x->{frames} }, $f;
                }
            }
            if ($ws->is_eof) { $x->{eof_at} = time; $sel->remove($fh) }
        }
    }
}

# closed_ok($x, $name, $t0): close 1001 between timeout - 0.3 s and
# timeout + 1.5 s after $t0, then EOF. 3 tests.
sub closed_ok {
    my ($x, $name, $t0) = @_;
    is($x->{code}, 1001, "$name: the client gets close 1001")
        or diag 'got ' . ($x->{closed_at} ? 'close ' . ($x->{code} // "of $x->{close_len} bytes") : 'no close')
        . '; frames: ' . join(' ', map { "op$_->{opcode}/fin$_->{fin}/len$_->{length}" } @{ $x->{frames} // [] });
    my $took = ($x->{closed_at} // 99) - $t0;
    ok($took > $TIMEOUT - 0.3 && $took < $TIMEOUT + 1.5, sprintf("$name: after websocket_timeout (%.2fs)", $took));
    ok($x->{eof_at}, "$name: then TCP is closed");
}

# --- every kind of stall at once -------------------------------------------------------------------
my @up_cases = ([ 'midpayload', 'upstream stalls mid-payload' ],
                [ 'midheader', 'upstream stalls mid-header' ],
                [ 'midmessage', 'upstream stalls mid-message' ],
                [ 'deaf', 'upstream stalls mid-frame and reads nothing' ]);
my @client_cases = ([ 'header', "\x82" ],
                    [ 'payload', substr(build_frame(opcode => 2, payload => 'c' x 5000), 0, 1000) ],
                    [ 'message', build_frame(opcode => 1, fin => 0, payload => 'half a message') ]);
my @all;
for my $case (@up_cases) {
    my ($m, $name) = @$case;
    my ($ws, $tag) = session($m);
    push @all, { ws => $ws, tag => $tag, mode => $m, name => $name };
}
for my $case (@client_cases) {
    my ($what, $bytes) = @$case;
    my ($ws, $tag) = session('record');
    $ws->send_raw($bytes);
    push @all, { ws => $ws, tag => $tag, mode => 'client', name => "client stalls mid-$what on pass",
        sent_at => time };
}
is($_->{ws}->status, 101, "$_->{name}: 101") for @all;
watch(@all);

for my $x (@all) {
    my $name = $x->{name};
    if ($x->{mode} eq 'client') {
        closed_ok($x, $name, $x->{sent_at});
        my $r = rec_of($x->{tag}, until => 'eof');
        is($r->{close_code}, 1001, "$name: the upstream gets close 1001");
        is($r->{eof}, 1, "$name: the upstream connection is closed");
        next;
    }
    my $r = rec_of($x->{tag}, until => 'stalled_at');
    closed_ok($x, $name, $r->{stalled_at} // time);
    my @data = @{ $x->{frames} // [] };
    ok(!grep({ $_->{fin} } @data), "$name: no data frame before the close ends a message");
    if ($x->{mode} eq 'midmessage') {
        is(scalar(@data), 1, "$name: the complete first fragment reached the client");
        is($data[0] && $data[0]{payload}, 'first fragment', "$name: ... intact");
    }
    if ($x->{mode} eq 'deaf') {
      SKIP: {
            skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
            my $took = sockets_back_to($t, $base, 2);
            ok(defined $took, "$name: the worker closed both connections")
                or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base when idle";
        }
        $r = rec_of($x->{tag}, until => 'eof_at', timeout => 6);
        is($r->{eof}, 1, "$name: it finds its connection closed");
        next;
    }
    $r = rec_of($x->{tag}, until => 'eof_at');
    is($r->{close_code}, 1001, "$name: the upstream gets close 1001");
    is($r->{eof}, 1, "$name: the upstream connection is closed");
}
is(scalar(() = $t->grep_error_log(qr/websocket: (?:client|upstream) idle for too long, closing with 1001/)),
    scalar @all, 'each stalled session is logged: "... idle for too long, closing with 1001"');

# --- the upstream stalls mid-frame, the client keeps talking ------------------------------------
# websocket_timeout bounds the quiet of the whole session: traffic on either
# leg re-arms both legs' read timers (as nginx's own proxying of upgraded
# connections does), so a stalled upstream is not cut while the client
# talks; once the client stops too, 1001 follows after the timeout.
{
    my $name = 'upstream stalls while the client talks';
    my ($ws, $tag) = session('midpayload');
    is($ws->status, 101, "$name: 101");
    my $n = 0;
    my $t0 = time;
    my $last;
    while (time - $t0 < 2 * $TIMEOUT) {
        $ws->send_text('still here ' . ++$n);
        $last = time;
        my $f = $ws->recv_frame(timeout => 0.4);
        if ($f && $f->{opcode} == 8) { $ws->{close_frame} = $f; last }
    }
    ok(!$ws->{close_frame}, "$name: not closed while the client talks (" . sprintf('%.1fs', time - $t0) . ')');
    my $x = { ws => $ws };
    watch($x);
    closed_ok($x, "$name, then stops", $last);
    my $r = rec_of($tag, until => 'eof_at');
    is(scalar(grep { $_->{opcode} == 1 } @{ $r->{frames} // [] }), $n,
        "$name: every message of the client ($n) was relayed");
    is($r->{close_code}, 1001, "$name: the upstream gets close 1001");
    is($r->{eof}, 1, "$name: the upstream connection is closed");
}

# --- nothing left behind ------------------------------------------------------------------------
SKIP: {
    skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
    my $took = sockets_back_to($t, $base, 2);
    ok(defined $took, 'every stalled session released')
        or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base when idle";
}
is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
