#!/usr/bin/perl
# websocket_limit_zone / websocket_limit: limit_req's token bucket applied
# to the data messages clients send, shared by the two workers.
#
# - delay mode: 41 messages sent at once at 20 r/s come back over 2 s
#   (within 20 %), in order; two sessions with one key on different workers
#   share the rate; with two limits the stricter one sets the pace;
# - close mode (10 r/s, burst 5): a client at 8/s is never closed, one at
#   12/s is closed with 1008 "message rate exceeded" after about 30
#   messages, a flood after 1 + burst;
# - while reading waits, a ping read before the waiting message is answered
#   at once, and websocket_timeout (1 s) does not end a session that waits
#   2 s; what comes behind it follows in order;
# - websocket_pass: the client leg is limited, the upstream leg is not;
# - a subscriber that publishes (websocket_channel_publish on) is limited
#   as an echo client is, in both modes;
# - a small zone filled by 400 keys forgets the least recently used ones,
#   remembers the recent ones, and still limits a new key;
# - inheritance as limit_req: a location without websocket_limit has its
#   server's, one with its own has only those;
# - nginx_websocket_limited_total{zone,action} counts over both workers;
# - nginx -t rejects bad uses naming the directive, file and line.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use WsNginx;
use WsClient qw(build_frame OP_TEXT OP_PING OP_PONG OP_CLOSE);
use WsTest;
use WsUpstream;
use WsValgrind qw(scaled);

# The upstream of /pass: 40 messages at once, then echoes; of
# /passclose: echoes.
my $up = WsUpstream->new(handler => sub {
    my ($c) = @_;
    $c->handshake;
    if ($c->path eq '/up') {
        $c->send_text("up-$_") or return for 1 .. 40;
    }
    $c->echo_loop;
});
my $UP = $up->port;

my $t = WsNginx->new(worker_processes => 2, conf => <<"EOF_CONF");
websocket_limit_zone \$arg_k zone=fast:64k rate=20r/s;
websocket_limit_zone \$arg_k zone=shared:64k rate=20r/s;
websocket_limit_zone \$arg_k zone=closing:64k rate=10r/s;
websocket_limit_zone \$arg_k zone=slow:64k rate=30r/m;
websocket_limit_zone \$arg_k zone=loose:64k rate=20r/s;
websocket_limit_zone \$arg_k zone=five:64k rate=5r/s;
websocket_limit_zone \$arg_k zone=passz:64k rate=20r/s;
websocket_limit_zone \$arg_k zone=passc:64k rate=1r/m;
websocket_limit_zone \$arg_k zone=small:32k rate=1r/m;
websocket_limit_zone \$arg_k zone=inh:64k rate=1r/m;
websocket_limit_zone \$arg_k zone=own:64k rate=1r/m;
websocket_limit_zone \$arg_k zone=subd:64k rate=20r/s;
websocket_limit_zone \$arg_k zone=subc:64k rate=1r/m;
websocket_channel_zone chz 1m;

server {
    listen 127.0.0.1:%%PORT_0%% reuseport;
    large_client_header_buffers 4 64k;

    location /delay {
        websocket_echo;
        websocket_limit zone=fast;
    }

    location /shared {
        websocket_echo;
        websocket_limit zone=shared;
        add_header X-Worker \$pid always;
    }

    location /close {
        websocket_echo;
        websocket_limit zone=closing burst=5 close;
    }

    location /slow {
        websocket_echo;
        websocket_timeout 1s;
        websocket_limit zone=slow;
    }

    location /both {
        websocket_echo;
        websocket_limit zone=loose burst=100;
        websocket_limit zone=five;
    }

    location /pass {
        websocket_pass ws://127.0.0.1:$UP/up;
        websocket_limit zone=passz;
    }

    location /passclose {
        websocket_pass ws://127.0.0.1:$UP/upc;
        websocket_limit zone=passc burst=1 close;
    }

    location /small {
        websocket_echo;
        websocket_limit zone=small burst=2 close;
    }

    location /ws {
        websocket_echo;
    }

    location /subdelay {
        websocket_subscribe chz d:\$arg_k;
        websocket_channel_publish on;
        websocket_limit zone=subd;
    }

    location /subclose {
        websocket_subscribe chz c:\$arg_k;
        websocket_channel_publish on;
        websocket_limit zone=subc burst=2 close;
    }

    location /status {
        websocket_status;
    }
}

