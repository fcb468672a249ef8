package WsClient;

# A raw-socket RFC 6455 client for integration tests. It does exactly what
# it is told: nothing is answered automatically, and any frame (unmasked,
# reserved bits, bad opcodes, lying lengths) can be built and sent.

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(sha1);
use Errno qw(EAGAIN EWOULDBLOCK EINTR EINPROGRESS ECONNRESET EPIPE);
use IO::Handle;
use IO::Select;
use MIME::Base64 qw(encode_base64 decode_base64);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF SO_SNDBUF IPPROTO_TCP
    TCP_NODELAY inet_aton pack_sockaddr_in);
use Time::HiRes qw(sleep time);
use WsValgrind qw(scaled);

use Exporter 'import';
our @EXPORT_OK = qw(http_request build_frame accept_key
    OP_CONT OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG);

use constant {
    OP_CONT   => 0x0,
    OP_TEXT   => 0x1,
    OP_BINARY => 0x2,
    OP_CLOSE  => 0x8,
    OP_PING   => 0x9,
    OP_PONG   => 0xA,
};

use constant WS_GUID => '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

$SIG{PIPE} = 'IGNORE';

sub accept_key {
    my ($key) = @_;
    return encode_base64(sha1($key . WS_GUID), '');
}

sub random_key {
    return encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
}

# --- sockets --------------------------------------------------------------

sub _tcp_connect {
    my (%o) = @_;
    my $host = $o{host} // '127.0.0.1';
    my $port = $o{port} or croak 'port => N is required';
    my $timeout = $o{timeout} // 5;

    CORE::socket(my $fh, PF_INET, SOCK_STREAM, 0) or croak "socket: $!";
    setsockopt($fh, SOL_SOCKET, SO_RCVBUF, pack('i', $o{rcvbuf})) if $o{rcvbuf};
    setsockopt($fh, SOL_SOCKET, SO_SNDBUF, pack('i', $o{sndbuf})) if $o{sndbuf};
    setsockopt($fh, IPPROTO_TCP, TCP_NODELAY, pack('i', 1));
    $fh->blocking(0);
    my $addr = inet_aton($host) or croak "cannot resolve $host";
    unless (CORE::connect($fh, pack_sockaddr_in($port, $addr))) {
        croak "connect to $host:$port: $!" unless $! == EINPROGRESS;
        my $sel = IO::Select->new($fh);
        croak "connect to $host:$port: timed out" unless $sel->can_write($timeout);
        my $err = getsockopt($fh, SOL_SOCKET, Socket::SO_ERROR());
        $err = unpack('i', $err);
        if ($err) { local $! = $err; croak "connect to $host:$port: $!" }
    }
    return $fh;
}

