#!/usr/bin/perl
# Faults: slowloris handshakes. A client that sends its handshake one byte a
# second is bound by nginx's client_header_timeout (2 s here), counted from
# the start of the request, not from the last byte: nginx closes the
# connection without sending anything (no 408 response: nginx only logs 408
# in the access log), and never reaches the module (no upstream connection
# for websocket_pass). 200 such connections at once do not stop fresh
# sessions from upgrading and echoing at once, and are all released.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Errno qw(EAGAIN EINTR);
use IO::Select;
use Time::HiRes qw(time sleep);
use WsClient;
use WsTest qw(:DEFAULT worker_sockets sockets_back_to rss_kib);
use WsUpstream;

my $HT = 2;    # client_header_timeout

my $up = WsUpstream->new(handler => sub { $_[0]->handshake; $_[0]->echo_loop(timeout => 10) });
my $UP = $up->port;

my ($t, $port, @workers) = start_nginx(conf => <<"EOF_CONF");
log_format st '\$status \$request_uri';

server {
    listen 127.0.0.1:%%PORT_0%%;
    client_header_timeout ${HT}s;
    access_log %%TESTDIR%%/st.log st;

    location /ws {
        websocket_echo;
    }

    location /p/ {
        websocket_pass ws://127.0.0.1:$UP;
    }
}
EOF_CONF

my $base = worker_sockets($t);
my $have_proc = $base > 0;

sub handshake {
    my ($path) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
}

sub access_statuses {
    open my $fh, '<', $t->testdir . '/st.log' or return ();
    return map { chomp; $_ } <$fh>;
}

# Slow clients: each writes the next byte of its handshake every $gap
# seconds; reads whatever comes back. Returns per client: {got => bytes
# received, eof_at => seconds after the start (undef: still open),
# sent => bytes written}. $during->($elapsed) is called every 0.1 s.
sub dribble {
    my (%o) = @_;
    my @c = map {
        { fh => WsClient::_tcp_connect(port => $port), req => handshake($o{path} // "/ws?slow=$_"),
          sent => 0, got => '' }
    } 1 .. $o{n};
    my $t0 = time;
    my $next = $t0;
    my %of = map { ("" . $c[$_]{fh}) => $c[$_] } 0 .. $#c;
    my $sel = IO::Select->new(map { $_->{fh} } @c);
    while ($sel->count && time - $t0 < $o{limit}) {
        if (time >= $next) {
            for my $c (grep { !defined $_->{eof_at} && $_->{sent} < length $_->{req} } @c) {
                my $n = syswrite($c->{fh}, $c->{req}, 1, $c->{sent});
                $c->{sent} += $n if $n;
            }
            $next += $o{gap};
        }
        for my $fh ($sel->can_read(0.1)) {
            my $c = $of{"$fh"};
            my $n = sysread($fh, $c->{got}, 4096, length $c->{got});
            next if !defined $n && ($! == EAGAIN || $! == EINTR);
            if (!$n) { $c->{eof_at} = time - $t0; $sel->remove($fh) }
        }
        $o{during}->(time - $t0) if $o{during};
    }
    close $_->{fh} for @c;
    return @c;
}

# --- one slow client ---------------------------------------------------------------------------------
{
    my ($c) = dribble(n => 1, gap => 1, limit => $HT + 3, path => '/ws?one');
    ok(defined $c->{eof_at}, 'one byte a second: nginx closes the connection');
    ok(($c->{eof_at} // 0) > $HT - 0.2 && ($c->{eof_at} // 99) < $HT + 1.2,
        sprintf('one byte a second: after client_header_timeout from the start (%.2fs)', $c->{eof_at} // -1));
    is($c->{got}, '', 'one byte a second: nothing is sent back (no 408 response)');
    cmp_ok($c->{sent}, '<', length handshake('/ws?one'), "one byte a second: the handshake was not complete ($c->{sent} bytes)");
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        ok(defined sockets_back_to($t, $base, 1), 'one byte a second: the connection is released');
    }
}

# --- a slow client on websocket_pass -----------------------------------------------------------------
{
    my ($c) = dribble(n => 1, gap => 0.25, limit => $HT + 3, path => '/p/slow');
    ok(defined $c->{eof_at}, 'pass, four bytes a second: nginx closes the connection');
    is($c->{got}, '', 'pass, four bytes a second: nothing is sent back');
    is($up->count, 0, 'pass, four bytes a second: no upstream connection was made');
}

# --- 200 slow clients, and fresh sessions meanwhile ------------------------------------------------------
{
    my (@fresh, @slow_fresh);
    my $checks = 0;
    my @c = dribble(n => 200, gap => 1, limit => $HT + 4, during => sub {
        my ($el) = @_;
        return unless $checks < 3 && $el > 0.5 + $checks * 0.6;
        $checks++;
        my $t0 = time;
        my $ok = eval {
            my $ws = ws_open($port, '/ws', timeout => 3);
            $ws->send_text("fresh $checks");
            my $m = $ws->recv_message(timeout => 3);
            die "no echo\n" unless $m && $m->{payload} eq "fresh $checks";
            $ws->send_close(1000);
            my ($code) = $ws->recv_close(timeout => 3);
            die "no close\n" unless ($code // 0) == 1000;
            1;
        };
        push @fresh, $ok ? 'ok' : "failed: $@";
        push @slow_fresh, time - $t0;
    });
    is(scalar @c, 200, '200 slow clients connected');
    is_deeply(\@fresh, [ ('ok') x 3 ], 'while they dribble, three fresh sessions upgrade, echo and close');
    ok(!grep({ $_ > 1 } @slow_fresh), 'each fresh session took under 1 s ('
        . join(', ', map { sprintf '%.3fs', $_ } @slow_fresh) . ')');
    my @open = grep { !defined $_->{eof_at} } @c;
    is(scalar @open, 0, '200 slow clients: nginx closed every connection');
    my @late = grep { defined $_->{eof_at} && ($_->{eof_at} < $HT - 0.2 || $_->{eof_at} > $HT + 1.5) } @c;
    is(scalar @late, 0, '200 slow clients: each closed after client_header_timeout')
        or diag join ', ', map { sprintf '%.2f', $_->{eof_at} } @late[0 .. ($#late < 9 ? $#late : 9)];
    is(scalar(grep { length $_->{got} } @c), 0, '200 slow clients: none got a response');
  SKIP: {
        skip 'cannot read /proc/<worker>/fd', 1 unless $have_proc;
        ok(defined sockets_back_to($t, $base, 1), '200 slow clients: every connection released')
            or diag 'the worker holds ' . worker_sockets($t) . " sockets, $base when idle";
    }
}

# --- what nginx logged -----------------------------------------------------------------------------------
{
    my @st = access_statuses();
    is(scalar(grep { /^408 / } @st), 202, 'the access log has 408 for each slow client (202)')
        or diag join "\n", grep { !/^101 / } @st;
    is(scalar(grep { /^101 \/ws$/ } @st), 3, '... and 101 for the fresh sessions');
    is(scalar(() = $t->grep_error_log(qr/\[info\].*client timed out/)), 202,
        'error.log: "client timed out" at info for each slow client');
    is_deeply([ $t->grep_error_log(qr/\[(?:warn|error)\]/) ], [], 'nothing at warn or error');
}

finish($t, $port, \@workers);
$up->stop;

done_testing;
