#!/usr/bin/perl
# Faults: kill -9 of the worker under load. Four websocket_echo and four
# websocket_pass sessions (to the scripted upstream) exchange messages; the
# worker gets SIGKILL while a message is in flight on every session. The
# clients and the upstream see their connections closed (EOF or reset, no
# close frame: nobody is left to send one), the master starts a new worker,
# new echo and pass sessions work, and websocket_status (shared memory,
# which outlives the worker) still answers a well-formed Prometheus body
# with sane values: every counter kept what it had, the messages in flight
# counted at most once. The killed worker's sessions never ended, so
# sessions_active keeps counting them (4 echo, 4 pass) from then on: the
# gauge only moves when a session ends in a live worker. error.log has the
# master's "worker process N exited on signal 9" alert and nothing else
# alarming; this file ends with its own variant of finish() for that.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsClient qw(http_request);
use WsTest;
use WsUpstream;
use WsValgrind;

# A process killed with SIGKILL cannot write valgrind's or ASan's report,
# which make test-valgrind / test-asan count as a failure.
plan skip_all => 'kills a worker with SIGKILL, which valgrind and ASan cannot report on'
    if WsValgrind::checking();

my $N = 4;    # sessions of each kind

my $up = WsUpstream->new(handler => sub { $_[0]->handshake; $_[0]->echo_loop(timeout => 20, record => 0) });
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    location = /metrics {
        websocket_status;
    }
    location /ws {
        websocket_echo;
    }
    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
    }
}
EOF_CONF
is(scalar @workers, 1, 'one worker');
my $old = $workers[0];

