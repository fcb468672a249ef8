#!/usr/bin/perl
# Faults: 10,000 malformed handshakes. Seeded random mutations of a valid
# handshake (srand 6455): bad methods, HTTP versions, Upgrade / Connection /
# Sec-WebSocket-Version / Sec-WebSocket-Key / Sec-WebSocket-Protocol values,
# missing and duplicated headers, bodies, broken Host headers, bad URIs,
# garbage bytes, NULs, required header lines without their colon, white
# space in header names, overlong header lines and URIs. 8,000 cases carry
# one mutation each and must get its exact status (nginx's own parser: 400 /
# 404 / 414; the module: 405 for a method other than GET, 426 for the
# WebSocket version, 400 for every other defect); 2,000 carry two or three
# mutations of different parts at once and must get a 4xx. None may get 101
# or a 5xx, every connection gets an answer, and the worker that answered
# them is the one from the start. 48 connections in flight at once (one
# request each: a 400 closes the connection anyway).
#
# Not defects, so not among the mutations: a junk header line without a
# colon (nginx drops it, ignore_invalid_headers), "Host: [::1" or "a\b"
# (nginx accepts them). nginx itself answers 505 for "HTTP/2.0" and 501 for
# an unknown Transfer-Encoding before the module runs; those are left out
# of the "never a 5xx" rule.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Errno qw(EAGAIN EWOULDBLOCK EINTR EINPROGRESS);
use IO::Select;
use MIME::Base64 qw(encode_base64);
use Socket qw(PF_INET SOCK_STREAM IPPROTO_TCP TCP_NODELAY inet_aton pack_sockaddr_in);
use Time::HiRes qw(time sleep);
use WsClient;
use WsTest;

my $SINGLE = 8000;
my $MULTI = 2000;
my $PARALLEL = 48;

my ($t, $port, @workers) = start_nginx(error_log_level => 'notice', conf => <<'EOF_CONF');
server {
    listen 127.0.0.1:%%PORT_0%% backlog=512;
    log_not_found off;

    location /ws {
        websocket_echo;
    }
}
EOF_CONF

my $KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

# A request: method, uri, version, prefix (bytes before the request line),
# headers (lines without CRLF), body.
sub valid {
    return {
        prefix => '', method => 'GET', uri => '/ws', version => 'HTTP/1.1', body => '',
        headers => [ "Host: 127.0.0.1:$port", 'Upgrade: websocket', 'Connection: Upgrade',
            "Sec-WebSocket-Key: $KEY", 'Sec-WebSocket-Version: 13' ],
    };
}

sub render {
    my ($r) = @_;
    return "$r->{prefix}$r->{method} $r->{uri} $r->{version}\r\n"
        . join('', map { "$_\r\n" } @{ $r->{headers} }) . "\r\n$r->{body}";
}

sub pick { $_[ int rand @_ ] }
sub bytes_from { my ($set, $n) = @_; join '', map { substr($set, int rand length $set, 1) } 1 .. $n }

# header helpers: set (replaces every line of that name, or adds one), del, add
sub hset {
    my ($r, $name, $value) = @_;
    hdel($r, $name);
    splice @{ $r->{headers} }, int rand(@{ $r->{headers} } + 1), 0, "$name: $value";
}
sub hdel { my ($r, $name) = @_; @{ $r->{headers} } = grep { !/^\Q$name\E:/i } @{ $r->{headers} } }
sub hadd {
    my ($r, $line) = @_;
    splice @{ $r->{headers} }, int rand(@{ $r->{headers} } + 1), 0, $line;
}

# nocolon($r, $name): the colon of that header line is replaced.
sub nocolon {
    my ($r, $name) = @_;
    s/^(\Q$name\E):\s*/$1 . pick('', ';', '=', '@')/ie for @{ $r->{headers} };
}

my $B64 = join '', 'A' .. 'Z', 'a' .. 'z', 0 .. 9, '+/';
my $NOT_B64 = join '', grep { index($B64, $_) < 0 && $_ ne '=' } map { chr } 0x21 .. 0x7e;

