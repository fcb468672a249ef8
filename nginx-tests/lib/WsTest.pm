package WsTest;

# Test::More helpers shared by the conformance files: open a session, check
# an echo, provoke a violation and check its close code, and the checks every
# file ends with (the worker survived, a fresh session echoes, nginx stops
# gracefully, nothing bad in error.log).

use strict;
use warnings;

use Exporter 'import';
use Test::More;
use WsClient qw(build_frame);

our @EXPORT = qw(ws_open echo_ok bye violation expect_close still_echoes finish
    close_desc);

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

# echo_ok($ws, $opcode, $payload, $name): 5 tests.
sub echo_ok {
    my ($ws, $opcode, $payload, $name, %o) = @_;
    $ws->send_frame(opcode => $opcode, payload => $payload);
    my $m = $ws->recv_message(timeout => $o{timeout} // 5);
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
# no alert/crit/emerg or crashed-worker lines. 5 tests.
sub finish {
    my ($t, $port, $workers, $path) = @_;
    still_echoes($port, 'at the end', $path);
    is_deeply([$t->worker_pids], $workers, 'the worker processes are the same ones');
    $t->stop;
    is($t->forced_stop, undef, 'nginx stopped gracefully');
    is_deeply([$t->check_error_log], [], 'no alerts in error.log');
}

1;
