package WsNginx;

# Integration-test harness for ngx_http_websocket_module: writes a complete
# nginx.conf around an http{} fragment, starts nginx in a private directory,
# and guarantees that every nginx it started is stopped (by PID) when the
# test ends, even when the test dies.

use strict;
use warnings;

use Carp qw(croak);
use Config ();
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);
use WsValgrind qw(scaled);

our $VERSION = '0.1';

# All live instances, keyed by refaddr-ish string; stopped from END and on
# fatal signals.
my %LIVE;

my %PATHS;    # cached result of locate()

my @DIRS;     # every test directory, for the valgrind logs (WsValgrind)

sub repo_root {
    my $here = dirname(abs_path(__FILE__));    # .../nginx-tests/lib
    return abs_path(File::Spec->catdir($here, '..', '..'));
}

# Returns (nginx_binary, module_path). module_path may be '' (no load_module).
sub locate {
    my ($class) = @_;
    return @PATHS{qw(nginx module)} if %PATHS;

    my ($nginx, $module) = ($ENV{TEST_NGINX_BINARY}, $ENV{TEST_NGINX_MODULE});

    if (!defined $nginx || !defined $module) {
        my $root = repo_root();
        my $out = `cd '$root' && make -s paths 2>&1`;
        my $rc = $? >> 8;
        croak "WsNginx: 'make -s paths' failed in $root (exit $rc):\n$out"
            if $rc != 0;
        my %kv;
        for my $line (split /\n/, $out) {
            $kv{$1} = $2 if $line =~ /^(nginx|module)=(.+?)\s*$/;
        }
        croak "WsNginx: 'make -s paths' printed no nginx=/module= lines:\n$out"
            unless defined $kv{nginx} && defined $kv{module};
        $nginx  //= $kv{nginx};
        $module //= $kv{module};
    }

    croak "WsNginx: nginx binary '$nginx' is not executable" unless -x $nginx;
    croak "WsNginx: module '$module' does not exist"
        if $module ne '' && !-f $module;

    %PATHS = (nginx => $nginx, module => $module);
    return ($nginx, $module);
}

sub free_port {
    my $s = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => 0,
        Proto     => 'tcp',
        Listen    => 1,
        ReuseAddr => 1,
    ) or croak "WsNginx: cannot bind a free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# new(conf => $http_fragment, main_conf => ..., events_conf => ...,
