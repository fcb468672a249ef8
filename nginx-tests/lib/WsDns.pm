package WsDns;

# A tiny DNS responder on 127.0.0.1 (UDP) for the tests that use nginx's
# `resolver` directive. It runs in a forked process and answers each query
# from a fixed table:
#
#   my $dns = WsDns->new(a => { 'backend.test' => ['127.0.0.1'] }, ttl => 300);
#   $dns->port;
#   $dns->queries;        # ("backend.test A", "backend.test AAAA", ...) so far
#   $dns->stop;           # also from DESTROY and END
#
# A query for a name in the table: type A gets its addresses, any other
# type (AAAA, ...) an empty NOERROR answer. A name not in the table gets
# NXDOMAIN. With silent => 1 the queries are recorded but never answered.
# Names are compared case-insensitively.

use strict;
use warnings;

use Carp qw(croak);
use Fcntl qw(:flock);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Socket qw(inet_aton);
use Time::HiRes qw(sleep time);

use parent 'WsProc';

my %TYPE_NAME = (1 => 'A', 5 => 'CNAME', 28 => 'AAAA', 33 => 'SRV', 255 => 'ANY');

# new(a => { name => [ipv4, ...] }, ttl => 300, silent => 0)
sub new {
    my ($class, %o) = @_;
    my %a = map { lc($_) => $o{a}{$_} } keys %{ $o{a} // {} };
    my $ttl = $o{ttl} // 300;

    my $sock = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => 0,
        Proto     => 'udp',
    ) or croak "WsDns: cannot bind a UDP port: $!";
    my $dir = tempdir('wsdns-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $log = "$dir/queries";
    open my $touch, '>', $log or croak "WsDns: $log: $!";
    close $touch;

    my $pid = fork // croak "WsDns: fork: $!";
    if ($pid == 0) {
        WsProc::child_setup();
        eval { _serve($sock, $log, \%a, $ttl, $o{silent}) };
        POSIX::_exit(0);
    }
    my $port = $sock->sockport;
    close $sock;

    return bless({ pid => $pid, port => $port, dir => $dir, log => $log }, $class)->_track;
}

sub port { $_[0]{port} }

# Every query received so far, as "name TYPE" (name in lower case).
sub queries {
    my ($self) = @_;
    open my $fh, '<', $self->{log} or return ();
    flock $fh, LOCK_SH;
    chomp(my @q = <$fh>);
    return @q;
}

sub _serve {
    my ($sock, $log, $a, $ttl, $silent) = @_;
    while (1) {
        my $peer = $sock->recv(my $pkt, 4096);
        next unless defined $peer && length $pkt >= 12;
        my ($id, $flags, $qd) = unpack 'n n n', $pkt;
        next if $flags & 0x8000;    # a response, not a query
        next unless $qd == 1;

        # the question: labels, type, class
        my ($pos, @labels) = (12);
        while (1) {
            last if $pos >= length $pkt;
            my $len = ord substr($pkt, $pos, 1);
            $pos++;
            last if $len == 0;
            if ($len & 0xC0) { $pos = length $pkt; last }    # no pointers in a question
            push @labels, substr($pkt, $pos, $len);
            $pos += $len;
        }
        next if $pos + 4 > length $pkt;
        my ($qtype, $qclass) = unpack 'n n', substr($pkt, $pos, 4);
        my $question = substr($pkt, 12, $pos + 4 - 12);
        my $name = lc join '.', @labels;

        if (open my $fh, '>>', $log) {
            flock $fh, LOCK_EX;
            print $fh "$name " . ($TYPE_NAME{$qtype} // "TYPE$qtype") . "\n";
            close $fh;
        }
        next if $silent;

        my $rd = $flags & 0x0100;
        my @answers;
        my $rcode = 0;
        if (my $addrs = $a->{$name}) {
            if ($qtype == 1 && $qclass == 1) {
                for my $ip (@$addrs) {
                    # name: a pointer to the question's name at offset 12
                    push @answers, pack('n n n N n', 0xC00C, 1, 1, $ttl, 4) . inet_aton($ip);
                }
            }
        } else {
            $rcode = 3;    # NXDOMAIN
        }
        # QR, AA, the query's RD, RA; the rcode
        my $rflags = 0x8000 | 0x0400 | $rd | 0x0080 | $rcode;
        my $resp = pack('n n n n n n', $id, $rflags, 1, scalar(@answers), 0, 0)
            . $question . join('', @answers);
        $sock->send($resp, 0, $peer);
    }
}

1;