# [ name, status, mutation ]: the status a request with only this defect
# gets, and who decides it.
my @mutations = (
    # --- the module: the method (405)
    [ 'method other than GET', 405, sub {
        $_[0]{method} = pick(qw(POST PUT DELETE HEAD OPTIONS PATCH TRACE PROPFIND MKCOL LOCK FOO GETS G-ET X));
        hset($_[0], 'Content-Length', 0) if $_[0]{method} =~ /^(?:POST|PUT|PATCH)$/;
    } ],
    # --- nginx's parser: the request line (400)
    [ 'lower-case or invalid method', 400, sub {
        $_[0]{method} = pick('get', 'Get', 'GE T', "G\x00ET", 'GET/', "G\xc3\x89T", '');
    } ],
    [ 'malformed HTTP version', 400, sub {
        $_[0]{version} = pick('HTTP/1.1x', 'HTTPS/1.1', 'http/1.1', 'HTTP/1', 'HTTP/', 'HTTP/1.', 'HTTP/a.b',
            'HTTP/1.1 extra', "HTTP/1.1\x00", 'HTXP/1.1');
    } ],
    [ 'URI without a leading slash or above the root', 400, sub {
        $_[0]{uri} = pick('ws', '*', '/ws/../../etc/passwd', '/../ws', "/w\x00s", "/ws\x7f");
    } ],
    [ 'garbage before the request line', 400, sub {
        $_[0]{prefix} = bytes_from(join('', map { chr } 0 .. 8, 11, 12, 14 .. 31, 127 .. 255), 1)
            . bytes_from(join('', map { chr } 0 .. 9, 11, 12, 14 .. 255), int rand 200);
    } ],
    # --- nginx: the URI is too long (414)
    [ 'overlong URI', 414, sub { $_[0]{uri} = '/ws?' . ('u' x (8200 + int rand 20000)) } ],
    # --- nginx: the location (404)
    [ 'no websocket location', 404, sub { $_[0]{uri} = pick('/', '/w', '/nowhere', '/w/s', '/index.html') } ],
    # --- the module: HTTP/1.0 (400)
    [ 'HTTP/1.0', 400, sub { $_[0]{version} = 'HTTP/1.0' } ],
    # --- nginx's parser: header lines (400)
    # nginx drops header lines it cannot parse (ignore_invalid_headers): a
    # required one without its colon is a missing one
    [ 'Upgrade line without its colon', 400, sub { nocolon($_[0], 'Upgrade') } ],
    [ 'Sec-WebSocket-Key line without its colon', 400, sub { nocolon($_[0], 'Sec-WebSocket-Key') } ],
    [ 'Sec-WebSocket-Version line without its colon', 426, sub { nocolon($_[0], 'Sec-WebSocket-Version') } ],
    # ... but white space in a header name is an invalid header line (400)
    [ 'white space in a header name', 400, sub {
        my $h = $_[0]{headers};
        $h->[ int rand @$h ] =~ s/^([^:]+):\s*/$1 . pick(' ', ' :', ' : ', "\t", "\t:")/e;
    } ],
    [ 'NUL in a header line', 400, sub {
        my $h = $_[0]{headers};
        my $i = int rand @$h;
        my $pos = 1 + int rand(length($h->[$i]) - 1);
        substr($h->[$i], $pos, 0, "\x00" . bytes_from(join('', map { chr } 1 .. 9, 11, 12, 14 .. 255), int rand 8));
    } ],
    [ 'garbage header line with a NUL', 400, sub {
        hadd($_[0], bytes_from(join('', map { chr } 1 .. 9, 11, 12, 14 .. 255), int rand 100) . "\x00"
            . bytes_from(join('', map { chr } 1 .. 9, 11, 12, 14 .. 255), int rand 100));
    } ],
    [ 'overlong header line', 400, sub {
        hadd($_[0], pick('X-Long', 'Cookie', 'Sec-WebSocket-Protocol', 'Origin') . ': '
            . ('h' x (8200 + int rand 20000)));
    } ],
    [ 'header block over the buffers', 400, sub {
        hadd($_[0], "X-Filler-$_: " . ('f' x 7000)) for 1 .. 6;
    } ],
    # --- nginx: Host (400)
    [ 'missing Host', 400, sub { hdel($_[0], 'Host') } ],
    [ 'duplicate Host', 400, sub { hadd($_[0], 'Host: other.example') } ],
    [ 'invalid Host', 400, sub { hset($_[0], 'Host', pick('a/b', '..', 'x..y', '.', '/')) } ],
    # --- nginx: bodies it cannot frame (400)
    [ 'invalid Content-Length', 400, sub {
        hset($_[0], 'Content-Length', pick('abc', '-1', '1 2', '99999999999999999999999', '0x10'));
    } ],
    [ 'Content-Length and Transfer-Encoding', 400, sub {
        hset($_[0], 'Content-Length', 5);
        hset($_[0], 'Transfer-Encoding', 'chunked');
        $_[0]{body} = "0\r\n\r\n";
    } ],
    # --- the module: the upgrade headers (400)
    [ 'missing Upgrade', 400, sub { hdel($_[0], 'Upgrade') } ],
    [ 'wrong Upgrade', 400, sub {
        hset($_[0], 'Upgrade', pick('', 'websockets', 'web socket', 'h2c', 'xwebsocket', 'websocket2', 'TLS/1.2'));
    } ],
    [ 'missing Connection', 400, sub { hdel($_[0], 'Connection') } ],
    [ 'wrong Connection', 400, sub {
        hset($_[0], 'Connection', pick('', 'keep-alive', 'close', 'upgrades', 'Upgrade-Insecure', 'up grade'));
    } ],
    # --- the module: the WebSocket version (426)
    [ 'missing Sec-WebSocket-Version', 426, sub { hdel($_[0], 'Sec-WebSocket-Version') } ],
    [ 'wrong Sec-WebSocket-Version', 426, sub {
        hset($_[0], 'Sec-WebSocket-Version', pick('', '0', '7', '8', '12', '14', '130', '13.0', '013', '13, 8',
            'thirteen', '-13', 14 + int rand 1000));
    } ],
    [ 'two Sec-WebSocket-Version headers', 426, sub { hadd($_[0], 'Sec-WebSocket-Version: ' . pick(13, 8, 14)) } ],
    # --- the module: the key (400)
    [ 'missing Sec-WebSocket-Key', 400, sub { hdel($_[0], 'Sec-WebSocket-Key') } ],
    [ 'two Sec-WebSocket-Key headers', 400, sub { hadd($_[0], 'Sec-WebSocket-Key: ' . pick($KEY, 'AAAAAAAAAAAAAAAAAAAAAA==')) } ],
    [ 'key of the wrong length', 400, sub {
        my $n = pick(0 .. 15, 17 .. 64);
        hset($_[0], 'Sec-WebSocket-Key', encode_base64(join('', map { chr int rand 256 } 1 .. $n), ''));
    } ],
    [ 'key without its padding or with too much', 400, sub {
        my $k = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
        hset($_[0], 'Sec-WebSocket-Key', pick(substr($k, 0, 22), substr($k, 0, 23), "$k=", "$k==", "=$k"));
    } ],
    [ 'key with characters outside base64', 400, sub {
        my $k = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
        substr($k, int rand 22, 1, bytes_from($NOT_B64, 1));
        hset($_[0], 'Sec-WebSocket-Key', $k);
    } ],
    [ 'key of random bytes', 400, sub {
        hset($_[0], 'Sec-WebSocket-Key', bytes_from(join('', map { chr } 0x21 .. 0x7e, 0x80 .. 0xff), 24)
            . bytes_from($NOT_B64, 1));
    } ],
    # --- the module: subprotocols that are not UTF-8 (400)
    [ 'Sec-WebSocket-Protocol not UTF-8', 400, sub {
        hset($_[0], 'Sec-WebSocket-Protocol', pick("chat, \xff\xfe", "\xc0\xaf", "ch\x80at", "\xed\xa0\x80"));
    } ],
    # --- the module: a body (400)
    [ 'a request body', 400, sub {
        my $body = bytes_from(join('', map { chr } 0 .. 255), 1 + int rand 100);
        if (rand() < 0.5) {
            hset($_[0], 'Content-Length', length $body);
            $_[0]{body} = $body;
        } else {
            hset($_[0], 'Transfer-Encoding', 'chunked');
            $_[0]{body} = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $body, $body);
        }
    } ],
);

