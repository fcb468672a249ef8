#!/usr/bin/perl
# The websocket_pass keepalive pool against careless and hostile peers.
#
# One client's data must never reach the next client through a pooled
# upstream connection. The upstream does not know where one client's
# session ends, so when a client closes normally nginx fences the upstream
# first: it sends a ping with a random payload and answers the client's
# close only once the matching pong arrived with nothing else before it.
# Whatever the upstream still sent for the session before the pong reaches
# that session's client, and then the connection is closed, not pooled.
# The scripted upstream (WsUpstream::Conn::serve) makes the races
# deterministic: "cmd:burst:N:SIZE:SECONDS:LAST" sends N messages, reads
# nothing for SECONDS (so nginx's fencing ping waits in its socket), then
# sends LAST. Checked: a client that does not read the burst and closes
# (`listen ... sndbuf=16k`, the race of issue 15), a client that read it
# and closes before LAST, a quiet upstream (the fence passes, the next
# session reuses the connection), an upstream that sends something right
# behind the pong (closed, not pooled), an upstream that never answers pings
# (closed after websocket_timeout).
#
# Pools named by a variable must not grow the worker: a pool with no idle
# connection, no session and no waiter goes away. The worker's VmRSS over
# 5,000 sessions with distinct `websocket_keepalive_pool $arg_p` names,
# measured after 5,000 with one name, grows by under 500 kB (before the
# fix: 1.4 MB, some 290 bytes a name; 5,000 sessions with one name move it
# by up to 200 kB either way). Skipped under valgrind or ASan.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use WsClient;
use WsTest qw(:DEFAULT rss_kib);
use WsUpstream;
use WsValgrind qw(scaled);

my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    my $path = $c->path // '';
    if ($path =~ m{^/deaf/}) {
        $c->echo_loop(timeout => 20);    # never answers a ping
    } elsif ($path =~ m{^/(chatty|pingfirst)/}) {
        # answers a ping with its pong and a message in the same write
        # (chatty), or with a ping of its own and then the pong (pingfirst)
        my $chatty = $1 eq 'chatty';
        while (my $f = $c->recv_frame(timeout => 20)) {
            $c->push_note(frames => $f);
            if ($f->{opcode} == 9) {
                my $pong = WsUpstream::Conn::frame(opcode => 10, payload => $f->{payload});
                $c->send_raw($chatty
                    ? $pong . WsUpstream::Conn::frame(opcode => 1, payload => 'right behind the pong')
                    : WsUpstream::Conn::frame(opcode => 9, payload => 'my own') . $pong);
                next;
            }
            last if $f->{opcode} == 8;
            $c->send_text($f->{payload}) if $f->{opcode} == 1;
        }
        $c->wait_eof(timeout => 5);
        $c->note(end => 'eof');
    } else {
        $c->serve(idle => 30);
    }
});
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(worker_processes => 1, worker_connections => 4096,
    conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%% sndbuf=16k;

    location / {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 4;
        websocket_keepalive_pool \$uri;
    }

    location /deaf/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 4;
        websocket_keepalive_pool \$uri;
        websocket_timeout 1s;
    }

    # pools named by the client, to the echo below
    location /named {
        websocket_pass ws://127.0.0.1:%%PORT_0%%/echo;
        websocket_keepalive 4;
        websocket_keepalive_pool \$arg_p;
    }

    location /echo {
        websocket_echo;
    }
}
EOF_CONF