# metrics() -> (\%series, $status, $content_type, @malformed_lines): the
# body parsed into 'name{labels}' => value ('name' => value for a family
# without labels); lines that are not HELP, TYPE
# or a sample with an integer value, and samples of a family without TYPE,
# are returned as malformed.
sub metrics {
    my ($status, $h, $body) = http_request($port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    my (%m, %type, @bad);
    for my $l (split /\n/, $body // '') {
        if ($l =~ /^# HELP (nginx_websocket_\w+) \S.*$/) { next }
        if ($l =~ /^# TYPE (nginx_websocket_\w+) (counter|gauge)$/) { $type{$1} = $2; next }
        if ($l =~ /^(nginx_websocket_\w+)\{(\w+)="([\w]+)"\} (\d+)$/ && $type{$1}) {
            push @bad, "duplicate: $l" if exists $m{"$1\{$2=\"$3\"}"};
            $m{"$1\{$2=\"$3\"}"} = $4;
            next;
        }
        # A family without labels (a gauge such as sessions_draining).
        if ($l =~ /^(nginx_websocket_\w+) (\d+)$/ && $type{$1}) {
            push @bad, "duplicate: $l" if exists $m{$1};
            $m{$1} = $2;
            next;
        }
        push @bad, $l;
    }
    return (\%m, $status, $h->{'content-type'}, @bad);
}

sub m_ok {
    my ($name) = @_;
    my ($m, $status, $ct, @bad) = metrics();
    is($status, 200, "$name: websocket_status answers 200");
    is($ct, 'text/plain; version=0.0.4', "$name: Prometheus text format");
    is_deeply(\@bad, [], "$name: every line is HELP, TYPE or an integer sample of a typed family");
    my @huge = grep { $m->{$_} > 1e12 } sort keys %$m;
    is_deeply(\@huge, [], "$name: no absurd value (a wrapped gauge, garbage)");
    return $m;
}

my $SA = 'nginx_websocket_sessions_active{kind="%s"}';
my $ST = 'nginx_websocket_sessions_total{kind="%s"}';
my $MI = 'nginx_websocket_messages_total{direction="in"}';
my $MO = 'nginx_websocket_messages_total{direction="out"}';
sub sa { sprintf $SA, $_[0] }
sub st { sprintf $ST, $_[0] }

# --- the load ----------------------------------------------------------------------------------------------
my @s = ((map { { kind => 'echo', ws => ws_open($port, '/ws') } } 1 .. $N),
         (map { { kind => 'pass', ws => ws_open($port, "/p/s$_") } } 1 .. $N));
my $exchanged = 0;
my $lost = 0;
my $t0 = time;
while (time - $t0 < 1) {
    for my $x (@s) {
        my $p = "$x->{kind} message " . ++$x->{n};
        $x->{ws}->send_text($p);
        my $m = $x->{ws}->recv_message(timeout => 3);
        if ($m && $m->{payload} eq $p) { $exchanged++ } else { $lost++ }
    }
}
is($lost, 0, "$exchanged messages exchanged on $N echo and $N pass sessions, none lost");

my $before = m_ok('under load');
is($before->{ sa('echo') }, $N, "under load: sessions_active{kind=\"echo\"} = $N");
is($before->{ sa('pass') }, $N, "under load: sessions_active{kind=\"pass\"} = $N");
is($before->{$MI}, $exchanged, "under load: messages in = $exchanged");
is($before->{$MO}, $exchanged, "under load: messages out = $exchanged");

# --- kill -9 with a message in flight on every session --------------------------------------------------------
$_->{ws}->send_text('in flight') for @s;
is(kill('KILL', $old), 1, "SIGKILL sent to worker $old");

my $ends = 0;
for my $x (@s) {
    my $ws = $x->{ws};
    $ws->wait_eof(3);
    my @frames;
    while (my $f = $ws->try_recv_frame) { push @frames, $f }
    $ends++ if $ws->is_eof && !grep { $_->{opcode} == 8 } @frames;
}
is($ends, 2 * $N, 'every client sees its connection closed without a close frame');
{
    my $deadline = time + 3;
    my @recs;
    while (time < $deadline) {
        @recs = grep { ($_->{path} // '') =~ m{^/p/s\d$} && $_->{loop_end} } $up->records;
        last if @recs == $N;
        sleep 0.05;
    }
    is(scalar(grep { $_->{loop_end} eq 'eof' } @recs), $N, 'every upstream connection of the killed worker sees EOF');
}

# --- the master starts a new worker -------------------------------------------------------------------
my @new;
{
    my $deadline = time + 5;
    while (time < $deadline) {
        @new = $t->worker_pids;
        last if @new == 1 && $new[0] != $old;
        sleep 0.05;
    }
    is(scalar @new, 1, 'the master runs one worker again');
    isnt($new[0], $old, "a new one ($new[0])");
    ok(!kill(0, $old) || !WsNginx::_is_child_of($old, $t->master_pid), 'the killed worker is gone');
}

my $after = m_ok('after the kill');
is($after->{ sa('echo') }, $N, "after the kill: sessions_active{kind=\"echo\"} still counts the $N killed sessions");
is($after->{ sa('pass') }, $N, "after the kill: sessions_active{kind=\"pass\"} still counts the $N killed sessions");
is($after->{ st('echo') }, $N, "after the kill: sessions_total{kind=\"echo\"} = $N");
is($after->{ st('pass') }, $N, "after the kill: sessions_total{kind=\"pass\"} = $N");
ok($after->{$MI} >= $exchanged && $after->{$MI} <= $exchanged + 2 * $N,
    "after the kill: messages in between $exchanged and " . ($exchanged + 2 * $N) . " (the ones in flight at most once: $after->{$MI})");
ok($after->{$MO} >= $exchanged && $after->{$MO} <= $after->{$MI},
    "after the kill: messages out between $exchanged and messages in ($after->{$MO})");
is(scalar(grep { /^nginx_websocket_closes_total/ } keys %$after), 0,
    'after the kill: no close counted (no session ended with a close frame)');
my @same = grep { exists $after->{$_} } keys %$before;
is(scalar @same, scalar keys %$before, 'after the kill: every series is still there');

# --- new sessions on the new worker ------------------------------------------------------------------
{
    my $e = ws_open($port, '/ws');
    echo_ok($e, 1, 'after the kill', 'new echo session');
    my $p = ws_open($port, '/p/new');
    echo_ok($p, 2, "after\x00the kill", 'new pass session');
    my $m = m_ok('new sessions open');
    is($m->{ sa('echo') }, $N + 1, 'new sessions open: sessions_active{kind="echo"} = killed + 1');
    is($m->{ sa('pass') }, $N + 1, 'new sessions open: sessions_active{kind="pass"} = killed + 1');
    bye($e, 'new echo session');
    bye($p, 'new pass session');
}
{
    # the pass session's end is counted once its upstream leg is closed too
    my $deadline = time + 3;
    sleep 0.05 until (metrics())[0]{ sa('pass') } == $N || time > $deadline;
    my $m = m_ok('new sessions closed');
    is($m->{ sa('echo') }, $N, 'new sessions closed: sessions_active{kind="echo"} back to the killed ones');
    is($m->{ sa('pass') }, $N, 'new sessions closed: sessions_active{kind="pass"} back to the killed ones');
    is($m->{ st('echo') }, $N + 1, 'new sessions closed: sessions_total{kind="echo"} = ' . ($N + 1));
    is($m->{ st('pass') }, $N + 1, 'new sessions closed: sessions_total{kind="pass"} = ' . ($N + 1));
    is($m->{'nginx_websocket_closes_total{code="1000"}'}, 2, 'new sessions closed: closes_total{code="1000"} = 2');
    is($m->{$MI}, $after->{$MI} + 2, 'new sessions closed: messages in + 2');
    is($m->{$MO}, $after->{$MO} + 2, 'new sessions closed: messages out + 2');
}

# --- the end: as finish(), but the master's alert about the killed worker is expected --------------------
still_echoes($port, 'at the end');
is_deeply([ $t->worker_pids ], \@new, 'the new worker is still the one running');
$t->stop;
is($t->forced_stop, undef, 'nginx stopped gracefully');
my @alarming = $t->check_error_log;
is(scalar @alarming, 1, 'error.log has exactly one alarming line') or diag join "\n", @alarming;
like($alarming[0] // '', qr/\[alert\] \d+#\d+: worker process $old exited on signal 9\b/,
    "... the master's alert: worker process $old exited on signal 9");
$up->stop;

done_testing;
