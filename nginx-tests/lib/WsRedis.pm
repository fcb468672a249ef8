package WsRedis;

# A real redis-server (Debian's package) on a free 127.0.0.1 port, for the
# channels' Redis backend:
#
#   my $redis = WsRedis->new(dir => $t->{dir});   # started, answering PING
#   WsRedis->new(appendonly => 1);  # every write on disk first: a restart keeps it
#   $redis->port; $redis->url;                      # redis://127.0.0.1:PORT
#   $redis->command('XLEN', 'ch:a');                # a reply, see below
#   $redis->db(3);         # command() SELECTs db 3 first from now on
#   $redis->kill;          # SIGKILL: an outage as a crash makes it
#   $redis->start;         # again, on the same port (after kill or stop)
#   $redis->restart;       # kill, then start
#   $redis->stop;          # TERM (then KILL); also from DESTROY and END
#
# It runs in the foreground (--daemonize no) as the test's child, stopped
# by its PID, with no persistence (--save '' --appendonly no): a restart
# starts empty, as after a crash without a dump. With appendonly => 1 it
# writes each command to its append-only file before answering
# (--appendonly yes --appendfsync always): a kill and a start keep
# everything it accepted. Its log is redis.log in
# `dir` (a directory of its own when none is given). WsRedis->available
# says whether redis-server is installed (tests skip_all without it).
#
# command() is a tiny blocking RESP client for the test's own checks:
# simple strings and bulk strings come back as strings, integers as
# numbers, nil as undef, arrays as array refs, an error reply as
# { error => 'ERR ...' }.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

use WsNginx ();

use parent 'WsProc';

our $BINARY = $ENV{TEST_REDIS_SERVER} // 'redis-server';

sub available {
    return !system("command -v $BINARY >/dev/null 2>&1");
}

# new(dir => DIR, port => PORT): starts it and waits until it answers.
sub new {
    my ($class, %o) = @_;
    my $dir = $o{dir} // tempdir('wsredis-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $self = bless { dir => $dir, port => $o{port} // WsNginx::free_port(),
        appendonly => $o{appendonly} }, $class;
    $self->start;
    return $self;
}

sub port { $_[0]{port} }
sub pid  { $_[0]{pid} }
sub url  { 'redis://127.0.0.1:' . $_[0]{port} . ($_[1] ? "/$_[1]" : '') }

# Starts the server (it must not be running) and waits up to 5 s (times
# the slowdown) for its PONG.
sub start {
    my ($self) = @_;
    croak 'WsRedis: already running' if $self->{pid};
    my $pid = fork // croak "WsRedis: fork: $!";
    if ($pid == 0) {
        WsProc::child_setup();
        chdir $self->{dir} or POSIX::_exit(127);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/redis.log";
        open STDERR, '>&', \*STDOUT;
        exec($BINARY, '--port', $self->{port}, '--bind', '127.0.0.1',
            '--save', '',
            ($self->{appendonly} ? ('--appendonly', 'yes', '--appendfsync', 'always')
                : ('--appendonly', 'no')),
            '--daemonize', 'no',
            '--dir', $self->{dir}, '--logfile', '') or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    $self->_track;
    my $deadline = time + 5 * ($ENV{TEST_NGINX_SLOWDOWN} || 1);
    while (time < $deadline) {
        my $pong = eval { $self->command('PING') };
        return $self if defined $pong && $pong eq 'PONG';
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $self->{pid};
            croak "WsRedis: redis-server exited at start (see $self->{dir}/redis.log)";
        }
        sleep 0.05;
    }
    $self->stop;
    croak "WsRedis: redis-server on port $self->{port} does not answer";
}

# SIGKILL and reap: the port is closed when this returns.
sub kill {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    CORE::kill 'KILL', $pid;
    waitpid($pid, 0);
    return;
}

sub restart {
    my ($self) = @_;
    $self->kill;
    return $self->start;
}

sub _encode {
    my $out = '*' . scalar(@_) . "\r\n";
    $out .= '$' . length($_) . "\r\n$_\r\n" for @_;
    return $out;
}

sub _line {
    my ($sock) = @_;
    my $line = '';
    while ($line !~ /\r\n\z/) {
        my $n = sysread($sock, my $byte, 1);
        die "WsRedis: connection closed\n" unless $n;
        $line .= $byte;
    }
    $line =~ s/\r\n\z//;
    return $line;
}

sub _reply {
    my ($sock) = @_;
    my $line = _line($sock);
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq '+';
    return { error => $rest } if $type eq '-';
    return 0 + $rest if $type eq ':';
    if ($type eq '$') {
        return undef if $rest < 0;
        my $data = '';
        while (length($data) < $rest + 2) {
            my $n = sysread($sock, $data, $rest + 2 - length($data), length($data));
            die "WsRedis: connection closed\n" unless $n;
        }
        return substr($data, 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { _reply($sock) } 1 .. $rest ];
    }
    die "WsRedis: bad reply line '$line'\n";
}

sub db { $_[0]{db} = $_[1] }

# One command on a fresh connection (after SELECT of db()); dies when the
# server is unreachable.
sub command {
    my ($self, @args) = @_;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp', Timeout => 2,
    ) or die "WsRedis: cannot connect to port $self->{port}: $!\n";
    local $SIG{ALRM} = sub { die "WsRedis: no reply to @args\n" };
    alarm 5 * ($ENV{TEST_NGINX_SLOWDOWN} || 1);
    my $reply = eval {
        if ($self->{db}) {
            print {$sock} _encode('SELECT', $self->{db});
            my $ok = _reply($sock);
            die "WsRedis: SELECT $self->{db} failed\n" unless !ref $ok && $ok eq 'OK';
        }
        print {$sock} _encode(@args);
        _reply($sock);
    };
    my $err = $@;
    alarm 0;
    close $sock;
    die $err if $err;
    return $reply;
}

# The clients connected now (CLIENT LIST), each a hash of its fields
# (addr, cmd, db, ...), without the connection asking.
sub clients {
    my ($self) = @_;
    my $list = $self->command('CLIENT', 'LIST');
    my @clients;
    for my $line (split /\n/, $list) {
        my %c = map { split /=/, $_, 2 } split / /, $line;
        push @clients, \%c unless $c{cmd} && $c{cmd} eq 'client|list';
    }
    return @clients;
}

1;
