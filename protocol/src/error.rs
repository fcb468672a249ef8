//! Protocol violations by the peer, each mapped to the close code RFC 6455 asks for.

use std::fmt;

use super::close;

/// A rule of RFC 6455 the peer broke; the connection must be failed with
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV bits set that no negotiated extension allows (the bits as in `FrameHeader::rsv`).
    ReservedBits(u8),
    /// Opcodes 3–7 and 11–15.
    ReservedOpcode(u8),
    /// A control frame announced more than 125 payload bytes.
    ControlFrameTooLong,
    /// A control frame with FIN clear.
    FragmentedControlFrame,
    /// A continuation frame while no fragmented message is open.
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still open.
    ExpectedContinuation,
    /// Client-to-server frames must be masked.
    UnmaskedFrame,
    /// Server-to-client frames must not be masked.
    MaskedFrame,
    /// A 16-bit length below 126 or a 64-bit length below 65536.
    NonMinimalLength,
    /// A 64-bit length with its most significant bit set.
    LengthMsbSet,
    /// One frame's payload is over the limit.
    FrameTooBig { len: u64, max: u64 },
    /// The fragments of one message add up to more than the limit.
    MessageTooBig { len: u64, max: u64 },
    /// The compressed fragments of one message add up to more than the
    /// bound its inflated limit allows (`compressed_message_limit`).
    CompressedTooBig { len: u64, max: u64 },
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A close payload of exactly one byte.
    InvalidClosePayload,
    /// A close code that may not appear on the wire.
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    InvalidCloseReason,
    /// A compressed message (permessage-deflate) that does not inflate.
    InvalidCompressedData,
}

impl ProtocolError {
    /// The status code of the close frame that fails the connection.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::InvalidCompressedData => {
                close::INVALID_DATA
            }
            Self::FrameTooBig { .. }
            | Self::MessageTooBig { .. }
            | Self::CompressedTooBig { .. } => close::TOO_BIG,
            _ => close::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits(rsv) => write!(f, "reserved bits set (rsv {rsv:#05b})"),
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            Self::ControlFrameTooLong => f.write_str("control frame payload longer than 125 bytes"),
            Self::FragmentedControlFrame => f.write_str("fragmented control frame"),
            Self::UnexpectedContinuation => {
                f.write_str("continuation frame outside a fragmented message")
            }
            Self::ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            Self::UnmaskedFrame => f.write_str("unmasked frame"),
            Self::MaskedFrame => f.write_str("masked frame"),
            Self::NonMinimalLength => f.write_str("non-minimal payload length encoding"),
            Self::LengthMsbSet => {
                f.write_str("64-bit payload length with the most significant bit set")
            }
            Self::FrameTooBig { len, max } => {
                write!(f, "frame payload too big: {len} bytes, limit {max}")
            }
            Self::MessageTooBig { len, max } => {
                write!(f, "message too big: {len} bytes, limit {max}")
            }
            Self::CompressedTooBig { len, max } => write!(
                f,
                "compressed message too big: {len} bytes, limit {max} (8 x max_recv_len + 1 KiB)"
            ),
            Self::InvalidUtf8 => f.write_str("invalid utf-8 in text message"),
            Self::InvalidClosePayload => f.write_str("close payload of 1 byte"),
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            Self::InvalidCloseReason => f.write_str("invalid utf-8 in close reason"),
            Self::InvalidCompressedData => f.write_str("compressed message does not inflate"),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_and_reasons() {
        let table: &[(ProtocolError, u16, &str)] = &[
            (
                ProtocolError::ReservedBits(0b100),
                1002,
                "reserved bits set (rsv 0b100)",
            ),
            (ProtocolError::ReservedOpcode(3), 1002, "reserved opcode 3"),
            (
                ProtocolError::ControlFrameTooLong,
                1002,
                "control frame payload longer than 125 bytes",
            ),
            (
                ProtocolError::FragmentedControlFrame,
                1002,
                "fragmented control frame",
            ),
            (
                ProtocolError::UnexpectedContinuation,
                1002,
                "continuation frame outside a fragmented message",
            ),
            (
                ProtocolError::ExpectedContinuation,
                1002,
                "new data frame inside a fragmented message",
            ),
            (ProtocolError::UnmaskedFrame, 1002, "unmasked frame"),
            (ProtocolError::MaskedFrame, 1002, "masked frame"),
            (
                ProtocolError::NonMinimalLength,
                1002,
                "non-minimal payload length encoding",
            ),
            (
                ProtocolError::LengthMsbSet,
                1002,
                "64-bit payload length with the most significant bit set",
            ),
            (
                ProtocolError::FrameTooBig {
                    len: 70000,
                    max: 65535,
                },
                1009,
                "frame payload too big: 70000 bytes, limit 65535",
            ),
            (
                ProtocolError::MessageTooBig { len: 9, max: 8 },
                1009,
                "message too big: 9 bytes, limit 8",
            ),
            (
                ProtocolError::CompressedTooBig {
                    len: 9217,
                    max: 9216,
                },
                1009,
                "compressed message too big: 9217 bytes, limit 9216 (8 x max_recv_len + 1 KiB)",
            ),
            (
                ProtocolError::InvalidUtf8,
                1007,
                "invalid utf-8 in text message",
            ),
            (
                ProtocolError::InvalidClosePayload,
                1002,
                "close payload of 1 byte",
            ),
            (
                ProtocolError::InvalidCloseCode(1005),
                1002,
                "invalid close code 1005",
            ),
            (
                ProtocolError::InvalidCloseReason,
                1007,
                "invalid utf-8 in close reason",
            ),
            (
                ProtocolError::InvalidCompressedData,
                1007,
                "compressed message does not inflate",
            ),
        ];
        for (err, code, text) in table {
            assert_eq!(err.close_code(), *code, "{err:?}");
            assert_eq!(err.to_string(), *text);
        }
    }
}
