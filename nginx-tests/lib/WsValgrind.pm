package WsValgrind;

# Running the nginx under test under valgrind's memcheck or built with
# AddressSanitizer, and the timing factor for slow runs.
#
#   TEST_NGINX_VALGRIND=1       every nginx the harness starts (and nginx -t)
#                               runs under valgrind --tool=memcheck; each
#                               process writes valgrind-<pid>.log in the
#                               test's directory
#   TEST_NGINX_VALGRIND_OPTS    more valgrind options (e.g. --track-origins=yes)
#   TEST_NGINX_ASAN=1           the nginx and module under test are built with
#                               -fsanitize=address (make test-asan): the
#                               harness sets ASAN_OPTIONS (reports into
#                               asan/asan.<pid> in the test's directory, exit
#                               code 99, leak checking except for nginx -t,
#                               which exits without freeing by design) and
#                               LSAN_OPTIONS (valgrind/lsan.supp)
#   TEST_NGINX_VALGRIND_DIR     a directory the logs are copied to (as
#                               <test>-<pid>.log, ASan's as <test>-<pid>.asan)
#                               when nginx stops and when the test ends; make
#                               test-valgrind and test-asan summarise them
#                               with valgrind/report.py
#   TEST_NGINX_SLOWDOWN=F       multiply the harness's waits of 1 s or more
#                               (client reads, nginx start/stop/reload, the
#                               scripted upstream's reads, client programs)
#                               by F; default 5 under valgrind, 2 with ASan,
#                               else 1.
#                               Shorter ones are a test's own timing, not a
#                               safety margin (a client that gives up after
#                               0.2 s, nothing may arrive within 0.5 s):
#                               they are kept as they are.
#
# Errors are memcheck's error records (invalid reads/writes/frees,
# uninitialised values, definitely lost blocks) that valgrind/nginx.supp does
# not suppress; a process with one exits with code 99 (--error-exitcode), so
# a worker with an error also shows up in error.log as "exited with code 99".
# With ASan: AddressSanitizer's reports, and LeakSanitizer's leaks that
# valgrind/lsan.supp does not suppress.

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter 'import';
use File::Basename qw(basename dirname);
use File::Copy qw(copy);
use File::Path qw(make_path);
use File::Spec;

our @EXPORT_OK = qw(slowdown scaled);

use constant ERROR_EXITCODE => 99;

sub enabled { !!$ENV{TEST_NGINX_VALGRIND} }
sub asan { !!$ENV{TEST_NGINX_ASAN} }

# valgrind or ASan: the tests check for their errors.
sub checking { enabled() || asan() }

sub slowdown {
    my $f = $ENV{TEST_NGINX_SLOWDOWN};
    return $f if defined $f && $f =~ /^\d+(?:\.\d+)?$/ && $f > 0;
    return enabled() ? 5 : asan() ? 2 : 1;
}

# scaled($seconds): a wait of $seconds, times the slowdown factor when it is
# 1 s or more.
sub scaled { return $_[0] >= 1 ? $_[0] * slowdown() : $_[0] }

sub repo_root {
    return abs_path(File::Spec->catdir(dirname(abs_path(__FILE__)), '..', '..'));
}

sub suppressions { File::Spec->catfile(repo_root(), 'valgrind', 'nginx.supp') }

# prefix($dir, test => 0) -> what to put before nginx's command line (test:
# for nginx -t): valgrind, writing its logs into $dir; with ASan, `env` with
# the sanitizer options; () otherwise. Text logs: valgrind gives a forked
# child (a worker) a log file of its own (%p) but not an XML file. -v: the
# log ends with the suppressions used and how often.
sub prefix {
    my ($dir, %o) = @_;
    if (asan()) {
        # the workers run as nobody when we are root: a directory they can write
        my $logs = "$dir/asan";
        mkdir $logs;
        chmod 01777, $logs;
        my $lsan = File::Spec->catfile(repo_root(), 'valgrind', 'lsan.supp');
        return ('env',
            "ASAN_OPTIONS=log_path=$logs/asan:exitcode=" . ERROR_EXITCODE
                . ':detect_leaks=' . ($o{test} ? 0 : 1),
            "LSAN_OPTIONS=suppressions=$lsan:print_suppressions=0");
    }
    return () unless enabled();
    my $supp = suppressions();
    return (
        'valgrind', '--tool=memcheck', '--trace-children=yes', '--vgdb=no', '-v',
        '--leak-check=full', '--show-leak-kinds=definite,possible',
        '--errors-for-leak-kinds=definite', '--error-exitcode=' . ERROR_EXITCODE,
        '--num-callers=40', (-f $supp ? ("--suppressions=$supp") : ()),
        '--gen-suppressions=all', "--log-file=$dir/valgrind-%p.log",
        split(' ', $ENV{TEST_NGINX_VALGRIND_OPTS} // ''),
    );
}

sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $t = <$fh>;
    return $t // '';
}

