#!/usr/bin/perl
# websocket_pass with nginx's own balancers: a session holds its upstream
# peer until it ends, whatever the access log setting, so that least_conn
# counts live WebSockets; hash keeps a key on one server across sessions;
# max_fails counts failed upstream handshakes (5xx) but not refusals a
# client can provoke (4xx); and websocket_keepalive reuses an idle
# connection only to the peer the balancer picked, as nginx's keepalive
# does. Two scripted upstreams (lib/WsUpstream.pm) answer with their own
# subprotocol, A or B, so each session shows which server it reached,
# also over a pooled connection.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use WsClient;
use WsTest;
use WsUpstream;

# answers with subprotocol $name, then echoes; may sit in a keepalive pool
sub server_named {
    my ($name) = @_;
    return WsUpstream->new(handler => sub {
        my ($c) = @_;
        $c->handshake(protocol => $name);
        $c->serve(idle => 40);
    });
}
my %up = (A => server_named('A'), B => server_named('B'));
my ($A, $B) = map { $up{$_}->port } qw(A B);
my $bad = WsUpstream->new(handler => sub { $_[0]->handshake(status => 500) });
my $forbid = WsUpstream->new(handler => sub { $_[0]->handshake(status => 403) });
my ($BAD, $FORBID) = ($bad->port, $forbid->port);

# One worker: a balancer's counts are per worker without a zone.
my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF_CONF");
upstream lc {
    least_conn;
    server 127.0.0.1:$A;
    server 127.0.0.1:$B;
}

upstream lcka {
    least_conn;
    server 127.0.0.1:$A;
    server 127.0.0.1:$B;
}

upstream byarg {
    hash \$arg_k;
    server 127.0.0.1:$A;
    server 127.0.0.1:$B;
}

upstream mf {
    server 127.0.0.1:$BAD max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$A;
}

upstream refusing {
    server 127.0.0.1:$FORBID max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$A;
}

server {
    listen 127.0.0.1:%%PORT_0%%;

    location /lc {
        websocket_pass ws://lc/lc;
    }

    location /lcka {
        websocket_pass ws://lcka/lcka;
        websocket_keepalive 4;
    }

    # one upstream handshake for every key: only the balancer tells them apart
    location /hash {
        websocket_pass ws://byarg/hash;
    }

    location /hashka {
        websocket_pass ws://byarg/hashka;
        websocket_keepalive 4;
    }

    location /mf {
        websocket_pass ws://mf/mf;
    }

    location /refusing {
        websocket_pass ws://refusing/refusing;
    }

    location /echo {
        websocket_echo;
    }
}
EOF_CONF

