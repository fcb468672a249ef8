package WsUpstream;

# A scripted WebSocket upstream for the websocket_pass tests. It listens on
# 127.0.0.1, forks one process per accepted connection, reads and records
# the handshake request, then hands the connection to a Perl callback that
# answers (or misbehaves) as the test wants. Whatever the callback observes
# is recorded with $c->note / $c->push_note and read back by the test with
# records() / wait_record(), through files in a private directory.
#
#   my $up = WsUpstream->new(handler => sub {
#       my ($c) = @_;                 # a WsUpstream::Conn
#       $c->handshake(protocol => 'chat');
#       $c->echo_loop;
#   });
#   $up->port;
#   my $rec = $up->wait_record(path => qr/id=7/, until => 'close_code');
#   $rec->{headers}{host}; $rec->{close_code}; @{ $rec->{frames} };
#   $up->stop;                        # also from DESTROY and END
#
# Every child leaves with POSIX::_exit, so no END block or destructor of
# the test (e.g. WsNginx's) runs in it.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Storable qw(nstore retrieve);
use Time::HiRes qw(sleep time);
use WsValgrind qw(scaled);

use parent 'WsProc';

# new(handler => CODE, port => 0)
sub new {
    my ($class, %o) = @_;
    my $handler = $o{handler} or croak 'WsUpstream->new: handler => CODE is required';

    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => $o{port} // 0,
        Proto     => 'tcp',
        Listen    => 128,
        ReuseAddr => 1,
    ) or croak "WsUpstream: cannot listen: $!";
    my $dir = tempdir('wsupstream-XXXXXX', TMPDIR => 1, CLEANUP => 1);

    my $pid = fork // croak "WsUpstream: fork: $!";
    if ($pid == 0) {
        _child_setup();
        setpgrp(0, 0);
        local $SIG{CHLD} = 'IGNORE';    # connection processes reap themselves
        my $n = 0;
        while (1) {
            my $s = $listen->accept or next;
            $n++;
            my $cpid = fork;
            if (!defined $cpid) { CORE::close $s; next }
            if ($cpid == 0) {
                $SIG{CHLD} = 'DEFAULT';
                CORE::close $listen;
                my $c = WsUpstream::Conn->_new($s, $n, "$dir/conn-$n");
                eval {
                    $c->_read_request;
                    $handler->($c);
                    1;
                } or do {
                    my $err = $@ || 'unknown error';
                    $c->note(handler_error => $err);
                };
                $c->note(done => 1);
                POSIX::_exit(0);
            }
            CORE::close $s;
        }
    }
    my $port = $listen->sockport;
    CORE::close $listen;

    # The server leads its own process group, the connection processes
    # are in it: stop() ends them all.
    return bless({ pid => $pid, port => $port, dir => $dir, group => 1 }, $class)->_track;
}

sub _child_setup {
    WsProc::child_setup();
    $SIG{PIPE} = 'IGNORE';
}

sub port { $_[0]{port} }
sub dir  { $_[0]{dir} }

# All records so far, ordered by connection number.
sub records {
    my ($self) = @_;
    opendir my $dh, $self->{dir} or return ();
    my @ids = sort { $a <=> $b } map { /^conn-(\d+)$/ ? $1 : () } readdir $dh;
    closedir $dh;
    my @r;
    for my $id (@ids) {
        my $rec = eval { retrieve("$self->{dir}/conn-$id") };
        push @r, $rec if $rec;
    }
    return @r;
}

sub count { scalar $_[0]->records }