sub recs { my ($path) = @_; grep { ($_->{path} // '') eq $path } $up->records }
sub nconn { scalar recs(@_) }

# Waits until the record of $path with $pred is there; undef after $timeout.
sub wait_rec {
    my ($path, $pred, $timeout) = @_;
    my $deadline = time + scaled($timeout // 3);
    while (1) {
        my ($r) = grep { $pred->($_) } recs($path);
        return $r if $r || time > $deadline;
        sleep 0.02;
    }
}

# Reads data messages until the close: (\@payloads, $code), $code undef
# when no close came.
sub read_to_close {
    my ($ws) = @_;
    my @got;
    while (my $m = $ws->recv_message(timeout => 5)) {
        if ($m->{opcode} == 8) {
            my $code = length $m->{payload} >= 2 ? unpack('n', $m->{payload}) : undef;
            return (\@got, $code);
        }
        push @got, $m->{payload} if $m->{opcode} < 8;
    }
    return (\@got, undef);
}

# The next session on $path: its first message is its own echo, and its
# close is answered with $code (1000). 4 tests.
sub next_session_ok {
    my ($path, $name, $want) = @_;
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, "$name: the next session gets 101");
    $ws->send_text('mine');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'mine', "$name: the next session's first message is its own")
        or diag 'got ' . ($m ? "'$m->{payload}'" : 'nothing');
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    is($code, $want // 1000, "$name: the next session's close is answered");
    is_deeply($got, [], "$name: ... and nothing else reached it");
}

# How long the scripted upstream stays quiet in a burst command: long
# enough that the client's close reaches nginx first, even when slowed.
my $QUIET = scaled(1);

sub burst { map { my $m = "burst $_ "; $m . '.' x ($_[1] - length $m) } 1 .. $_[0] }

# --- the race of issue 15: a client that does not read, then closes --------------------
{
    my $path = '/race/unread';
    my $ws = WsClient->connect(port => $port, path => $path, rcvbuf => 8192);
    is($ws->status, 101, 'unread burst: 101');
    $ws->send_text("cmd:burst:12:4000:$QUIET:late");
    sleep 0.15;
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    # compared by their first words: the messages are 4,000 bytes long
    my $words = sub { [ map { /\A(burst \d+) / ? $1 : $_ } @_ ] };
    is_deeply($words->(@$got), $words->("cmd:burst:12:4000:$QUIET:late", burst(12, 4000), 'late'),
        'unread burst: the client that closed still gets every message the upstream sent it, in order');
    is($code, 1000, '... then the answer to its close');
    ok($ws->wait_eof(3), '... then TCP closes');
    next_session_ok($path, 'unread burst');
    is(nconn($path), 2, 'unread burst: the upstream connection was not pooled');
}

# --- a message the upstream sends after the client's close -------------------------
{
    my $path = '/race/late';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'late message: 101');
    $ws->send_text("cmd:burst:3:20:$QUIET:late");
    my @first = map { my $m = $ws->recv_message(timeout => 3); $m && $m->{payload} } 1 .. 4;
    is_deeply(\@first, [ "cmd:burst:3:20:$QUIET:late", burst(3, 20) ], 'late message: the echo and the burst arrive');
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    is_deeply($got, ['late'], 'late message: it reaches the client that closed, not the next one');
    is($code, 1000, '... then the answer to its close (which waited for the upstream)');
    ok($ws->wait_eof(3), '... then TCP closes');
    next_session_ok($path, 'late message');
    is(nconn($path), 2, 'late message: the upstream connection was not pooled');
    my ($r) = recs($path);
    is(($r // {})->{close_code}, 1000, "late message: the upstream got the client's close after all");
}

# --- a quiet upstream: the fence passes and the connection is reused ----------------------
{
    my $path = '/quiet/x';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'quiet upstream: 101');
    $ws->send_text('one');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'one', 'quiet upstream: echo');
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    is($code, 1000, 'quiet upstream: the close is answered');
    is_deeply($got, [], '... with nothing before it');
    ok($ws->wait_eof(3), '... then TCP closes');
    next_session_ok($path, 'quiet upstream');
    is(nconn($path), 1, 'quiet upstream: the next session reused the pooled connection');
    my ($r) = recs($path);
    my @pings = grep { $_->{opcode} == 9 } @{ ($r // {})->{frames} // [] };
    is(scalar @pings, 2, 'quiet upstream: it got a fencing ping at each client close');
    ok(!grep({ !$_->{masked} || $_->{length} != 8 } @pings), '... masked, with 8 bytes of payload');
    isnt($pings[0]{payload}, $pings[1]{payload}, '... a different payload each time') if @pings == 2;
    ok(!grep({ $_->{opcode} == 8 } @{ ($r // {})->{frames} // [] }), '... and no close frame');
}

# --- a message right behind the pong: the connection is not kept --------------------------
{
    my $path = '/chatty/x';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'message behind the pong: 101');
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    is($code, 1000, 'message behind the pong: the close is answered');
    ok(wait_rec($path, sub { exists $_[0]{end} }, 3), '... and the upstream connection is closed');
    next_session_ok($path, 'message behind the pong');
    is(nconn($path), 2, 'message behind the pong: the next session got a new connection');
    ok(scalar $t->grep_error_log(qr/\[info\].*(closing pooled upstream connection|upstream connection closed: connection is not idle)/),
        'error.log says why the connection was closed');
}

# --- a ping before the pong: relayed, and the fence still passes ---------------------------
{
    my $path = '/pingfirst/x';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'ping before the pong: 101');
    $ws->send_close(1000);
    my $f = $ws->recv_frame(timeout => 3);
    ok($f && $f->{opcode} == 9 && $f->{payload} eq 'my own', "ping before the pong: the upstream's ping is relayed");
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, '... then the close is answered');
    ok($ws->wait_eof(3), '... then TCP closes');
    my $b = WsClient->connect(port => $port, path => $path);
    is($b->status, 101, 'ping before the pong: the next session gets 101');
    $b->send_text('mine');
    my $m = $b->recv_message(timeout => 3);
    is($m && $m->{payload}, 'mine', "ping before the pong: the next session's first message is its own");
    is(nconn($path), 1, '... over the pooled connection');
}

# --- an upstream that never answers the fence -----------------------------------------
{
    my $path = '/deaf/x';
    my $ws = WsClient->connect(port => $port, path => $path);
    is($ws->status, 101, 'deaf upstream: 101');
    my $t0 = time;
    $ws->send_close(1000);
    my ($got, $code) = read_to_close($ws);
    my $dt = time - $t0;
    is($code, 1001, 'deaf upstream: the client gets 1001 when websocket_timeout passes');
    cmp_ok($dt, '>=', 0.8, '... not before 1 s') or diag sprintf '%.2fs', $dt;
    cmp_ok($dt, '<', scaled(3), '... soon after it') or diag sprintf '%.2fs', $dt;
    my $r = wait_rec($path, sub { exists $_[0]{eof} }, 3) // {};
    is($r->{close_code}, 1001, '... the upstream too');
    ok($r->{eof}, '... and its connection is closed');
    next_session_ok($path, 'deaf upstream', 1001);
    is(nconn($path), 2, 'deaf upstream: the next session got a new connection');
}

# --- pools named by the client do not grow the worker ---------------------------------------
{
    my ($worker) = @workers;
    # Under valgrind or ASan the bound is skipped: fewer sessions still
    # check that the pools made and dropped leak nothing.
    my $N = WsValgrind::checking() ? 500 : 5000;
    my $BATCH = 50;

    # $n sessions to /named?p=<name($i)>, $BATCH at a time: each is upgraded
    # (so it held a place in its pool), then drops TCP (not pooled).
    # Returns how many got 101.
    my $sessions = sub {
        my ($n, $name) = @_;
        my $upgraded = 0;
        for (my $i = 0; $i < $n; $i += $BATCH) {
            my @s;
            for my $j ($i .. ($i + $BATCH < $n ? $i + $BATCH : $n) - 1) {
                my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Proto => 'tcp') or next;
                my $p = $name->($j);
                print $s "GET /named?p=$p HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    . "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    . "Sec-WebSocket-Version: 13\r\n\r\n";
                push @s, $s;
            }
            for my $s (@s) {
                my $head = '';
                my $sel = IO::Select->new($s);
                while ($head !~ /\r\n\r\n/ && $sel->can_read(scaled(5))) {
                    sysread($s, $head, 4096, length $head) or last;
                }
                $upgraded++ if $head =~ m{\AHTTP/1\.1 101 };
                close $s;
            }
        }
        sleep 0.5;    # the last sessions end
        return $upgraded;
    };

    is($sessions->(500, sub { 'one' }), 500, 'warm-up: 500 sessions in one pool');
    my $base = rss_kib($worker);
    is($sessions->($N, sub { 'one' }), $N, "$N sessions in one pool");
    my $one = rss_kib($worker);
    is($sessions->($N, sub { "name-$_[0]" }), $N, "$N sessions in $N pools of distinct names");
    my $distinct = rss_kib($worker);
    note sprintf 'worker VmRSS: %d kB, +%d kB over %d sessions in one pool, +%d kB over %d pool names',
        $base, $one - $base, $N, $distinct - $one, $N;
    SKIP: {
        skip "under valgrind or ASan VmRSS is not the worker's memory", 1 if WsValgrind::checking();
        cmp_ok($distinct - $one, '<', 500, "$N distinct pool names: the worker grows by less than 500 kB");
    }
    is($sessions->(10, sub { "name-$_[0]" }), 10, 'a name used before makes a pool again');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers, '/echo');
$up->stop;

done_testing;
