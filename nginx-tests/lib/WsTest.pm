package WsTest;

# Test::More helpers shared by the test files: build a config and start
# nginx, build frames, open a session, check an echo or a ping, provoke a
# violation and check its close code, check that nginx -t accepts or rejects
# a config, run a client program with a time limit, and the checks every
# file ends with (the worker survived, a fresh session echoes, nginx stops
# gracefully, nothing bad in error.log).

use strict;
use warnings;

use Exporter 'import';
use POSIX ();
use Test::More;
use WsClient qw(build_frame);
use WsNginx;
use WsValgrind qw(scaled);

our @EXPORT = qw(ws_open echo_ok bye violation expect_close still_echoes finish
    close_desc start_nginx echo_server conf_server conf_location frags close_frame
    ping_pong_ok config_accepted config_rejected run_captured);

# --- config and start ----------------------------------------------------------

# start_nginx(%WsNginx_new_options) or start_nginx($t) -> ($t, $port, @workers):
# starts nginx (made here from the options, or one made by the caller);
# $port is %%PORT_0%%, @workers the worker PIDs at the start (for finish()).
sub start_nginx {
    my $t = ref $_[0] ? shift : WsNginx->new(@_);
    $t->start;
    return ($t, $t->port(0), $t->worker_pids);
}

# echo_server($listen, $path => [@directives], ...): the text of a server{}
# on 127.0.0.1:%%PORT_<n>%% with one websocket_echo location per path, in
# the order given, each with its extra directives. $listen is the port
# number n, optionally followed by listen parameters ('1 sndbuf=8k').
#   echo_server(0, '/ws' => [], '/big' => ['websocket_max_payload_len 2m'])
sub echo_server {
    my ($listen, @locations) = @_;
    my ($n, @params) = split ' ', $listen;
    my $conf = "server {\n    listen " . join(' ', "127.0.0.1:%%PORT_$n%%", @params) . ";\n";
    while (my ($path, $directives) = splice @locations, 0, 2) {
        $conf .= "\n    location $path {\n"
            . join('', map { "        $_;\n" } 'websocket_echo', @$directives)
            . "    }\n";
    }
    return "$conf}\n";
}

# conf_server($body): a server{} on %%PORT_0%% around $body (lines of text);
# conf_location($body): the same with $body inside `location /ws {}`. For
# the small configs that nginx -t must reject.
sub conf_server { "server {\n    listen 127.0.0.1:%%PORT_0%%;\n$_[0]\n}\n" }
sub conf_location { conf_server("    location /ws {\n$_[0]\n    }") }

# config_accepted($t, $name): nginx -t accepts the config and nginx really
# starts with it. 3 tests.
sub config_accepted {
    my ($t, $name) = @_;
    my ($rc, $out) = $t->test_config;
    is($rc, 0, "$name: nginx -t exits 0") or diag $out;
    like($out, qr/test is successful/, "$name: test is successful");
    ok(eval { $t->start; 1 }, "$name: nginx starts") or diag $@;
}

# config_rejected($name, $http_conf, $directive, $marker): nginx -t fails,
# with an [emerg] naming $directive and the line of the config matching
# $marker (a string or a regex, see WsNginx::conf_line), and $directive is
# a known one. 4 tests.
sub config_rejected {
    my ($name, $conf, $directive, $marker) = @_;
    my $t = WsNginx->new(conf => $conf);
    my $line = $t->conf_line($marker);
    BAIL_OUT("test bug: marker not found for '$name'") unless $line;
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*nginx\.conf:$line\b/, "$name: [emerg] names nginx.conf:$line")
        or diag $out;
    like($out, qr/\[emerg\].*\b\Q$directive\E\b.*nginx\.conf:$line\b/,
        "$name: error names $directive and nginx.conf:$line")
        or diag $out;
    unlike($out, qr/unknown directive/, "$name: the directive itself is known");
}

# --- frames --------------------------------------------------------------------

# frags($opcode, @pieces): the (masked) frames of one message fragmented
# into @pieces.
sub frags {
    my ($opcode, @pieces) = @_;
    return join '', map {
        build_frame(opcode => $_ ? 0 : $opcode, fin => $_ == $#pieces ? 1 : 0,
            payload => $pieces[$_])
    } 0 .. $#pieces;
}

