#!/usr/bin/perl
# Heartbeats: websocket_ping_interval (off by default) sends a ping after that
# long without anything from the peer, any bytes received count as liveness,
# and websocket_ping_timeout bounds the wait for an answer: close 1011, then
# TCP close. For websocket_pass both legs are watched; a dead upstream is an
# [error], a dead client an [info].
#
# With websocket_ping_interval 1s, websocket_ping_timeout 1s and
# websocket_timeout 2s, all the sessions below run side by side for 5 s,
# driven from one IO::Select loop.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use WsNginx;
use WsClient qw(build_frame OP_TEXT OP_CLOSE OP_PING OP_PONG);
use WsTest;
use WsUpstream;

# /up/deaf...: echoes, never answers a ping (echo_loop records every frame).
# /up/live...: echoes and answers every ping with a pong.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    if (($c->path // '') =~ m{^/up/deaf}) {
        $c->echo_loop(timeout => 15);
        return;
    }
    while (my $f = $c->recv_frame(timeout => 15)) {
        my $op = $f->{opcode};
        if ($op == OP_PING) {
            $c->push_note(pings => { at => time, masked => $f->{masked}, payload => $f->{payload} });
            $c->send_frame(opcode => OP_PONG, payload => $f->{payload});
            next;
        }
        if ($op == OP_PONG) {
            $c->push_note(pongs => { at => time, payload => $f->{payload} });
            next;
        }
        if ($op == OP_CLOSE) {
            $c->note(close_code => WsUpstream::Conn::close_code($f) // -1, close_at => time);
            $c->send_close(WsUpstream::Conn::close_code($f));
            $c->wait_eof(timeout => 5);
            return;
        }
        $c->send_frame(fin => $f->{fin}, opcode => $op, payload => $f->{payload}) or return;
    }
    $c->note(loop_end => $c->is_eof ? 'eof' : 'timeout');
});
my $UP = $up->port;

my $t = WsNginx->new(conf => <<"EOF_CONF");
server {
    listen 127.0.0.1:%%PORT_0%%;

    websocket_ping_interval 1s;
    websocket_ping_timeout 1s;
    websocket_timeout 2s;

    location /ws {
        websocket_echo;
    }

    location /up/ {
        websocket_pass ws://127.0.0.1:$UP;
    }
}

# the defaults: no heartbeats
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