# Writes all of $data to the non-blocking $fh within $timeout; while the
# socket is not writable, reads whatever arrives into $$inbuf so a server
# that echoes while we send cannot deadlock us. Returns 1, or 0 on error.
sub _write_all {
    my ($fh, $data, $timeout, $inbuf, $state) = @_;
    my $deadline = time + ($timeout // 10);
    my $off = 0;
    my $len = length $data;
    while ($off < $len) {
        my $n = syswrite($fh, $data, $len - $off, $off);
        if (defined $n) { $off += $n; next }
        return 0 unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my ($r, $w) = IO::Select::select(
            ($inbuf ? IO::Select->new($fh) : undef), IO::Select->new($fh), undef, $left);
        if ($inbuf && $r && @$r && !($state && $state->{eof})) {
            my $got = sysread($fh, my $chunk, 65536);
            if (defined $got && $got > 0) { $$inbuf .= $chunk }
            elsif (defined $got || $! == ECONNRESET) { $state->{eof} = 1 if $state }
        }
    }
    return 1;
}

# --- plain HTTP -----------------------------------------------------------

# http_request($port, $raw_request, timeout => 5)
#   -> ($status, {lc name => value}, $body)
# Reads one response (Content-Length, chunked, or until EOF).
sub http_request {
    shift if @_ && !ref $_[0] && $_[0] eq __PACKAGE__;
    my ($port, $raw, %o) = @_;
    my $timeout = scaled($o{timeout} // 5);
    my $fh = _tcp_connect(port => $port, host => $o{host}, timeout => $timeout);
    _write_all($fh, $raw, $timeout) or croak "http_request: write failed: $!";

    my $buf = '';
    my $eof = 0;
    my $deadline = time + $timeout;
    my $read_more = sub {
        return 0 if $eof;
        my $left = $deadline - time;
        return 0 if $left <= 0;
        return 0 unless IO::Select->new($fh)->can_read($left);
        my $n = sysread($fh, $buf, 65536, length $buf);
        if (!defined $n) {
            return 1 if $! == EAGAIN || $! == EINTR;
            $eof = 1; return 0;
        }
        $eof = 1 if $n == 0;
        return $n > 0;
    };

    while ($buf !~ /\r?\n\r?\n/) {
        last unless $read_more->();
    }
    my ($head, $body) = split /\r?\n\r?\n/, $buf, 2;
    return (undef, {}, undef) unless defined $head && length $head;
    $body //= '';
    my ($status, $headers) = _parse_head($head);

    if (defined(my $cl = $headers->{'content-length'})) {
        while (length $body < $cl) {
            my $before = length $buf;
            last unless $read_more->();
            $body .= substr($buf, $before);
        }
        $body = substr($body, 0, $cl);
    } elsif (($headers->{'transfer-encoding'} // '') =~ /chunked/i) {
        my $decoded = '';
        while (1) {
            if ($body =~ /\A([0-9a-fA-F]+)[^\r\n]*\r\n/) {
                my ($size, $hl) = (hex $1, length $&);
                if ($size == 0) { last }
                if (length($body) >= $hl + $size + 2) {
                    $decoded .= substr($body, $hl, $size);
                    substr($body, 0, $hl + $size + 2, '');
                    next;
                }
            }
            my $before = length $buf;
            last unless $read_more->();
            $body .= substr($buf, $before);
        }
        $body = $decoded;
    } elsif ($status != 101 && $status != 204 && $status != 304) {
        while (1) {
            my $before = length $buf;
            last unless $read_more->();
            $body .= substr($buf, $before);
        }
    }
    CORE::close $fh;
    return ($status, $headers, $body);
}

sub _parse_head {
    my ($head) = @_;
    my @lines = split /\r?\n/, $head;
    my $sl = shift @lines // '';
    my ($status) = $sl =~ m{^HTTP/\d\.\d\s+(\d{3})};
    my %h;
    for (@lines) {
        next unless /^([^:]+):\s*(.*?)\s*$/;
        my $k = lc $1;
        $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
    }
    return ($status // 0, \%h, $sl);
}

# --- the WebSocket client -------------------------------------------------

# WsClient->connect(port => $p, path => '/ws', host => '127.0.0.1',
#     headers => { Name => value | undef (removes) }, extra_headers => [n, v, ...],
#     key => $key, method => 'GET', http_version => '1.1',
#     protocols => [...], origin => $o, timeout => 5, rcvbuf => N, raw => $request)
# Returns the client after reading the response head, whatever the status.
sub connect {
    my ($class, %o) = @_;
    my $timeout = scaled($o{timeout} // 5);
    my $port = $o{port} or croak 'port => N is required';
    my $path = $o{path} // '/';
    my $host = $o{host} // '127.0.0.1';
    my $key = exists $o{key} ? $o{key} : random_key();

    my @hdr = (
        Host                    => "$host:$port",
        Upgrade                 => 'websocket',
        Connection              => 'Upgrade',
        'Sec-WebSocket-Key'     => $key,
        'Sec-WebSocket-Version' => '13',
    );
    push @hdr, 'Sec-WebSocket-Protocol' => join(', ', @{ $o{protocols} })
        if $o{protocols};
    push @hdr, Origin => $o{origin} if defined $o{origin};

    my %over = %{ $o{headers} // {} };
    my %lc_over = map { lc($_) => $_ } keys %over;
    my @final;
    for (my $i = 0; $i < @hdr; $i += 2) {
        my ($n, $v) = @hdr[$i, $i + 1];
        if (my $ok = delete $lc_over{lc $n}) {
            $v = $over{$ok};
        }
        push @final, $n, $v if defined $v;
    }
    for my $lk (sort keys %lc_over) {
        my $n = $lc_over{$lk};
        push @final, $n, $over{$n} if defined $over{$n};
    }
    push @final, @{ $o{extra_headers} } if $o{extra_headers};

    my $req = $o{raw};
    unless (defined $req) {
        $req = sprintf("%s %s HTTP/%s\r\n", $o{method} // 'GET', $path,
            $o{http_version} // '1.1');
        for (my $i = 0; $i < @final; $i += 2) {
            $req .= "$final[$i]: $final[$i + 1]\r\n";
        }
        $req .= "\r\n";
    }

    my $fh = _tcp_connect(%o, port => $port, host => $host, timeout => $timeout);
    my $self = bless {
        fh      => $fh,
        port    => $port,
        key     => $key,
        buf     => '',
        eof     => 0,
        timeout => $timeout,
        request => $req,
        chunk   => 0,
        delay   => 0,
        interleaved => [],
    }, $class;

    _write_all($fh, $req, $timeout) or croak "handshake write failed: $!";

    my $deadline = time + $timeout;
    while ($self->{buf} !~ /\r\n\r\n/) {
        last unless $self->_read_some($deadline);
    }
    if ($self->{buf} =~ s/\A(.*?)\r\n\r\n//s) {
        my $head = $1;
        my ($status, $h, $sl) = _parse_head($head);
        @$self{qw(status headers status_line response_head)} = ($status, $h, $sl, $head);
    } else {
        @$self{qw(status headers status_line response_head)} = (undef, {}, '', $self->{buf});
    }

    if (($self->{status} // 0) == 101) {
        $self->{accept_ok} = defined $key
            && ($self->header('Sec-WebSocket-Accept') // '') eq accept_key($key);
    } else {
        # Best effort: collect the error body for diagnostics.
        my $cl = $self->header('Content-Length');
        if (defined $cl) {
            my $dl = time + scaled(1);
            while (length $self->{buf} < $cl) { last unless $self->_read_some($dl) }
        }
        $self->{body} = $self->{buf};
    }
    return $self;
}

sub status      { $_[0]{status} }
sub status_line { $_[0]{status_line} }
sub headers     { $_[0]{headers} }
sub header      { $_[0]{headers}{ lc $_[1] } }
sub body        { $_[0]{body} }
sub key         { $_[0]{key} }
sub accept_ok   { $_[0]{accept_ok} }
sub socket      { $_[0]{fh} }
sub is_eof      { $_[0]{eof} }
sub request     { $_[0]{request} }
sub response_head { $_[0]{response_head} }
sub error       { $_[0]{error} }

# Control frames that recv_message met in the middle of a fragmented message.
sub interleaved { my $l = $_[0]{interleaved}; $_[0]{interleaved} = []; @$l }

sub close {
    my ($self) = @_;
    CORE::close $self->{fh} if $self->{fh};
    $self->{fh} = undef;
    $self->{eof} = 1;
}

sub DESTROY { my $s = shift; CORE::close $s->{fh} if $s->{fh} }

# Reads one chunk into the buffer, waiting until $deadline. Returns true when
# bytes arrived; false on timeout or EOF (then $self->{eof} is set).
sub _read_some {
    my ($self, $deadline) = @_;
    return 0 if $self->{eof} || !$self->{fh};
    my $left = $deadline - time;
    $left = 0 if $left < 0;
    unless (IO::Select->new($self->{fh})->can_read($left)) {
        $self->{error} = 'timeout';
        return 0;
    }
    my $want = $self->{chunk} || 65536;
    my $n = sysread($self->{fh}, $self->{buf}, $want, length $self->{buf});
    if (!defined $n) {
        return 1 if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        $self->{eof} = 1;
        $self->{error} = "read: $!";
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        $self->{error} = 'eof';
        return 0;
    }
    sleep $self->{delay} if $self->{delay};
    return 1;
}

# Reads whatever is available right now, without waiting. Returns the number
# of bytes read; 0 and is_eof when the server closed.
sub pump {
    my ($self) = @_;
    my $total = 0;
    while ($self->{fh} && !$self->{eof}) {
        my $n = sysread($self->{fh}, $self->{buf}, 65536, length $self->{buf});
        if (!defined $n) {
            last if $! == EAGAIN || $! == EWOULDBLOCK;
            next if $! == EINTR;
            $self->{eof} = 1; $self->{error} = "read: $!";
            last;
        }
        if ($n == 0) { $self->{eof} = 1; $self->{error} = 'eof'; last }
        $total += $n;
    }
    return $total;
}

# fill($n, $timeout) -> true once at least $n bytes are buffered (unparsed);
# buffer() returns them, for tests that look at the raw bytes of a frame.
sub fill {
    my ($self, $n, $timeout) = @_;
    my $deadline = $self->_deadline($timeout);
    while (length $self->{buf} < $n) {
        return 0 unless $self->_read_some($deadline);
    }
    return 1;
}

sub buffer { $_[0]{buf} }

# read_slowly($bytes_per_read, $delay_seconds): later reads take at most
# $bytes_per_read bytes per sysread and sleep $delay after each.
# read_slowly(0) restores normal reading.
sub read_slowly {
    my ($self, $bytes, $delay) = @_;
    $self->{chunk} = $bytes || 0;
    $self->{delay} = $bytes ? ($delay // 0) : 0;
    return $self;
}

# --- frames ---------------------------------------------------------------

# build_frame(fin => 1, opcode => 1, payload => '', mask => 1, rsv => 0,
#     mask_key => 4 bytes, len_override => N (length field value written,
#     instead of the real payload length), len_bits => 7|16|64 (force a
#     length encoding, e.g. non-minimal))
sub build_frame {
    shift if @_ % 2 && (ref $_[0] || $_[0] eq __PACKAGE__);
    my (%o) = @_;
    my $fin = $o{fin} // 1;
    my $opcode = $o{opcode} // OP_TEXT;
    my $payload = $o{payload} // '';
    utf8::encode($payload) if utf8::is_utf8($payload);
    my $mask = $o{mask} // 1;
    my $rsv = $o{rsv} // 0;
    my $len = $o{len_override} // length $payload;

    my $bits = $o{len_bits} // ($len < 126 ? 7 : $len < 65536 ? 16 : 64);
    my $frame = chr((($fin ? 1 : 0) << 7) | (($rsv & 7) << 4) | ($opcode & 0xF));
    my $mbit = $mask ? 0x80 : 0;
    if ($bits == 7) {
        $frame .= chr($mbit | ($len & 0x7F));
    } elsif ($bits == 16) {
        $frame .= chr($mbit | 126) . pack('n', $len);
    } else {
        $frame .= chr($mbit | 127) . pack('NN', int($len / 4294967296), $len % 4294967296);
    }
    if ($mask) {
        my $key = $o{mask_key} // pack('N', int rand 4294967296);
        $frame .= $key . _xor_mask($payload, $key);
    } else {
        $frame .= $payload;
    }
    return $frame;
}

sub _xor_mask {
    my ($data, $key) = @_;
    return '' unless length $data;
    my $n = length $data;
    my $k = $key x (int($n / 4) + 1);
    return $data ^ substr($k, 0, $n);
}

sub send_raw {
    my ($self, $bytes, %o) = @_;
    return 0 unless $self->{fh};
    my $ok = _write_all($self->{fh}, $bytes,
        defined $o{timeout} ? scaled($o{timeout}) : $self->{timeout} * 4,
        \$self->{buf}, $self);
    $self->{error} = "write: $!" unless $ok;
    return $ok;
}

sub send_frame {
    my ($self, %o) = @_;
    return $self->send_raw(build_frame(%o));
}

sub send_text   { my ($s, $p, %o) = @_; $s->send_frame(%o, opcode => OP_TEXT,   payload => $p) }
sub send_binary { my ($s, $p, %o) = @_; $s->send_frame(%o, opcode => OP_BINARY, payload => $p) }
sub send_ping   { my ($s, $p, %o) = @_; $s->send_frame(%o, opcode => OP_PING,   payload => $p // '') }
sub send_pong   { my ($s, $p, %o) = @_; $s->send_frame(%o, opcode => OP_PONG,   payload => $p // '') }

# send_close() sends an empty close payload; send_close($code, $reason)
# sends the 2-byte code followed by the reason.
sub send_close {
    my ($self, $code, $reason, %o) = @_;
    my $payload = defined $code ? pack('n', $code) . ($reason // '') : '';
    return $self->send_frame(%o, opcode => OP_CLOSE, payload => $payload);
}

# Parses one complete frame from the buffer, without reading. Returns undef
# when the buffer holds no complete frame.
sub try_recv_frame {
    my ($self) = @_;
    my $b = \$self->{buf};
    return undef if length $$b < 2;
    my ($b0, $b1) = unpack('CC', $$b);
    my $masked = $b1 & 0x80;
    my $len = $b1 & 0x7F;
    my $hl = 2;
    if ($len == 126) {
        return undef if length $$b < 4;
        $len = unpack('n', substr($$b, 2, 2));
        $hl = 4;
    } elsif ($len == 127) {
        return undef if length $$b < 10;
        my ($hi, $lo) = unpack('NN', substr($$b, 2, 8));
        $len = $hi * 4294967296 + $lo;
        $hl = 10;
    }
    $hl += 4 if $masked;
    return undef if length $$b < $hl + $len;
    my $payload = substr($$b, $hl, $len);
    my $mask_key = $masked ? substr($$b, $hl - 4, 4) : '';
    $payload = _xor_mask($payload, $mask_key) if $masked;
    substr($$b, 0, $hl + $len, '');
    return {
        fin     => ($b0 >> 7) & 1,
        rsv     => ($b0 >> 4) & 7,
        opcode  => $b0 & 0xF,
        masked  => $masked ? 1 : 0,
        mask_key => $mask_key,
        length  => $len,
        payload => $payload,
    };
}

# The deadline of a wait of $timeout seconds (scaled by the slowdown
# factor; the connection's own timeout, already scaled, when undef), or
# $deadline as it is.
sub _deadline {
    my ($self, $timeout, $deadline) = @_;
    return $deadline if defined $deadline;
    return time + (defined $timeout ? scaled($timeout) : $self->{timeout});
}

# recv_frame(timeout => 5) -> {fin, rsv, opcode, masked, mask_key, length, payload}
# or undef on timeout/EOF (see ->error).
sub recv_frame {
    my ($self, %o) = @_;
    my $deadline = $self->_deadline($o{timeout}, delete $o{deadline});
    local $self->{chunk} = $o{bytes_per_read} // $self->{chunk};
    local $self->{delay} = $o{delay} // $self->{delay};
    while (1) {
        my $f = $self->try_recv_frame;
        return $f if $f;
        return undef unless $self->_read_some($deadline);
    }
}

# recv_message(timeout => 5) -> {opcode, payload, frames} for the next whole
# data message (fragments reassembled), or the next control frame when one
# arrives outside a message (as returned by recv_frame), or undef.
# Control frames met inside a fragmented message are kept; see interleaved().
sub recv_message {
    my ($self, %o) = @_;
    my $deadline = $self->_deadline(delete $o{timeout}, delete $o{deadline});
    my ($opcode, $payload, $frames);
    while (1) {
        my $f = $self->recv_frame(%o, deadline => $deadline) or return undef;
        if ($f->{opcode} >= 8) {
            return $f unless defined $opcode;
            push @{ $self->{interleaved} }, $f;
            next;
        }
        if (!defined $opcode) {
            $opcode = $f->{opcode};
            $payload = '';
        }
        $payload .= $f->{payload};
        $frames++;
        if ($f->{fin}) {
            return { opcode => $opcode, payload => $payload, frames => $frames,
                     fin => 1, rsv => $f->{rsv}, masked => $f->{masked} };
        }
    }
}

# recv_close(timeout => 5) -> ($code, $reason): reads frames until a close
# frame. ($code undef, reason '') for an empty close payload; () on
# timeout/EOF. Frames skipped on the way are in ->{skipped}.
sub recv_close {
    my ($self, %o) = @_;
    my $deadline = $self->_deadline(delete $o{timeout}, delete $o{deadline});
    $self->{skipped} = [];
    while (1) {
        my $f = $self->recv_frame(%o, deadline => $deadline) or return;
        if ($f->{opcode} == OP_CLOSE) {
            $self->{close_frame} = $f;
            my $p = $f->{payload};
            return (undef, '') if length $p == 0;
            return (undef, $p) if length $p == 1;
            return (unpack('n', $p), substr($p, 2));
        }
        push @{ $self->{skipped} }, $f;
    }
}

sub skipped { @{ $_[0]{skipped} // [] } }

# take_frames($record, since => $t0, on_data => sub { my ($frame) = @_ })
# reads the frames already buffered into a session record, for tests that
# watch many sessions at once: data frames go to on_data (by default their
# payloads are pushed to $record->{got}); the first close sets close_at
# (seconds since `since`) and close_code and is answered with the same
# code; any frame after it is noted in $record->{bad}.
sub take_frames {
    my ($self, $rec, %o) = @_;
    while (my $f = $self->try_recv_frame) {
        if (exists $rec->{close_at}) {
            push @{ $rec->{bad} }, "frame opcode $f->{opcode} after the close";
            next;
        }
        if ($f->{opcode} == OP_CLOSE) {
            $rec->{close_at} = time - ($o{since} // 0);
            $rec->{close_code} = length $f->{payload} >= 2 ? unpack('n', $f->{payload}) : undef;
            $self->send_close($rec->{close_code});
            next;
        }
        if ($o{on_data}) {
            $o{on_data}->($f);
        } else {
            push @{ $rec->{got} }, $f->{payload};
        }
    }
}

# wait_eof($timeout) -> true when the server closed the TCP connection (FIN
# or RST) within $timeout seconds. Bytes read meanwhile stay in the buffer.
sub wait_eof {
    my ($self, $timeout) = @_;
    my $deadline = $self->_deadline($timeout);
    return 1 if $self->{eof};
    local $self->{chunk} = 0;
    local $self->{delay} = 0;
    while (time < $deadline) {
        $self->_read_some($deadline);
        return 1 if $self->{eof};
    }
    return 0;
}

# reset_close: closes the socket with SO_LINGER 0, so that the kernel sends
# a TCP RST instead of a FIN (appended for the 4x-fault-*.t files).
sub reset_close {
    my ($self) = @_;
    return unless $self->{fh};
    setsockopt($self->{fh}, SOL_SOCKET, Socket::SO_LINGER(), pack('ii', 1, 0));
    $self->close;
}

1;
