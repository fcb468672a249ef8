#!/usr/bin/perl
# websocket_pass to an upstream{} block: a dead server (nothing listens on
# its port) next to a live websocket_echo. Every session still upgrades
# (the next server is tried), the refused connect is logged at error level;
# an upstream{} whose servers are all dead is a 502.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use WsNginx;
use WsClient;
use WsTest;

my $DEAD = WsNginx::free_port();
my $DEAD2 = WsNginx::free_port();

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
upstream mixed {
    server 127.0.0.1:$DEAD;
    server 127.0.0.1:%%PORT_1%%;
}

# a dead server that is never taken out of rotation (max_fails=0)
upstream dead_first {
    server 127.0.0.1:$DEAD2 max_fails=0;
    server 127.0.0.1:%%PORT_1%%;
}

upstream all_dead {
    server 127.0.0.1:$DEAD;
    server 127.0.0.1:$DEAD2;
}

upstream two_live {
    server 127.0.0.1:%%PORT_1%%;
    server 127.0.0.1:%%PORT_2%%;
}

server {
    listen 127.0.0.1:%%PORT_0%%;

    location /mixed {
        websocket_pass ws://mixed;
    }

    location /dead-first {
        websocket_pass ws://dead_first/echo;
    }

    location /all-dead {
        websocket_pass ws://all_dead;
    }

    location /two-live {
        websocket_pass ws://two_live/which;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;

    location / {
        websocket_echo;
    }

    location /which {
        websocket_echo;
        websocket_protocols one;
    }
}

server {
    listen 127.0.0.1:%%PORT_2%%;

    location /which {
        websocket_echo;
        websocket_protocols two;
    }
}
EOF_CONF

# session($path, $n): upgrade, one echo, close 1000; true when all went well.
sub session {
    my ($path, $n, %o) = @_;
    my $ws = eval { WsClient->connect(port => $port, path => $path, %o) } or return 0;
    return 0 unless ($ws->status // 0) == 101 && $ws->accept_ok;
    my $msg = "session $n via $path";
    $ws->send_text($msg);
    my $m = $ws->recv_message(timeout => 3);
    return 0 unless $m && $m->{payload} eq $msg;
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    return 0 unless defined $code && $code == 1000 && $ws->wait_eof(3);
    return $ws;
}

{
    my $ok = grep { session('/mixed', $_) } 1 .. 10;
    is($ok, 10, 'one dead server in the upstream{}: 10 of 10 sessions upgraded and relayed');
}
{
    my $ok = 0;
    my $t0 = time;
    $ok += !!session('/dead-first', $_) for 1 .. 10;
    is($ok, 10, 'dead server kept in rotation (max_fails=0): 10 of 10 sessions relayed');
    cmp_ok(time - $t0, '<', 5, '... without waiting for anything');
}

my @refused = $t->grep_error_log(qr/connect\(\) to 127\.0\.0\.1:(?:$DEAD|$DEAD2) failed.*refused/i);
ok(scalar @refused, 'the refused connect is in error.log') or diag $t->error_log;
is(scalar(grep { !/\[error\]/ } @refused), 0, '... at error level') or diag join "\n", @refused;
# round robin picks the dead server for every other session
cmp_ok(scalar(grep { /:$DEAD2\b/ } @refused), '>=', 4,
    'each attempt at the max_fails=0 dead server is logged');
like($refused[0] // '', qr/upstream: "127\.0\.0\.1:\d+"/, 'the log line names the upstream address');

{
    my $ws = WsClient->connect(port => $port, path => '/all-dead');
    is($ws->status, 502, 'every server of the upstream{} dead: 502');
    like($t->error_log, qr/\[error\].*(?:no live upstreams|no upstream reachable|refused)/,
        'every server dead: logged at error level');
}

# Round robin over two live servers: each answers with its own subprotocol.
{
    my %seen;
    for (1 .. 6) {
        my $ws = WsClient->connect(port => $port, path => '/two-live', protocols => [ 'one', 'two' ]);
        $seen{ $ws->header('Sec-WebSocket-Protocol') // 'none' }++ if ($ws->status // 0) == 101;
        $ws->send_close(1000);
        $ws->recv_close(timeout => 3);
    }
    is_deeply(\%seen, { one => 3, two => 3 }, 'two live servers: sessions go round robin');
}

finish($t, $port, \@workers, '/mixed');

done_testing;
