#!/usr/bin/perl
# The demo page in a real browser: nginx runs the servers of conf/nginx.conf
# (the page from conf/html, /echo, /proxy -> a second server's echo, and the
# /room chat room, on free ports), and browser/demo.test.mjs drives the page
# in headless Chromium through playwright-core: two messages on /echo, two on
# /proxy, Disconnect shows close 1000, two tabs chatting in /room and one of
# them resuming from its last message id after a reconnect, the live panel (websocket_status polled every second)
# shows the sessions by kind and charts messages per second,
# permessage-deflate offered by Chromium: declined on /echo,
# accepted on /proxy (websocket_deflate on), where the access log's
# $websocket_compressed_* counts show compressed messages both ways.
# Each of its tests is a test here; the access log confirms from the server
# side what the browser did.
#
# DEMO_SCREENSHOT=PATH saves a PNG of the page there (by default it goes to
# the test directory, kept with TEST_NGINX_LEAVE=1).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Copy ();
use POSIX ();
use Time::HiRes qw(sleep time);
use WsNginx;
use WsTest;

my $root = WsNginx::repo_root();
my $chromium = $ENV{CHROMIUM} || '/usr/bin/chromium';
my $node_modules = "$root/browser/node_modules";

# `make test` installs these; say exactly what is missing and how to get it.
{
    my @missing;
    push @missing, "$chromium (apt-get install chromium)" unless -x $chromium;
    push @missing, 'node (apt-get install nodejs npm)'
        unless grep { -x "$_/node" } split /:/, $ENV{PATH} // '';
    push @missing, "$node_modules/playwright-core (npm ci --prefix browser)"
        unless -f "$node_modules/playwright-core/package.json";
    plan skip_all => 'the browser test needs ' . join(', ', @missing)
        . "; 'make test' installs them" if @missing;
}

