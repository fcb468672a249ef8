#!/usr/bin/perl
# The Redis client (src/redis/) on nginx's event loop, against a real
# redis-server (lib/WsRedis.pm) and scripted hostile ones, through the
# test-only probe module (`make -s redis-probe-paths`, cargo feature
# redis-probe): `websocket_redis_probe URL [reader]` sends the command in
# the query string on the worker's link and answers with the reply.
#
# Checked: a command before the link is up fails at once (503); SELECT of
# the URL's db; commands and replies of every type, binary-safe; 50
# pipelined commands on one connection answered in order; a blocking XREAD
# on the reader link does not hold up the command link; Redis killed:
# commands 503 at once, an XREAD waiting gets 502, one [error] line per link
# however many reconnects, none of nginx's connect() lines; Redis back: the
# link reconnects (backoff under 5 s) with one [notice]; a server that
# never answers (502 after the command timeout), one that announces a
# 2^36-byte bulk or 2^31 elements (refused from the header, the link
# closes and reconnects), an address nobody listens on, one whose connect
# hangs (the 1 s connect timeout). The stream reader
# (`stream`): a backlog delivered in order two per XREAD, a key watched
# while an XREAD blocks read at once (CLIENT UNBLOCK), what is added while
# its connection is down delivered after the reconnect once each, unwatch,
# and on to a restarted server. A channel zone in Redis (`channels`):
# publish (503 before the links are up and while Redis is down, 201 with
# the id), the stream's entries, describe and history bounded by `history`,
# follow from now or from an id (text and binary delivered once), unfollow,
# delete (a tombstone the follower gets, the stream trimmed to it, no
# history before it), publishing and delivery again after Redis restarts. CLIENT UNBLOCK of
# the reader (by the id it asked at connect) from the command link; a
# reload with the links up: the old worker exits at once.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient;
use WsTest;
use WsValgrind;
use WsRedis;

plan skip_all => 'redis-server is not installed (make deps)' unless WsRedis->available;
plan skip_all => 'the probe build is not instrumented' if WsValgrind::checking();
# distro/test.sh, make test-deb: another nginx; the probe is a build of the vendored one.
plan skip_all => 'TEST_NGINX_BINARY names another nginx' if defined $ENV{TEST_NGINX_BINARY};

# The probe build's nginx and module.
my $root = WsNginx::repo_root();
my %probe;
{
    my $out = `cd '$root' && make -s redis-probe-paths 2>/dev/null`;
    $probe{$1} = $2 while $out =~ /^(nginx|module)=(\S+)/mg;
    plan skip_all => "make redis-probe-paths failed:\n$out" unless $probe{nginx} && $probe{module};
}

# A scripted server: each connection gets the replies of @$script in turn,
# one per command it receives (undef: never answer that one).
package FakeRedis {
    use parent -norequire, 'WsProc';
    sub new {
        my ($class, @script) = @_;
        my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
            Listen => 16, ReuseAddr => 1) or die "listen: $!";
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            WsProc::child_setup();
            while (my $c = $l->accept) {
                next if fork;
                my @replies = @script;
                my $buf = '';
                while (sysread($c, $buf, 65536, length $buf)) {
                    # one reply per complete command (*N then N bulk strings)
                    while ($buf =~ /\A\*(\d+)\r\n/) {
                        my $n = $1;
                        my $rest = substr($buf, length "*$n\r\n");
                        my $ok = 1;
                        for (1 .. $n) {
                            if ($rest =~ /\A\$(\d+)\r\n/ && length($rest) >= length("\$$1\r\n") + $1 + 2) {
                                $rest = substr($rest, length("\$$1\r\n") + $1 + 2);
                            } else { $ok = 0; last }
                        }
                        last unless $ok;
                        $buf = $rest;
                        my $reply = shift @replies;
                        syswrite($c, $reply) if defined $reply;
                    }
                }
                POSIX::_exit(0);
            }
            POSIX::_exit(0);
        }
        my $self = bless { pid => $pid, port => $l->sockport, group => 0 }, $class;
        close $l;
        return $self->_track;
    }
    sub port { $_[0]{port} }
}

