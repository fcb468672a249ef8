#!/usr/bin/perl
# The access-log variables of a session: $websocket_messages_in/out,
# $websocket_bytes_in/out (data messages and their payload bytes on the
# client leg), $websocket_close_code (the first close frame, whichever side
# sent it; - when none), $websocket_subprotocol, $websocket_upstream_addr and
# $websocket_upstream_reused (pass). The line is written when the session
# ends, not at the upgrade. Sessions run one after the other, so each adds
# the next line of the log.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(OP_TEXT);
use WsTest;
use WsUpstream;

# the first subprotocol offered is chosen; an echo that can sit in a pool
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    my ($first) = split /\s*,\s*/, $c->header('Sec-WebSocket-Protocol') // '';
    $c->handshake(defined $first && length $first ? (protocol => $first) : ());
    $c->serve(idle => 30);
});
my $UP = $up->port;

my $t = WsNginx->new(worker_processes => 1, conf => <<"EOF_CONF");
log_format ws '\$websocket_messages_in \$websocket_messages_out \$websocket_bytes_in \$websocket_bytes_out \$websocket_close_code "\$websocket_subprotocol" \$websocket_upstream_addr \$websocket_upstream_reused';

server {
    listen 127.0.0.1:%%PORT_0%%;
    access_log %%TESTDIR%%/ws.log ws;

    location /ws {
        websocket_echo;
        websocket_protocols chat;
    }

    location /pass/ {
        websocket_pass ws://127.0.0.1:$UP;
    }

    location /ka/ {
        websocket_pass ws://127.0.0.1:$UP;
        websocket_keepalive 1;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

sub log_lines {
    open my $fh, '<', $t->testdir . '/ws.log' or return ();
    my @l = <$fh>;
    chomp @l;
    return @l;
}

# The line after the first $n, waited for up to 3 s (undef if none).
sub next_line {
    my ($n) = @_;
    my $deadline = time + 3;
    while (1) {
        my @l = log_lines();
        return $l[$n] if @l > $n;
        return undef if time > $deadline;
        sleep 0.05;
    }
}

# $n messages of 5 bytes, each echoed. 1 test.
sub talk {
    my ($ws, $n, $name) = @_;
    my @bad;
    for my $i (1 .. $n) {
        my $p = chr(ord('a') + $i - 1) x 5;
        $ws->send_text($p);
        my $m = $ws->recv_message(timeout => 3);
        push @bad, $i unless $m && $m->{payload} eq $p;
    }
    is(scalar @bad, 0, "$name: $n messages of 5 bytes echoed");
}

# --- a known echo session ------------------------------------------------------------------------
{
    my $n = log_lines();
    my $ws = ws_open($port, '/ws', protocols => ['chat']);
    is($ws->header('Sec-WebSocket-Protocol'), 'chat', 'echo: subprotocol chat');
    talk($ws, 3, 'echo');
    sleep 0.3;
    is(scalar(log_lines()), $n, 'echo: no line while the session is open (not written at the upgrade)');
    bye($ws, 'echo');
    is(next_line($n), '3 3 15 15 1000 "chat" - -', 'echo: the line when it ended');
}

# --- ended by a TCP drop: no close code ----------------------------------------------------------
{
    my $n = log_lines();
    my $ws = ws_open($port, '/ws');
    talk($ws, 1, 'dropped');
    $ws->close;
    is(next_line($n), '1 1 5 5 - "" - -', 'a session ended by a TCP drop: close code -, no subprotocol');
}

# --- the server sent the first close (a violation) ------------------------------------------------
{
    my $n = log_lines();
    my $ws = ws_open($port, '/ws');
    talk($ws, 2, 'violation');
    $ws->send_frame(opcode => OP_TEXT, payload => 'unmasked', mask => 0);
    expect_close($ws, 'an unmasked frame', 1002);
    $ws->close;    # ends nginx's lingering close
    is(next_line($n), '2 2 10 10 1002 "" - -', 'the server closed first: its code (1002); the bad frame is not a message');
}

# --- pass: the upstream address, a new connection ------------------------------------------------
{
    my $n = log_lines();
    my $ws = ws_open($port, '/pass/one');
    talk($ws, 2, 'pass');
    bye($ws, 'pass');
    is(next_line($n), "2 2 10 10 1000 \"\" 127.0.0.1:$UP 0", 'pass: the upstream address, reused 0');

    $n = log_lines();
    $ws = ws_open($port, '/pass/proto', protocols => ['chat', 'superchat']);
    is($ws->header('Sec-WebSocket-Protocol'), 'chat', 'pass: the upstream chose chat');
    talk($ws, 1, 'pass, subprotocol');
    bye($ws, 'pass, subprotocol');
    is(next_line($n), "1 1 5 5 1000 \"chat\" 127.0.0.1:$UP 0", 'pass: the subprotocol the upstream chose');
}

# --- pass: the upstream sent the first close -----------------------------------------------------
{
    my $n = log_lines();
    my $ws = ws_open($port, '/pass/upclose');
    my $cmd = 'cmd:after:0.1:close:4001';
    $ws->send_text($cmd);
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, $cmd, 'upstream close: the command echoed');
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 4001, 'upstream close: the client gets close 4001');
    $ws->send_close(4001);
    ok($ws->wait_eof(3), 'upstream close: TCP closed');
    my $len = length $cmd;
    is(next_line($n), "1 1 $len $len 4001 \"\" 127.0.0.1:$UP 0", 'upstream close: its code is logged');
}

# --- pass with websocket_keepalive 1: reused 0, then 1 -------------------------------------------
{
    for my $i (0, 1) {
        my $n = log_lines();
        my $ws = ws_open($port, '/ka/seq');
        talk($ws, 1, "keepalive, session $i");
        bye($ws, "keepalive, session $i");
        is(next_line($n), "1 1 5 5 1000 \"\" 127.0.0.1:$UP $i", "keepalive: session $i: reused $i");
    }
    my @conns = grep { ($_->{path} // '') eq '/ka/seq' } $up->records;
    is(scalar @conns, 1, 'keepalive: the two sessions shared one upstream connection');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