# A session that upgraded and echoes one message, or undef.
sub open_session {
    my ($path) = @_;
    my $ws = eval { WsClient->connect(port => $port, path => $path, protocols => [ 'A', 'B' ]) }
        or return undef;
    return undef unless ($ws->status // 0) == 101 && $ws->accept_ok;
    $ws->send_text("hello $path");
    my $m = $ws->recv_message(timeout => 3);
    return undef unless $m && $m->{payload} eq "hello $path";
    return $ws;
}

sub server_of { my ($ws) = @_; return $ws ? $ws->header('Sec-WebSocket-Protocol') // '?' : 'none' }

# Closes normally and waits for the end (then a pooled upstream is idle).
sub close_session {
    my ($ws) = @_;
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    $ws->wait_eof(3);
    return $code;
}

# The upstream drops TCP 0.2 s after this: the session ends from that side.
sub end_by_upstream {
    my ($ws) = @_;
    $ws->send_text('cmd:after:0.2:drop');
    $ws->recv_message(timeout => 3);
    $ws->recv_close(timeout => 5);
    return $ws->wait_eof(5);
}

# Upstream connections server $name accepted for $path.
sub accepted { my ($name, $path) = @_; scalar grep { ($_->{path} // '') eq $path } $up{$name}->records }

# --- least_conn ------------------------------------------------------------

for my $case ([ '/lc', 'without websocket_keepalive' ], [ '/lcka', 'with websocket_keepalive' ]) {
    my ($path, $how) = @$case;
    my @open = map { open_session($path) } 1 .. 4;
    my %on;
    push @{ $on{ server_of($_) } }, $_ for @open;
    is(join(' ', map { "$_=" . scalar @{ $on{$_} } } sort keys %on), 'A=2 B=2',
        "least_conn $how: four open sessions, two on each server");
    # without the pool, one of them is ended by its upstream
    close_session($on{A}[0]);
    if ($path eq '/lc') {
        ok(end_by_upstream($on{A}[1]), "least_conn $how: a session on A ended by its upstream");
    } else {
        close_session($on{A}[1]);
    }
    my @next = map { open_session($path) } 1 .. 2;
    is(join(' ', map { server_of($_) } @next), 'A A',
        "least_conn $how: after the two on A ended, the next two both go to A");
    if ($path eq '/lcka') {
        is(accepted(A => $path), 2, "least_conn $how: ... over A's two pooled connections");
    }
    # B's sessions end, then one of A's: A has one session, B none, and the
    # most recently pooled connection is A's
    close_session($_) for @{ $on{B} };
    close_session($next[0]);
    my $last = open_session($path);
    is(server_of($last), 'B', "least_conn $how: the next session goes to the idle server B");
    if ($path eq '/lcka') {
        is(accepted(B => $path), 2, "least_conn $how: ... over one of B's pooled connections");
    }
    close_session($_) for grep { $_ } $last, $next[1];
}

# --- hash ------------------------------------------------------------------

my %first_server_of_key;
for my $case ([ '/hash', 'without websocket_keepalive' ], [ '/hashka', 'with websocket_keepalive' ]) {
    my ($path, $how) = @$case;
    my (%server_of_key, @moved);
    for my $round (1 .. 3) {
        for my $k (1 .. 8) {
            my $ws = open_session("$path?k=$k");
            my $s = server_of($ws);
            $server_of_key{$k} //= $s;
            push @moved, "k=$k round $round: $s, was $server_of_key{$k}" if $s ne $server_of_key{$k};
            close_session($ws) if $ws;
        }
    }
    is_deeply(\@moved, [], "hash \$arg_k $how: 3 rounds of 8 keys, each key stays on its server");
    is(join(' ', sort { $a cmp $b } keys %{ { reverse %server_of_key } }), 'A B',
        "hash \$arg_k $how: ... and the keys are spread over both servers");
    if (%first_server_of_key) {
        is_deeply(\%server_of_key, \%first_server_of_key,
            "hash \$arg_k $how: each key on the server it had without the pool");
    }
    %first_server_of_key = %server_of_key;
}

# --- max_fails -------------------------------------------------------------

{
    my @status;
    for (1 .. 6) {
        my $ws = open_session('/mf');
        push @status, $ws ? server_of($ws) : 'failed';
        close_session($ws) if $ws;
    }
    is(join(' ', @status), 'A A A A A A',
        'max_fails=1: a server answering 500 is skipped for the next peer; every session upgrades');
    is(scalar $bad->records, 1, '... and after its one failure it is not tried again (fail_timeout=10s)');
    like($t->error_log, qr/\[warn\].*upstream server temporarily disabled/,
        '... nginx marks it temporarily disabled');
    like($t->error_log, qr/\[error\].*failed the handshake.*500.*trying the next one/,
        '... the failed handshake is logged at error level');
}
{
    my @status;
    for (1 .. 4) {
        my $ws = eval { WsClient->connect(port => $port, path => '/refusing', protocols => [ 'A', 'B' ]) };
        push @status, $ws ? $ws->status // 0 : 0;
        close_session($ws) if $ws && ($ws->status // 0) == 101;
    }
    is(join(' ', @status), '502 101 502 101',
        'a server answering 403 refuses that request (502), it is not retried elsewhere');
    is(scalar $forbid->records, 2, '... nor counted by max_fails=1: it stays in rotation');
}

finish($t, $port, \@workers, '/echo');

done_testing;
