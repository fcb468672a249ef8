#!/usr/bin/perl
# Channels across nginx servers through Redis (SPEC "Channels",
# `websocket_channel_zone ... redis=URL`, issue 18): two nginx servers (A
# and B, two workers each) share one redis-server (lib/WsRedis.pm, with its
# append-only file so that a restart keeps what it accepted).
#
# - nginx -t accepts redis= and rejects a malformed URL with file:line;
# - a message published on A reaches the subscribers on A and B once; A and
#   B publishing at the same time give every subscriber the same order (each
#   publisher's messages in its own order); a subscriber with
#   websocket_channel_publish on, on B, publishes to the subscribers on A; a
#   burst of 400 messages up to 16 KB from 4 publishers arrives intact, in
#   one order;
# - ids are the streams' ids; describe on either server counts the history;
#   a resume (with envelopes) on the other server gets what followed its id;
#   resumes on B racing a publisher on A get every message after their id
#   once, in order;
# - Redis killed: a publish gets 503 and an [error] line, subscribers stay
#   connected (they answer pings), new ones are accepted (a resume among them
#   gets what followed its id once Redis is back); Redis started again on the same port
#   with its data: publishes are 201 again (within the reconnect backoff)
#   and every subscriber gets them after everything accepted before,
#   nothing lost, nothing twice;
# - a restart of nginx A keeps the history (it is in Redis): a resume there
#   gets it;
# - Redis drops every connection of both servers, and an entry is written
#   meanwhile: every subscriber gets it once the readers are back;
# - DELETE on A closes the subscribers of both servers with 1000; then 404;
# - a reload of B: its old workers' subscribers get what came before, then
#   1001; the new workers follow the channel.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use WsNginx;
use WsClient qw(http_request OP_TEXT OP_CLOSE OP_PONG);
use WsTest;
use WsValgrind qw(scaled);
use WsRedis;

plan skip_all => 'redis-server is not installed (make deps)' unless WsRedis->available;
plan skip_all => 'Redis outages and restarts are timed for an uninstrumented build'
    if WsValgrind::checking();

my $redis = WsRedis->new(appendonly => 1);
my $url = $redis->url;

# --- configuration ---------------------------------------------------------------

config_rejected('malformed redis= URL',
    "websocket_channel_zone r 1m redis=redis://127.0.0.1:port;\n" . conf_server(''),
    'websocket_channel_zone', 'redis=redis://127.0.0.1:port');
config_rejected('redis= with a password',
    "websocket_channel_zone r 1m redis=redis://user:pw\@127.0.0.1;\n" . conf_server(''),
    'websocket_channel_zone', 'redis=redis://user');

my $conf = <<"EOF";
websocket_channel_zone chat 1m history=100 redis=$url;
websocket_channel_zone big 1m redis=$url;

server {
    listen 127.0.0.1:%%PORT_0%%;
    add_header X-Worker \$pid always;

    location /ws { websocket_echo; }
    location /status { websocket_status; }
    location /sub {
        websocket_subscribe chat \$arg_c;
        websocket_channel_resume \$arg_last;
    }
    location /env {
        websocket_subscribe chat \$arg_c;
        websocket_channel_resume \$arg_last;
        websocket_channel_envelope on;
    }
    location /room {
        websocket_subscribe chat \$arg_c;
        websocket_channel_publish on;
    }
    location /pub { websocket_publish chat \$arg_c; }

    location /big/sub {
        websocket_subscribe big c;
        websocket_max_send_len 4m;
    }
    location /big/pub {
        websocket_publish big c;
        client_max_body_size 20m;
    }
}
EOF

my $na = WsNginx->new(worker_processes => 2, conf => $conf);
config_accepted($na, 'redis= (server A)');
my $nb = WsNginx->new(worker_processes => 2, conf => $conf);
$nb->start;
my ($pa, $pb) = ($na->port(0), $nb->port(0));
my @workers_b = $nb->worker_pids;

# --- helpers ---------------------------------------------------------------------

sub req {
    my ($p, $m, $path, $body) = @_;
    $body //= '';
    my $raw = "$m $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "Content-Length: " . length($body) . "\r\nContent-Type: text/plain\r\n\r\n" . $body;
    return http_request($p, $raw, timeout => 10);
}