#     worker_processes => 1, worker_connections => 1024,
#     error_log_level => 'info', daemon => 0, nginx => PATH, module => PATH)
sub new {
    my ($class, %o) = @_;
    croak "WsNginx->new: conf => TEXT is required" unless defined $o{conf};

    my ($nginx, $module) = $class->locate;
    # nginx => PATH, module => PATH: another build (63-redis-client.t's probe)
    ($nginx, $module) = @o{qw(nginx module)} if defined $o{nginx} && defined $o{module};

    my $dir = tempdir('wsnginx-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{TEST_NGINX_LEAVE});
    chmod 0755, $dir;    # workers may run as nobody when we are root

    my $self = bless {
        nginx            => $nginx,
        module           => $module,
        dir              => $dir,
        conf             => $o{conf},
        main_conf        => $o{main_conf} // '',
        events_conf      => $o{events_conf} // '',
        worker_connections => $o{worker_connections} // 1024,
        worker_processes => $o{worker_processes} // 1,
        error_log_level  => $o{error_log_level} // 'info',
        ports            => {},
        pid              => undef,
        stop_timeout     => $o{stop_timeout} // scaled(10),
    }, $class;
    push @DIRS, $dir;

    $self->_write_conf;
    return $self;
}

sub testdir { $_[0]{dir} }
sub nginx_binary { $_[0]{nginx} }
sub module_path { $_[0]{module} }
sub conf_path { "$_[0]{dir}/nginx.conf" }
sub pid { $_[0]{pid} }

sub port {
    my ($self, $n) = @_;
    $n //= 0;
    $self->{ports}{$n} //= free_port();
    return $self->{ports}{$n};
}

sub _subst {
    my ($self, $text) = @_;
    $text =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;
    $text =~ s/%%TESTDIR%%/$self->{dir}/g;
    return $text;
}

sub _write_conf {
    my ($self) = @_;
    my $d = $self->{dir};

    # Ports that nginx will listen on: waited for in start().
    my %listen;
    for my $text ($self->{conf}, $self->{main_conf}) {
        while ($text =~ /\blisten\s+(?:127\.0\.0\.1:)?%%PORT_(\d+)%%/g) {
            $listen{$1} = 1;
        }
    }

    my $http = $self->_subst($self->{conf});
    my $main = $self->_subst($self->{main_conf});
    my $events = $self->_subst($self->{events_conf});

    # TEST_NGINX_LOAD_MODULES: further dynamic modules (space-separated paths)
    # loaded before ours, e.g. a distro's ngx_stream_module.so.
    my $load = join '', map { "load_module $_;\n" } split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
    $load .= "load_module $self->{module};\n" if $self->{module} ne '';

    # TEST_NGINX_ACCESS_LOG=off: the http-level access log is off, so
    # sessions run without their request once upgraded (see ngx_detach.rs);
    # not for a test that configures access logs of its own.
    my $access_log = ($ENV{TEST_NGINX_ACCESS_LOG} // '') eq 'off' && $http !~ /\baccess_log\b/
        ? 'off' : "$d/access.log";

    my $conf = <<"EOF";
${load}daemon off;
master_process on;
worker_processes $self->{worker_processes};
pid $d/nginx.pid;
error_log $d/error.log $self->{error_log_level};
$main
events {
    worker_connections $self->{worker_connections};
$events
}

http {
    access_log $access_log;
    client_body_temp_path $d/client_body_temp;
    proxy_temp_path $d/proxy_temp;
    fastcgi_temp_path $d/fastcgi_temp;
    uwsgi_temp_path $d/uwsgi_temp;
    scgi_temp_path $d/scgi_temp;

$http
}
EOF

    open my $fh, '>', $self->conf_path or croak "cannot write nginx.conf: $!";
    print $fh $conf;
    close $fh;

    $self->{listen_ports} = [ sort { $a <=> $b } keys %listen ];
    $self->{conf_text} = $conf;
    return;
}

# The full text of the generated nginx.conf.
sub conf_text { $_[0]{conf_text} }

# Line number (1-based) of the first line of nginx.conf matching $re.
sub conf_line {
    my ($self, $re) = @_;
    $re = qr/\Q$re\E/ unless ref $re;
    my $n = 0;
    for my $line (split /\n/, $self->{conf_text}) {
        $n++;
        return $n if $line =~ $re;
    }
    return undef;
}

sub _cmd {
    my ($self, %o) = @_;
    my $d = $self->{dir};
    return (WsValgrind::prefix($d, test => $o{test}),
        $self->{nginx}, '-p', "$d/", '-e', "$d/error.log", '-c', "$d/nginx.conf");
}

# Runs nginx -t; returns (exit_status, combined stdout+stderr output).
sub test_config {
    my ($self) = @_;
    my @cmd = ($self->_cmd(test => 1), '-t');
    my $pid = open(my $fh, '-|') // croak "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my $rc = $? >> 8;
    $rc = 128 + ($? & 127) if $? & 127;
    return ($rc, $out);
}

sub start {
    my ($self, %o) = @_;
    croak "nginx already started" if $self->{pid};
    my $timeout = $o{timeout} // scaled(10);
    my $d = $self->{dir};

    unlink "$d/nginx.pid";

    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$d/stderr.log";
        open STDERR, '>&', \*STDOUT;
        setpgrp(0, 0);
        # Linux x86_64: prctl(PR_SET_PDEATHSIG, SIGTERM), so nginx goes away
        # even when the test process is killed with SIGKILL.
        eval { syscall(157, 1, 15) } if $^O eq 'linux' && $Config::Config{archname} =~ /^x86_64/;
        exec($self->_cmd) or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    $LIVE{"$self"} = $self;

    my $deadline = time + $timeout;
    my @wait = @{ $self->{listen_ports} };
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid) {
            my $st = $?;
            $self->{pid} = undef;
            delete $LIVE{"$self"};
            croak sprintf("nginx exited during startup (status %d):\n%s%s",
                $st, $self->_slurp("$d/stderr.log"), $self->error_log);
        }
        @wait = grep { !_can_connect($self->port($_)) } @wait;
        last if !@wait && -s "$d/nginx.pid";
        if (time > $deadline) {
            $self->stop;
            croak "nginx did not come up within ${timeout}s (waiting for ports "
                . join(',', map { $self->port($_) } @wait) . "):\n"
                . $self->error_log;
        }
        sleep 0.02;
    }
    $self->{master_pid} = $self->_read_pidfile // $pid;

    # The master listens before it forks the workers: wait for them too, so
    # that worker_pids() right after start() sees every worker.
    my $want = $self->{worker_processes} =~ /^\d+$/ ? $self->{worker_processes} : 1;
    while ((my @w = $self->worker_pids) < $want) {
        if (time > $deadline) {
            $self->stop;
            croak "nginx started no $want worker(s) within ${timeout}s:\n" . $self->error_log;
        }
        sleep 0.01;
    }
    return $self;
}

sub _can_connect {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1,
    );
    return 0 unless $s;
    close $s;
    return 1;
}

sub _read_pidfile {
    my ($self) = @_;
    my $t = $self->_slurp("$self->{dir}/nginx.pid");
    return $t =~ /(\d+)/ ? $1 : undef;
}