# What each mutation breaks: two mutations of one field are not combined
# (the second could repair the first, e.g. a removed key and a duplicated
# one).
my %field = (
    'method other than GET' => 'method', 'lower-case or invalid method' => 'method',
    'malformed HTTP version' => 'version', 'HTTP/1.0' => 'version',
    'URI without a leading slash or above the root' => 'uri', 'overlong URI' => 'uri',
    'no websocket location' => 'uri',
    'missing Host' => 'host', 'duplicate Host' => 'host', 'invalid Host' => 'host',
    'invalid Content-Length' => 'body', 'Content-Length and Transfer-Encoding' => 'body',
    'a request body' => 'body',
    'missing Upgrade' => 'upgrade', 'wrong Upgrade' => 'upgrade', 'Upgrade line without its colon' => 'upgrade',
    'missing Connection' => 'connection', 'wrong Connection' => 'connection',
    'missing Sec-WebSocket-Version' => 'wsversion', 'wrong Sec-WebSocket-Version' => 'wsversion',
    'two Sec-WebSocket-Version headers' => 'wsversion', 'Sec-WebSocket-Version line without its colon' => 'wsversion',
    'white space in a header name' => 'lines',
);
$field{ $_->[0] } //= $_->[0] =~ /key/i ? 'key' : $_->[0] for @mutations;