# close_frame($code, $reason): a masked close frame with that code and reason.
sub close_frame {
    my ($code, $reason) = @_;
    return build_frame(opcode => 8, payload => pack('n', $code) . ($reason // ''));
}

# --- sessions ------------------------------------------------------------------

# ws_open($port, $path, %connect_options) -> an upgraded client; dies when
# the handshake is not a 101.
sub ws_open {
    my ($port, $path, %o) = @_;
    $path //= '/ws';
    my $ws = WsClient->connect(port => $port, path => $path, %o);
    die "handshake to $path failed: " . ($ws->status // 'none') . "\n"
        unless ($ws->status // 0) == 101;
    return $ws;
}

# A readable description of what recv_close() found, for diagnostics.
sub close_desc {
    my ($ws, $code) = @_;
    return "close $code" if defined $code;
    return 'empty close' if $ws->{close_frame};
    return 'no close frame (' . ($ws->error // 'nothing') . ')';
}

# echo_ok($ws, $opcode, $payload, $name, timeout => 5, answer_pings => 0):
# 5 tests. With answer_pings, pings from the server (heartbeats) that come
# before the reply are answered with pongs and skipped.
sub echo_ok {
    my ($ws, $opcode, $payload, $name, %o) = @_;
    $ws->send_frame(opcode => $opcode, payload => $payload);
    my $m = $ws->recv_message(timeout => $o{timeout} // 5);
    while ($o{answer_pings} && $m && $m->{opcode} == 9) {
        $ws->send_pong($m->{payload});
        $m = $ws->recv_message(timeout => $o{timeout} // 5);
    }
    ok($m, "$name: reply received") or do {
        diag 'got ' . ($ws->error // 'nothing');
        fail("$name: $_") for 'same opcode', 'same payload', 'not masked', 'no RSV';
        return;
    };
    is($m->{opcode}, $opcode, "$name: same opcode");
    ok($m->{payload} eq $payload, "$name: same payload (" . length($payload) . " bytes)")
        or diag "got " . length($m->{payload}) . " bytes";
    is($m->{masked}, 0, "$name: reply is not masked");
    is($m->{rsv}, 0, "$name: reply has no RSV bits");
}

# ping_pong_ok($ws, $name): pings with a payload, an empty one and a
# 125-byte one each get a pong with that payload; an unsolicited pong is
# ignored (the next frame is the echo of a text sent after it). 8 tests.
sub ping_pong_ok {
    my ($ws, $name) = @_;
    $ws->send_ping('are you there?');
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 10, "$name: ping answered with pong");
    is($f && $f->{payload}, 'are you there?', "$name: pong carries the ping payload");
    is($f && $f->{masked}, 0, "$name: pong is not masked");

    $ws->send_ping('');
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 10, "$name: empty ping answered");
    is($f && $f->{payload}, '', "$name: empty pong");

    $ws->send_ping('z' x 125);
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{payload}, 'z' x 125, "$name: ping with a 125-byte payload answered");

    $ws->send_pong('unsolicited');
    $ws->send_text('next');
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, 1, "$name: unsolicited pong ignored: next frame is the text echo");
    is($f && $f->{payload}, 'next', "$name: ... with its payload");
}

# bye($ws, $name): sends close 1000, expects the close echo and EOF. 2 tests.
sub bye {
    my ($ws, $name) = @_;
    $ws->send_close(1000);
    my ($code) = $ws->recv_close(timeout => 3);
    is($code, 1000, "$name: close answered");
    ok($ws->wait_eof(3), "$name: TCP closed after close");
}

# expect_close($ws, $name, @codes): the next close frame carries one of
# @codes (frames before it are skipped), then the server closes TCP. 2 tests.
sub expect_close {
    my ($ws, $name, @codes) = @_;
    my ($code) = $ws->recv_close(timeout => 3);
    my $want = join(' or ', @codes);
    ok(defined $code && grep({ $code == $_ } @codes), "$name: close $want")
        or diag 'got ' . close_desc($ws, $code);
    ok($ws->wait_eof(3), "$name: TCP closed");
    return $code;
}

# violation($port, $name, $path, $bytes, @codes): a fresh session sends
# $bytes and must get a close with one of @codes, then EOF. 2 tests.
sub violation {
    my ($port, $name, $path, $bytes, @codes) = @_;
    my $ws = WsClient->connect(port => $port, path => $path);
    unless (($ws->status // 0) == 101) {
        fail("$name: handshake") for 1 .. 2;
        return;
    }
    $ws->send_raw($bytes);
    return expect_close($ws, $name, @codes);
}

# still_echoes($port, $name, $path): a new session upgrades and echoes. 2 tests.
sub still_echoes {
    my ($port, $name, $path) = @_;
    my $ws = WsClient->connect(port => $port, path => $path // '/ws');
    is($ws->status, 101, "$name: new session upgraded");
    $ws->send_text('alive');
    my $m = $ws->recv_message(timeout => 3);
    is($m && $m->{payload}, 'alive', "$name: echo works");
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
    $ws->close;
}

# finish($t, $port, \@workers_at_start): the worker survived everything the
# file did, a fresh session echoes, nginx stops gracefully and error.log has
# no alert/crit/emerg or crashed-worker lines. 5 tests; under valgrind or
# with ASan a 6th: no error in any nginx run in $t's directory.
sub finish {
    my ($t, $port, $workers, $path) = @_;
    still_echoes($port, 'at the end', $path);
    is_deeply([$t->worker_pids], $workers, 'the worker processes are the same ones');
    $t->stop;
    is($t->forced_stop, undef, 'nginx stopped gracefully');
    is_deeply([$t->check_error_log], [], 'no alerts in error.log');
    is_deeply([$t->valgrind_errors], [],
        WsValgrind::asan() ? 'ASan: no errors, no leaks' : 'valgrind: no memcheck errors')
        if WsValgrind::checking();
}

# --- client programs -----------------------------------------------------------

# run_captured($limit, $setup, @cmd) -> ($exit_status, $finished, @lines):
# runs @cmd in a process group of its own, stdout and stderr merged, the
# proxy variables removed from its environment and $setup (a CODE ref or
# undef) called in the child before the exec (chdir, %ENV). After $limit
# seconds (scaled by the slowdown factor) the group gets TERM, then KILL,
# and $finished is false. The exit status is 128 + the signal number for a
# program killed by a signal.
sub run_captured {
    my ($limit, $setup, @cmd) = @_;
    $limit = scaled($limit);
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDERR, '>&', \*STDOUT;
        delete @ENV{qw(http_proxy https_proxy all_proxy no_proxy
            HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY)};
        $setup->() if $setup;
        exec @cmd or POSIX::_exit(127);
    }
    my @lines;
    my $ok = eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm $limit;
        while (my $l = <$fh>) { chomp $l; push @lines, $l }
        alarm 0;
        1;
    };
    if (!$ok) {
        kill 'TERM', -$pid;
        sleep 2;
        kill 'KILL', -$pid;
    }
    close $fh;
    return (($? & 127 ? 128 + ($? & 127) : $? >> 8), $ok, @lines);
}

# --- faults: what the workers hold (appended for the 4x-fault-*.t files) -------

# On request (use WsTest qw(:DEFAULT worker_sockets ...)): older files have
# subs of these names of their own.
our @EXPORT_OK = qw(worker_sockets sockets_back_to rss_kib tagged_session);

# worker_sockets($t): the sockets the workers of $t hold (listening sockets
# and the master's channel included); -1 when /proc does not let us look.
sub worker_sockets {
    my ($t) = @_;
    my $n = 0;
    for my $w ($t->worker_pids) {
        opendir my $dh, "/proc/$w/fd" or return -1;
        for (readdir $dh) {
            my $l = readlink "/proc/$w/fd/$_" // next;
            $n++ if $l =~ /^socket:/;
        }
        closedir $dh;
    }
    return $n;
}

# sockets_back_to($t, $base, $limit) -> the seconds it took the workers to
# hold no more than $base sockets, or undef when they still held more after
# $limit seconds.
sub sockets_back_to {
    my ($t, $base, $limit) = @_;
    my $t0 = Time::HiRes::time();
    while (1) {
        my $n = worker_sockets($t);
        return Time::HiRes::time() - $t0 if $n >= 0 && $n <= $base;
        return undef if Time::HiRes::time() - $t0 > $limit;
        Time::HiRes::sleep(0.02);
    }
}

# tagged_session($port, $path, %connect_options) -> ($ws, $path_re): a
# session to "$path?id=N" with a fresh N, and a regex matching that path's
# end, for finding the session's upstream handshake in WsUpstream's records.
my $tag_id = 0;
sub tagged_session {
    my ($port, $path, %o) = @_;
    my $tag = 'id=' . ++$tag_id;
    my $ws = WsClient->connect(port => $port, path => "$path?$tag", %o);
    return ($ws, qr/[?&]\Q$tag\E\z/);
}

# rss_kib($pid): VmRSS of a process in kB, undef when unreadable.
sub rss_kib {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return undef;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)\s+kB/ }
    return undef;
}

1;