sub master_pid {
    my ($self) = @_;
    return undef unless $self->{pid};
    return $self->_read_pidfile // $self->{pid};
}

# PIDs of the current children (workers, cache helpers) of the master.
sub worker_pids {
    my ($self) = @_;
    my $m = $self->{pid} or return ();
    my @pids;
    opendir my $dh, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $stat = <$fh> // next;
        close $fh;
        # pid (comm) state ppid ...
        next unless $stat =~ /\)\s+\S+\s+(\d+)/;
        push @pids, $p + 0 if $1 == $m;
    }
    closedir $dh;
    return sort { $a <=> $b } @pids;
}

# Sends HUP; with wait => 1 (default) waits until the old workers are gone
# and new ones are running.
sub reload {
    my ($self, %o) = @_;
    my $pid = $self->{pid} or croak "nginx is not running";
    my @old = $self->worker_pids;
    kill 'HUP', $pid;
    return 1 if defined $o{wait} && !$o{wait};
    my %old = map { $_ => 1 } @old;
    my $deadline = time + ($o{timeout} // scaled(10));
    while (time < $deadline) {
        my @now = $self->worker_pids;
        my $new = grep { !$old{$_} } @now;
        my $gone = !grep { kill(0, $_) && _is_child_of($_, $pid) } @old;
        return 1 if $new && $gone;
        sleep 0.05;
    }
    return 0;
}

sub _is_child_of {
    my ($p, $parent) = @_;
    open my $fh, '<', "/proc/$p/stat" or return 0;
    my $stat = <$fh> // return 0;
    return $stat =~ /\)\s+\S+\s+(\d+)/ && $1 == $parent;
}

# Graceful stop: QUIT, then TERM after stop_timeout, then KILL (of the
# master and any worker left behind). Returns the master's wait status.
sub stop {
    my ($self, %o) = @_;
    my $pid = $self->{pid} or return;
    my $timeout = $o{timeout} // $self->{stop_timeout};
    my @workers = $self->worker_pids;

    my $status;
    my $reap = sub {
        my ($secs) = @_;
        my $deadline = time + $secs;
        while (time < $deadline) {
            my $r = waitpid($pid, WNOHANG);
            if ($r == $pid || $r == -1) { $status = $?; return 1 }
            sleep 0.02;
        }
        return 0;
    };

    kill 'QUIT', $pid;
    unless ($reap->($timeout)) {
        $self->{forced_stop} = 'TERM';
        kill 'TERM', $pid;
        unless ($reap->(scaled(5))) {
            $self->{forced_stop} = 'KILL';
            kill 'KILL', $pid;
            $reap->(5);
        }
    }
    # Workers normally exit before the master; make sure of it.
    for my $w (@workers) {
        kill 'KILL', $w if kill 0, $w;
    }
    $self->{pid} = undef;
    delete $LIVE{"$self"};
    WsValgrind::collect($self->{dir});
    return $status;
}

# Under valgrind or with ASan (TEST_NGINX_VALGRIND, TEST_NGINX_ASAN): the
# errors of every nginx run in this directory so far (WsValgrind::errors).
sub valgrind_errors { WsValgrind::errors($_[0]{dir}) }

# 'TERM' or 'KILL' when the last stop() had to force the shutdown.
sub forced_stop { $_[0]{forced_stop} }

sub running { defined $_[0]{pid} }

sub _slurp {
    my ($self, $file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $t = <$fh>;
    return $t // '';
}

sub error_log  { $_[0]->_slurp("$_[0]{dir}/error.log") }
sub access_log { $_[0]->_slurp("$_[0]{dir}/access.log") }

# Lines of the error log that indicate a bug: alert/emerg/crit, workers that
# died on a signal or exited with a non-zero code.
sub check_error_log {
    my ($self) = @_;
    return grep {
        /\[(?:alert|emerg|crit)\]/
            || /exited on signal/
            || /worker process \d+ exited with (?:fatal )?code [1-9]/
            || /worker process .*exited(?! with code 0)/
    } split /\n/, $self->error_log;
}

# Lines of the error log matching $re.
sub grep_error_log {
    my ($self, $re) = @_;
    return grep { $_ =~ $re } split /\n/, $self->error_log;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $@, $!);
    $self->stop if $self->{pid};
}

sub _stop_all {
    for my $t (values %LIVE) {
        eval { $t->stop(timeout => 3) };
    }
}

END {
    local $?;
    _stop_all();
    WsValgrind::collect($_) for grep { -d } @DIRS;
}

for my $sig (qw(INT TERM HUP PIPE)) {
    next if $sig eq 'PIPE';    # broken pipes are handled as I/O errors
    $SIG{$sig} = sub { _stop_all(); $SIG{$sig} = 'DEFAULT'; kill $sig, $$; };
}
$SIG{PIPE} = 'IGNORE';

1;