# --- the cases -------------------------------------------------------------------------------------
srand(6455);
my @cases;    # [ request bytes, expected status or '4xx', description ]
for my $i (1 .. $SINGLE) {
    my $m = $mutations[ ($i - 1) % @mutations ];
    my $r = valid();
    $m->[2]->($r);
    push @cases, [ render($r), $m->[1], $m->[0] ];
}
for my $i (1 .. $MULTI) {
    my $r = valid();
    my (@ms, %used);
    while (@ms < 2 + int rand 2) {
        my $m = pick(@mutations);
        push @ms, $m unless $used{ $field{ $m->[0] } }++;
    }
    $_->[2]->($r) for @ms;
    push @cases, [ render($r), '4xx', join(' + ', map { $_->[0] } @ms) ];
}
is(scalar @cases, $SINGLE + $MULTI, scalar(@cases) . ' malformed handshakes generated');

# --- send them, $PARALLEL at a time -----------------------------------------------------------------
sub open_conn {
    CORE::socket(my $fh, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
    setsockopt($fh, IPPROTO_TCP, TCP_NODELAY, pack('i', 1));
    $fh->blocking(0);
    CORE::connect($fh, pack_sockaddr_in($port, inet_aton('127.0.0.1')))
        or $! == EINPROGRESS or die "connect: $!";
    return $fh;
}

my @status;          # per case: the status, or a description of what happened
my @queue = 0 .. $#cases;
my %live;            # fileno => { i, fh, out, in, started }
my $rsel = IO::Select->new;
my $wsel = IO::Select->new;
my $t0 = time;
while (@queue || %live) {
    while (@queue && keys %live < $PARALLEL) {
        my $i = shift @queue;
        my $fh = open_conn();
        $live{ fileno $fh } = { i => $i, fh => $fh, out => $cases[$i][0], in => '', started => time };
        $wsel->add($fh);
        $rsel->add($fh);
    }
    my ($r, $w) = IO::Select::select($rsel, $wsel->count ? $wsel : undef, undef, 0.5);
    for my $fh (@{ $w // [] }) {
        my $c = $live{ fileno $fh } or next;
        my $n = syswrite($fh, $c->{out});
        if ($n) { substr($c->{out}, 0, $n, '') }
        elsif (!defined $n && $! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) { $c->{out} = '' }
        $wsel->remove($fh) unless length $c->{out};
    }
    my @done;
    for my $fh (@{ $r // [] }) {
        my $c = $live{ fileno $fh } or next;
        my $n = sysread($fh, $c->{in}, 65536, length $c->{in});
        next if !defined $n && ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR);
        push @done, $c if !$n || $c->{in} =~ /\r\n\r\n/;
    }
    push @done, grep { time - $_->{started} > 10 } values %live;
    for my $c (@done) {
        next unless delete $live{ fileno $c->{fh} };
        $status[ $c->{i} ] = $c->{in} =~ m{\AHTTP/1\.[01] (\d{3}) } ? $1
            : length $c->{in} ? 'garbage response' : time - $c->{started} > 10 ? 'no answer' : 'closed without a response';
        $rsel->remove($c->{fh});
        $wsel->remove($c->{fh});
        close $c->{fh};
    }
}
my $took = time - $t0;
note sprintf '%d handshakes in %.1fs', scalar @cases, $took;

# --- what they got ---------------------------------------------------------------------------------------
my %tally;
$tally{ $status[$_] // 'none' }++ for 0 .. $#cases;
note 'statuses: ' . join(', ', map { "$_ x $tally{$_}" } sort keys %tally);

my @answered = grep { ($status[$_] // '') =~ /^\d{3}$/ } 0 .. $#cases;
is(scalar @answered, scalar @cases, 'every malformed handshake got an HTTP response')
    or diag join "\n", map { "case $_ ($cases[$_][2]): " . ($status[$_] // 'none') }
        (grep { ($status[$_] // '') !~ /^\d{3}$/ } 0 .. $#cases)[0 .. 9];
is($tally{101} // 0, 0, 'none was upgraded (101)');
my @fivexx = grep { ($status[$_] // '') =~ /^5/ } 0 .. $#cases;
is(scalar @fivexx, 0, 'none got a 5xx')
    or diag join "\n", map { "case $_ ($cases[$_][2]): $status[$_]" } @fivexx[0 .. ($#fivexx < 9 ? $#fivexx : 9)];

# per mutation: the exact status for the single-defect cases
my (%want, %bad);
for my $i (0 .. $SINGLE - 1) {
    my ($req, $exp, $name) = @{ $cases[$i] };
    $want{$name} = $exp;
    push @{ $bad{$name} }, $i unless ($status[$i] // '') eq $exp;
}
for my $m (@mutations) {
    my $name = $m->[0];
    my @b = @{ $bad{$name} // [] };
    is(scalar @b, 0, "$name: $m->[1] every time")
        or diag join "\n", map {
            my $q = substr($cases[$_][0], 0, 300);
            $q =~ s/([^\x20-\x7e\n])/sprintf '\\x%02x', ord $1/ge;
            "got " . ($status[$_] // 'none') . " for:\n$q"
        } @b[0 .. ($#b < 2 ? $#b : 2)];
}
my @multi_bad = grep { ($status[$_] // '') !~ /^4\d\d$/ } $SINGLE .. $#cases;
is(scalar @multi_bad, 0, "$MULTI handshakes with two or three defects: a 4xx each")
    or diag join "\n", map { "case $_ ($cases[$_][2]): " . ($status[$_] // 'none') } @multi_bad[0 .. ($#multi_bad < 9 ? $#multi_bad : 9)];
cmp_ok($took, '<', 25, sprintf('all within 25 s (%.1fs)', $took));

# (error_log at notice: the rejections themselves are [info] lines)
is_deeply([ $t->grep_error_log(qr/\[(?:warn|error|crit|alert|emerg)\]/) ], [],
    'nothing logged at warn or above');

finish($t, $port, \@workers);

done_testing;
