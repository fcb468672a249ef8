#!/usr/bin/perl
# websocket_max_session_time: a session that has lasted TIME gets close 1001
# after the message under way, whether or not it keeps talking; for
# websocket_pass both legs get 1001 (the upstream first, so that what it
# still answers reaches the client before the client's close). The session
# logs "session reached websocket_max_session_time" at info.
#
# With websocket_max_session_time 2s, all the sessions below run side by side,
# driven from one loop: each gets its 1001 between 2 s and 3.5 s (the upper
# bound scaled by TEST_NGINX_SLOWDOWN), later only when a message it began
# before 2 s ends later.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(OP_TEXT OP_CONT OP_CLOSE);
use WsTest;
use WsUpstream;
use WsValgrind qw(slowdown);

# /up/slow: echoes each text 1 s after it came; records the close it gets.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    while (my $f = $c->recv_frame(timeout => 15)) {
        if ($f->{opcode} == OP_CLOSE) {
            $c->note(close_code => WsUpstream::Conn::close_code($f) // -1, close_at => time);
            $c->send_close(WsUpstream::Conn::close_code($f));
            $c->wait_eof(timeout => 5);
            return;
        }
        next unless $f->{opcode} == OP_TEXT;
        sleep 1;
        $c->send_text($f->{payload}) or return;
    }
});
my $UP = $up->port;

my $t = WsNginx->new(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    websocket_max_session_time 2s;

    location /ws {
        websocket_echo;
    }

    location /pass {
        websocket_pass ws://127.0.0.1:%%PORT_1%%/ws;
    }

    location /up/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /forever {
        websocket_max_session_time off;
        websocket_echo;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;

    location /ws {
        websocket_echo;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

# Sessions of the loop. talk: one message in flight at a time, the next as
# soon as the answer came; fragment: a message begun at 1.5 s, finished at
# 2.6 s; at => [seconds, text]: one message sent then.
my @s = (
    { name => 'echo, talking', path => '/ws', talk => 1 },
    { name => 'echo, a fragmented message under way', path => '/ws', fragment => 1 },
    { name => 'pass, talking', path => '/pass', talk => 1 },
    { name => 'pass, a fragmented message under way', path => '/pass', fragment => 1 },
    { name => 'pass, an answer on its way', path => '/up/slow', at => [1.5, 'in flight'] },
    { name => "off", path => "/forever", keep => 1 },
);
for my $s (@s) {
    $s->{opened} = time;    # its session begins after this
    $s->{ws} = ws_open($port, $s->{path});
    @$s{qw(sent got bad)} = ([], [], []);
}
my $start = time;
for my $s (grep { $_->{talk} } @s) {
    push @{ $s->{sent} }, 'talk 0';
    $s->{ws}->send_text('talk 0');
}

my $end = $start + 2 + 3 * slowdown();
while (time < $end && grep { !$_->{eof} && !$_->{keep} } @s) {
    my $now = time - $start;
    last if $now > 4 && !grep { !$_->{eof} && !$_->{keep} } @s;
    for my $s (grep { !$_->{eof} } @s) {
        my $ws = $s->{ws};
        if ($s->{fragment} && !$s->{frag_sent} && $now >= 1.5) {
            $ws->send_frame(opcode => OP_TEXT, fin => 0, payload => 'begun before, ');
            $s->{frag_sent} = 1;
            push @{ $s->{sent} }, 'begun before, ended after';
        }
        if ($s->{fragment} && ($s->{frag_sent} // 0) == 1 && $now >= 2.6) {
            $ws->send_frame(opcode => OP_CONT, fin => 1, payload => 'ended after');
            $s->{frag_sent} = 2;
        }
        if ($s->{at} && !$s->{at_sent} && $now >= $s->{at}[0]) {
            $ws->send_text($s->{at}[1]);
            push @{ $s->{sent} }, $s->{at}[1];
            $s->{at_sent} = 1;
        }
        $ws->pump;
        $ws->take_frames($s, since => $start, on_data => sub {
            my ($f) = @_;
            if ($f->{opcode} != OP_TEXT || !$f->{fin}) {
                push @{ $s->{bad} }, "unexpected frame opcode $f->{opcode} fin $f->{fin}";
                return;
            }
            push @{ $s->{got} }, $f->{payload};
            if ($s->{talk} && @{ $s->{got} } == @{ $s->{sent} } && !length $ws->buffer) {
                my $m = 'talk ' . scalar @{ $s->{sent} };
                push @{ $s->{sent} }, $m;
                $ws->send_text($m);
            }
        });
        $s->{eof} = 1 if $ws->is_eof;
    }
    sleep 0.01;
}

my $late = 2 + 1.5 * slowdown();
for my $s (grep { !$_->{keep} } @s) {
    my $n = $s->{name};
    is($s->{close_code}, 1001, "$n: close 1001");
    my $at = $s->{close_at} // -1;
    # The session's age at its close: it began after its handshake was
    # sent (and before its 101 reached us; the sessions opened one by one).
    my $age = $at < 0 ? -1 : $at + ($start - $s->{opened});
    my $earliest = $s->{fragment} ? 2.6 : 1.95;
    ok($age >= $earliest && $at <= $late + ($s->{fragment} ? 0.6 : 0),
        "$n: the close came at ${earliest}..${late} s")
        or diag sprintf('at %.2f s, age %.2f s', $at, $age);
    ok($s->{eof}, "$n: TCP closed");
    is(scalar @{ $s->{bad} }, 0, "$n: only whole text frames before the close")
        or diag "@{ $s->{bad} }";
    my @sent = @{ $s->{sent} };
    my @got = @{ $s->{got} };
    # A talker's last message may have crossed nginx's close on the wire.
    pop @sent if $s->{talk} && @got == @sent - 1;
    is_deeply(\@got, \@sent, "$n: every message sent before the close was answered first")
        or diag 'got ' . scalar(@got) . ' of ' . scalar(@sent);
    ok(@got >= 5, "$n: it kept talking (" . scalar(@got) . ' answers)') if $s->{talk};
}

my ($off) = grep { $_->{keep} } @s;
ok(!exists $off->{close_at} && !$off->{eof}, 'websocket_max_session_time off: the session goes on');
echo_ok($off->{ws}, OP_TEXT, 'still here', 'websocket_max_session_time off');
bye($off->{ws}, 'websocket_max_session_time off');

my $rec = $up->wait_record(path => qr{^/up/slow}, until => 'close_code');
is($rec && $rec->{close_code}, 1001, 'pass: the upstream leg got 1001 too');

my @lines = grep { /session reached websocket_max_session_time, closing/ } split /\n/, $t->error_log;
is(scalar(grep { /\[info\]/ } @lines), 5, 'each session logged its age at info once');

finish($t, $port, \@workers);
done_testing;
