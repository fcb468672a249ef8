package WsHttp2;

# A minimal HTTP/2 client (RFC 9113) for integration tests: the connection
# preface and SETTINGS, requests whose header block is HPACK literals without
# indexing or Huffman (RFC 7541 §6.2.2), and a response reader that decodes
# only the response's first header field, `:status` (nginx sends it first,
# indexed for 200/204/206/304/400/404/500, else a literal with name index 8
# and a raw value). SETTINGS and PING from the server are acknowledged;
# response bodies are small enough for the initial flow-control window.
#
#   my $h2 = WsHttp2->connect(port => $p, tls => 1);   # ALPN h2, no verification
#   $h2->alpn;                                         # 'h2' (TLS only)
#   my $res = $h2->request([':method' => 'GET', ':path' => '/x', ...]);
#   $res->{status}; $res->{body}; $res->{reset}; $res->{goaway}; $res->{error};
#   $h2->close;

use strict;
use warnings;

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);
use WsValgrind qw(scaled);

use constant {
    PREFACE => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",

    DATA          => 0x0,
    HEADERS       => 0x1,
    RST_STREAM    => 0x3,
    SETTINGS      => 0x4,
    PING          => 0x6,
    GOAWAY        => 0x7,
    CONTINUATION  => 0x9,

    END_STREAM  => 0x1,
    ACK         => 0x1,
    END_HEADERS => 0x4,
    PADDED      => 0x8,
    PRIORITY    => 0x20,
};

# HPACK static table entries that are a :status (RFC 7541 Appendix A).
my %STATIC_STATUS = (8 => 200, 9 => 204, 10 => 206, 11 => 304, 12 => 400, 13 => 404, 14 => 500);
my $STATUS_NAME_INDEX = 8;

