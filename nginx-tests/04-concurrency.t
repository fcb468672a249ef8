#!/usr/bin/perl
# 100 sessions open at once, each echoing 10 messages in order, driven from
# one process with IO::Select.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time);
use WsTest;
use WsClient;

my $N = 100;
my $M = 10;

my ($t, $port, @workers) = start_nginx(worker_processes => 2, conf => echo_server(0, '/ws' => []));

my @c;
for my $i (0 .. $N - 1) {
    my $ws = eval { WsClient->connect(port => $port, path => '/ws') };
    push @c, $ws if $ws && ($ws->status // 0) == 101;
}
is(scalar @c, $N, "$N sessions upgraded");

# Round-robin: message j of every client before message j+1 of any.
my $payload = sub { my ($i, $j) = @_; "client $i message $j " . ('.' x ($i * 7 % 300)) };
for my $j (0 .. $M - 1) {
    for my $i (0 .. $#c) {
        $c[$i]->send_text($payload->($i, $j));
    }
}

my %idx = map { ("$c[$_]{fh}" => $_) } 0 .. $#c;
my @got = map { [] } @c;
my @bad;
my $sel = IO::Select->new(map { $_->socket } @c);
my $pending = @c;
my $deadline = time + 15;
while ($pending && time < $deadline) {
    for my $fh ($sel->can_read(1)) {
        my $i = $idx{"$fh"};
        my $ws = $c[$i];
        $ws->pump;
        while (my $f = $ws->try_recv_frame) {
            if ($f->{opcode} != 1 || !$f->{fin}) {
                push @bad, "client $i: unexpected frame opcode $f->{opcode} fin $f->{fin}";
                next;
            }
            push @{ $got[$i] }, $f->{payload};
        }
        if (@{ $got[$i] } >= $M || $ws->is_eof) {
            $sel->remove($fh);
            $pending--;
        }
    }
}
is($pending, 0, 'every session finished within 15 s');
is_deeply(\@bad, [], 'only whole text frames came back');

my $in_order = grep {
    my $i = $_;
    join("\n", @{ $got[$i] }) eq join("\n", map { $payload->($i, $_) } 0 .. $M - 1)
} 0 .. $#c;
is($in_order, scalar @c, "all $N sessions got their $M messages back, in order");

# Close them all at once, then collect the replies.
$_->send_close(1000) for @c;
my $closed = grep {
    my ($code) = $_->recv_close(timeout => 5);
    defined $code && $code == 1000 && $_->wait_eof(3);
} @c;
is($closed, scalar @c, "all $N sessions closed with 1000 and EOF");

# Like a real client, close our side once the server has closed (otherwise
# the server may legitimately linger on the half-closed sockets).
$_->close for @c;

finish($t, $port, \@workers);

done_testing;