my $redis = WsRedis->new;
$redis->db(3);
my $R = $redis->port;
my $DEAD = WsNginx::free_port();
# CLIENT ID and one PING answered, then silence.
my $silent = FakeRedis->new(":5\r\n", "+PONG\r\n", undef);
# CLIENT ID and one PING answered, then a bulk string of 64 GiB announced.
my $huge = FakeRedis->new(":6\r\n", "+PONG\r\n", "\$68719476736\r\n");
# The handshake itself answered with 2^31 elements.
my $wide = FakeRedis->new("*2147483648\r\n");
# CLIENT ID, then every command answered -LOADING (a restarted server
# reading its data back).
my $loading = FakeRedis->new(":8\r\n", "-LOADING Redis is loading the dataset in memory\r\n");
my $L = $loading->port;
my ($S, $H, $W) = ($silent->port, $huge->port, $wide->port);
# A listening socket whose accept queue is full: connects to it hang.
my $full = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
    or die "listen: $!";
my $B = $full->sockport;
my @fillers = map {
    IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $B, Blocking => 0)
} 1 .. 3;

my $t = WsNginx->new(nginx => $probe{nginx}, module => $probe{module}, conf => <<"EOF");
server {
    listen 127.0.0.1:%%PORT_0%%;
    location /c      { websocket_redis_probe redis://127.0.0.1:$R/3; }
    location /r      { websocket_redis_probe redis://127.0.0.1:$R/3 reader; }
    location /s      { websocket_redis_probe redis://127.0.0.1:$R/3 stream; }
    location /z      { websocket_redis_probe redis://127.0.0.1:$R/3 channels; }
    location /dead   { websocket_redis_probe redis://127.0.0.1:$DEAD; }
    location /baddb  { websocket_redis_probe redis://127.0.0.1:$R/99; }
    location /hang   { websocket_redis_probe redis://127.0.0.1:$B; }
    location /silent { websocket_redis_probe redis://127.0.0.1:$S; }
    location /huge   { websocket_redis_probe redis://127.0.0.1:$H; }
    location /wide   { websocket_redis_probe redis://127.0.0.1:$W; }
    location /loading { websocket_redis_probe redis://127.0.0.1:$L; }
    location /ws     { websocket_echo; }
}
EOF
my ($port, @workers);
($t, $port, @workers) = start_nginx($t);

sub get {
    my ($what, $timeout) = @_;
    my ($status, undef, $body) =
        WsClient::http_request($port, "GET $what HTTP/1.0\r\nHost: x\r\n\r\n", timeout => $timeout // 5);
    chomp $body if defined $body;
    return ($status // 0, $body // '');
}

# Sends a request now; its answer is read by finish_get.
sub start_get {
    my ($what) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die "connect: $!";
    print {$s} "GET $what HTTP/1.0\r\nHost: x\r\n\r\n";
    return $s;
}

sub finish_get {
    my ($s, $timeout) = @_;
    my $buf = '';
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        last unless IO::Select->new($s)->can_read($deadline - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }
    my ($status) = $buf =~ m{^HTTP/1\.\d (\d+)};
    my (undef, $body) = split /\r\n\r\n/, $buf, 2;
    chomp $body if defined $body;
    return ($status // 0, $body // '');
}

# Polls until the path answers 200; the seconds it took, or undef.
sub until_up {
    my ($path, $limit) = @_;
    my $start = time;
    while (time - $start < $limit) {
        my ($status) = get("$path?PING");
        return time - $start if $status == 200;
        sleep 0.05;
    }
    return undef;
}

# --- before and after the first connection ---------------------------------------

my $t0 = time;
my ($status, $body) = get('/c?PING');
is($status, 503, 'a command before the link is up: 503');
cmp_ok(time - $t0, '<', 0.5, '... at once');
ok(defined until_up('/c', 3), 'the link comes up');
is_deeply([get('/c?PING')], [200, '+PONG'], 'PING');
ok(defined until_up('/r', 3), 'the reader link comes up');
my @db3 = grep { $_->{db} eq '3' } $redis->clients;
is(scalar @db3, 2, 'two connections (command and reader), both on db 3 (SELECT)');

# --- commands and replies ------------------------------------------------------------

is_deeply([get('/c?SET&k&a%20b')], [200, '+OK'], 'SET');
is_deeply([get('/c?GET&k')], [200, '"a b"'], 'GET: a bulk string');
is_deeply([get('/c?SET&bin&%00%ff%0d%0a%22')], [200, '+OK'], 'SET of binary data');
is($redis->command('GET', 'bin'), "\x00\xff\r\n\"", '... stored byte for byte');
is_deeply([get('/c?GET&bin')], [200, '"\x00\xff\x0d\x0a\""'], '... read back byte for byte');
is_deeply([get('/c?GET&nothing')], [200, 'null'], 'nil');
is_deeply([get('/c?INCRBY&n&41')], [200, '41'], 'an integer');
($status, $body) = get('/c?NOPE&x');
is($status, 200, 'an error reply is a reply');
like($body, qr/^-ERR unknown command/, '... -ERR');

($status, $body) = get('/c?XADD&ch&*&d&hello&t&1');
like($body, qr/^"(\d+-\d+)"$/, 'XADD answers an id');
my ($id) = $body =~ /"(.*)"/;
is_deeply([get('/c?XRANGE&ch&-&%2B')], [200, qq{[["$id",["d","hello","t","1"]]]}],
    'XRANGE: [[id, [field, value, ...]]]');

# 50 at once, on the worker's one command connection: each answer is its own,
# in the order Redis executed them.
$redis->command('DEL', 'seq');
my @socks = map { start_get("/c?RPUSH&seq&$_") } 1 .. 50;
my @lengths = map { (finish_get($_))[1] } @socks;
is_deeply([sort { $a <=> $b } @lengths], [1 .. 50], '50 pipelined commands, 50 distinct replies');
my $list = $redis->command('LRANGE', 'seq', 0, -1);
my %at = map { $list->[$_] => $_ + 1 } 0 .. $#$list;
is_deeply(\@lengths, [map { $at{$_} } 1 .. 50], "each reply is its own command's");
is(scalar(grep { $_->{db} eq '3' } $redis->clients), 2, 'still two connections');

# --- the blocking reader -------------------------------------------------------------

$t0 = time;
is_deeply([get('/r?XREAD&BLOCK&300&STREAMS&ch2&$')], [200, 'null'], 'XREAD BLOCK with nothing: nil');
cmp_ok(time - $t0, '>=', 0.25, '... after the block time');
my $waiting = start_get('/r?XREAD&BLOCK&5000&STREAMS&ch2&$');
sleep 0.3;
$t0 = time;
is_deeply([get('/c?PING')], [200, '+PONG'], 'the command link answers while the reader blocks');
cmp_ok(time - $t0, '<', 0.5, '... at once');
my $id2 = $redis->command('XADD', 'ch2', '*', 'd', 'x');
($status, $body) = finish_get($waiting, 3);
is($body, qq{[["ch2",[["$id2",["d","x"]]]]]}, 'the blocked XREAD gets the entry added');

# --- following streams (src/redis/streams.rs) -----------------------------------------

sub delivered { my ($s, $b) = get('/s?log'); return grep { length } split /\n/, $b }

# Polls the log until it has $n lines (or 3 s pass); the lines.
sub wait_delivered {
    my ($n) = @_;
    my $deadline = time + 3;
    my @lines;
    while (time < $deadline) {
        @lines = delivered();
        last if @lines >= $n;
        sleep 0.05;
    }
    return @lines;
}

my @want;
my @a = map { $redis->command('XADD', 'sa', '*', 'd', "a$_") } 1 .. 3;
is_deeply([get('/s?watch&sa&0-0')], [200, 'ok'], 'watch a stream from its start');
push @want, map { "sa $a[$_] d=a" . ($_ + 1) } 0 .. 2;
is_deeply([wait_delivered(3)], \@want, '... its 3 entries delivered in order (2 per XREAD)');
is_deeply([get('/s?watch&sb&new')], [200, 'ok 0-0'], 'watch an empty stream from now on');
sleep 0.3;
$t0 = time;
my $b1 = $redis->command('XADD', 'sb', '*', 'd', 'b1');
push @want, "sb $b1 d=b1";
is_deeply([wait_delivered(4)], \@want, '... an entry added there delivered');
cmp_ok(time - $t0, '<', 1, '... at once, though the XREAD blocked for 5 s (CLIENT UNBLOCK)');

my $sreader;
for (1 .. 20) {
    ($sreader) = grep { $_->{cmd} eq 'xread' && $_->{flags} =~ /b/ } $redis->clients;
    last if $sreader;
    sleep 0.05;
}
is($redis->command('CLIENT', 'KILL', 'ID', $sreader->{id}), 1, "the reader's connection killed");
my @more = map { $redis->command('XADD', 'sa', '*', 'd', "m$_") } 1 .. 3;
push @want, map { "sa $more[$_] d=m" . ($_ + 1) } 0 .. 2;
is_deeply([wait_delivered(7)], \@want,
    '... what was added meanwhile arrives after the reconnect, once each, in order');

is_deeply([get('/s?unwatch&sa')], [200, 'ok'], 'unwatch');
$redis->command('XADD', 'sa', '*', 'd', 'ignored');
my $b2 = $redis->command('XADD', 'sb', '*', 'd', 'b2');
push @want, "sb $b2 d=b2";
is_deeply([wait_delivered(8)], \@want, '... only the stream still watched is read');
sleep 0.3;
is_deeply([delivered()], \@want, '... and nothing else comes');

$redis->command('SET', 'sx', 'not a stream');
is_deeply([get('/s?watch&sx&0-0')], [200, 'ok'], 'watch a key that holds no stream');
sleep 0.3;
like(join("\n", $t->grep_error_log(qr/\[error\].*XREAD of 2 streams failed/)), qr/WRONGTYPE/,
    '... the XREAD fails, logged, reading stops');
is_deeply([get('/s?unwatch&sx')], [200, 'ok'], '... unwatched');
my $b2b = $redis->command('XADD', 'sb', '*', 'd', 'b2b');
push @want, "sb $b2b d=b2b";
is_deeply([wait_delivered(scalar @want)], \@want, '... reading goes on');
is(scalar($t->grep_error_log(qr/XREAD of \d+ streams failed/)), 1, '... one failed XREAD, no loop');

# --- a channel zone in Redis (src/redis/channels.rs) ------------------------------------

sub zlog { my ($s, $b) = get('/z?log'); return grep { length } split /\n/, $b }

sub wait_zlog {
    my ($n) = @_;
    my $deadline = time + 3;
    my @lines;
    while (time < $deadline) {
        @lines = zlog();
        last if @lines >= $n;
        sleep 0.05;
    }
    return @lines;
}

is((get('/z?publish&c1&early'))[0], 503, 'a publish before the links are up: 503');
my $deadline = time + 3;
my @ids;
while (time < $deadline) {
    my ($s, $b) = get('/z?publish&c1&m1');
    if ($s == 201) { push @ids, $b; last }
    sleep 0.05;
}
is(scalar @ids, 1, 'then 201 with the id');
for my $i (2 .. 5) {
    my ($s, $b) = get("/z?publish&c1&m$i");
    push @ids, $b if $s == 201;
}
is(scalar @ids, 5, 'five messages published');
is_deeply([sort @ids], \@ids, '... ids in order');
is($redis->command('XLEN', 'websocket:z:c1'), 5, '... one stream entry each (MAXLEN ~ keeps at least 1000)');
is_deeply($redis->command('XRANGE', 'websocket:z:c1', '-', '+', 'COUNT', 1),
    [[$ids[0], ['d', 'm1', 'b', '0']]], '... fields d and b');
{
    my $ttl = $redis->command('PTTL', 'websocket:z:c1');
    ok($ttl > 50_000 && $ttl <= 60_000, "... the stream expires with history_time (PTTL $ttl)");
}
is_deeply([get('/z?describe&c1')], [200, "3 $ids[4]"], 'describe: 3 stored (history 3), the last id');
is_deeply([get('/z?describe&none')], [200, '0 -'], '... a channel without messages');
is_deeply([get("/z?history&c1&0-0")], [200, join("\n", map { "$ids[$_] t m" . ($_ + 1) } 2 .. 4)],
    'history: the 3 newest');
is_deeply([get("/z?history&c1&$ids[3]")], [200, "$ids[4] t m5"], 'history after an id: only what is newer');
is_deeply([get("/z?history&c1&$ids[4]")], [200, ''], '... none after the last');
is(scalar($t->grep_error_log(qr/zero size buf/)), 0, '... an empty body: no "zero size buf" alert');

is_deeply([get('/z?follow&c1&new')], [200, "ok $ids[4]"], 'follow a channel from now on');
is_deeply([get('/z?follow&c2&0-0')], [200, 'ok'], 'follow another from its start');
my ($s6, $id6) = get('/z?publish&c1&m6');
my ($sb, $idb) = get('/z?publish&c2&%00%ff&binary');
is_deeply([$s6, $sb], [201, 201], 'publish to both');
my @zwant = ("c1 $id6 t m6", "c2 $idb b \x00\xef\xbf\xbd");
is_deeply([wait_zlog(2)], \@zwant, '... each delivered once, text and binary') or diag explain [zlog()];
is_deeply($redis->command('XRANGE', 'websocket:z:c2', '-', '+'), [[$idb, ['d', "\x00\xff", 'b', '1']]],
    '... binary data stored byte for byte');
is_deeply([get('/z?unfollow&c1')], [200, 'ok'], 'unfollow');
get('/z?publish&c1&m7');
my ($s8, $id8) = get('/z?publish&c2&m8');
push @zwant, "c2 $id8 t m8";
is_deeply([wait_zlog(3)], \@zwant, '... only the channel followed is delivered');

is((get('/z?delete&c2'))[0], 204, 'delete: 204');
my $tomb = $redis->command('XRANGE', 'websocket:z:c2', '-', '+');
is(scalar @$tomb, 1, '... the stream is trimmed to one entry');
is_deeply($tomb->[0][1], ['e', 'deleted'], '... the tombstone');
push @zwant, "c2 $tomb->[0][0] deleted";
is_deeply([wait_zlog(4)], \@zwant, '... which the follower gets (close the subscribers)');
is_deeply([get('/z?describe&c2')], [200, '0 -'], '... nothing stored');
is_deeply([get('/z?history&c2&0-0')], [200, ''], '... no history');
my ($s10, $id10) = get('/z?publish&c2&m10');
push @zwant, "c2 $id10 t m10";
is_deeply([wait_zlog(5)], \@zwant, 'a publish after the delete is delivered');
is_deeply([get('/z?describe&c2')], [200, "1 $id10"], '... and is all the history');
is_deeply([get('/z?history&c2&0-0')], [200, "$id10 t m10"], '... from any id');

# --- Redis killed and started again --------------------------------------------------

my $re_down = qr/\[error\].*redis redis:\/\/127\.0\.0\.1:$R\/3 unreachable/;
my $re_back = qr/\[notice\].*redis redis:\/\/127\.0\.0\.1:$R\/3 reachable again/;
my ($down0, $back0) = map { scalar $t->grep_error_log($_) } $re_down, $re_back;
$waiting = start_get('/r?XREAD&BLOCK&8000&STREAMS&ch2&$');
sleep 0.2;
$redis->kill;
$t0 = time;
($status) = finish_get($waiting, 3);
is($status, 502, 'an XREAD waiting when Redis dies: 502');
cmp_ok(time - $t0, '<', 1, '... at once');
sleep 0.2;
$t0 = time;
is((get('/c?PING'))[0], 503, 'while Redis is down, a command gets 503');
cmp_ok(time - $t0, '<', 0.5, '... at once');
sleep 2;    # reconnects after 0.1, 0.2, 0.4, 0.8 s
is((get('/c?XADD&ch&*&d&lost'))[0], 503, 'still 503 after several reconnects');
$t0 = time;
is((get('/z?publish&c2&lost'))[0], 503, 'a channel publish: 503');
cmp_ok(time - $t0, '<', 0.5, '... at once');
# Six links to it: /c, /r, and the two each of the stream reader and the channels.
is(scalar($t->grep_error_log($re_down)) - $down0, 6, 'one [error] per link for the outage');
is_deeply([$t->grep_error_log(qr/connect\(\) to 127\.0\.0\.1:$R failed/)], [],
    "none of nginx's own connect() lines");

$redis->start;
my $took = until_up('/c', 6);
ok(defined $took, 'Redis back: the link reconnects');
cmp_ok($took // 99, '<', 5.5, '... within the backoff cap');
ok(defined until_up('/r', 6), '... the reader too');
is_deeply([get('/c?GET&k')], [200, 'null'], '... to the new (empty) server');
my $back;
$deadline = time + 6;
while (time < $deadline) {
    $back = scalar($t->grep_error_log($re_back)) - $back0;
    last if $back >= 6;
    sleep 0.1;
}
sleep 0.3;
is(scalar($t->grep_error_log($re_back)) - $back0, 6, 'one [notice] per link when it is back');
$waiting = start_get('/r?XREAD&BLOCK&5000&STREAMS&ch3&$');
sleep 0.2;
$id = $redis->command('XADD', 'ch3', '*', 'd', 'again');
is((finish_get($waiting, 3))[1], qq{[["ch3",[["$id",["d","again"]]]]]}, 'the reader reads again');
my $b3 = $redis->command('XADD', 'sb', '*', 'd', 'b3');
push @want, "sb $b3 d=b3";
is_deeply([wait_delivered(scalar @want)], \@want, 'the stream reader goes on on the new server');
my ($s9, $id9);
$deadline = time + 6;
while (time < $deadline) {
    ($s9, $id9) = get('/z?publish&c2&m9');
    last if $s9 == 201;
    sleep 0.1;
}
is($s9, 201, 'channel publishes work again');
push @zwant, "c2 $id9 t m9";
is_deeply([wait_zlog(scalar @zwant)], \@zwant, '... and a followed channel delivers again');

# --- servers that misbehave -------------------------------------------------------------

ok(defined until_up('/silent', 3), 'a server that answers only the handshake: up');
$t0 = time;
($status, $body) = get('/silent?PING');
is_deeply([$status, $body], [502, 'redis timed out'], '... a command without a reply: 502');
cmp_ok(time - $t0, '>=', 1.8, '... after the 2 s command timeout');
cmp_ok(time - $t0, '<', 4, '... not much later');
like(join('', $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$S\/0 unreachable/)),
    qr/no reply in time/, '... logged');

ok(defined until_up('/huge', 3), 'a server that announces a 64 GiB bulk string: up');
($status, $body) = get('/huge?GET&x');
is_deeply([$status, $body], [502, 'bad reply from redis: bulk string over the limit'],
    '... refused from its header: 502');
like(join('', $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$H\/0 unreachable/)),
    qr/bulk string over the limit/, '... logged');
ok(defined until_up('/huge', 3), '... and the link reconnects');

ok(defined until_up('/loading', 3), 'a server loading its data: up after the handshake');
is((get('/loading?PING'))[0], 503, '... its -LOADING takes the link down: the next command 503 at once');
like(join('', $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$L\/0 unreachable/)),
    qr/redis is loading its data/, '... logged');
ok(defined until_up('/loading', 3), '... and the link connects again');

get('/wide?PING');
sleep 0.5;
is((get('/wide?PING'))[0], 503, 'a handshake answered with 2^31 elements: never up');
like(join('', $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$W\/0 unreachable/)),
    qr/array over the element limit/, '... logged');

$t0 = time;
is((get('/hang?PING'))[0], 503, 'a connect that hangs: 503 at once');
cmp_ok(time - $t0, '<', 0.5, '... without waiting for it');
sleep 1.5;
my @hang = $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$B\/0 unreachable/);
is(scalar @hang, 1, '... one [error] line');
like($hang[0] // '', qr/connect timed out/, '... after the 1 s connect timeout');

get('/baddb?PING');
sleep 0.5;
is((get('/baddb?PING'))[0], 503, 'a db Redis does not have: never up');
like(join('', $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$R\/99 unreachable/)),
    qr/SELECT failed: redis answered "ERR DB index is out of range"/, '... the SELECT error logged');

get('/dead?PING');
sleep 1.5;
is((get('/dead?PING'))[0], 503, 'nobody listening: 503');
my @dead = $t->grep_error_log(qr/redis redis:\/\/127\.0\.0\.1:$DEAD\/0 unreachable/);
is(scalar @dead, 1, '... one [error] line for several attempts');
like($dead[0] // '', qr/Connection refused/, '... naming the reason');

# --- CLIENT UNBLOCK, and the worker's exit ---------------------------------------------

my ($reader_id) = (get('/r?CLIENT&ID'))[1];
$waiting = start_get('/r?XREAD&BLOCK&8000&STREAMS&ch4&$');
sleep 0.3;
my ($reader) = grep { $_->{id} eq $reader_id } $redis->clients;
is($reader->{cmd}, 'xread', 'the reader blocks in XREAD');
is_deeply([get("/c?CLIENT&UNBLOCK&$reader_id")], [200, '1'],
    'CLIENT UNBLOCK from the command link');
$t0 = time;
is_deeply([finish_get($waiting, 3)], [200, 'null'], '... ends the XREAD with nil');
cmp_ok(time - $t0, '<', 1, '... at once');
is((get('/r?PING'))[0], 200, '... and the reader goes on');

$waiting = start_get('/r?XREAD&BLOCK&8000&STREAMS&ch4&$');
sleep 0.3;
$t0 = time;
ok($t->reload, 'reload with the links up and an XREAD waiting');
cmp_ok(time - $t0, '<', 3, '... the old worker exits without waiting for Redis');
is((finish_get($waiting, 3))[0], 502, '... the waiting XREAD gets 502');
ok(defined until_up('/c', 3), 'the new worker connects');
@workers = $t->worker_pids;

finish($t, $port, \@workers);
$redis->stop;
done_testing;