# --- the configuration: the http{} body of conf/nginx.conf ---------------------------
# Its fixed ports become free ones (%%PORT_0%% for the first one named, ...),
# `root html` a copy of the repository's conf/html in the test directory (the
# workers may run as nobody, who need not be able to enter the checkout: a clone
# in /root or in a `mktemp -d` directory); the harness sets the logs and temp paths.
sub conf_from_repo {
    my $file = "$root/conf/nginx.conf";
    open my $fh, '<', $file or die "cannot read $file: $!";
    my $text = do { local $/; <$fh> };
    $text =~ s/[ \t]*#[^\n]*//g;
    $text =~ s/^\s*\n//mg;
    $text =~ /\bhttp\s*\{/g or die "$file: no http {} block";
    my ($start, $depth, $end) = (pos $text, 1);
    while ($text =~ /([{}])/g) {
        $depth += $1 eq '{' ? 1 : -1;
        if ($depth == 0) { $end = pos($text) - 1; last }
    }
    die "$file: unbalanced braces in http {}" unless defined $end;
    my $http = substr $text, $start, $end - $start;
    $http =~ s/^\s*(?:access_log|error_log|\w+_temp_path)\b[^;]*;[ \t]*\n//mg;
    my (%port, $n);
    $n = 0;
    $http =~ s{\b127\.0\.0\.1:(\d+)\b}{
        $port{$1} = $n++ unless exists $port{$1};
        "127.0.0.1:%%PORT_$port{$1}%%"
    }ge;
    $http =~ s{^(\s*root\s+)html\s*;}{$1%%TESTDIR%%/html;}mg;
    return $http;
}
# Copies the page's files (a flat directory) where the workers can read them.
sub copy_html {
    my ($from, $to) = @_;
    mkdir $to or die "mkdir $to: $!";
    opendir my $dh, $from or die "cannot list $from: $!";
    for my $name (grep { -f "$from/$_" } readdir $dh) {
        File::Copy::copy("$from/$name", "$to/$name") or die "copy $from/$name: $!";
    }
    chmod 0755, $to;
}
my $conf = conf_from_repo();
like($conf, qr/listen\s+127\.0\.0\.1:%%PORT_0%%;/, 'conf/nginx.conf: the demo server (port 8080 -> a free port)');
like($conf, qr{location\s*=\s*/\s*\{\s*root\s+%%TESTDIR%%/html;}, 'conf/nginx.conf: the page from conf/html');
like($conf, qr{location\s+/echo\s*\{[^\}]*\bwebsocket_echo;}, 'conf/nginx.conf: /echo');
like($conf, qr{location\s*=\s*/status\s*\{[^\}]*\bwebsocket_status;}, 'conf/nginx.conf: /status for the live panel');
like($conf, qr{location\s+/proxy\s*\{[^\}]*\bwebsocket_pass\s+ws://127\.0\.0\.1:%%PORT_1%%/echo;},
    'conf/nginx.conf: /proxy passes to the second server (8081 -> a free port)');
like($conf, qr/listen\s+127\.0\.0\.1:%%PORT_1%%;/, 'conf/nginx.conf: the backend server');
like($conf, qr{location\s+/room\s*\{[^\}]*\bwebsocket_subscribe\s+demo\s+room:\$arg_room;[^\}]*\bwebsocket_channel_resume\s+\$arg_last_id;},
    'conf/nginx.conf: /room subscribes to a channel of the demo zone, resuming from last_id');
note "http {} fragment from conf/nginx.conf:\n$conf";

my $t = WsNginx->new(conf => <<"EOF_CONF" . $conf);
log_format browser '\$server_port \$request_uri \$status close=\$websocket_close_code '
                   'in=\$websocket_messages_in out=\$websocket_messages_out '
                   'up=\$websocket_upstream_addr '
                   'z=\$websocket_compressed_in/\$websocket_compressed_out';
access_log %%TESTDIR%%/browser.log browser;
EOF_CONF
copy_html("$root/conf/html", $t->testdir . '/html');
$t->start;
my ($port, $backend) = ($t->port(0), $t->port(1));
my @workers = $t->worker_pids;
my $url = "http://127.0.0.1:$port/";
my $screenshot = $ENV{DEMO_SCREENSHOT} || $t->testdir . '/screenshot.png';
unlink $screenshot;

# --- node --test browser/demo.test.mjs ------------------------------------------------
# Runs in its own process group, so that a hang is ended with the browser.
sub run_node {
    my ($limit) = @_;
    my ($rc, $finished, @lines) = run_captured($limit, sub {
        chdir $root or POSIX::_exit(126);
        @ENV{qw(DEMO_URL DEMO_SCREENSHOT CHROMIUM)} = ($url, $screenshot, $chromium);
    }, 'node', '--test', '--test-reporter=tap', 'browser/demo.test.mjs');
    push @lines, "# killed after ${limit}s" unless $finished;
    return ($rc, $finished, @lines);
}

my $t0 = time;
my ($rc, $finished, @tap) = run_node(90);
note sprintf 'node --test took %.1fs', time - $t0;

my (%result, @order, $plan, %count);
for (@tap) {
    if (/^(not ok|ok) \d+ - (.*?)(?:\s+#\s*(SKIP|TODO)\b.*)?$/) {
        push @order, $2 unless exists $result{$2};
        $result{$2} = { ok => $1 eq 'ok', directive => $3 // '' };
    }
    $plan = $1 if /^1\.\.(\d+)$/;
    $count{$1} = $2 if /^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$/;
}
my $failed = grep { !$_->{ok} || $_->{directive} } values %result;
diag join "\n", 'node --test output:', @tap if $rc != 0 || $failed || !$finished;

ok($finished, 'node --test finished within 90s');
is($rc, 0, 'node --test exit status 0');
for my $name (@order) {
    my $r = $result{$name};
    ok($r->{ok} && !$r->{directive}, "browser: $name" . ($r->{directive} ? " ($r->{directive})" : ''));
}
for my $want (qr{^the page loads and connects to /echo$},
              qr{permessage-deflate},
              qr{^the live panel shows the echo session$},
              qr{^/echo: two messages are echoed$},
              qr{^the live panel charts those messages per second$},
              qr{^switching to /proxy },
              qr{^/proxy: three messages are echoed},
              qr{^Disconnect: the page shows close code 1000$},
              qr{close\(\) without a code},
              qr{^/room: two tabs chat},
              qr{^/room: a tab that reconnects gets what it missed}) {
    ok(scalar(grep { $_ =~ $want } @order), "browser: a test matching $want ran");
}
is($plan, scalar @order, 'TAP plan matches the tests reported');
is($count{fail}, 0, 'TAP: # fail 0');
is($count{pass}, scalar @order, 'TAP: every test passed');

# --- the screenshot ---------------------------------------------------------------------
{
    my $png = '';
    if (open my $fh, '<:raw', $screenshot) { read $fh, $png, 8; }
    is($png, "\x89PNG\r\n\x1a\n", "screenshot saved as PNG ($screenshot)");
    cmp_ok(-s $screenshot // 0, '>', 10_000, 'screenshot is not empty');
}

# --- what nginx saw ---------------------------------------------------------------------
# One line per session, written when it ends: wait for the 9 WebSocket sessions.
my @log;
for (my $deadline = time + 5; time < $deadline; sleep 0.05) {
    @log = split /\n/, do { local $/; open my $fh, '<', $t->testdir . '/browser.log'; <$fh> // '' };
    last if (grep { / 101 / } @log) >= 9;
}
note join "\n", 'access log:', @log;
my $count = sub { my ($re) = @_; scalar grep { $_ =~ $re } @log };
is($count->(qr{^$port / 200 }), 1, 'nginx: the page was served once');
is($count->(qr{^$port /echo 101 close=1000 in=2 out=2 up=- z=0/0$}), 1,
    'nginx: /echo session with 2 messages each way, uncompressed, closed 1000');
# Chromium compresses every message; we compress those of 64 bytes and more.
is($count->(qr{^$port /proxy 101 close=1000 in=3 out=3 up=127\.0\.0\.1:$backend z=3/1$}), 1,
    'nginx: /proxy session with 3 messages each way, all 3 in compressed, the long one out, closed 1000');
is($count->(qr{^$backend /echo 101 close=1000 in=3 out=3 up=- z=1/1$}), 1,
    'nginx: the backend echoed those 3 messages, the long one compressed both ways on the pass leg');
# close() without a code: Chromium sends a close frame without a status code.
is($count->(qr{^$port /echo 101 close=1005 in=0 out=0 }), 1, 'nginx: close() without a code logged as 1005 on /echo');
is($count->(qr{^$port /proxy 101 close=1005 in=0 out=0 }), 1, 'nginx: ... on /proxy');
is($count->(qr{^$backend /echo 101 close=1005 in=0 out=0 }), 1, 'nginx: ... relayed to the backend without a code');
# The room: tab B's first session (one message sent, two received, closed by
# Disconnect), its resumed one (the message it missed), and this page's.
is($count->(qr{^$port /room\?room=lobby 101 close=1000 in=1 out=2 up=- }), 1,
    'nginx: tab B in the room: 1 message in, 2 out, closed 1000');
is($count->(qr{^$port /room\?room=lobby&last_id=\S+ 101 close=\d+ in=0 out=1 up=- }), 1,
    'nginx: tab B back with its last id: only the message it missed');
is($count->(qr{^$port /room\?room=lobby 101 close=\d+ in=2 out=3 up=- }), 1,
    'nginx: this page in the room: 2 messages in, 3 out');
is($count->(qr{ 101 }), 9, 'nginx: 9 WebSocket sessions in all');
is($count->(qr{ (?!101 |200 )\d{3} }), 0, 'nginx: no other status') or diag join "\n", @log;

finish($t, $port, \@workers, '/echo');

done_testing;
