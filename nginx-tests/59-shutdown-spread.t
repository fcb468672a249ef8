#!/usr/bin/perl
# websocket_shutdown_spread: when a worker exits (here: a reload), its
# sessions get their 1001 spread evenly over TIME instead of all at once;
# each still answers what it received before its close; a session that ends
# by itself meanwhile just ends; worker_shutdown_timeout still bounds it all.
#
# 100 echo sessions with websocket_shutdown_spread 4s: each sends a message
# right before the reload; the first and the last 1001 are at least 0.6 × 4 s
# apart, none comes later than 5 s after the reload, and every session got
# its message back before its close.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(http_request);
use WsTest;
use WsValgrind qw(slowdown);

my $t = WsNginx->new(worker_processes => 1,
    main_conf => 'worker_shutdown_timeout 10s;', conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;

    websocket_shutdown_spread 4s;

    location /ws {
        websocket_echo;
    }

    location /metrics {
        websocket_status;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);

# nginx_websocket_sessions_draining, summed over the workers (the zone is
# shared; the new worker answers).
sub draining {
    my (undef, undef, $body) = http_request($port,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    return ($body // '') =~ /^nginx_websocket_sessions_draining (\d+)$/m ? $1 : undef;
}

is(draining(), 0, 'nginx_websocket_sessions_draining 0 before the reload');

my $N = 100;
my @s;
for my $i (0 .. $N - 1) {
    my $ws = eval { ws_open($port, "/ws?$i") } or last;
    push @s, { ws => $ws, i => $i, got => [], bad => [] };
}
is(scalar @s, $N, "$N sessions upgraded");
# One more ends by itself a second into the spread.
my $self_ending = ws_open($port, '/ws?self');

$_->{ws}->send_text("before the reload $_->{i}") for @s;
$t->reload(wait => 0);
my $reload_at = time;

my %by_fh = map { ($_->{ws}->socket . '' => $_) } @s;
my $sel = IO::Select->new(map { $_->{ws}->socket } @s);
my $deadline = $reload_at + 4 + 6 * slowdown();
my ($self_code, $self_at, $draining_mid);
while ($sel->count && time < $deadline) {
    if (!defined $draining_mid && time - $reload_at >= 2) {
        $draining_mid = draining();
    }
    if (!defined $self_at && time - $reload_at >= 1) {
        $self_ending->send_close(1000);
        ($self_code) = $self_ending->recv_close(timeout => 2);
        $self_at = time - $reload_at;
    }
    for my $fh ($sel->can_read(0.05)) {
        my $s = $by_fh{"$fh"};
        my $ws = $s->{ws};
        $ws->pump;
        $ws->take_frames($s, since => $reload_at);
        if ($ws->is_eof) {
            $s->{eof} = 1;
            $sel->remove($fh);
            # so that nginx's lingering close ends the session now
            $ws->close;
        }
    }
}

is($sel->count, 0, "every session ended");
note sprintf("closes from %.2f s to %.2f s after the reload", (sort { $a <=> $b } map { $_->{close_at} // () } @s)[0, -1]) if grep { defined $_->{close_at} } @s;
my @not1001 = grep { ($_->{close_code} // 0) != 1001 } @s;
is(scalar @not1001, 0, 'every session got 1001')
    or diag join '; ', map { "session $_->{i}: " . ($_->{close_code} // 'none') } @not1001;
my @at = sort { $a <=> $b } map { $_->{close_at} // () } @s;
SKIP: {
    skip 'no closes', 2 unless @at;
    ok($at[-1] - $at[0] >= 0.6 * 4, 'the 1001s were spread over at least 0.6 × 4 s')
        or diag sprintf('first at %.2f s, last at %.2f s', $at[0], $at[-1]);
    ok($at[-1] <= 4 + 1 * slowdown(), 'none came later than 5 s after the reload')
        or diag sprintf('last at %.2f s', $at[-1]);
    # Evenly: about half of them in the first half of the spread.
    my $early = grep { $_ < 2 } @at;
    ok($early >= 0.3 * $N && $early <= 0.7 * $N, "evenly: $early of $N in the first 2 s");
}
my @unanswered = grep { "@{ $_->{got} }" ne "before the reload $_->{i}" } @s;
is(scalar @unanswered, 0, 'every session got its message back before its close')
    or diag join '; ', map { "session $_->{i}: got '@{ $_->{got} }'" } @unanswered;
is(scalar(grep { @{ $_->{bad} } } @s), 0, 'nothing after a close');
is($self_code, 1000, 'a session that closed by itself during the spread just ended (1000)');
ok($self_ending->wait_eof(2), '... and TCP closed');

# Halfway through the spread about half of the sessions wait for their turn.
ok(defined $draining_mid && $draining_mid >= 0.3 * $N && $draining_mid <= 0.7 * $N + 1,
    'nginx_websocket_sessions_draining halfway through: ' . ($draining_mid // 'none'));
my $drained = draining();
for (1 .. 50) {
    last if !$drained;
    sleep 0.1;
    $drained = draining();
}
is($drained, 0, 'nginx_websocket_sessions_draining 0 once they ended');

my @alerts = $t->check_error_log;
is(scalar @alerts, 0, 'no alerts in error.log') or diag join "\n", @alerts;
$t->stop;
done_testing;
