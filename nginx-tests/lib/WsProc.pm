package WsProc;

# The base class of the harness's forked helper servers (WsUpstream,
# WsDns): an object with {pid} (and {group} when the child leads a process
# group of its own) is stopped by stop(), by DESTROY, or at the latest when
# the test exits.

use strict;
use warnings;

use Config ();
use POSIX ();
use Time::HiRes qw(sleep time);

my %LIVE;

# $self->_track: stop() it at the latest from END.
sub _track { $LIVE{"$_[0]"} = $_[0]; return $_[0] }

# In a forked child: default INT/TERM/HUP and, on Linux x86_64,
# prctl(PR_SET_PDEATHSIG, SIGTERM), to go away with the test.
sub child_setup {
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
    eval { syscall(157, 1, 15) }
        if $^O eq 'linux' && $Config::Config{archname} =~ /^x86_64/;
}

# TERM to the child (and to its process group), up to 3 s for it to exit,
# then KILL.
sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    delete $LIVE{"$self"};
    my @to = $self->{group} ? (-$pid, $pid) : ($pid);
    kill 'TERM', @to;
    my $deadline = time + 3;
    while (time < $deadline) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        last if $r == $pid || $r == -1;
        sleep 0.02;
    }
    if (kill 0, $pid) {
        kill 'KILL', @to;
        waitpid($pid, 0);
    }
    return;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $@, $!);
    $self->stop if $self->{pid};
}

END {
    local $?;
    $_->stop for values %LIVE;
}

1;