# A session of the loop: answer => whether it answers pings with pongs;
# tick => called every turn with (session, seconds since the start).
sub session {
    my ($name, $path, %o) = @_;
    my $ws = ws_open($o{port} // $port, $path);
    return { name => $name, path => $path, ws => $ws, opened => time, pings => [],
        data => [], bad => [], %o };
}

my @s = (
    session('echo, answering', '/ws?answering', answer => 1),
    session('echo, silent', '/ws?silent', answer => 0, reply_close => 0),
    session('echo, talking', '/ws?talking', answer => 0, every => 0.4),
    session('echo, dribbling', '/ws?dribbling', answer => 0,
        dribble => build_frame(opcode => OP_TEXT, payload => 'slow!')),
    session('echo, defaults', '/ws?defaults', answer => 0, port => $t->port(1)),
    session('pass, live upstream', '/up/live/answering', answer => 1),
    session('pass, deaf upstream', '/up/deaf/answering', answer => 1),
    session('pass, silent client', '/up/live/silent', answer => 0),
);
my %s = map { ($_->{name} => $_) } @s;

my %by_fh = map { ($_->{ws}->socket . '' => $_) } @s;
my $sel = IO::Select->new(map { $_->{ws}->socket } @s);
my $start = time;
my $end = $start + 5;
while (time < $end) {
    my $now = time;
    for my $s (@s) {
        next if $s->{eof_at} || $s->{close_at};
        my $el = $now - $s->{opened};
        if ($s->{every} && $el >= ($s->{next_send} // $s->{every})) {
            my $n = scalar @{ $s->{sent} //= [] };
            push @{ $s->{sent} }, "beat $n";
            $s->{ws}->send_text("beat $n");
            $s->{next_send} = $el + $s->{every};
        }
        if (defined $s->{dribble} && length $s->{dribble} && $el >= ($s->{next_byte} // 0.4)) {
            $s->{ws}->send_raw(substr($s->{dribble}, 0, 1, ''));
            $s->{next_byte} = $el + 0.4;
        }
    }
    for my $fh ($sel->can_read(0.05)) {
        my $s = $by_fh{"$fh"};
        my $ws = $s->{ws};
        $ws->pump;
        while (my $f = $ws->try_recv_frame) {
            my $at = time - $s->{opened};
            if ($f->{opcode} == OP_PING) {
                push @{ $s->{pings} }, { at => $at, masked => $f->{masked} };
                $ws->send_pong($f->{payload}) if $s->{answer};
            } elsif ($f->{opcode} == OP_CLOSE) {
                $s->{close_at} = $at;
                $s->{close_code} = length $f->{payload} >= 2 ? unpack('n', $f->{payload}) : 'empty';
                $ws->send_close($s->{close_code} eq 'empty' ? undef : $s->{close_code})
                    if $s->{reply_close} // 1;
            } elsif ($f->{opcode} == OP_PONG) {
                push @{ $s->{pongs} }, { at => $at, payload => $f->{payload} };
            } elsif ($f->{opcode} == OP_TEXT) {
                push @{ $s->{data} }, $f->{payload};
            } else {
                push @{ $s->{bad} }, "opcode $f->{opcode}";
            }
        }
        if ($ws->is_eof) {
            $s->{eof_at} = time - $s->{opened};
            $sel->remove($fh);
        }
    }
}

my $fmt_pings = sub { join(', ', map { sprintf '%.2f', $_->{at} } @{ $_[0]{pings} }) || 'none' };

# --- echo: a client that answers stays past websocket_timeout ----------------------------------
{
    my $s = $s{'echo, answering'};
    ok(!defined $s->{close_code} && !$s->{eof_at}, 'echo, answering: still connected after 5 s (websocket_timeout 2s)')
        or diag "closed with $s->{close_code} at $s->{close_at}";
    my @p = @{ $s->{pings} };
    ok(@p >= 3 && @p <= 6, 'echo, answering: a ping about every second') or diag 'pings at ' . $fmt_pings->($s);
    ok(@p && $p[0]{at} > 0.8 && $p[0]{at} < 1.6, 'echo, answering: the first ping ~1 s after the upgrade')
        or diag 'pings at ' . $fmt_pings->($s);
    my @close = grep { $p[$_]{at} - $p[$_ - 1]{at} < 0.8 } 1 .. $#p;
    is(scalar @close, 0, 'echo, answering: pings no closer than the interval') or diag 'pings at ' . $fmt_pings->($s);
    is(scalar(grep { $_->{masked} } @p), 0, 'echo, answering: the pings are not masked');
    # (the checks since the loop may have taken over 1 s: a heartbeat may
    # be waiting, and this session answers them)
    echo_ok($s->{ws}, OP_TEXT, 'still here', 'echo, answering: after 5 s', answer_pings => 1);
    bye($s->{ws}, 'echo, answering');
}

# --- echo: a client that never answers gets a ping at ~1 s, then 1011 at ~2 s -----------------
{
    my $s = $s{'echo, silent'};
    my @p = @{ $s->{pings} };
    is(scalar @p, 1, 'echo, silent: one ping') or diag 'pings at ' . $fmt_pings->($s);
    ok(@p && $p[0]{at} > 0.8 && $p[0]{at} < 1.6, sprintf('echo, silent: ... ~1 s after the upgrade (%.2f s)', @p ? $p[0]{at} : -1));
    is($s->{close_code}, 1011, 'echo, silent: close 1011');
    ok(defined $s->{close_at} && $s->{close_at} > 1.7 && $s->{close_at} < 3,
        sprintf('echo, silent: ... ~2 s after the upgrade (%.2f s)', $s->{close_at} // -1));
    ok($s->{eof_at} && $s->{eof_at} - ($s->{close_at} // 0) < 3,
        'echo, silent: then TCP closed (the client never answered the close either)');
}

# --- any bytes count as liveness -----------------------------------------------------------------
{
    my $s = $s{'echo, talking'};
    is(scalar @{ $s->{pings} }, 0, 'echo, talking every 0.4 s without answering pings: never pinged')
        or diag 'pings at ' . $fmt_pings->($s);
    ok(!defined $s->{close_code} && !$s->{eof_at}, 'echo, talking: still connected after 5 s');
    is_deeply($s->{data}, [ @{ $s->{sent} }[ 0 .. $#{ $s->{data} } ] ], 'echo, talking: its messages were echoed');
    ok(@{ $s->{data} } >= @{ $s->{sent} } - 1 && @{ $s->{sent} } >= 10, 'echo, talking: ... all of them');
    bye($s->{ws}, 'echo, talking');

    my $d = $s{'echo, dribbling'};
    is(scalar @{ $d->{pings} }, 0, 'echo, a frame dribbled one byte every 0.4 s: never pinged')
        or diag 'pings at ' . $fmt_pings->($d);
    ok(!defined $d->{close_code} && !$d->{eof_at}, 'echo, dribbling: still connected after 5 s (a frame of 11 bytes took 4.4 s)');
    my $got = @{ $d->{data} } ? $d->{data}[0] : do { my $m = $d->{ws}->recv_message(timeout => 2); $m && $m->{payload} };
    is($got, 'slow!', 'echo, dribbling: the message is echoed');
    bye($d->{ws}, 'echo, dribbling');
}

# --- off by default ----------------------------------------------------------------------------
{
    my $s = $s{'echo, defaults'};
    is(scalar @{ $s->{pings} }, 0, 'no websocket_ping_interval: a silent client is not pinged in 5 s');
    ok(!defined $s->{close_code} && !$s->{eof_at}, 'no websocket_ping_interval: still connected');
    echo_ok($s->{ws}, OP_TEXT, 'defaults', 'no websocket_ping_interval');
    bye($s->{ws}, 'no websocket_ping_interval');
}

# `off` is the documented default: a location can turn off what it inherits.
{
    my $c = WsNginx->new(conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%%;
    websocket_ping_interval 1s;

    location /ws {
        websocket_echo;
        websocket_ping_interval off;
    }
}
EOF_CONF
    my ($rc, $out) = $c->test_config;
    is($rc, 0, 'nginx -t accepts "websocket_ping_interval off;" in a location') or diag $out;
}

# --- pass: both legs answer: the session lives -----------------------------------------------
{
    my $s = $s{'pass, live upstream'};
    ok(!defined $s->{close_code} && !$s->{eof_at}, 'pass, live upstream: still connected after 5 s')
        or diag "closed with $s->{close_code} at $s->{close_at}";
    ok(@{ $s->{pings} } >= 3, 'pass, live upstream: the client was pinged about every second')
        or diag 'pings at ' . $fmt_pings->($s);
    echo_ok($s->{ws}, OP_TEXT, 'alive and well', 'pass, live upstream: after 5 s', answer_pings => 1);
    bye($s->{ws}, 'pass, live upstream');
    my $r = $up->wait_record(path => qr{^/up/live/answering}, until => 'close_code') // {};
    my @p = @{ $r->{pings} // [] };
    ok(@p >= 3, 'pass, live upstream: nginx pinged the upstream about every second (' . scalar(@p) . ' pings)');
    is(scalar(grep { !$_->{masked} } @p), 0, 'pass, live upstream: the pings to the upstream are masked');
    is($r->{close_code}, 1000, 'pass, live upstream: the upstream got the close 1000');

    # The heartbeat is nginx's own, leg by leg: neither side asked for the
    # other's answers to nginx's pings.
    {
        is(scalar @{ $s->{pongs} // [] }, 0, 'pass, live upstream: the client gets no pong it did not ask for')
            or diag scalar(@{ $s->{pongs} }) . ' unsolicited pongs reached the client, at '
                . join(', ', map { sprintf '%.2f', $_->{at} } @{ $s->{pongs} });
        is(scalar @{ $r->{pongs} // [] }, 0, 'pass, live upstream: the upstream gets no pong it did not ask for')
            or diag scalar(@{ $r->{pongs} }) . ' unsolicited pongs reached the upstream';
    }
}

# --- pass: an upstream that does not answer: 1011 both ways, an [error] -------------------------
{
    my $s = $s{'pass, deaf upstream'};
    is($s->{close_code}, 1011, 'pass, deaf upstream: the client gets close 1011');
    ok(defined $s->{close_at} && $s->{close_at} > 1.7 && $s->{close_at} < 3,
        sprintf('pass, deaf upstream: ... ~2 s after the upgrade (%.2f s)', $s->{close_at} // -1));
    ok($s->{eof_at}, 'pass, deaf upstream: TCP closed');
    my $r = $up->wait_record(path => qr{^/up/deaf/answering}, until => 'close_code') // {};
    my @pings = grep { $_->{opcode} == OP_PING } @{ $r->{frames} // [] };
    is(scalar @pings, 1, 'pass, deaf upstream: the upstream got one ping');
    is($r->{close_code}, 1011, 'pass, deaf upstream: then close 1011');
    my @err = $t->grep_error_log(qr{\[error\].*upstream.*did not answer a ping.*/up/deaf/answering});
    is(scalar @err, 1, 'pass, deaf upstream: one [error] line says the upstream did not answer a ping')
        or diag join "\n", $t->grep_error_log(qr{/up/deaf/answering});
}

# --- pass: a client that does not answer: 1011 both ways, an [info] ----------------------------
{
    my $s = $s{'pass, silent client'};
    is($s->{close_code}, 1011, 'pass, silent client: the client gets close 1011');
    ok(defined $s->{close_at} && $s->{close_at} > 1.7 && $s->{close_at} < 3,
        sprintf('pass, silent client: ... ~2 s after the upgrade (%.2f s)', $s->{close_at} // -1));
    ok($s->{eof_at}, 'pass, silent client: TCP closed');
    my $r = $up->wait_record(path => qr{^/up/live/silent}, until => 'close_code') // {};
    is($r->{close_code}, 1011, 'pass, silent client: the upstream gets close 1011');
    my @info = $t->grep_error_log(qr{\[info\].*client did not answer a ping.*/up/live/silent});
    is(scalar @info, 1, 'pass, silent client: one [info] line says the client did not answer a ping')
        or diag join "\n", $t->grep_error_log(qr{/up/live/silent});
}

# --- error.log ----------------------------------------------------------------------------------
{
    my @info = $t->grep_error_log(qr{\[info\].*client did not answer a ping.*/ws\?silent});
    is(scalar @info, 1, 'echo, silent: one [info] line says the client did not answer a ping')
        or diag join "\n", $t->grep_error_log(qr{/ws\?silent});
    my @worse = $t->grep_error_log(qr{\[(?:warn|error|crit|alert|emerg)\]});
    my @unexpected = grep { !m{/up/deaf/answering} } @worse;
    is_deeply(\@unexpected, [], 'nothing at warn or above but the dead upstream');
    my @bad = map { "$_->{name}: @{ $_->{bad} }" } grep { @{ $_->{bad} } } @s;
    is_deeply(\@bad, [], 'no unexpected frames');
}

is(scalar(grep { $_->{handler_error} } $up->records), 0, 'the scripted upstream had no errors')
    or diag join "\n", map { $_->{handler_error} // () } $up->records;

finish($t, $port, \@workers);
$up->stop;

done_testing;