server {
    listen 127.0.0.1:%%PORT_1%%;

    websocket_limit zone=inh burst=2 close;

    location /inherit {
        websocket_echo;
    }

    location /own {
        websocket_echo;
        websocket_limit zone=own burst=4 close;
    }
}
EOF_CONF
$t->start;
my $port = $t->port(0);
my @workers = $t->worker_pids;

# A text frame per message, all in one string (sent in one write).
sub texts { join "", map { build_frame(opcode => OP_TEXT, payload => "$_") } @_ }

# drive($limit, @sessions): runs sessions side by side. Each is
# { ws, sends => [[$at, $bytes], ...], want => $n }: the bytes go out $at
# seconds after the start; what arrives is recorded as [$at, $frame] in
# {got} (data) and {ctl} (ping/pong); a close sets {close} = [$code,
# $reason, $at]. A session is done at its close or once all is sent and
# {want} data frames came.
sub drive {
    my ($limit, @s) = @_;
    my $t0 = time;
    $_->{got} = [], $_->{ctl} = [] for @s;
    while (time - $t0 < scaled($limit)) {
        my $busy = 0;
        for my $s (grep { !$_->{done} } @s) {
            my $now = time - $t0;
            while (@{ $s->{sends} } && $s->{sends}[0][0] <= $now) {
                $s->{ws}->send_raw((shift @{ $s->{sends} })->[1]);
            }
            $s->{ws}->pump;
            while (my $f = $s->{ws}->try_recv_frame) {
                my $at = time - $t0;
                if ($f->{opcode} == OP_CLOSE) {
                    my $p = $f->{payload};
                    $s->{close} = length $p >= 2 ? [unpack('n', $p), substr($p, 2), $at] : [undef, '', $at];
                    $s->{ws}->send_close($s->{close}[0] // 1000);
                    $s->{done} = 1;
                    last;
                }
                push @{ $f->{opcode} >= 8 ? $s->{ctl} : $s->{got} }, [$at, $f];
            }
            $s->{done} ||= !@{ $s->{sends} } && @{ $s->{got} } >= ($s->{want} // 0);
            $s->{done} ||= $s->{ws}->is_eof;
            $busy++ unless $s->{done};
        }
        last unless $busy;
        IO::Select->new(map { $_->{ws}->socket } grep { !$_->{done} } @s)->can_read(0.005);
    }
    return @s;
}

# Payloads of the data frames a session got, in order.
sub payloads { map { $_->[1]{payload} } @{ $_[0]{got} } }
# When its last data frame came.
sub last_at { @{ $_[0]{got} } ? $_[0]{got}[-1][0] : -1 }
# Seconds from a session's first echo to its n-th (1-based; the last by
# default): the rate, whatever the first answer took (under valgrind the
# first answers of sessions started together come late).
sub span {
    my ($s, $n) = @_;
    my $got = $s->{got};
    return -1 unless @$got && (!defined $n || $n <= @$got);
    return $got->[($n // @$got) - 1][0] - $got->[0][0];
}

sub within {
    my ($got, $want, $name) = @_;
    ok($got >= 0.8 * $want && $got <= 1.2 * $want, sprintf('%s: %.2f s, within 20 %% of %.2f s', $name, $got, $want));
}

# Two sessions on /shared?k=same that different workers serve.
sub two_workers {
    my (%by_worker, @extra);
    for (1 .. 40) {
        my $ws = ws_open($port, '/shared?k=same');
        my $w = $ws->header('X-Worker') // '';
        if ($by_worker{$w}) { push @extra, $ws } else { $by_worker{$w} = $ws }
        last if keys %by_worker == 2;
    }
    $_->close for @extra;
    return values %by_worker;
}

# --- rates, side by side --------------------------------------------------------------------------
{
    my @msgs = map { "m$_" } 1 .. 41;
    my $delay = { ws => ws_open($port, '/delay?k=a'), sends => [[0, texts(@msgs)]], want => 41 };
    my $steady = { ws => ws_open($port, '/close?k=steady'), want => 20,
        sends => [map { [$_ * 0.125, texts("s$_")] } 0 .. 19] };
    my $eager = { ws => ws_open($port, '/close?k=eager'), want => 60,
        sends => [map { [$_ / 12, texts("e$_")] } 0 .. 59] };
    my $flood = { ws => ws_open($port, '/close?k=flood'), want => 20, sends => [[0, texts(map { "f$_" } 1 .. 20)]] };
    my @pair = two_workers();
    is(scalar @pair, 2, 'two sessions with one key on two different workers');
    my @shared = map { my $i = $_; { ws => $pair[$i], want => 20,
        sends => [[0, texts(map { "w$i-$_" } 1 .. 20)]] } } 0 .. $#pair;
    my $both = { ws => ws_open($port, '/both?k=b'), want => 11, sends => [[0, texts(map { "b$_" } 1 .. 11)]] };
    # A, a ping, B, a ping: A and the first pong at once; B waits 2 s
    # (30 r/m) past websocket_timeout 1s; the second pong after B.
    my $ctl = { ws => ws_open($port, '/slow?k=c'), want => 2,
        sends => [[0, texts('A') . build_frame(opcode => OP_PING, payload => 'p1')
            . texts('B') . build_frame(opcode => OP_PING, payload => 'p2')]] };

    drive(8, $delay, $steady, $eager, $flood, @shared, $both, $ctl);

    # delay: the first at once, then one each 50 ms
    is_deeply([payloads($delay)], \@msgs, 'delay: 41 messages echoed in order, none lost');
    within(span($delay), 2.0, 'delay: 41 messages at 20 r/s, from the first echo to the last');
    within(span($delay, 21), 1.0, 'delay: to the 21st');
    ok(!$delay->{close}, 'delay: not closed');

    # close mode
    is(scalar(payloads($steady)), 20, 'close: a client at 8/s (0.8 x rate) gets all 20 echoes')
        or diag explain $steady->{close};
    ok(!$steady->{close}, 'close: the client at 8/s is not closed');
    is_deeply($eager->{close} && [@{ $eager->{close} }[0, 1]], [1008, 'message rate exceeded'],
        'close: a client at 12/s (1.2 x rate) gets 1008 "message rate exceeded"');
    # burst 5: each message at 12/s leaves 1000 - 833 milli-messages, the
    # 31st is past 5000
    my $n = scalar payloads($eager);
    ok($n >= 24 && $n <= 36, "close: the client at 12/s had $n messages echoed first (30 +- 20 %)");
    is_deeply([payloads($eager)], [map { "e$_" } 0 .. $n - 1], 'close: those in order');
    is_deeply([payloads($flood)], [map { "f$_" } 1 .. 6], 'close: a flood gets 1 + burst 5 echoes');
    is($flood->{close} && $flood->{close}[0], 1008, 'close: then 1008');
    ok($flood->{ws}->wait_eof(3), 'close: then TCP close');

    # two workers, one key: 40 messages at 20 r/s together
    my $total = 0;
    $total += scalar payloads($_) for @shared;
    is($total, 40, 'two workers: all 40 echoed');
    my ($first, $end) = (1e9, 0);
    for (grep { @{ $_->{got} } } @shared) {
        $first = $_->{got}[0][0] if $_->{got}[0][0] < $first;
        $end = last_at($_) if last_at($_) > $end;
    }
    within($end - $first, 1.95, 'two workers: 40 messages of one key at 20 r/s');
    for my $i (0 .. $#shared) {
        is_deeply([payloads($shared[$i])], [map { "w$i-$_" } 1 .. 20], "two workers: session $i in order");
    }

    # two limits: the stricter (5 r/s) sets the pace
    is_deeply([payloads($both)], [map { "b$_" } 1 .. 11], 'two limits: 11 echoed in order');
    within(span($both), 2.0, 'two limits: 11 messages at 5 r/s');

    # control frames and the quiet timeout while reading waits
    is_deeply([payloads($ctl)], ['A', 'B'], 'paused: A and B echoed, B after the wait');
    is_deeply([map { $_->[1]{payload} } @{ $ctl->{ctl} }], ['p1', 'p2'], 'paused: both pings answered in order');
    ok($ctl->{ctl}[0] && $ctl->{got}[0] && $ctl->{ctl}[0][0] - $ctl->{got}[0][0] < 0.5,
        'paused: the ping read before B answered at once, with A');
    within(span($ctl, 2), 2.0, 'paused: B waits 2 s after A at 30 r/m');
    ok($ctl->{ctl}[1] && $ctl->{ctl}[1][0] >= $ctl->{got}[1][0], 'paused: the ping behind B after B');
    ok(!$ctl->{close}, 'paused: websocket_timeout 1s does not close a session waiting 2 s');
    $_->{ws}->close for $delay, $steady, $both, $ctl, @shared;
}

# --- websocket_pass: the client leg only -----------------------------------------------------------
{
    my $ws = ws_open($port, '/pass?k=p');
    my ($s) = drive(5, { ws => $ws, sends => [], want => 40 });
    is(scalar payloads($s), 40, 'pass: the upstream\'s 40 messages arrive');
    ok(last_at($s) < 0.5, sprintf('pass: at once (%.2f s), the upstream leg is not limited', last_at($s)));
    ($s) = drive(6, { ws => $ws, sends => [[0, texts(map { "p$_" } 1 .. 21)]], want => 21 });
    is_deeply([payloads($s)], [map { "p$_" } 1 .. 21], 'pass: 21 client messages relayed and echoed in order');
    within(span($s), 1.0, 'pass: the client leg at 20 r/s');
    bye($ws, 'pass');

    ($s) = drive(5, { ws => ws_open($port, '/passclose?k=pc'), sends => [[0, texts(map { "c$_" } 1 .. 4)]], want => 4 });
    is_deeply([payloads($s)], ['c1', 'c2'], 'pass, close: 1 + burst 1 relayed and echoed');
    is_deeply($s->{close} && [@{ $s->{close} }[0, 1]], [1008, 'message rate exceeded'],
        'pass, close: then 1008 "message rate exceeded" to the client');
    ok($s->{ws}->wait_eof(3), 'pass, close: TCP closed');
    my $rec = $up->wait_record(path => qr{^/upc}, until => 'close_code');
    is($rec && $rec->{close_code}, 1001, 'pass, close: the upstream gets 1001');
    is_deeply($rec && [map { $_->{payload} } grep { $_->{opcode} == OP_TEXT } @{ $rec->{frames} }], ['c1', 'c2'],
        'pass, close: the upstream got only the admitted messages');
}

# --- a subscriber that publishes -------------------------------------------------------------------
{
    my ($s) = drive(6, { ws => ws_open($port, '/subdelay?k=s'), sends => [[0, texts(map { "s$_" } 1 .. 21)]], want => 21 });
    is_deeply([payloads($s)], [map { "s$_" } 1 .. 21], 'subscriber: 21 published messages come back in order');
    within(span($s), 1.0, 'subscriber: published at 20 r/s');
    ok(!$s->{close}, 'subscriber, delay: not closed');
    bye($s->{ws}, 'subscriber');

    ($s) = drive(5, { ws => ws_open($port, '/subclose?k=s'), sends => [[0, texts(map { "c$_" } 1 .. 5)]], want => 5 });
    is_deeply([payloads($s)], [qw(c1 c2 c3)], 'subscriber, close: 1 + burst 2 published');
    is_deeply($s->{close} && [@{ $s->{close} }[0, 1]], [1008, 'message rate exceeded'],
        'subscriber, close: then 1008 "message rate exceeded"');
    ok($s->{ws}->wait_eof(3), 'subscriber, close: TCP closed');
}

# --- inheritance ------------------------------------------------------------------------------------
{
    my $p1 = $t->port(1);
    my ($s) = drive(5, { ws => ws_open($p1, '/inherit?k=i'), sends => [[0, texts(1 .. 5)]], want => 5 });
    is_deeply([payloads($s)], [1 .. 3], 'inherit: the server\'s limit (burst 2) applies');
    is($s->{close} && $s->{close}[0], 1008, 'inherit: then 1008');
    ($s) = drive(5, { ws => ws_open($p1, '/own?k=i'), sends => [[0, texts(1 .. 7)]], want => 7 });
    is_deeply([payloads($s)], [1 .. 5], 'own: the location\'s limit (burst 4), not the server\'s');
    is($s->{close} && $s->{close}[0], 1008, 'own: then 1008');
}

# One session on /small per key: n messages at once; the echoes, and the
# close code.
sub small_session {
    my ($key, $n, $p) = @_;
    my ($s) = drive(5, { ws => ws_open($p // $port, "/small?k=$key"), sends => [[0, texts(1 .. $n)]], want => $n });
    my $code = $s->{close} && $s->{close}[0];
    $s->{ws}->send_close(1000) unless $s->{close};
    return (scalar(payloads($s)), $code);
}

# --- a small zone filled by many keys ---------------------------------------------------------------
{
    my $session = \&small_session;
    is_deeply([$session->('first', 4)], [3, 1008], 'small zone: a key gets 1 + burst 2, then 1008');
    is_deeply([$session->('first', 1)], [0, 1008], 'small zone: at 1 r/m it is still limited');
    my $ok = 0;
    for my $i (1 .. 400) {
        my ($got) = $session->("key$i", 1);
        $ok++ if $got == 1;
    }
    is($ok, 400, 'small zone: 400 sessions with distinct keys all echo');
    is_deeply([$session->('key400', 3)], [2, 1008], 'small zone: the most recent key is remembered');
    is_deeply([$session->('first', 4)], [3, 1008],
        'small zone: the oldest key was forgotten (a fresh bucket), a new key is still limited');
    is_deeply([$t->grep_error_log(qr/cannot hold/)], [], 'small zone: no key went unlimited');
    # A key larger than the whole zone: nothing left to forget makes room,
    # the session is not limited by the zone, and says so at warn.
    is_deeply([$session->('x' x 40000, 5)], [5, undef], 'small zone: a 40000-byte key is not limited');
    my @warn = $t->grep_error_log(qr/cannot hold/);
    is(scalar @warn, 1, 'small zone: ... with one line for the session');
    like($warn[0] // '', qr/\[warn\].*websocket_limit: zone "small" cannot hold the key of this session/,
        'small zone: ... at warn');
    is_deeply([$session->('after', 4)], [3, 1008], 'small zone: the next key is limited again');
}

# --- metrics ----------------------------------------------------------------------------------------
{
    my ($status, undef, $body) = WsClient::http_request($port, "GET /status HTTP/1.0\r\nHost: x\r\n\r\n");
    is($status, 200, 'GET /status');
    like($body, qr/^# TYPE nginx_websocket_limited_total counter$/m, '# TYPE nginx_websocket_limited_total counter');
    my %m;
    $m{"$1/$2"} = $3 while $body =~ /^nginx_websocket_limited_total\{zone="(\w+)",action="(\w+)"\} (\d+)$/mg;
    is($m{'fast/delay'}, 40, 'limited_total{zone="fast",action="delay"} 40 (each delayed message once)');
    is($m{'fast/close'}, 0, 'limited_total{zone="fast",action="close"} 0');
    is($m{'closing/close'}, 2, 'limited_total{zone="closing",action="close"} 2');
    is($m{'closing/delay'}, 0, 'limited_total{zone="closing",action="delay"} 0');
    ok(($m{'shared/delay'} // 0) >= 38 && ($m{'shared/delay'} // 0) <= 40,
        "limited_total{zone=\"shared\",action=\"delay\"} 38-40 over both workers: " . ($m{'shared/delay'} // 'none'));
    is($m{'five/delay'}, 10, 'limited_total{zone="five",action="delay"} 10');
    is($m{'loose/delay'}, 0, 'limited_total{zone="loose",action="delay"} 0 (within its burst)');
    is($m{'passz/delay'}, 20, 'limited_total{zone="passz",action="delay"} 20');
    is($m{'passc/close'}, 1, 'limited_total{zone="passc",action="close"} 1');
    is($m{'small/close'}, 5, 'limited_total{zone="small",action="close"} 5');
    is(($m{'subd/delay'} // 'none') . '/' . ($m{'subc/close'} // 'none'), '20/1', 'limited_total of subscribers: 20 delayed, 1 close');
    is(($m{'inh/close'} // 'none') . '/' . ($m{'own/close'} // 'none'), '1/1', 'limited_total of inh and own: 1 close each');
    my @bad = grep { !/^#/ && !/^nginx_websocket_\w+(?:\{\w+="[^"]*"(?:,\w+="[^"]*")*\})? \d+$/ } split /\n/, $body;
    is_deeply(\@bad, [], 'every sample well-formed');
}

# --- reload: a zone nginx keeps keeps its buckets and counters ----------------------------------------
{
    is_deeply([small_session('reload', 4)], [3, 1008], 'reload: a key past its limit before');
    ok($t->reload, 'reload: new workers');
    @workers = $t->worker_pids;
    is_deeply([small_session('reload', 1)], [0, 1008], 'reload: the key is still limited after');
    my (undef, undef, $body) = WsClient::http_request($port, "GET /status HTTP/1.0\r\nHost: x\r\n\r\n");
    like($body, qr/^nginx_websocket_limited_total\{zone="small",action="close"\} 7$/m,
        'reload: limited_total kept and counting');
}

finish($t, $port, \@workers);

# --- a reload that changes a zone's key is refused -----------------------------------------------------
{
    my $conf = "websocket_limit_zone \$arg_k zone=small:32k rate=1r/m;\n"
        . echo_server(0, '/small' => ['websocket_limit zone=small burst=2 close']);
    my ($t2, $p2) = start_nginx(conf => $conf);
    is_deeply([small_session('x', 4, $p2)], [3, 1008], 'key change: limited before');
    my $path = $t2->conf_path;
    open my $in, '<', $path or die $!;
    my $text = do { local $/; <$in> };
    close $in;
    $text =~ s/\$arg_k zone=small/\$remote_addr zone=small/ or die 'test bug: key not found';
    open my $out, '>', $path or die $!;
    print $out $text;
    close $out;
    $t2->reload(wait => 0);
    my $deadline = time + scaled(5);
    sleep 0.1 until $t2->grep_error_log(qr/uses the/) || time > $deadline;
    like(join('', $t2->grep_error_log(qr/uses the/)),
        qr/\[emerg\].*websocket_limit_zone "small" uses the "\$remote_addr" key while previously it used the "\$arg_k" key/,
        'key change: the reload is refused naming both keys');
    is_deeply([small_session('x', 1, $p2)], [0, 1008], 'key change: the old configuration still limits');
    $t2->stop;
    is($t2->forced_stop, undef, 'key change: nginx stopped gracefully');
    is_deeply([$t2->valgrind_errors], [], 'key change: no memcheck or ASan errors')
        if WsValgrind::checking();
}

# --- nginx -t ---------------------------------------------------------------------------------------
{
    my $ok = WsNginx->new(conf => "websocket_limit zone=later burst=3;\n"
        . conf_server("    websocket_limit zone=later close;\n    location /ws {\n        websocket_echo;\n"
            . "        websocket_limit zone=later;\n        websocket_limit zone=other burst=1 close;\n    }")
        . "websocket_limit_zone \$binary_remote_addr zone=later:1m rate=10r/m;\n"
        . "websocket_limit_zone \$http_x_user\$arg_k zone=other:64k rate=5;\n");
    config_accepted($ok, 'limits at every level, zones defined after their use');
    $ok->stop;
}

my $zone = "websocket_limit_zone \$binary_remote_addr zone=z:1m rate=1r/s;\n";
my @bad = (
    [ 'websocket_limit with an unknown zone', $zone . conf_location("        websocket_echo;\n        websocket_limit zone=nope;"),
      'websocket_limit', 'websocket_limit zone=nope' ],
    [ 'an unknown zone at server level', $zone . conf_server("    websocket_limit zone=nope burst=2;\n    location /ws { websocket_echo; }"),
      'websocket_limit', 'websocket_limit zone=nope' ],
    [ 'websocket_limit_zone without a size', "websocket_limit_zone \$binary_remote_addr zone=z rate=1r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'zone=z rate' ],
    [ 'websocket_limit_zone with a bad size', "websocket_limit_zone \$binary_remote_addr zone=z:lots rate=1r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'zone=z:lots' ],
    [ 'websocket_limit_zone too small', "websocket_limit_zone \$binary_remote_addr zone=z:4k rate=1r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'zone=z:4k' ],
    [ 'websocket_limit_zone without a zone', "websocket_limit_zone \$binary_remote_addr rate=1r/s rate=2r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'rate=1r/s rate=2r/s' ],
    [ 'websocket_limit_zone with rate 0', "websocket_limit_zone \$binary_remote_addr zone=z:1m rate=0r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'rate=0r/s' ],
    [ 'websocket_limit_zone with a bad rate', "websocket_limit_zone \$binary_remote_addr zone=z:1m rate=fast;\n" . conf_server(''),
      'websocket_limit_zone', 'rate=fast' ],
    [ 'websocket_limit_zone with r/h', "websocket_limit_zone \$binary_remote_addr zone=z:1m rate=5r/h;\n" . conf_server(''),
      'websocket_limit_zone', 'rate=5r/h' ],
    [ 'websocket_limit_zone twice for one zone', $zone . "websocket_limit_zone \$arg_k zone=z:1m rate=2r/s;\n" . conf_server(''),
      'websocket_limit_zone', 'zone=z:1m rate=2r/s' ],
    [ 'websocket_limit_zone in a server', conf_server("    $zone    location /ws { websocket_echo; }"),
      'websocket_limit_zone', qr/^\s+websocket_limit_zone/ ],
    [ 'websocket_limit with burst=0', $zone . conf_location("        websocket_echo;\n        websocket_limit zone=z burst=0;"),
      'websocket_limit', 'burst=0' ],
    [ 'websocket_limit with a bad burst', $zone . conf_location("        websocket_echo;\n        websocket_limit zone=z burst=many;"),
      'websocket_limit', 'burst=many' ],
    [ 'websocket_limit without a zone', $zone . conf_location("        websocket_echo;\n        websocket_limit burst=2 close;"),
      'websocket_limit', 'websocket_limit burst=2' ],
    [ 'websocket_limit with an unknown parameter', $zone . conf_location("        websocket_echo;\n        websocket_limit zone=z nodelay;"),
      'websocket_limit', 'nodelay' ],
    [ 'websocket_limit twice with one zone', $zone . conf_location("        websocket_echo;\n        websocket_limit zone=z;\n        websocket_limit zone=z burst=2;"),
      'websocket_limit', 'zone=z burst=2' ],
);
config_rejected(@$_) for @bad;

done_testing;
