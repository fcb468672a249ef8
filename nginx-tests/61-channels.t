#!/usr/bin/perl
# Channels (SPEC "Channels", issue 18) on one nginx server with two
# workers: websocket_channel_zone, websocket_subscribe, websocket_publish,
# websocket_channel_publish, websocket_channel_resume and
# websocket_channel_envelope.
#
# - nginx -t rejects bad zones, a malformed redis= URL and unknown zone
#   names with file:line (redis= itself: 65-channels-redis.t);
# - HTTP semantics: 201 {"id","subscribers"}, GET 200 / 404, DELETE 204
#   (every subscriber gets 1000), 400 for an empty channel name, 503 for a
#   message that does not fit the zone;
# - fan-out across both workers (each request says which worker served it
#   in X-Worker): every subscriber receives every message once, in the
#   order of publishing, whichever worker published it;
# - history and resume: the N newest kept, a resume gets what came after
#   its id then live messages; subscribers resuming while a publisher runs
#   get every message after their id exactly once, in order;
# - a subscriber that never reads is closed with 1008 while another keeps
#   receiving, and the publisher is never held up; it stops counting as a
#   subscriber as soon as its close is queued;
# - websocket_max_session_time on a subscriber with 320 KiB waiting in its
#   inbox: every message, then 1001;
# - thousands of distinct channel names in a small zone: every publish is
#   201 and the zone stays usable (old channels are gone);
# - a subscribe location with websocket_channel_publish on and a single
#   subscriber is an echo (text, binary, fragmented, UTF-8, ping);
#   off: a data message closes with 1008;
# - metrics, $websocket_* variables of subscriber sessions;
# - reload: subscribers of the old workers get everything published before
#   it, then 1001; channels and history survive in the zone.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use WsNginx;
use WsClient qw(http_request OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG OP_CONT);
use WsTest;
use WsValgrind qw(scaled);