# publish($port, $channel, $text) -> ($status, $id)
sub publish {
    my ($p, $c, $text) = @_;
    my ($st, undef, $body) = req($p, 'POST', "/pub?c=$c", $text);
    my ($id) = ($body // '') =~ /"id":"([^"]*)"/;
    return ($st, $id);
}

# Until both workers of the server at $p publish (their links are up).
sub wait_up {
    my ($p, $what) = @_;
    my $deadline = time + scaled(10);
    my $ok = 0;
    while (time < $deadline) {
        $ok = 0;
        for (1 .. 8) {
            my ($st) = publish($p, 'warmup', 'w');
            $ok++ if $st == 201;
        }
        last if $ok == 8;
        sleep 0.1;
    }
    is($ok, 8, "$what: publishes are 201");
}

# Subscribers of channel $c on server $p, on both of its workers.
sub subscribers {
    my ($p, $path, $n) = @_;
    my (%by, @all);
    for (1 .. 100) {
        my $ws = ws_open($p, $path);
        push @{ $by{ $ws->header('X-Worker') // '?' } }, $ws;
        push @all, $ws;
        last if keys %by >= 2 && @all >= $n;
    }
    return @all;
}

sub texts_of {
    my ($ws, $n, $timeout) = @_;
    my @got;
    while (@got < $n) {
        my $m = $ws->recv_message(timeout => $timeout // 5) or last;
        last if $m->{opcode} == OP_CLOSE;
        push @got, $m->{payload};
    }
    return @got;
}

wait_up($pa, 'A');
wait_up($pb, 'B');

# --- across servers --------------------------------------------------------------

my @sub_a = subscribers($pa, '/sub?c=one', 3);
my @sub_b = subscribers($pb, '/sub?c=one', 3);
my @subs = (@sub_a, @sub_b);
ok(@sub_a >= 2 && @sub_b >= 2, 'subscribers on both workers of both servers');

my @ids;
{
    my ($st, $id) = publish($pa, 'one', 'first');
    is($st, 201, 'publish on A: 201');
    like($id, qr/^\d+-\d+$/, 'the id is a stream id (ms-seq)');
    push @ids, $id;
    my $once = 0;
    for my $ws (@subs) {
        my @got = texts_of($ws, 1);
        $once++ if "@got" eq 'first';
    }
    is($once, scalar @subs, 'every subscriber on A and B got it');
    my $metric = sub {
        my ($p, $name) = @_;
        my (undef, undef, $body) = req($p, 'GET', '/status');
        return ($body // '') =~ /^\Q$name\E\{zone="chat"\} (\d+)$/m ? $1 : undef;
    };
    is($metric->($pb, 'nginx_websocket_channel_subscribers'), scalar @sub_b,
        'metrics: the subscribers gauge counts the server\'s own');
    is($metric->($pb, 'nginx_websocket_channel_delivered_total'), scalar @sub_b,
        'metrics: deliveries on B, one per subscriber');
    ok(($metric->($pa, 'nginx_websocket_channel_published_total') // 0) >= 9,
        'metrics: the publishes through A counted');
}

# A and B publish at the same time: one order for everybody.
{
    my @kids;
    for my $side ([$pa, 'a'], [$pb, 'b']) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $bad = 0;
            for my $i (1 .. 30) {
                my ($st) = publish($side->[0], 'one', "$side->[1]$i");
                $bad++ if $st != 201;
            }
            POSIX::_exit($bad ? 1 : 0);
        }
        push @kids, $pid;
    }
    my $failed = 0;
    for (@kids) { waitpid($_, 0); $failed++ if $? }
    is($failed, 0, 'A and B publishing at once: every publish 201');
    my (@orders, $in_order, $complete);
    ($in_order, $complete) = (0, 0);
    for my $ws (@subs) {
        my @got = texts_of($ws, 60);
        $complete++ if @got == 60;
        push @orders, "@got";
        my @a = grep { /^a/ } @got;
        my @b = grep { /^b/ } @got;
        $in_order++ if "@a" eq join(' ', map { "a$_" } 1 .. 30)
            && "@b" eq join(' ', map { "b$_" } 1 .. 30);
    }
    is($complete, scalar @subs, 'every subscriber got all 60 messages');
    is($in_order, scalar @subs, 'each publisher\'s messages in its order, once');
    my %distinct = map { $_ => 1 } @orders;
    is(scalar keys %distinct, 1, 'every subscriber on both servers saw the same order');
}

# A burst: 4 publishers (2 per server), 100 messages each of up to 16 KB,
# read by the workers in batches: every subscriber gets all 400, in one order.
{
    my @kids;
    for my $k (0 .. 3) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $bad = 0;
            for my $i (1 .. 100) {
                my ($st) = publish($k % 2 ? $pb : $pa, 'one', "p$k-$i:" . ('x' x (($i * 163) % 16384)));
                $bad++ if $st != 201;
            }
            POSIX::_exit($bad ? 1 : 0);
        }
        push @kids, $pid;
    }
    my $failed = 0;
    for (@kids) { waitpid($_, 0); $failed++ if $? }
    is($failed, 0, 'a burst of 400 from 4 publishers: every publish 201');
    my (%orders, $complete);
    $complete = 0;
    for my $ws (@subs) {
        my @got = map { /^(p\d-\d+):(x*)$/ && length($2) == (((split /-/, $1)[1] * 163) % 16384) ? $1 : 'bad' }
            texts_of($ws, 400, 10);
        $complete++ if @got == 400 && !grep { $_ eq 'bad' } @got;
        $orders{"@got"}++;
    }
    is($complete, scalar @subs, 'every subscriber got all 400, intact');
    is(scalar keys %orders, 1, 'all in the same order');
}

# A backlog larger than a reply may be (64 MiB): 40 entries of 2 MiB written
# at once (one script) are read in smaller XREADs, all of them, in order.
{
    my $ws = ws_open($pb, '/big/sub');
    my ($st, $got) = (0, 0);
    for (1 .. 50) {
        ($st) = req($pa, 'POST', '/big/pub', 'ready');
        my $m = $ws->recv_message(timeout => 0.2);
        if ($m && $m->{opcode} == OP_TEXT) { $got = 1; last }
    }
    ok($got, 'a subscriber of a zone without history follows its channel');
    $redis->command('EVAL', "for i = 1, 40 do redis.call('XADD', KEYS[1], '*', 'd', i .. ':' .. "
        . "string.rep('x', 2097152), 'b', '0') end return 40", 1, 'websocket:big:c');
    my @got;
    while (@got < 40) {
        my $m = $ws->recv_message(timeout => 20) or last;
        last if $m->{opcode} != OP_TEXT;
        next if $m->{payload} eq 'ready';
        my ($n, $x) = split /:/, $m->{payload}, 2;
        push @got, $x eq 'x' x 2097152 ? $n : 'bad';
    }
    is("@got", join(' ', 1 .. 40), 'a backlog of 80 MiB arrives whole, in order');
    ok(scalar($nb->grep_error_log(qr/\[error\].*bad reply \(reply over the size limit\)/)),
        'the reply too large was logged') or diag $nb->error_log;
    ($st) = req($pa, 'POST', '/big/pub', 'y' x (16 * 1024 * 1024 + 1));
    is($st, 413, 'a message larger than 16 MiB: 413');
    ok(scalar($na->grep_error_log(qr/\[error\].*cannot publish to channel "c" of zone "big": the message is larger than 16777216 bytes/)),
        'and an [error] line');
    $ws->send_close(1000);
}

# A subscriber that publishes (on B) reaches the subscribers on A.
{
    my $room = ws_open($pb, '/room?c=one');
    sleep 0.2;
    $room->send_text('from the room');
    is_deeply([texts_of($room, 1)], ['from the room'], 'websocket_channel_publish: the sender gets it back');
    my $ok = grep { (texts_of($_, 1))[0] eq 'from the room' } @subs;
    is($ok, scalar @subs, 'and every subscriber on A and B');
    $room->send_close(1000);
    $room->recv_close(timeout => 5);
}

# --- history and resume ------------------------------------------------------------

my @history;    # [id, text] of each message on 'hist', oldest first
for my $i (1 .. 10) {
    my ($st, $id) = publish($i % 2 ? $pa : $pb, 'hist', "h$i");
    push @history, [$id, "h$i"];
}
{
    my @order = map { $_->[0] } @history;
    my @sorted = sort { my @x = split /-/, $a; my @y = split /-/, $b; $x[0] <=> $y[0] || $x[1] <=> $y[1] } @order;
    is("@order", "@sorted", 'ids grow in publishing order, whichever server');
    is($redis->command('PTTL', 'websocket:chat:hist'), -1,
        'history without history_time: the stream does not expire');
    my (undef, undef, $body) = req($pb, 'GET', '/pub?c=hist');
    like($body, qr/"messages":10\b/, 'GET on B: 10 stored messages');
    like($body, qr/"last_id":"\Q$history[-1][0]\E"/, 'GET on B: the last id');
}
sub resume_ok {
    my ($p, $after, $what) = @_;
    my $ws = ws_open($p, "/env?c=hist&last=$history[$after - 1][0]");
    my @want = map { sprintf '{"id":"%s","data":"%s"}', @$_ } @history[$after .. $#history];
    my @got = texts_of($ws, scalar @want, 5);
    is_deeply(\@got, \@want,
        "$what: a resume after message $after gets the " . scalar(@want) . " after it, with their ids");
    my ($st, $id) = publish($p, 'hist', "live$after");
    is_deeply([texts_of($ws, 1)], [sprintf '{"id":"%s","data":"live%s"}', $id, $after],
        "$what: then live ones");
    push @history, [$id, "live$after"];
    $ws->send_close(1000);
    $ws->recv_close(timeout => 5);
}
resume_ok($pa, 4, 'on A');

# Resumes racing a publisher: while A publishes 80 messages, subscribers on
# B resume after the id of the message before them, at different moments:
# each gets all 80, once, in order (stored ones, then live ones).
{
    my ($st, $id0) = publish($pa, 'race', 'r0');
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $bad = 0;
        for my $i (1 .. 80) {
            my ($s) = publish($pa, 'race', "r$i");
            $bad++ if $s != 201;
            sleep 0.01;
        }
        POSIX::_exit($bad ? 1 : 0);
    }
    my @resumers;
    for (1 .. 6) {
        push @resumers, ws_open($pb, "/env?c=race&last=$id0");
        sleep 0.1;
    }
    waitpid($pid, 0);
    is($?, 0, 'a publisher on A sends 80 messages while subscribers resume on B');
    my $exact = 0;
    for my $ws (@resumers) {
        my @got = map { /"data":"([^"]*)"/ ? $1 : '?' } texts_of($ws, 80, 5);
        $exact++ if "@got" eq join(' ', map { "r$_" } 1 .. 80);
        $ws->send_close(1000);
    }
    is($exact, scalar @resumers, 'each resume racing it gets all 80 after its id, once, in order');
}

# --- Redis killed, then back ---------------------------------------------------------

{
    $redis->kill;
    sleep 0.5;
    my ($st) = publish($pa, 'one', 'lost');
    is($st, 503, 'Redis killed: a publish gets 503');
    sleep 0.2;
    ok(scalar($na->grep_error_log(qr/\[error\].*cannot publish to channel "one" of zone "chat"/)),
        'and an [error] line') or diag $na->error_log;
    my $alive = 0;
    for my $ws (@subs) {
        $ws->send_ping('still');
        my $f = $ws->recv_message(timeout => 5);
        $alive++ if $f && $f->{opcode} == OP_PONG;
    }
    is($alive, scalar @subs, 'the subscribers stay connected (they answer pings)');
    # Subscribers that come meanwhile are accepted and wait like the others.
    my $late = ws_open($pb, '/sub?c=late');
    my $late_resume = ws_open($pa, "/env?c=hist&last=$history[7][0]");
    pass('new subscribers meanwhile are accepted (101)');
    $redis->start;
    my ($back, $t0) = (0, time);
    while (time < $t0 + scaled(8)) {
        ($st) = publish($pa, 'one', 'back');
        if ($st == 201) { $back = 1; last }
        sleep 0.1;
    }
    ok($back, sprintf 'Redis started again: a publish on A is 201 (after %.1f s)', time - $t0);
    # At once, maybe before B's links are back: the late subscriber on B
    # came before it, so it must get it.
    my ($late_st) = publish($pa, 'late', 'late0');
    is($late_st, 201, 'a publish to the late subscriber\'s channel at once: 201');
    wait_up($pa, 'A after the restart of Redis');
    wait_up($pb, 'B after the restart of Redis');
    my @more = map { my ($s) = publish($_ % 2 ? $pa : $pb, 'one', "m$_"); $s } 1 .. 5;
    is(scalar(grep { $_ == 201 } @more), 5, 'five more publishes: 201');
    my $all = 0;
    for my $ws (@subs) {
        my @got = texts_of($ws, 6, 8);
        $all++ if "@got" eq 'back m1 m2 m3 m4 m5';
    }
    is($all, scalar @subs, 'every subscriber gets them, once, in order, nothing lost');
    my (undef, undef, $body) = req($pa, 'GET', '/pub?c=hist');
    like($body, qr/"messages":11\b/, 'Redis kept the history through its restart');
    my @want = map { sprintf '{"id":"%s","data":"%s"}', @$_ } @history[8 .. $#history];
    is_deeply([texts_of($late_resume, scalar @want, 5)], \@want,
        'a resume that came during the outage: what followed its id, once Redis is back');
    $late_resume->send_close(1000);
    $late_resume->recv_close(timeout => 5);
    # Its worker follows the channel once its link is back (within the
    # backoff), from the moment the subscriber came: nothing published
    # after its 101 is lost, also what came before its worker's link.
    my @late = ('late0', map { "late$_" } 1 .. 3);
    publish($pa, 'late', $_) for @late[1 .. $#late];
    is_deeply([texts_of($late, scalar @late, 8)], \@late,
        'a subscriber that came during the outage gets all that followed its 101 once Redis is back');
}

# --- accepted while the readers were away ------------------------------------------

{
    # Every connection of both servers dropped (the test's own is spared),
    # and an entry written meanwhile straight into the channel's stream:
    # the readers, back, read on from the last id they delivered.
    # Every link connected again after the restart of Redis (backoff).
    my $deadline = time + scaled(8);
    sleep 0.1 while time < $deadline && $redis->clients < 16;
    my $n = $redis->command('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    is($n, 16, 'the 2 links per zone of each worker of both servers dropped');
    $redis->command('XADD', 'websocket:chat:one', '*', 'd', 'while away', 'b', '0');
    wait_up($pa, 'A reconnected');
    wait_up($pb, 'B reconnected');
    my ($st) = publish($pb, 'one', 'after');
    my $all = 0;
    for my $ws (@subs) {
        my @got = texts_of($ws, 2, 8);
        $all++ if "@got" eq 'while away after';
    }
    is($all, scalar @subs, 'every subscriber gets what Redis accepted while its reader was away, then the rest');
}

# --- a restart of nginx keeps the history ------------------------------------------

{
    $na->stop;
    $na->start;
    wait_up($pa, 'A restarted');
    resume_ok($pa, 7, 'on A after its restart');
}

# --- DELETE ------------------------------------------------------------------------

{
    my ($st) = req($pa, 'DELETE', '/pub?c=one');
    is($st, 204, 'DELETE on A: 204');
    my $closed = 0;
    for my $ws (@sub_b) {
        my ($code) = $ws->recv_close(timeout => 5);
        $closed++ if ($code // 0) == 1000;
    }
    # A's subscribers were closed when A stopped (1001); B's get 1000.
    is($closed, scalar @sub_b, 'the subscribers on B get 1000');
    my $fresh_a = ws_open($pa, '/sub?c=two');
    my $fresh_b = ws_open($pb, '/sub?c=two');
    sleep 0.3;
    ($st) = req($pb, 'DELETE', '/pub?c=two');
    is($st, 204, 'DELETE on B: 204');
    is(($fresh_a->recv_close(timeout => 5))[0], 1000, 'a subscriber on A gets 1000');
    is(($fresh_b->recv_close(timeout => 5))[0], 1000, 'a subscriber on B gets 1000');
    sleep 0.3;
    ($st) = req($pa, 'GET', '/pub?c=two');
    is($st, 404, 'after DELETE: 404');
}

# --- reload ------------------------------------------------------------------------

{
    my @old = subscribers($pb, '/sub?c=three', 2);
    sleep 0.2;
    my ($st) = publish($pa, 'three', 'before');
    ok($nb->reload, 'B reloaded');
    my $bye = 0;
    for my $ws (@old) {
        my @got = texts_of($ws, 1);
        my ($code) = $ws->recv_close(timeout => 5);
        $bye++ if "@got" eq 'before' && ($code // 0) == 1001;
    }
    is($bye, scalar @old, "the old workers' subscribers get what came before, then 1001");
    wait_up($pb, 'B after its reload');
    my @new = subscribers($pb, '/sub?c=three', 2);
    sleep 0.2;
    ($st) = publish($pa, 'three', 'after');
    is(scalar(grep { (texts_of($_, 1))[0] eq 'after' } @new), scalar @new,
        'the new workers follow the channel');
    isnt(join(' ', sort $nb->worker_pids), join(' ', sort @workers_b), 'new worker processes');
}

# --- the end ---------------------------------------------------------------------

still_echoes($pb, 'B at the end');
for ([$na, 'A'], [$nb, 'B']) {
    my ($t, $name) = @$_;
    $t->stop;
    is($t->forced_stop, undef, "$name stopped gracefully");
    is_deeply([$t->check_error_log], [], "$name: no alerts in error.log");
}
$redis->stop;

done_testing;