# WsHttp2->connect(port => $p, host => '127.0.0.1', tls => 0, timeout => 5):
# connects, sends the preface and an empty SETTINGS. Dies when the TCP or
# TLS connection fails.
sub connect {
    my ($class, %o) = @_;
    my $port = $o{port} or croak 'port => N is required';
    my $host = $o{host} // '127.0.0.1';
    my $timeout = scaled($o{timeout} // 5);
    my $fh;
    if ($o{tls}) {
        require IO::Socket::SSL;
        $fh = IO::Socket::SSL->new(
            PeerHost => $host, PeerPort => $port, Timeout => $timeout,
            SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
            SSL_alpn_protocols => ['h2'],
        ) or croak "TLS connect to $host:$port failed: $IO::Socket::SSL::SSL_ERROR";
    } else {
        $fh = IO::Socket::INET->new(PeerHost => $host, PeerPort => $port, Proto => 'tcp',
            Timeout => $timeout) or croak "connect to $host:$port failed: $!";
    }
    $fh->autoflush(1);
    my $self = bless { fh => $fh, tls => $o{tls}, timeout => $timeout, buf => '',
        next_stream => 1, eof => 0 }, $class;
    $self->_send(PREFACE . frame(SETTINGS, 0, 0, ''));
    return $self;
}

# The protocol ALPN chose (TLS only).
sub alpn { $_[0]{tls} ? $_[0]{fh}->alpn_selected : undef }

sub close {
    my ($self) = @_;
    CORE::close $self->{fh} if $self->{fh};
    $self->{fh} = undef;
}

# frame($type, $flags, $stream_id, $payload): one frame's bytes.
sub frame {
    my ($type, $flags, $stream, $payload) = @_;
    my $len = length $payload;
    return pack('nCCCN', $len >> 8, $len & 0xFF, $type, $flags, $stream & 0x7FFF_FFFF) . $payload;
}

# HPACK integer with an N-bit prefix, the first byte's high bits in $first.
sub hpack_int {
    my ($first, $bits, $n) = @_;
    my $max = (1 << $bits) - 1;
    return chr($first | $n) if $n < $max;
    my $out = chr($first | $max);
    $n -= $max;
    while ($n >= 128) {
        $out .= chr(($n & 0x7F) | 0x80);
        $n >>= 7;
    }
    return $out . chr($n);
}

# A literal header field without indexing, new name, no Huffman.
sub hpack_literal {
    my ($name, $value) = @_;
    return "\x00" . hpack_int(0, 7, length $name) . $name . hpack_int(0, 7, length $value) . $value;
}

# Decodes an HPACK integer at $$pos of $block; undef when truncated.
sub _int_at {
    my ($block, $pos, $bits) = @_;
    return undef if $$pos >= length $block;
    my $max = (1 << $bits) - 1;
    my $n = ord(substr $block, $$pos++, 1) & $max;
    return $n if $n < $max;
    my $shift = 0;
    while (1) {
        return undef if $$pos >= length $block;
        my $b = ord(substr $block, $$pos++, 1);
        $n += ($b & 0x7F) << $shift;
        $shift += 7;
        return $n unless $b & 0x80;
    }
}

# status_of($header_block) -> ($status, $error): the :status of a response
# header block from its first field (after any dynamic table size update).
sub status_of {
    my ($block) = @_;
    my $pos = 0;
    while ($pos < length $block && (ord(substr $block, $pos, 1) & 0xE0) == 0x20) {
        defined _int_at($block, \$pos, 5) or return (undef, 'truncated table size update');
    }
    return (undef, 'empty header block') if $pos >= length $block;
    my $b = ord(substr $block, $pos, 1);
    if ($b & 0x80) {
        my $index = _int_at($block, \$pos, 7);
        my $status = defined $index ? $STATIC_STATUS{$index} : undef;
        return defined $status ? ($status) : (undef, "first field is indexed entry " . ($index // '?'));
    }
    # a literal: with incremental indexing (6-bit name index), or without
    # indexing / never indexed (4-bit)
    my $bits = ($b & 0xC0) == 0x40 ? 6 : 4;
    my $name_index = _int_at($block, \$pos, $bits);
    return (undef, 'first field is not :status (name index ' . ($name_index // '?') . ')')
        unless defined $name_index && $name_index == $STATUS_NAME_INDEX;
    return (undef, 'truncated :status value') if $pos >= length $block;
    my $huffman = ord(substr $block, $pos, 1) & 0x80;
    my $len = _int_at($block, \$pos, 7);
    return (undef, 'truncated :status value') unless defined $len && $pos + $len <= length $block;
    return (undef, ':status value is Huffman-encoded') if $huffman;
    return (substr $block, $pos, $len);
}

# $h2->request([name => value, ...], timeout => 5) -> {status, body, reset,
# goaway, error}: sends the headers as one HEADERS frame with END_STREAM on
# the next stream and reads until that stream ends (END_STREAM, RST_STREAM),
# a GOAWAY, EOF or the timeout.
sub request {
    my ($self, $headers, %o) = @_;
    my $stream = $self->{next_stream};
    $self->{next_stream} += 2;
    my $block = '';
    for (my $i = 0; $i < @$headers; $i += 2) {
        $block .= hpack_literal(@$headers[$i, $i + 1]);
    }
    $self->_send(frame(HEADERS, END_STREAM | END_HEADERS, $stream, $block));

    my %res = (stream => $stream, body => '');
    my $deadline = time + ($o{timeout} ? scaled($o{timeout}) : $self->{timeout});
    my $fragment;    # a header block still waiting for its CONTINUATION
    while (1) {
        my $f = $self->_read_frame($deadline) or do {
            $res{error} = $self->{eof} ? 'EOF' : 'timeout';
            last;
        };
        my ($type, $flags, $sid, $payload) = @$f;
        if ($type == SETTINGS && !($flags & ACK)) {
            $self->_send(frame(SETTINGS, ACK, 0, ''));
        } elsif ($type == PING && !($flags & ACK)) {
            $self->_send(frame(PING, ACK, 0, $payload));
        } elsif ($type == GOAWAY) {
            $res{goaway} = unpack('x4N', $payload);
            last;
        } elsif ($sid != $stream) {
            next;
        } elsif ($type == RST_STREAM) {
            $res{reset} = unpack('N', $payload);
            last;
        } elsif ($type == HEADERS || $type == CONTINUATION) {
            $fragment = ($fragment // '') . ($type == HEADERS ? _headers_block($flags, $payload) : $payload);
            next unless $flags & END_HEADERS;
            @res{qw(status status_error)} = status_of($fragment) unless defined $res{status};
            $fragment = undef;
            last if $flags & END_STREAM;
        } elsif ($type == DATA) {
            $res{body} .= _unpad($flags, $payload);
            last if $flags & END_STREAM;
        }
    }
    return \%res;
}

# The header block fragment of a HEADERS payload (padding and priority removed).
sub _headers_block {
    my ($flags, $payload) = @_;
    $payload = _unpad($flags, $payload);
    return $flags & PRIORITY ? substr($payload, 5) : $payload;
}

sub _unpad {
    my ($flags, $payload) = @_;
    return $payload unless $flags & PADDED;
    my $pad = ord $payload;
    return substr($payload, 1, length($payload) - 1 - $pad);
}

sub _send {
    my ($self, $bytes) = @_;
    my $fh = $self->{fh} or croak 'connection closed';
    while (length $bytes) {
        my $n = syswrite($fh, $bytes);
        croak "write failed: $!" unless defined $n;
        substr($bytes, 0, $n) = '';
    }
}

# The next frame as [type, flags, stream, payload]; undef at EOF or the deadline.
sub _read_frame {
    my ($self, $deadline) = @_;
    while (1) {
        if (length $self->{buf} >= 9) {
            my ($hi, $lo, $type, $flags, $sid) = unpack('nCCCN', $self->{buf});
            my $len = ($hi << 8) | $lo;
            if (length $self->{buf} >= 9 + $len) {
                my $payload = substr($self->{buf}, 9, $len);
                substr($self->{buf}, 0, 9 + $len) = '';
                return [$type, $flags, $sid & 0x7FFF_FFFF, $payload];
            }
        }
        return undef if $self->{eof} || !$self->{fh};
        # TLS may hold decrypted bytes that select() does not see
        my $pending = $self->{tls} && $self->{fh}->pending;
        unless ($pending) {
            my $left = $deadline - time;
            return undef if $left <= 0;
            next unless IO::Select->new($self->{fh})->can_read($left);
        }
        my $n = sysread($self->{fh}, my $chunk, 65536);
        if (!defined $n) {
            next if $self->{tls} && ($!{EAGAIN} || $!{EWOULDBLOCK});
            $self->{eof} = 1;
            next;
        }
        $self->{eof} = 1 if $n == 0;
        $self->{buf} .= $chunk;
    }
}

1;