my $logged = ($ENV{TEST_NGINX_ACCESS_LOG} // '') ne 'off';

# --- configuration errors ----------------------------------------------------

config_rejected('malformed redis= URL',
    "websocket_channel_zone r 1m redis=http://127.0.0.1:6379;\n" . conf_server(''),
    'websocket_channel_zone', 'redis=http');
config_rejected('zone too small',
    "websocket_channel_zone s 4k;\n" . conf_server(''),
    'websocket_channel_zone', 'zone s 4k');
config_rejected('bad history',
    "websocket_channel_zone h 1m history=lots;\n" . conf_server(''),
    'websocket_channel_zone', 'history=lots');
config_rejected('bad history_time',
    "websocket_channel_zone h 1m history_time=soon;\n" . conf_server(''),
    'websocket_channel_zone', 'history_time=soon');
config_rejected('unknown parameter',
    "websocket_channel_zone h 1m colour=blue;\n" . conf_server(''),
    'websocket_channel_zone', 'colour=blue');
config_rejected('duplicate zone',
    "websocket_channel_zone d 1m;\nwebsocket_channel_zone d 2m;\n" . conf_server(''),
    'websocket_channel_zone', 'zone d 2m');
config_rejected('subscribe names an unknown zone',
    conf_location('        websocket_subscribe nowhere room;'),
    'websocket_subscribe', 'websocket_subscribe nowhere');
config_rejected('publish names an unknown zone',
    conf_location('        websocket_publish nowhere room;'),
    'websocket_publish', 'websocket_publish nowhere');
config_rejected('zone inside a server',
    conf_server('    websocket_channel_zone z 1m;'),
    'websocket_channel_zone', 'zone z 1m');
config_rejected('channel_publish takes on|off',
    "websocket_channel_zone c 1m;\n" . conf_location("        websocket_subscribe c r;\n        websocket_channel_publish maybe;"),
    'websocket_channel_publish', 'publish maybe');
config_rejected('subscribe twice',
    "websocket_channel_zone c 1m;\n" . conf_location("        websocket_subscribe c r;\n        websocket_subscribe c s;"),
    'websocket_subscribe', 'websocket_subscribe c s');
{
    my $t = WsNginx->new(conf => "websocket_channel_zone r 1m redis=redis://127.0.0.1:99999;\n" . conf_server(''));
    my (undef, $out) = $t->test_config;
    like($out, qr/invalid redis URL "redis:\/\/127\.0\.0\.1:99999": .* in "websocket_channel_zone"/,
        'redis=: the error names the URL and why');
}

# --- the server -----------------------------------------------------------------

my $access = $logged
    ? "log_format chan '\$uri \$websocket_messages_in \$websocket_messages_out \$websocket_bytes_out \$websocket_close_code';"
    : '';
my $access_here = $logged ? 'access_log %%TESTDIR%%/chan.log chan;' : '';

my $t = WsNginx->new(worker_processes => 2, conf => <<"EOF");
websocket_channel_zone chat 4m history=100 history_time=1h;
websocket_channel_zone race 8m history=100000;
websocket_channel_zone tiny 32k history=1000;
websocket_channel_zone many 64k history=2;
websocket_channel_zone short 1m history=3 history_time=1s;
$access

server {
    listen 127.0.0.1:%%PORT_0%%;
    add_header X-Worker \$pid always;
    client_max_body_size 4m;

    location /ws { websocket_echo; }
    location /status { websocket_status; }

    location /sub {
        websocket_subscribe chat \$arg_c;
        websocket_channel_resume \$arg_last;
        $access_here
    }
    location /env {
        websocket_subscribe chat \$arg_c;
        websocket_channel_resume \$arg_last;
        websocket_channel_envelope on;
    }
    location /room {
        websocket_subscribe chat \$arg_c;
        websocket_channel_publish on;
        websocket_max_payload_len 1m;
    }
    location /pub { websocket_publish chat \$arg_c; }
    location /beat {
        websocket_subscribe chat beat;
        websocket_ping_interval 1s;
        websocket_max_session_time 3s;
        websocket_deflate on;
    }

    location /race/sub {
        websocket_subscribe race r;
        websocket_channel_resume \$arg_last;
        websocket_channel_envelope on;
    }
    location /race/pub { websocket_publish race r; }

    location /tiny/pub { websocket_publish tiny \$arg_c; }
    location /many/pub { websocket_publish many \$arg_c; }
    location /many/sub { websocket_subscribe many \$arg_c; }
    location /short/pub { websocket_publish short \$arg_c; }
    location /short/sub {
        websocket_subscribe short \$arg_c;
        websocket_channel_resume \$arg_last;
    }
}

# A small send buffer: a subscriber that does not read shows up in our
# own queue quickly.
server {
    listen 127.0.0.1:%%PORT_1%% sndbuf=16k;
    location /sub { websocket_subscribe chat \$arg_c; }
    location /aged {
        websocket_subscribe chat \$arg_c;
        websocket_max_session_time 2s;
    }
}
EOF
my ($port, @workers);
($t, $port, @workers) = start_nginx($t);
my $port1 = $t->port(1);
is(scalar @workers, 2, 'two workers');

# --- helpers -----------------------------------------------------------------

# req($method, $path, $body, $content_type, $port) -> ($status, $headers, $body)
sub req {
    my ($m, $path, $body, $ct, $p) = @_;
    $body //= '';
    my $raw = "$m $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "Content-Length: " . length($body) . "\r\n"
        . (defined $ct ? "Content-Type: $ct\r\n" : '') . "\r\n" . $body;
    return http_request($p // $port, $raw, timeout => 10);
}

sub publish {
    my ($path, $body, $ct) = @_;
    my ($st, $h, $b) = req('POST', $path, $body, $ct // 'text/plain');
    my ($id) = ($b // '') =~ /"id":"([^"]*)"/;
    my ($n) = ($b // '') =~ /"subscribers":(\d+)/;
    return ($st, $id, $n, $h->{'x-worker'});
}

sub seq_of { ($_[0] // '') =~ /-(\d+)$/ ? $1 : -1 }

# A subscriber on a given worker (the X-Worker of its 101), tried until
# both workers have one.
sub subscribers_on_both {
    my ($path, $n) = @_;
    my (%by, @all);
    for (1 .. 200) {
        my $ws = ws_open($port, $path);
        my $w = $ws->header('X-Worker') // '?';
        push @{ $by{$w} }, $ws;
        push @all, $ws;
        last if keys %by >= 2 && @all >= $n;
    }
    return (\%by, @all);
}

sub messages_of {
    my ($ws, $n, $timeout) = @_;
    my @got;
    while (@got < $n) {
        my $m = $ws->recv_message(timeout => $timeout // 5) or last;
        last if $m->{opcode} == OP_CLOSE;
        push @got, $m;
    }
    return @got;
}

# publish_from_both($path, $prefix, $n): publishes "$prefix$i" for i = 1
# .. $n, and on (up to 200) until both workers took one: which worker
# accepts a connection is the kernel's choice. The payloads sent, the
# publishes per worker, and the answers' subscriber counts.
sub publish_from_both {
    my ($path, $prefix, $n) = @_;
    my (@sent, %workers, @reached);
    for (my $i = 1; $i <= $n || (keys %workers < 2 && $i <= 200); $i++) {
        my (undef, undef, $count, $w) = publish($path, "$prefix$i");
        $workers{$w // '?'}++;
        push @sent, "$prefix$i";
        push @reached, $count;
    }
    return (\@sent, \%workers, \@reached);
}

sub metric {
    my ($name, $labels) = @_;
    my (undef, undef, $body) = req('GET', '/status');
    my $re = defined $labels ? qr/^\Q$name\E\{\Q$labels\E\} (\d+)$/m : qr/^\Q$name\E (\d+)$/m;
    return ($body // '') =~ $re ? $1 : undef;
}

# --- HTTP semantics ------------------------------------------------------------

{
    my ($st, $h, $b) = req('GET', '/pub?c=nobody');
    is($st, 404, 'GET of an unknown channel: 404');
    ($st) = req('POST', '/pub?c=', 'x', 'text/plain');
    is($st, 400, 'POST with an empty channel name: 400');
    my $ws = WsClient->connect(port => $port, path => '/sub?c=');
    is($ws->status, 400, 'subscribe with an empty channel name: 400');
    ($st) = req('PATCH', '/pub?c=x', 'x');
    is($st, 405, 'PATCH: 405');

    my ($id, $n);
    ($st, $id, $n) = publish('/pub?c=http', 'first');
    is($st, 201, 'POST: 201');
    like($id, qr/^\d+-\d+$/, "the id is EPOCH-SEQ ($id)");
    is($n, 0, 'no subscribers yet');
    ($st, $h, $b) = req('GET', '/pub?c=http');
    is($st, 200, 'GET: 200');
    like($b, qr/"subscribers":0/, 'GET: no subscribers');
    like($b, qr/"messages":1\b/, 'GET: one stored message');
    like($b, qr/"last_id":"\Q$id\E"/, 'GET: last_id is the id of the POST');
    is($h->{'content-type'}, 'application/json', 'GET answers JSON');

    my $sub = ws_open($port, '/sub?c=http');
    publish('/pub?c=http', 'second', undef);
    my ($st2) = req('PUT', '/pub?c=http', "\x00\xffbin", 'application/octet-stream');
    is($st2, 201, 'PUT: 201');
    my @m = messages_of($sub, 2);
    is_deeply([map { [$_->{opcode}, $_->{payload}] } @m],
        [[OP_TEXT, 'second'], [OP_BINARY, "\x00\xffbin"]],
        'text/plain is a text message, application/octet-stream a binary one');
    my ($st3, $id3, $n3) = publish('/pub?c=http', '{"a":1}', 'application/json; charset=utf-8');
    is($n3, 1, 'POST: reached one subscriber');
    my ($m3) = messages_of($sub, 1);
    is($m3->{opcode}, OP_TEXT, 'application/json is text');
    ($st) = req('POST', '/pub?c=http', "\xff\xfe", 'text/plain');
    is($st, 400, 'text that is not UTF-8: 400');

    my $sub2 = ws_open($port, '/sub?c=http');
    ($st, $h, $b) = req('DELETE', '/pub?c=http');
    is($st, 204, 'DELETE: 204');
    for ([$sub, 'first'], [$sub2, 'second']) {
        my ($code) = $_->[0]->recv_close(timeout => 5);
        is($code, 1000, "DELETE: the $_->[1] subscriber gets 1000");
    }
    sleep 0.3;
    ($st) = req('GET', '/pub?c=http');
    is($st, 404, 'after DELETE and the subscribers gone: 404');

    # 503: a message larger than the whole zone; the zone still works.
    ($st) = req('POST', '/tiny/pub?c=big', 'x' x 40000, 'text/plain');
    is($st, 503, 'a message that does not fit the zone: 503');
    like($t->error_log, qr/\[error\].*cannot publish to channel "big" of zone "tiny": the zone is full/,
        'the 503 is logged');
    # A full zone drops its oldest messages: 100 messages of 1 KiB in 32 KiB.
    my @ids;
    for my $i (1 .. 100) {
        my ($s, $id) = publish('/tiny/pub?c=t' . ($i % 3), sprintf('%04d', $i) x 256);
        push @ids, $s == 201 ? $id : "status $s";
    }
    is(scalar(grep { /^\d+-\d+$/ } @ids), 100, 'a full zone: every publish still gets 201');
    ($st, $h, $b) = req('GET', '/tiny/pub?c=t1');
    is($st, 200, 'the newest messages are there');
    my ($kept) = $b =~ /"messages":(\d+)/;
    ok($kept > 0 && $kept < 34, "the oldest were dropped ($kept of 33 kept)");
    like($b, qr/"last_id":"\Q$ids[99]\E"/, 'the last message of the channel is kept');
}

# --- fan-out across workers, order -------------------------------------------

{
    my ($by, @subs) = subscribers_on_both('/sub?c=fan', 8);
    is(scalar keys %$by, 2, 'subscribers on both workers (' . join(', ', map { "$_: " . @{ $by->{$_} } } sort keys %$by) . ')');
    my ($sent, $pub_workers, $reached) = publish_from_both('/pub?c=fan', 'm', 60);
    my @sent = @$sent;
    is($reached->[0], scalar @subs, 'the first publish reached every subscriber');
    is($reached->[-1], scalar @subs, 'the last publish reached every subscriber');
    is(scalar keys %$pub_workers, 2, 'both workers published') or diag explain $pub_workers;
    my $all_ok = 1;
    for my $s (@subs) {
        my @got = map { $_->{payload} } messages_of($s, scalar @sent);
        unless (is_deeply(\@got, \@sent, 'a subscriber got every message once, in order')) {
            $all_ok = 0;
        }
        $s->send_close(1000);
    }
    $_->recv_close(timeout => 3) for @subs;
}

# --- history and resume, envelope ---------------------------------------------

{
    my @ids;
    for my $i (1 .. 10) {
        my (undef, $id) = publish('/pub?c=hist', "h$i");
        push @ids, $id;
    }
    my $ws = ws_open($port, "/env?c=hist&last=$ids[6]");
    my @got = messages_of($ws, 3);
    is_deeply([map { $_->{payload} } @got],
        [map { qq({"id":"$ids[$_]","data":"h@{[$_ + 1]}"}) } 7 .. 9],
        'resume: the messages after the id, in envelopes with their ids');
    my (undef, $id11) = publish('/pub?c=hist', 'h11');
    my ($live) = messages_of($ws, 1);
    is($live->{payload}, qq({"id":"$id11","data":"h11"}), 'then live messages');
    my (undef, $idb) = req('POST', '/pub?c=hist', "\x01\x02\x03", 'application/octet-stream');
    ($live) = messages_of($ws, 1);
    like($live->{payload}, qr/^\{"id":"\d+-\d+","data_base64":"AQID"\}$/, 'a binary message: data_base64');
    is($live->{opcode}, OP_TEXT, 'an envelope is a text message');

    # history=3: the three newest; history_time=1s: none older.
    my @short;
    for my $i (1 .. 5) { my (undef, $id) = publish('/short/pub?c=s', "s$i"); push @short, $id }
    my ($st, $h, $b) = req('GET', '/short/pub?c=s');
    like($b, qr/"messages":3\b/, 'history=3: three messages kept');
    my $s3 = ws_open($port, "/short/sub?c=s&last=$short[0]");
    is_deeply([map { $_->{payload} } messages_of($s3, 5, 1)], [qw(s3 s4 s5)],
        'a resume from before them gets the three newest');
    $s3->close;
    sleep 1.5;
    ($st, $h, $b) = req('GET', '/short/pub?c=s');
    is($st, 404, 'history_time=1s: after 1.5 s nothing is kept, and the channel is gone');
    my $s4 = ws_open($port, "/short/sub?c=s&last=$short[0]");
    is(scalar(messages_of($s4, 1, 0.5)), 0, 'a resume then gets nothing');
    $s4->close;
    ($st, $h, $b) = req('HEAD', '/pub?c=hist');
    is($st, 200, 'HEAD: 200');

    # An id from an earlier epoch (before a restart): everything stored.
    my $old = ws_open($port, '/sub?c=hist&last=1-5');
    my @all = messages_of($old, 12, 3);
    is(scalar @all, 12, 'an id from an earlier epoch: every stored message');
    # No resume: only new messages.
    my $plain = ws_open($port, '/sub?c=hist');
    my @none = messages_of($plain, 1, 0.5);
    is(scalar @none, 0, 'without a resume: no stored message');
    $_->close for $ws, $old, $plain;
}

# Resume racing a publish: a publisher sends 1..N as fast as it can; a
# reference subscriber sees everything; resumers connect during the run
# with the id the reference saw last, and must get exactly what follows.
{
    my $N = 400;
    my $ref = ws_open($port, '/race/sub');
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        for my $i (1 .. $N) { publish('/race/pub', "$i") }
        POSIX::_exit(0);
    }
    my @ref;
    my @resumers;
    while (@ref < $N) {
        my $m = $ref->recv_message(timeout => 20) or last;
        my ($id, $data) = $m->{payload} =~ /"id":"([^"]+)","data":"(\d+)"/ or last;
        push @ref, [$id, $data];
        if (@ref % 50 == 0 && @resumers < 6) {
            push @resumers, [ws_open($port, "/race/sub?last=$id"), $data];
        }
    }
    waitpid($pid, 0);
    is(scalar @ref, $N, "the reference subscriber got all $N");
    is_deeply([map { $_->[1] } @ref], [1 .. $N], 'in order');
    ok(@resumers >= 5, scalar(@resumers) . ' subscribers resumed during the run');
    for my $r (@resumers) {
        my ($ws, $after) = @$r;
        my @got;
        while (@got < $N - $after) {
            my $m = $ws->recv_message(timeout => 10) or last;
            my ($data) = $m->{payload} =~ /"data":"(\d+)"/;
            push @got, $data;
        }
        my @extra = messages_of($ws, 1, 0.3);
        is_deeply([@got, map { $_->{payload} } @extra], [$after + 1 .. $N],
            "resumed after $after: every later message once, in order, no gap");
        $ws->close;
    }
    $ref->close;
}

# --- slow subscriber ---------------------------------------------------------------

{
    my $slow = ws_open($port1, '/sub?c=slow', rcvbuf => 4096);
    my $fast = ws_open($port, '/sub?c=slow');
    my $body = 'y' x 60000;
    my ($max_wait, $ok) = (0, 0);
    my @fast_got;
    for my $i (1 .. 60) {
        my $t0 = time;
        my ($st) = publish('/pub?c=slow', sprintf('%03d', $i) . $body);
        my $dt = time - $t0;
        $max_wait = $dt if $dt > $max_wait;
        $ok++ if $st == 201;
        my ($m) = messages_of($fast, 1);
        push @fast_got, substr($m->{payload} // '', 0, 3);
    }
    is($ok, 60, 'every publish answered 201 while a subscriber does not read');
    cmp_ok($max_wait, '<', scaled(2), sprintf('no publish waited (longest %.2f s)', $max_wait));
    is_deeply(\@fast_got, [map { sprintf '%03d', $_ } 1 .. 60], 'the reading subscriber got everything');
    # Its close is queued behind what it does not read: it left the channel.
    my (undef, undef, $desc) = req('GET', '/pub?c=slow');
    like($desc, qr/"subscribers":1,/, 'the closed subscriber no longer counts while its close waits');
    # Now it reads: some messages, then 1008.
    my ($code) = $slow->recv_close(timeout => 20);
    is($code, 1008, 'the subscriber that did not read gets 1008');
    my @before = grep { $_->{opcode} != OP_CLOSE } $slow->skipped;
    ok(@before < 60, scalar(@before) . ' frames reached it before the close');
    like($t->error_log, qr/subscriber too slow/, 'the close is logged');
}

# --- max_session_time with messages waiting -----------------------------------------

{
    # 320 KiB for a subscriber that does not read yet: most of it waits in
    # its inbox when its session is due to close.
    my $t0 = time;
    my $ws = ws_open($port1, '/aged?c=aged', rcvbuf => 4096);
    my @sent = map { sprintf('%03d', $_) . ('a' x 8000) } 1 .. 40;
    publish('/pub?c=aged', $_) for @sent;
    my $left = 2.5 - (time - $t0);
    sleep $left if $left > 0;
    my ($code) = $ws->recv_close(timeout => 10);
    my @got = map { $_->{payload} } grep { $_->{opcode} != OP_CLOSE } $ws->skipped;
    is(scalar @got, 40, 'websocket_max_session_time: every message waiting in the inbox first');
    ok(join(',', map { substr $_, 0, 3 } @got) eq join(',', map { substr $_, 0, 3 } @sent)
        && !grep({ length($_) != 8003 } @got), 'whole and in order');
    is($code, 1001, 'then 1001');
}

# --- many distinct channel names ---------------------------------------------------

{
    my $bad = 0;
    for my $i (1 .. 1500) {
        my ($st) = publish("/many/pub?c=name$i", 'z' x 200);
        $bad++ if $st != 201;
    }
    is($bad, 0, '1500 distinct channel names: every publish 201');
    my ($st) = req('GET', '/many/pub?c=name1');
    is($st, 404, 'the first channels are gone (their messages dropped)');
    for my $i (1 .. 300) {
        my $ws = ws_open($port, "/many/sub?c=sub$i");
        $ws->close;
    }
    sleep 0.5;
    ($st) = req('GET', '/many/pub?c=sub7');
    is($st, 404, 'a channel whose only subscriber left is gone');
    my $ws = ws_open($port, '/many/sub?c=after');
    my ($s2, $id, $n) = publish('/many/pub?c=after', 'still works');
    is($n, 1, 'the zone still works');
    my ($m) = messages_of($ws, 1);
    is($m->{payload}, 'still works', 'and delivers');
    $ws->close;
}

# --- publish from a subscriber: an echo with one subscriber ---------------------

{
    my $ws = ws_open($port, '/room?c=echo-' . $$);
    echo_ok($ws, OP_TEXT, 'hello', 'room echo text');
    echo_ok($ws, OP_BINARY, "\x00\x01\x02\xff", 'room echo binary');
    my $utf8 = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    $ws->send_text($utf8);
    my $m = $ws->recv_message;
    is($m->{payload}, $utf8, 'UTF-8 text comes back');
    $ws->send_raw(frags(OP_TEXT, 'frag', 'ment', 'ed'));
    $m = $ws->recv_message;
    is_deeply([$m->{opcode}, $m->{payload}], [OP_TEXT, 'fragmented'], 'a fragmented message comes back whole');
    $ws->send_raw(frags(OP_TEXT, "\xce", "\xba"));
    $m = $ws->recv_message;
    is($m->{payload}, "\xce\xba", 'UTF-8 split across fragments');
    $ws->send_ping('p1');
    $m = $ws->recv_frame;
    is_deeply([$m->{opcode}, $m->{payload}], [OP_PONG, 'p1'], 'ping: pong');
    my $big = 'b' x 200000;
    $ws->send_binary($big);
    $m = $ws->recv_message(timeout => 10);
    is(length($m->{payload} // ''), 200000, 'a 200 KB message comes back');
    $ws->send_text("\xff\xfe");
    my ($code) = $ws->recv_close;
    is($code, 1007, 'invalid UTF-8: 1007');

    # Two in the room: each gets the other's messages and its own.
    my $a = ws_open($port, '/room?c=pair');
    my $b = ws_open($port, '/room?c=pair');
    $a->send_text('from a');
    is(($b->recv_message // {})->{payload}, 'from a', 'the other subscriber gets it');
    is(($a->recv_message // {})->{payload}, 'from a', 'the sender gets it too');
    $_->close for $a, $b;

    my $ro = ws_open($port, '/sub?c=readonly');
    $ro->send_text('not allowed');
    ($code) = $ro->recv_close;
    is($code, 1008, 'websocket_channel_publish off: a data message closes with 1008');
}

# --- heartbeats, max_session_time, compression on a subscriber ------------------

{
    my $t0 = time;
    my $ws = ws_open($port, '/beat', headers => { 'Sec-WebSocket-Extensions' => 'permessage-deflate' });
    like($ws->header('Sec-WebSocket-Extensions') // '', qr/permessage-deflate/, 'subscribe: deflate accepted');
    my $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{opcode}, OP_PING, 'subscribe: a heartbeat ping after websocket_ping_interval');
    $ws->send_pong($f->{payload}, mask => 1) if $f;
    publish('/pub?c=beat', 'compress me ' x 20);
    $f = $ws->recv_frame(timeout => 3);
    is($f && $f->{rsv}, 4, 'a channel message goes compressed (RSV1)');
    my ($code) = $ws->recv_close(timeout => 5);
    my $age = time - $t0;
    is($code, 1001, 'websocket_max_session_time: 1001');
    ok($age >= 2.5 && $age < scaled(5), sprintf('after about 3 s (%.1f s)', $age));
}

# --- metrics ------------------------------------------------------------------------

{
    my $p0 = metric('nginx_websocket_channel_published_total', 'zone="chat"');
    my $d0 = metric('nginx_websocket_channel_delivered_total', 'zone="chat"');
    my @subs = (ws_open($port, '/sub?c=metrics'), ws_open($port, '/sub?c=metrics'), ws_open($port, '/sub?c=metrics'));
    is(metric('nginx_websocket_channel_subscribers', 'zone="chat"'), 3, 'subscribers gauge: 3 (both workers summed)');
    cmp_ok(metric('nginx_websocket_sessions_active', 'kind="subscribe"'), '>=', 3, 'sessions_active{kind="subscribe"}');
    publish('/pub?c=metrics', 'a');
    publish('/pub?c=metrics', 'b');
    messages_of($_, 2) for @subs;
    is(metric('nginx_websocket_channel_published_total', 'zone="chat"') - $p0, 2, 'published_total +2');
    is(metric('nginx_websocket_channel_delivered_total', 'zone="chat"') - $d0, 6, 'delivered_total +6');
    $_->send_close(1000) for @subs;
    $_->recv_close for @subs;
    sleep 0.3;
    is(metric('nginx_websocket_channel_subscribers', 'zone="chat"'), 0, 'subscribers gauge back to 0');
    if ($logged) {
        my @lines = grep { m{^/sub 0 2 2 1000$} } split /\n/, $t->_slurp("$t->{dir}/chan.log");
        is(scalar @lines, 3, '$websocket_* variables in the access log of subscriber sessions');
    }
}

# --- reload ---------------------------------------------------------------------------

{
    my ($by, @subs) = subscribers_on_both('/sub?c=reload', 6);
    my @sent;
    for my $i (1 .. 30) { publish('/pub?c=reload', "r$i"); push @sent, "r$i" }
    # Publishing goes on during the reload: the old workers' subscribers
    # must still close, each after a gapless prefix of what followed.
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $end = time + scaled(6);
        for (my $i = 1; time < $end; $i++) { publish('/pub?c=live', "x$i"); sleep 0.01 }
        POSIX::_exit(0);
    }
    my @live = map { ws_open($port, '/sub?c=live') } 1 .. 4;
    sleep 0.3;
    my @old = $t->worker_pids;
    my $t0 = time;
    ok($t->reload(wait => 0), 'reload');
    my $all = 1;
    for my $s (@subs) {
        my ($code) = $s->recv_close(timeout => 10);
        my @got = map { $_->{payload} } grep { $_->{opcode} == OP_TEXT } $s->skipped;
        $all &&= is_deeply(\@got, \@sent, 'an old worker\'s subscriber got everything published before the reload');
        is($code, 1001, 'then 1001');
    }
    for my $s (@live) {
        my ($code) = $s->recv_close(timeout => 10);
        my @got = map { $_->{payload} } grep { $_->{opcode} == OP_TEXT } $s->skipped;
        my $n = @got;
        is_deeply(\@got, [map { "x$_" } ($n ? ($got[0] =~ /(\d+)/)[0] : 1) .. ($n ? ($got[0] =~ /(\d+)/)[0] + $n - 1 : 0)],
            "while publishing goes on: $n messages in order, no gap");
        is($code, 1001, 'and 1001');
    }
    my $closed = time - $t0;
    cmp_ok($closed, '<', scaled(3), sprintf('every old subscriber closed within %.1f s of the reload', $closed));
    waitpid($pid, 0);
    my $deadline = time + scaled(10);
    sleep 0.1 while time < $deadline && grep { kill 0, $_ } @old;
    is(scalar(grep { kill 0, $_ } @old), 0, 'the old workers exited');
    my ($st, $h, $b) = req('GET', '/pub?c=reload');
    is($st, 200, 'the channel survived the reload');
    like($b, qr/"messages":30\b/, 'with its history');
    my $ws = ws_open($port, '/sub?c=reload&last=1-1');
    my @got = map { $_->{payload} } messages_of($ws, 30);
    is_deeply(\@got, \@sent, 'a new worker resumes from the history');
    $ws->close;

    # The new workers wake each other (their sockets replaced the old
    # workers' in the zone), also on a channel the old workers were woken for.
    my ($by2, @subs2) = subscribers_on_both('/sub?c=live', 6);
    is(scalar keys %$by2, 2, 'after the reload: subscribers on both new workers');
    my ($sent2, $pubw) = publish_from_both('/pub?c=live', 'n', 20);
    is(scalar keys %$pubw, 2, 'both new workers published');
    for my $s (@subs2) {
        is_deeply([map { $_->{payload} } messages_of($s, scalar @$sent2)], $sent2, 'after the reload: fan-out across the new workers');
        $s->close;
    }
    @workers = $t->worker_pids;
}

finish($t, $port, [@workers], '/ws');

# --- a worker that crashes ----------------------------------------------------------
# Its subscribers are not unsubscribed; the worker that takes its number
# over forgets them, and wakes reach it.

SKIP: {
    # As in 45-fault-kill.t: make test-valgrind would count the killed
    # worker's missing report as a failure.
    skip 'kills a worker with SIGKILL, which valgrind and ASan cannot report on', 1
        if WsValgrind::checking();
    my $c = WsNginx->new(worker_processes => 2, conf => <<"EOF2");
websocket_channel_zone crash 1m history=10;
server {
    listen 127.0.0.1:%%PORT_0%%;
    add_header X-Worker \$pid always;
    location /sub { websocket_subscribe crash \$arg_c; }
    location /pub { websocket_publish crash \$arg_c; }
    location /status { websocket_status; }
}
EOF2
    $c->start;
    $port = $c->port(0);    # the helpers above talk to $port
    my ($by, @subs) = subscribers_on_both('/sub?c=boom', 6);
    my ($victim) = sort keys %$by;
    my $n_victim = @{ $by->{$victim} };
    is(metric('nginx_websocket_channel_subscribers', 'zone="crash"'), scalar @subs, 'subscribers before the crash');
    kill 'KILL', $victim;
    my $deadline = time + scaled(10);
    my @now;
    while (time < $deadline) {
        @now = $c->worker_pids;
        last if @now == 2 && !grep { $_ == $victim } @now;
        sleep 0.1;
    }
    is(scalar(grep { $_ != $victim } @now), 2, 'the master started a new worker');
    sleep 0.3;
    $_->close for @{ $by->{$victim} };
    my @alive = map { @{ $by->{$_} } } grep { $_ ne $victim } keys %$by;
    is(metric('nginx_websocket_channel_subscribers', 'zone="crash"'), scalar @alive,
        "the new worker forgot the $n_victim subscribers of the one that crashed");
    like($c->error_log, qr/forgot $n_victim subscribers of the worker process $victim/, 'and said so');
    my ($by2, @subs2) = subscribers_on_both('/sub?c=boom', 4);
    my ($sent, $pubw) = publish_from_both('/pub?c=boom', 'c', 20);
    is(scalar keys %$pubw, 2, 'both workers published');
    for my $s (@alive, @subs2) {
        is_deeply([map { $_->{payload} } messages_of($s, scalar @$sent)], $sent, 'after the crash: every subscriber gets every message');
    }
    $_->close for @alive, @subs2;
    $c->stop;
    is_deeply([grep { !/worker process $victim exited on signal 9/ } $c->check_error_log], [],
        'nothing in error.log but the crash');
}

done_testing();