# wait_record(path => qr/.../ | sub { $rec } , until => 'note' | CODE,
#     timeout => 5) -> the last record whose request path matches (and whose
# `until` note exists / callback is true), or undef after the timeout.
sub wait_record {
    my ($self, %o) = @_;
    my $match = $o{path};
    my $until = $o{until};
    my $deadline = time + scaled($o{timeout} // 5);
    while (1) {
        my @r = $self->records;
        if (defined $match) {
            @r = grep {
                ref $match eq 'CODE' ? $match->($_) : (($_->{path} // '') =~ $match)
            } @r;
        }
        if (defined $until) {
            @r = grep { ref $until eq 'CODE' ? $until->($_) : exists $_->{$until} } @r;
        }
        return $r[-1] if @r;
        return undef if time > $deadline;
        sleep 0.02;
    }
}

# ---------------------------------------------------------------------------

package WsUpstream::Conn;

use strict;
use warnings;

use Carp qw(croak);
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use IO::Select;
use Socket qw(SOL_SOCKET SO_SNDBUF SO_RCVBUF IPPROTO_TCP TCP_NODELAY);
use Storable qw(nstore);
use Time::HiRes qw(sleep time);

use WsClient ();
use WsValgrind qw(scaled);

sub _new {
    my ($class, $fh, $id, $file) = @_;
    setsockopt($fh, IPPROTO_TCP, TCP_NODELAY, pack('i', 1));
    my $self = bless {
        fh   => $fh,
        buf  => '',
        eof  => 0,
        file => $file,
        rec  => { id => $id, accepted_at => time },
    }, $class;
    $self->_save;
    return $self;
}

sub socket { $_[0]{fh} }
sub id     { $_[0]{rec}{id} }
sub record { $_[0]{rec} }
sub path   { $_[0]{rec}{path} }
sub is_eof { $_[0]{eof} }

# The request header (lower-case name): all values joined with ", ".
sub header { $_[0]{rec}{headers}{ lc $_[1] } }

sub _save {
    my ($self) = @_;
    my $tmp = "$self->{file}.tmp";
    nstore($self->{rec}, $tmp);
    rename $tmp, $self->{file};
}

# note(name => value, ...): sets fields of this connection's record.
sub note {
    my ($self, %kv) = @_;
    @{ $self->{rec} }{ keys %kv } = values %kv;
    $self->_save;
    return $self;
}

# push_note(name => value): appends to a list in the record.
sub push_note {
    my ($self, $k, $v) = @_;
    push @{ $self->{rec}{$k} }, $v;
    $self->_save;
    return $self;
}

sub set_sndbuf {
    my ($self, $n) = @_;
    setsockopt($self->{fh}, SOL_SOCKET, SO_SNDBUF, pack('i', $n));
}

# read_slowly($bytes_per_read, $delay_seconds): later reads take at most
# $bytes_per_read bytes and sleep $delay after each; read_slowly(0) undoes it.
sub read_slowly {
    my ($self, $bytes, $delay) = @_;
    $self->{chunk} = $bytes || 0;
    $self->{delay} = $bytes ? ($delay // 0) : 0;
    return $self;
}

# Reads into the buffer until $deadline; false on timeout or EOF.
sub _read_some {
    my ($self, $deadline) = @_;
    return 0 if $self->{eof};
    my $left = $deadline - time;
    $left = 0 if $left < 0;
    return 0 unless IO::Select->new($self->{fh})->can_read($left);
    my $n = sysread($self->{fh}, $self->{buf}, $self->{chunk} || 65536, length $self->{buf});
    sleep $self->{delay} if $self->{delay};
    if (!defined $n) {
        return 1 if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        $self->{eof} = 1;
        $self->{read_error} = "$!";
        return 0;
    }
    if ($n == 0) { $self->{eof} = 1; return 0 }
    return 1;
}

sub _read_request {
    my ($self) = @_;
    my $deadline = time + scaled(5);
    while ($self->{buf} !~ /\r\n\r\n/) {
        last unless $self->_read_some($deadline);
    }
    my $rec = $self->{rec};
    unless ($self->{buf} =~ s/\A(.*?\r\n)\r\n//s) {
        $rec->{request} = $self->{buf};
        $rec->{bad_request} = 1;
        $self->_save;
        return;
    }
    my $head = $1;
    $rec->{request} = "$head\r\n";
    my @lines = split /\r\n/, $head;
    my $rl = shift @lines // '';
    @$rec{qw(method path version)} = $rl =~ m{^(\S+) (\S+) HTTP/(\d\.\d)$};
    my (%h, @order);
    for (@lines) {
        next unless /^([^:]+):[ \t]*(.*?)[ \t]*$/;
        my $k = lc $1;
        push @order, $1;
        $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
    }
    $rec->{headers} = \%h;
    $rec->{header_names} = \@order;
    $rec->{request_at} = time;
    $self->_save;
    return;
}

sub accept_key {
    my ($self, $key) = @_;
    return WsClient::accept_key($key // $self->header('Sec-WebSocket-Key') // '');
}

# Writes everything (blocking); false when the peer is gone.
sub send_raw {
    my ($self, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($self->{fh}, $bytes, length($bytes) - $off, $off);
        if (!defined $n) {
            next if $! == EINTR;
            $self->{write_error} = "$!";
            return 0;
        }
        $off += $n;
    }
    return 1;
}

# handshake(status => 101, accept => $value | undef (left out),
#     protocol => $name, headers => [name, value, ...], then => $bytes)
# Sends the response head, and `then` (frames) in the same write.
sub handshake {
    my ($self, %o) = @_;
    my $status = $o{status} // 101;
    my $resp;
    if ($status == 101) {
        $resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        my $accept = exists $o{accept} ? $o{accept} : $self->accept_key;
        $resp .= "Sec-WebSocket-Accept: $accept\r\n" if defined $accept;
    } else {
        $resp = "HTTP/1.1 $status Whatever\r\nContent-Length: 0\r\n";
    }
    $resp .= "Sec-WebSocket-Protocol: $o{protocol}\r\n" if defined $o{protocol};
    my @h = @{ $o{headers} // [] };
    while (my ($n, $v) = splice @h, 0, 2) { $resp .= "$n: $v\r\n" }
    $resp .= "\r\n";
    $resp = $o{raw} if defined $o{raw};
    return $self->send_raw($resp . ($o{then} // ''));
}

# frame(fin => 1, opcode => 1, payload => '', mask => 0, rsv => 0, mask_key => 4 bytes):
# WsClient::build_frame, unmasked unless asked (a server's frames).
sub frame {
    shift if ref $_[0] || (@_ % 2 && $_[0] eq __PACKAGE__);
    my %o = @_;
    return WsClient::build_frame(%o, mask => $o{mask} ? 1 : 0);
}

sub _xor {
    my ($data, $key) = @_;
    my $n = length $data or return '';
    return $data ^ substr($key x (int($n / 4) + 1), 0, $n);
}

sub send_frame { my ($s, %o) = @_; $s->send_raw(frame(%o)) }
sub send_text  { my ($s, $p) = @_; $s->send_frame(opcode => 1, payload => $p) }
sub send_binary { my ($s, $p) = @_; $s->send_frame(opcode => 2, payload => $p) }
sub send_ping  { my ($s, $p) = @_; $s->send_frame(opcode => 9, payload => $p // '') }
sub send_close {
    my ($s, $code, $reason) = @_;
    $s->send_frame(opcode => 8,
        payload => defined $code ? pack('n', $code) . ($reason // '') : '');
}

# recv_frame(timeout => 5) -> {fin, rsv, opcode, masked, mask_key, length,
# payload (unmasked)}, or undef on timeout / EOF. The timeout is scaled by
# the slowdown factor (WsValgrind); deadline => T (absolute) is not.
sub recv_frame {
    my ($self, %o) = @_;
    my $deadline = $o{deadline} // time + scaled($o{timeout} // 5);
    while (1) {
        my $f = $self->_parse;
        return $f if $f;
        return undef unless $self->_read_some($deadline);
    }
}

sub _parse {
    my ($self) = @_;
    my $b = \$self->{buf};
    return undef if length $$b < 2;
    my ($b0, $b1) = unpack 'CC', $$b;
    my $masked = ($b1 & 0x80) ? 1 : 0;
    my $len = $b1 & 0x7F;
    my $hl = 2;
    if ($len == 126) {
        return undef if length $$b < 4;
        $len = unpack 'n', substr($$b, 2, 2);
        $hl = 4;
    } elsif ($len == 127) {
        return undef if length $$b < 10;
        my ($hi, $lo) = unpack 'NN', substr($$b, 2, 8);
        $len = $hi * 4294967296 + $lo;
        $hl = 10;
    }
    my $key = '';
    if ($masked) {
        return undef if length $$b < $hl + 4;
        $key = substr($$b, $hl, 4);
        $hl += 4;
    }
    return undef if length $$b < $hl + $len;
    my $payload = substr($$b, $hl, $len);
    $payload = _xor($payload, $key) if $masked;
    substr($$b, 0, $hl + $len, '');
    return {
        fin      => ($b0 >> 7) & 1,
        rsv      => ($b0 >> 4) & 7,
        opcode   => $b0 & 0xF,
        masked   => $masked,
        mask_key => $key,
        length   => $len,
        payload  => $payload,
    };
}

# The close code of a close frame (undef when empty).
sub close_code {
    my ($f) = @_;
    return undef unless $f && length($f->{payload}) >= 2;
    return unpack 'n', $f->{payload};
}

# wait_close(timeout => 5): reads frames until a close; notes its code as
# close_code (-1 for an empty close, undef note when none came) and the
# frames on the way as `frames`. Returns the close frame or undef.
sub wait_close {
    my ($self, %o) = @_;
    my $deadline = time + scaled($o{timeout} // 5);
    while (1) {
        my $f = $self->recv_frame(deadline => $deadline);
        unless ($f) {
            $self->note(close_code => undef, eof_before_close => $self->{eof} ? 1 : 0);
            return undef;
        }
        $self->push_note(frames => $f);
        if ($f->{opcode} == 8) {
            $self->note(close_code => close_code($f) // -1);
            return $f;
        }
    }
}

# wait_eof(timeout => 5): true when the peer closed TCP; notes `eof`.
sub wait_eof {
    my ($self, %o) = @_;
    my $deadline = time + scaled($o{timeout} // 5);
    while (!$self->{eof} && time < $deadline) {
        $self->_read_some($deadline);
        $self->{buf} = '' if length $self->{buf} > 1 << 20;
    }
    $self->note(eof => $self->{eof} ? 1 : 0);
    return $self->{eof};
}

# echo_loop(timeout => 10, record => 1): echoes every data frame as it came
# (same fin and opcode, unmasked); records every frame in `frames` when
# `record`; does not answer pings. Text commands from the peer (whole
# frames): "cmd:ping:PAYLOAD" makes the upstream send a ping,
# "cmd:close:CODE" makes it start the close handshake.
# A close is answered with the same code, then the loop waits for EOF.
sub echo_loop {
    my ($self, %o) = @_;
    my $record = $o{record} // 1;
    my $timeout = $o{timeout} // 10;
    while (1) {
        my $f = $self->recv_frame(timeout => $timeout);
        unless ($f) {
            $self->note(loop_end => $self->{eof} ? 'eof' : 'timeout');
            return;
        }
        $self->push_note(frames => $f) if $record;
        my $op = $f->{opcode};
        if ($op == 8) {
            my $code = close_code($f);
            $self->note(close_code => $code // -1);
            $o{on_close}->($self, $f) if $o{on_close};
            $self->send_close($code);
            $self->wait_eof(timeout => 5);
            return;
        }
        next if $op == 9 || $op == 10;
        if ($op == 1 && $f->{fin} && $f->{payload} =~ /\Acmd:(\w+):(.*)\z/s) {
            my ($cmd, $arg) = ($1, $2);
            if ($cmd eq 'ping') { $self->send_ping($arg); next }
            if ($cmd eq 'close') {
                $self->send_close($arg);
                my $reply = $self->wait_close(timeout => 5);
                $self->note(close_reply => close_code($reply));
                $self->wait_eof(timeout => 5);
                return;
            }
        }
        $self->send_frame(fin => $f->{fin}, opcode => $op, payload => $f->{payload})
            or return;
    }
}

# serve(idle => 30): an echo loop for connections that may sit in nginx's
# keepalive pool, where one upstream connection carries several client
# sessions. Echoes every data frame as it came; answers a ping with a pong
# (nginx fences a connection it pools with a ping); records every frame it
# receives in `frames` and pongs also in `pongs` (with `at`); answers a
# close with the same code and waits for EOF. Notes how it ended as `end`
# ('eof', 'timeout', 'dropped' when it closed TCP itself) and `end_at`.
# Text commands (whole frames, echoed like any message):
#   "cmd:after:SECONDS:ACTION:ARG"  when nothing has arrived for SECONDS:
#       ping  - send a ping with payload ARG (noted as `pinged_at`)
#       pings - send ARG pings of 125 bytes in one write
#       splitping - send a ping with payload ARG in two writes 0.1 s apart
#       text  - send a text frame ARG (noted as `sent_text_at`)
#       close - send a close frame with code ARG (default 1000)
#       drop  - close TCP without a close frame
#   "cmd:frag:ARG"  send ARG at once as a non-final text fragment
#   "cmd:burst:N:SIZE:SECONDS:LAST"  after the echo, send N text messages of
#       SIZE bytes ("burst 1 ...", padded with '.'), then read nothing for
#       SECONDS, then send the text LAST (noted as `last_sent_at`)
sub serve {
    my ($self, %o) = @_;
    my $idle = $o{idle} // 30;
    my $pending;
    while (1) {
        # Scenario timing: not scaled.
        my $f = $self->recv_frame(deadline => time + ($pending ? $pending->[0] : $idle));
        unless ($f) {
            if ($self->{eof}) {
                $self->note(end => 'eof', end_at => time);
                return;
            }
            unless ($pending) {
                $self->note(end => 'timeout', end_at => time);
                return;
            }
            my (undef, $action, $arg) = @$pending;
            $pending = undef;
            if ($action eq 'ping') {
                $self->send_ping($arg);
                $self->note(pinged_at => time);
            } elsif ($action eq 'pings') {
                $self->send_raw(join '', map {
                    frame(opcode => 9, payload => sprintf('%03d', $_) . ('p' x 122))
                } 1 .. $arg);
                $self->note(pinged_at => time);
            } elsif ($action eq 'splitping') {
                my $f = frame(opcode => 9, payload => $arg);
                $self->send_raw(substr($f, 0, 2));
                sleep 0.1;
                $self->send_raw(substr($f, 2));
                $self->note(pinged_at => time);
            } elsif ($action eq 'text') {
                $self->send_text($arg);
                $self->note(sent_text_at => time);
            } elsif ($action eq 'close') {
                $self->send_close(length $arg ? $arg : 1000);
                $self->note(sent_close_at => time);
            } elsif ($action eq 'drop') {
                $self->note(end => 'dropped', end_at => time);
                $self->close;
                return;
            }
            next;
        }
        $self->push_note(frames => { %$f, at => time });
        my $op = $f->{opcode};
        if ($op == 8) {
            my $code = close_code($f);
            $self->note(close_code => $code // -1);
            $self->send_close($code);
            next;    # then EOF
        }
        if ($op == 10) {
            $self->push_note(pongs => { payload => $f->{payload}, masked => $f->{masked}, at => time });
            next;
        }
        if ($op == 9) {
            $self->send_frame(opcode => 10, payload => $f->{payload})
                or do { $self->note(end => 'write error', end_at => time); return };
            next;
        }
        if ($op == 1 && $f->{fin} && $f->{payload} =~ /\Acmd:after:([\d.]+):(\w+):?(.*)\z/s) {
            $pending = [ $1, $2, $3 ];
        }
        my $frag = $op == 1 && $f->{fin} && $f->{payload} =~ /\Acmd:frag:(.*)\z/s ? $1 : undef;
        $self->send_frame(fin => $f->{fin}, opcode => $op, payload => $f->{payload})
            or do { $self->note(end => 'write error', end_at => time); return };
        $self->send_frame(fin => 0, opcode => 1, payload => $frag) if defined $frag;
        if ($op == 1 && $f->{fin} && $f->{payload} =~ /\Acmd:burst:(\d+):(\d+):([\d.]+):(.*)\z/s) {
            my ($n, $size, $quiet, $last) = ($1, $2, $3, $4);
            for my $i (1 .. $n) {
                my $m = "burst $i ";
                $self->send_text($m . '.' x ($size - length $m))
                    or do { $self->note(end => 'write error', end_at => time); return };
            }
            sleep $quiet;
            $self->send_text($last);
            $self->note(last_sent_at => time);
        }
    }
}

sub close {
    my ($self) = @_;
    CORE::close $self->{fh} if $self->{fh};
    $self->{fh} = undef;
}

# reset_close: closes the connection with SO_LINGER 0 (a TCP RST instead of
# a FIN); notes `reset_at` (appended for the 4x-fault-*.t files).
sub reset_close {
    my ($self) = @_;
    return unless $self->{fh};
    $self->note(reset_at => time);
    setsockopt($self->{fh}, SOL_SOCKET, Socket::SO_LINGER(), pack('ii', 1, 0));
    $self->close;
}

1;
