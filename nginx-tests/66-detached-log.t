#!/usr/bin/perl
# The access-log line of a session whose request was freed after the 101
# (ngx_detach/log.rs): what the line needs is taken then, and nginx's log
# phase runs when the session ends. The line must be the one nginx writes
# from the request it kept. The reference: the same location in a second
# server whose log paths have a variable, which keeps the request (nginx
# resolves such a path against the request when it writes). The same
# sessions run on both at the same time; their lines must be identical but
# for the clock ($time_local, $request_time, $connection_time, $msec), with
# nginx's formats (combined, a broad one with headers, cookies, arguments,
# a `set` variable, response headers, byte counts, escaping; escape=json)
# and `if=` conditions. $request_time and $connection_time are the whole
# session (idle time included), read when it ends, not at the upgrade.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use WsTest;

my $FULL = '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    . '"$http_referer" "$http_user_agent" | $request_length $bytes_sent $request_time '
    . '$connection_time $msec | $host $uri $args $arg_k "$cookie_c" "$http_x_tag" '
    . '$request_method $server_protocol $scheme $tagged $sent_http_upgrade '
    . '$connection_requests $pipe "$request_completion" $http_x_missing | '
    . '$websocket_messages_in $websocket_messages_out $websocket_bytes_in '
    . '$websocket_bytes_out $websocket_close_code "$websocket_subprotocol"';
my $JSON = '{"ua":"$http_user_agent","s":$status,"t":"$tagged","in":$websocket_messages_in,'
    . '"close":"$websocket_close_code"}';

# location /ws of either server; $suffix goes into its log paths.
sub ws_location {
    my ($suffix) = @_;
    return <<"EOF";
    location /ws {
        set \$tagged "t-\$arg_k";
        websocket_echo;
        websocket_protocols chat;
        access_log %%TESTDIR%%/full$suffix.log full if=\$arg_log;
        access_log %%TESTDIR%%/json$suffix.log json if=\$arg_log;
        access_log %%TESTDIR%%/combined$suffix.log;
    }
EOF
}

my $detached = ws_location('-detached');
my $kept = ws_location('-kept$server_port');
my ($t, $port, @workers) = start_nginx(worker_processes => 1, conf => <<"EOF");
log_format full '$FULL';
log_format json escape=json '$JSON';

server {
    listen 127.0.0.1:%%PORT_0%%;
$detached
}

server {
    listen 127.0.0.1:%%PORT_1%%;
    root %%TESTDIR%%;
$kept
}
EOF
my $kport = $t->port(1);
# The worker (nobody, when the tests run as root) opens the kept server's
# logs itself, as it writes.
chmod 0777, $t->testdir;

sub lines {
    my ($name) = @_;
    open my $fh, '<', $t->testdir . "/$name.log" or return ();
    my @l = <$fh>;
    chomp @l;
    return @l;
}

# Waits up to 3 s for $n lines in each of the logs; returns the lines of
# each, in the order of @names.
sub wait_lines {
    my ($n, @names) = @_;
    my $deadline = time + 3;
    sleep 0.05 while time < $deadline && grep { lines($_) < $n } @names;
    return map { [lines($_)] } @names;
}

# The line with the clock masked: [$time_local], then $request_time,
# $connection_time and $msec in the second part of the full format.
sub masked {
    my ($line) = @_;
    $line =~ s/\[[^\]]+\]/[T]/;
    $line =~ s/\| (\d+) (\d+) \S+ \S+ \S+ \|/| $1 $2 RT CT MS |/;
    return $line;
}

my %headers = (
    'User-Agent' => 'agent "quoted" \\ x',
    Referer => 'http://referer.test/page',
    'X-Tag' => 'tag value',
    Cookie => 'a=1; c=cookie-c; d=4',
);

# --- a session that idles, then ends with a close handshake --------------------------------------
my @ws = map {
    ws_open($_, '/ws?k=v%20w&log=1', protocols => ['chat'], headers => \%headers)
} $port, $kport;
for my $ws (@ws) {
    $ws->send_text('hello');
    $ws->send_binary('x' x 200);
    $ws->recv_message(timeout => 3) for 1 .. 2;
}
sleep 1.3;
is_deeply([map { scalar lines($_) } 'full-detached', 'json-detached', 'combined-detached'], [0, 0, 0],
    'no line while the session is open');