# Frames that only say where memory was allocated, freed or copied.
my $ALLOC_FN = qr/^(?:malloc|calloc|realloc|free|memalign|posix_memalign|aligned_alloc
    |operator\ new|operator\ delete|__rust_|__rdl_|alloc::|std::alloc|ngx_alloc|ngx_calloc
    |ngx_memalign|ngx_palloc|ngx_pnalloc|ngx_pcalloc|ngx_palloc_large|ngx_palloc_small
    |ngx_palloc_block|ngx_pfree|mem(?:cpy|move|set|cmp)|__mem|strlen|strn?cmp|strn?cpy)/x;

# The first line of a memcheck report that is an error (with
# --errors-for-leak-kinds=definite); possibly lost blocks are not.
our $ERROR_RE = qr/^(?:Invalid\ |Mismatched\ free|Conditional\ jump|Use\ of\ uninitialised
    |Syscall\ param|Source\ and\ destination\ overlap|Argument\ .*fishy|Jump\ to\ the\ invalid
    |Process\ terminating|.*\ are\ definitely\ lost\ in\ loss\ record)/x;

# errors($dir) -> one line per memcheck error that valgrind/nginx.supp does
# not suppress, in the valgrind-*.log files of $dir: "<what> at <frame>
# [module] (file)"; and a line for each process whose report never ended or
# whose ERROR SUMMARY counts errors not listed (should not happen).
sub errors {
    my ($dir) = @_;
    my @out;
    for my $file (sort glob("$dir/valgrind-*.log")) {
        my $name = basename($file);
        my $text = _slurp($file);
        my ($pid) = $text =~ /^==(\d+)==/m or next;
        my @lines = map { /^==$pid== ?(.*)$/ ? $1 : () } split /\n/, $text;
        my $found = 0;
        for (my $i = 0; $i < @lines; $i++) {
            next unless $lines[$i] =~ $ERROR_RE;
            my $what = $lines[$i];
            $what =~ s/ in loss record \d+ of \d+//;
            my (@fns, $module);
            for (my $j = $i + 1; $j < @lines && $lines[$j] =~ /\S/; $j++) {
                next unless $lines[$j] =~ /^\s+(?:at|by) 0x[0-9A-F]+: (.*?) \((.*)\)$/;
                push @fns, $1;
                $module = 1 if $2 =~ /ngx_http_websocket_module/ || $1 =~ /ngx_http_websocket_module/;
            }
            my ($at) = grep { $_ !~ $ALLOC_FN } @fns;
            push @out, sprintf('%s at %s%s (%s)', $what, $at // $fns[0] // '?',
                $module ? ' [module]' : '', $name);
            $found++;
        }
        my ($n) = $text =~ /ERROR SUMMARY: (\d+) errors/;
        if (!defined $n) {
            push @out, "incomplete report: no ERROR SUMMARY, the process was killed? ($name)";
        } elsif ($n > 0 && !$found) {
            push @out, "ERROR SUMMARY: $n errors ($name)";
        }
    }
    # ASan: "==PID==ERROR: AddressSanitizer: <what>" with a stack, or
    # LeakSanitizer's "Direct/Indirect leak of N byte(s) ..." blocks.
    for my $file (sort glob("$dir/asan/asan.*")) {
        my $name = basename($file);
        my @lines = split /\n/, _slurp($file);
        for (my $i = 0; $i < @lines; $i++) {
            my $what;
            if ($lines[$i] =~ /ERROR: AddressSanitizer: (.*)/) { $what = $1 }
            elsif ($lines[$i] =~ /^((?:Direct|Indirect) leak of .*) allocated from:/) { $what = $1 }
            elsif ($lines[$i] =~ /ERROR: (?!LeakSanitizer: detected memory leaks)(\w+Sanitizer: .*)/) { $what = $1 }
            next unless defined $what;
            $what =~ s/ on address 0x[0-9a-f]+.*//;
            my (@fns, $module);
            for (my $j = $i + 1; $j < @lines && $lines[$j] !~ /^\s*$/; $j++) {
                next unless $lines[$j] =~ /^\s+#\d+ 0x[0-9a-f]+ in (\S+)\s*(.*)/;
                push @fns, $1;
                $module = 1 if "$1 $2" =~ /ngx_http_websocket_module/;
            }
            my ($at) = grep { $_ !~ $ALLOC_FN && $_ !~ /^__interceptor_|^__asan/ } @fns;
            push @out, sprintf('%s at %s%s (%s)', $what, $at // $fns[0] // '?',
                $module ? ' [module]' : '', $name);
        }
    }
    return @out;
}

# collect($dir): copies the logs in $dir to TEST_NGINX_VALGRIND_DIR as
# <test>-<pid>.log (again after later runs: it is idempotent).
sub collect {
    my ($dir) = @_;
    my $to = $ENV{TEST_NGINX_VALGRIND_DIR} or return;
    make_path($to);
    my $test = basename($0, '.t');
    for my $file (glob("$dir/valgrind-*.log")) {
        my ($pid) = basename($file) =~ /^valgrind-(\d+)\.log$/ or next;
        copy($file, "$to/$test-$pid.log");
    }
    for my $file (glob("$dir/asan/asan.*")) {
        my ($pid) = basename($file) =~ /^asan\.(\d+)$/ or next;
        copy($file, "$to/$test-$pid.asan");
    }
    return;
}

1;
