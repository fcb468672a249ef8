#!/usr/bin/perl
# examples/chat: a module of its own (a cdylib that depends on this crate
# with default-features = false) built only on the public Rust API: upgrade
# with ServerOptions (subprotocol "chat", a 5 s timeout), serve with a
# Handler, Wakers between the sessions of one worker, close, timeout.
# Loaded next to ngx_http_websocket_module, whose echo still works.

use strict;
use warnings;
use FindBin;
use File::Basename qw(dirname);
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use WsClient;
use WsNginx;
use WsTest;

my (undef, $module) = WsNginx->locate;
my $chat = ($module ne '' ? dirname($module) : '') . '/libngx_websocket_example_chat.so';
plan skip_all => "no example module next to the module ($chat; make examples)" unless -f $chat;

my ($t, $port, @workers) = start_nginx(
    main_conf => "load_module $chat;",
    conf => echo_server(0, '/ws' => []) =~ s/\n}\n$/\n    location \/chat { websocket_chat; }\n}\n/r,
);

sub member {
    my $ws = WsClient->connect(port => $port, path => '/chat', protocols => ['x', 'chat']);
    is($ws->status, 101, 'chat: 101');
    is($ws->header('Sec-WebSocket-Protocol'), 'chat', 'chat: subprotocol chosen');
    my $m = $ws->recv_message(timeout => 5);
    like($m && $m->{payload}, qr/^welcome (\d+)$/, 'chat: greeted before anything was sent');
    my ($id) = ($m && $m->{payload} // '') =~ /(\d+)/;
    return ($ws, $id);
}

sub next_text {
    my ($ws) = @_;
    my $m = $ws->recv_message(timeout => 5);
    return $m ? $m->{payload} : undef;
}

my ($a, $ida) = member();
is(next_text($a), "$ida joined", 'a hears itself join');
my ($b, $idb) = member();
is(next_text($a), "$idb joined", 'a is woken by b joining (Waker)');
is(next_text($b), "$idb joined", 'b hears itself join');

$a->send_text('hello');
is(next_text($a), "$ida: hello", 'a gets its own line');
is(next_text($b), "$ida: hello", 'b gets a\'s line, woken by a\'s session');
$b->send_text('hi there');
is(next_text($a), "$idb: hi there", 'a gets b\'s line');
is(next_text($b), "$idb: hi there", 'b gets its own line');

$b->send_text('/quit');
my ($code) = $b->recv_close(timeout => 5);
is($code, 1000, '/quit: close 1000');
ok($b->wait_eof(3), '/quit: TCP closed');
$b->close;    # ends nginx's lingering close: the session ends with it
is(next_text($a), "$idb left", 'a hears b leave (finish hook)');

# The library's timeout (ServerOptions::timeout, 5 s): a silent member is closed.
my $t0 = time;
my $m;
do { $m = $a->recv_message(timeout => 10) } while $m && $m->{opcode} != 8;
ok($m, 'silent member: closed by the library');
is($m && unpack('n', $m->{payload}), 1001, 'silent member: close 1001');
cmp_ok(time - $t0, '>=', 3, 'silent member: after the timeout, not at once');

# A bad handshake is refused by upgrade() before the handler runs.
{
    my $ws = WsClient->connect(port => $port, path => '/chat',
        headers => { 'Sec-WebSocket-Version' => '12' });
    is($ws->status, 426, 'bad version: 426 from upgrade()');
}

finish($t, $port, \@workers);
done_testing;