my $echoed = 0;
for my $ws (@ws) {
    $ws->send_text('again');
    my $m = $ws->recv_message(timeout => 3);
    $echoed++ if $m && $m->{payload} eq 'again';
    $ws->send_close(1000);
    $ws->recv_close(timeout => 3);
    $ws->wait_eof(3);
}
is($echoed, 2, 'both sessions echo after idling');

my ($full_d, $full_k, $json_d, $json_k, $comb_d, $comb_k) = wait_lines(1,
    'full-detached', "full-kept$kport", 'json-detached', "json-kept$kport",
    'combined-detached', "combined-kept$kport");
is(scalar @$full_d, 1, 'full: one line');
is(masked($full_d->[0]), masked($full_k->[0]), 'full: the line nginx writes from the kept request')
    or diag "kept:     $full_k->[0]";
like($full_d->[0], qr{^127\.0\.0\.1 - - \[[^\]]+\] "GET /ws\?k=v%20w&log=1 HTTP/1\.1" 101 \d+ "http://referer\.test/page" "agent \\x22quoted\\x22 \\x5C x" \| },
    'full: request line, status 101, escaped header');
like($full_d->[0],
    qr{\Q| 127.0.0.1 /ws k=v%20w&log=1 v%20w "cookie-c" "tag value" GET HTTP/1.1 http t-v%20w websocket 1 . "" - | 3 3 210 210 1000 "chat"\E$},
    'full: variables of the request, the set variable, the session\'s counts');
my ($rl, $bytes, $rt, $ct) = $full_d->[0] =~ /\| (\d+) (\d+) ([\d.]+) ([\d.]+) [\d.]+ \|/;
my ($krt) = $full_k->[0] =~ /\| \d+ \d+ ([\d.]+) /;
cmp_ok($rt, '>=', 1.3, '$request_time counts the idle time (read at the end)');
cmp_ok(abs($rt - ($krt // 0)), '<', 0.5, '... as for the kept request');
cmp_ok($ct, '>=', 1.3, '$connection_time too');
my ($body) = $full_d->[0] =~ /" 101 (\d+) "/;
cmp_ok($body, '>=', 2 + 5 + 4 + 200 + 2 + 5 + 4, '$body_bytes_sent: the frames sent after the 101');
cmp_ok($bytes, '>', $body, '$bytes_sent: the 101 header too');

is(scalar @$json_d, 1, 'json: one line');
is($json_d->[0], $json_k->[0], 'json: the same line as from the kept request');
is($json_d->[0], '{"ua":"agent \"quoted\" \\\\ x","s":101,"t":"t-v%20w","in":3,"close":"1000"}',
    'json: escaped, with the session\'s values');
is(scalar @$comb_d, 1, 'combined: one line');
is(masked($comb_d->[0]), masked($comb_k->[0]), 'combined: the same line as from the kept request');

# --- ended by a TCP drop, and one that `if=` leaves out ------------------------------------------
@ws = map { ws_open($_, '/ws?k=drop&log=yes', headers => \%headers) } $port, $kport;
my @quiet = map { ws_open($_, '/ws?k=quiet&log=0') } $port, $kport;
for my $ws (@ws, @quiet) {
    $ws->send_text('hi');
    $ws->recv_message(timeout => 3);
    $ws->close;
}
($full_d, $full_k, $json_d, $json_k, $comb_d, $comb_k) = wait_lines(2,
    'full-detached', "full-kept$kport", 'json-detached', "json-kept$kport");
($comb_d, $comb_k) = wait_lines(3, 'combined-detached', "combined-kept$kport");
is(scalar @$full_d, 2, 'if=: the session with log=0 left out');
is(masked($full_d->[1]), masked($full_k->[1]), 'a TCP drop: the same line as from the kept request')
    or diag "kept:     $full_k->[1]";
like($full_d->[1], qr{ t-drop .* \| 1 1 2 2 - ""$}, 'a TCP drop: close code -, no subprotocol');
is($json_d->[1], $json_k->[1], 'a TCP drop: json line the same');
is(scalar @$comb_d, 3, 'combined (no condition): every session');
is_deeply([map { masked($_) } @$comb_d], [map { masked($_) } @$comb_k],
    'combined: the same lines as from the kept requests');

finish($t, $port, \@workers, '/ws');
done_testing;
