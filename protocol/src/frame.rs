//! Frame headers (RFC 6455 §5.2): encoding, and parsing with every frame-level rule.

use super::error::ProtocolError;
use super::mask::apply_mask;

/// The defined opcodes; 3–7 and 11–15 are reserved.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    /// The opcode of a header nibble; `None` for reserved opcodes.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0 => Some(Self::Continuation),
            1 => Some(Self::Text),
            2 => Some(Self::Binary),
            8 => Some(Self::Close),
            9 => Some(Self::Ping),
            10 => Some(Self::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }

    /// Continuation, text and binary: the frames that carry messages.
    pub fn is_data(self) -> bool {
        !self.is_control()
    }

    /// The frame type's name as the seed's `recv_frame` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continuation => "continuation",
            Self::Text => "text",
            Self::Binary => "binary",
            Self::Close => "close",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV bits: 0b100 = RSV1, 0b010 = RSV2, 0b001 = RSV3.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// The longest header: 2 bytes, a 64-bit length and a mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// An encoded header, kept on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl EncodedHeader {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Encodes a header with the shortest length form.
pub fn encode_header(
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> EncodedHeader {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = (u8::from(fin) << 7) | ((rsv & 0b111) << 4) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = 2;
    if payload_len < 126 {
        bytes[1] = mask_bit | payload_len as u8;
    } else if let Ok(short) = u16::try_from(payload_len) {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        len = 4;
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&payload_len.to_be_bytes());
        len = 10;
    }
    if let Some(key) = mask {
        bytes[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    EncodedHeader {
        bytes,
        len: len as u8,
    }
}

/// Builds a whole frame without RSV bits; with a mask, the copied payload is masked.
pub fn build_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = encode_header(fin, 0, opcode, payload.len() as u64, mask);
    let mut frame = Vec::with_capacity(header.as_slice().len() + payload.len());
    frame.extend_from_slice(header.as_slice());
    frame.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut frame[header.as_slice().len()..], key, 0);
    }
    frame
}

/// The frame-level rules one side of a connection enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseConfig {
    /// Largest payload of one frame; a larger one fails with 1009.
    pub max_payload_len: u64,
    /// Server: client frames must be masked.
    pub require_masked: bool,
    /// Client: server frames must not be masked.
    pub require_unmasked: bool,
    /// RSV bits negotiated by extensions, accepted on the first frame of a
    /// message only: per-message extensions (RFC 7692) mark nothing else.
    pub allowed_rsv: u8,
}

impl ParseConfig {
    /// Rules for frames a server receives from its client.
    pub fn server(max_payload_len: u64) -> Self {
        Self {
            max_payload_len,
            require_masked: true,
            require_unmasked: false,
            allowed_rsv: 0,
        }
    }

    /// Rules for frames a client receives from its server.
    pub fn client(max_payload_len: u64) -> Self {
        Self {
            max_payload_len,
            require_masked: false,
            require_unmasked: true,
            allowed_rsv: 0,
        }
    }
}

/// Parses the header at the front of `buf`.
///
/// `Ok(None)` while the header is incomplete; nothing is consumed until it is
/// whole. Each rule is checked as soon as the bytes it needs are there, so a
/// bad frame fails at its earliest byte and an oversized one before any of its
/// payload is buffered.
pub fn parse_header(
    buf: &[u8],
    cfg: &ParseConfig,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let opcode =
        OpCode::from_u8(first & 0x0F).ok_or(ProtocolError::ReservedOpcode(first & 0x0F))?;
    let rsv = (first >> 4) & 0b111;
    let allowed_rsv = match opcode {
        OpCode::Text | OpCode::Binary => cfg.allowed_rsv,
        _ => 0,
    };
    if rsv & !allowed_rsv != 0 {
        return Err(ProtocolError::ReservedBits(rsv));
    }
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }

    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    if masked && cfg.require_unmasked {
        return Err(ProtocolError::MaskedFrame);
    }
    if !masked && cfg.require_masked {
        return Err(ProtocolError::UnmaskedFrame);
    }
    let short_len = second & 0x7F;
    if opcode.is_control() && short_len > 125 {
        return Err(ProtocolError::ControlFrameTooLong);
    }

    let (payload_len, mut header_len) = match short_len {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u16::from_be_bytes([bytes[0], bytes[1]]);
            if len < 126 {
                return Err(ProtocolError::NonMinimalLength);
            }
            (u64::from(len), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes.try_into().expect("8-byte slice"));
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthMsbSet);
            }
            if len <= u64::from(u16::MAX) {
                return Err(ProtocolError::NonMinimalLength);
            }
            (len, 10)
        }
        len => (u64::from(len), 2),
    };
    if payload_len > cfg.max_payload_len {
        return Err(ProtocolError::FrameTooBig {
            len: payload_len,
            max: cfg.max_payload_len,
        });
    }

    let mask = if masked {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        },
        header_len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn lenient(max_payload_len: u64) -> ParseConfig {
        ParseConfig {
            max_payload_len,
            require_masked: false,
            require_unmasked: false,
            allowed_rsv: 0,
        }
    }

    fn opcode_strategy() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    #[test]
    fn opcodes() {
        let table = [
            (0, Some(OpCode::Continuation), "continuation", false),
            (1, Some(OpCode::Text), "text", false),
            (2, Some(OpCode::Binary), "binary", false),
            (8, Some(OpCode::Close), "close", true),
            (9, Some(OpCode::Ping), "ping", true),
            (10, Some(OpCode::Pong), "pong", true),
        ];
        for (value, opcode, name, control) in table {
            let opcode = opcode.unwrap();
            assert_eq!(OpCode::from_u8(value), Some(opcode));
            assert_eq!(opcode as u8, value);
            assert_eq!(opcode.as_str(), name);
            assert_eq!(opcode.is_control(), control);
            assert_eq!(opcode.is_data(), !control);
        }
        for value in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 255] {
            assert_eq!(OpCode::from_u8(value), None, "{value}");
        }
    }

    #[test]
    fn encode_length_boundaries() {
        let table: &[(u64, &[u8])] = &[
            (0, &[0x82, 0x00]),
            (1, &[0x82, 0x01]),
            (125, &[0x82, 125]),
            (126, &[0x82, 126, 0x00, 126]),
            (65535, &[0x82, 126, 0xff, 0xff]),
            (65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            (
                u64::MAX >> 1,
                &[0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (len, expected) in table {
            assert_eq!(
                encode_header(true, 0, OpCode::Binary, *len, None).as_slice(),
                *expected,
                "len {len}"
            );
        }
    }

    #[test]
    fn encode_bits_and_mask() {
        assert_eq!(
            encode_header(false, 0, OpCode::Text, 5, None).as_slice(),
            &[0x01, 0x05]
        );
        assert_eq!(
            encode_header(true, 0b100, OpCode::Text, 5, None).as_slice(),
            &[0xc1, 0x05]
        );
        assert_eq!(
            encode_header(false, 0b011, OpCode::Continuation, 0, None).as_slice(),
            &[0x30, 0x00]
        );
        assert_eq!(
            encode_header(true, 0, OpCode::Ping, 3, Some(KEY)).as_slice(),
            &[0x89, 0x83, 0x37, 0xfa, 0x21, 0x3d]
        );
        let longest = encode_header(true, 0, OpCode::Binary, 65536, Some(KEY));
        assert_eq!(longest.as_slice().len(), MAX_HEADER_LEN);
        assert_eq!(&longest.as_slice()[10..], &KEY);
    }

    #[test]
    fn build_rfc_examples() {
        // RFC 6455 §5.7.
        assert_eq!(
            build_frame(true, OpCode::Text, b"Hello", None),
            b"\x81\x05Hello"
        );
        assert_eq!(
            build_frame(true, OpCode::Text, b"Hello", Some(KEY)),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        assert_eq!(
            build_frame(false, OpCode::Text, b"Hel", None),
            b"\x01\x03Hel"
        );
        assert_eq!(
            build_frame(true, OpCode::Continuation, b"lo", None),
            b"\x80\x02lo"
        );
        assert_eq!(build_frame(true, OpCode::Pong, b"", None), b"\x8a\x00");
        let big = build_frame(true, OpCode::Binary, &[7u8; 256], None);
        assert_eq!(&big[..4], &[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(big.len(), 260);
    }

    #[test]
    fn parse_rfc_examples() {
        let cfg = lenient(1 << 20);
        let (header, len) = parse_header(b"\x81\x05Hello", &cfg).unwrap().unwrap();
        assert_eq!(len, 2);
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: None,
                payload_len: 5
            }
        );
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f];
        let (header, len) = parse_header(&masked, &cfg).unwrap().unwrap();
        assert_eq!(len, 6);
        assert_eq!(header.mask, Some(KEY));
        let (header, len) = parse_header(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0], &cfg)
            .unwrap()
            .unwrap();
        assert_eq!((header.payload_len, len), (65536, 10));
    }

    #[test]
    fn parse_length_boundaries() {
        let cfg = lenient(u64::MAX);
        for len in [0, 1, 125, 126, 127, 65535, 65536, 1 << 32, u64::MAX >> 1] {
            let encoded = encode_header(true, 0, OpCode::Binary, len, None);
            let (header, used) = parse_header(encoded.as_slice(), &cfg).unwrap().unwrap();
            assert_eq!(header.payload_len, len);
            assert_eq!(used, encoded.as_slice().len());
        }
    }

    #[test]
    fn partial_header_is_never_consumed() {
        let cfg = lenient(1 << 20);
        for len in [0, 125, 126, 65535, 65536] {
            for mask in [None, Some(KEY)] {
                let encoded = encode_header(true, 0, OpCode::Binary, len, mask);
                let bytes = encoded.as_slice();
                for cut in 0..bytes.len() {
                    assert_eq!(
                        parse_header(&bytes[..cut], &cfg),
                        Ok(None),
                        "len {len} cut {cut}"
                    );
                }
                assert!(parse_header(bytes, &cfg).unwrap().is_some());
            }
        }
    }

    #[test]
    fn max_payload_len_boundaries() {
        for max in [0u64, 125, 126, 65535, 65536, 1 << 20] {
            let cfg = lenient(max);
            let at_limit = encode_header(true, 0, OpCode::Binary, max, None);
            assert_eq!(
                parse_header(at_limit.as_slice(), &cfg)
                    .unwrap()
                    .unwrap()
                    .0
                    .payload_len,
                max
            );
            let over = encode_header(true, 0, OpCode::Binary, max + 1, None);
            let err = parse_header(over.as_slice(), &cfg).unwrap_err();
            assert_eq!(err, ProtocolError::FrameTooBig { len: max + 1, max });
            assert_eq!(err.close_code(), 1009);
            if max > 0 {
                let under = encode_header(true, 0, OpCode::Binary, max - 1, None);
                assert!(parse_header(under.as_slice(), &cfg).unwrap().is_some());
            }
        }
    }

    #[test]
    fn too_big_is_reported_before_the_mask_key() {
        let cfg = ParseConfig::server(1000);
        // Header cut right after the 16-bit length: the mask key is still missing.
        let err = parse_header(&[0x82, 0xfe, 0x10, 0x00], &cfg).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooBig {
                len: 4096,
                max: 1000
            }
        );
    }

    #[test]
    fn rule_violations() {
        let server = ParseConfig::server(65535);
        let client = ParseConfig::client(65535);
        let lax = lenient(65535);
        let table: &[(&[u8], ParseConfig, ProtocolError)] = &[
            (&[0xc1, 0x00], lax, ProtocolError::ReservedBits(0b100)),
            (&[0xa1, 0x00], lax, ProtocolError::ReservedBits(0b010)),
            (&[0x91, 0x00], lax, ProtocolError::ReservedBits(0b001)),
            (&[0xf2], lax, ProtocolError::ReservedBits(0b111)),
            (&[0x83], lax, ProtocolError::ReservedOpcode(3)),
            (&[0x84], lax, ProtocolError::ReservedOpcode(4)),
            (&[0x85], lax, ProtocolError::ReservedOpcode(5)),
            (&[0x86], lax, ProtocolError::ReservedOpcode(6)),
            (&[0x87], lax, ProtocolError::ReservedOpcode(7)),
            (&[0x8b], lax, ProtocolError::ReservedOpcode(11)),
            (&[0x8c], lax, ProtocolError::ReservedOpcode(12)),
            (&[0x8d], lax, ProtocolError::ReservedOpcode(13)),
            (&[0x8e], lax, ProtocolError::ReservedOpcode(14)),
            (&[0x8f], lax, ProtocolError::ReservedOpcode(15)),
            (&[0x08], lax, ProtocolError::FragmentedControlFrame),
            (&[0x09], lax, ProtocolError::FragmentedControlFrame),
            (&[0x0a], lax, ProtocolError::FragmentedControlFrame),
            (&[0x89, 0x7e], lax, ProtocolError::ControlFrameTooLong),
            (&[0x88, 0x7f], lax, ProtocolError::ControlFrameTooLong),
            (&[0x8a, 0xfe], lax, ProtocolError::ControlFrameTooLong),
            (&[0x81, 0x05], server, ProtocolError::UnmaskedFrame),
            (&[0x89, 0x00], server, ProtocolError::UnmaskedFrame),
            (&[0x81, 0x85], client, ProtocolError::MaskedFrame),
            (
                &[0x82, 0x7e, 0x00, 0x7d],
                lax,
                ProtocolError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7e, 0x00, 0x00],
                lax,
                ProtocolError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                lax,
                ProtocolError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5],
                lax,
                ProtocolError::NonMinimalLength,
            ),
            (
                &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
                lax,
                ProtocolError::LengthMsbSet,
            ),
            (
                &[0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                lax,
                ProtocolError::LengthMsbSet,
            ),
            (
                &[0x82, 0x7e, 0xff, 0xff],
                lenient(65534),
                ProtocolError::FrameTooBig {
                    len: 65535,
                    max: 65534,
                },
            ),
        ];
        for (bytes, cfg, expected) in table {
            assert_eq!(parse_header(bytes, cfg), Err(*expected), "{bytes:x?}");
        }
    }

    #[test]
    fn masking_rules_accept_the_right_side() {
        let masked = build_frame(true, OpCode::Text, b"hi", Some(KEY));
        let unmasked = build_frame(true, OpCode::Text, b"hi", None);
        assert!(parse_header(&masked, &ParseConfig::server(10))
            .unwrap()
            .is_some());
        assert!(parse_header(&unmasked, &ParseConfig::client(10))
            .unwrap()
            .is_some());
        assert!(parse_header(&masked, &lenient(10)).unwrap().is_some());
        assert!(parse_header(&unmasked, &lenient(10)).unwrap().is_some());
    }

    #[test]
    fn negotiated_rsv_bits() {
        let cfg = ParseConfig {
            allowed_rsv: 0b100,
            ..lenient(100)
        };
        let (header, _) = parse_header(&[0xc1, 0x00], &cfg).unwrap().unwrap();
        assert_eq!(header.rsv, 0b100);
        assert_eq!(
            parse_header(&[0xc2, 0x00], &cfg).unwrap().unwrap().0.rsv,
            0b100
        );
        assert_eq!(
            parse_header(&[0xe1, 0x00], &cfg),
            Err(ProtocolError::ReservedBits(0b110))
        );
        // Per-message extensions never mark continuation or control frames.
        assert_eq!(
            parse_header(&[0xc0, 0x00], &cfg),
            Err(ProtocolError::ReservedBits(0b100))
        );
        assert_eq!(
            parse_header(&[0xc9, 0x00], &cfg),
            Err(ProtocolError::ReservedBits(0b100))
        );
    }

    #[test]
    fn control_frames_at_125_bytes() {
        let cfg = lenient(1000);
        let frame = build_frame(true, OpCode::Ping, &[1u8; 125], None);
        let (header, len) = parse_header(&frame, &cfg).unwrap().unwrap();
        assert_eq!((header.payload_len, len), (125, 2));
    }

    proptest! {
        #[test]
        fn header_round_trip(fin in any::<bool>(), rsv in 0u8..8, opcode in opcode_strategy(),
                             len in prop_oneof![0u64..200, 65000u64..70000, any::<u64>().prop_map(|n| n >> 1)],
                             mask in any::<Option<[u8; 4]>>()) {
            let fin = fin || opcode.is_control();
            let len = if opcode.is_control() { len % 126 } else { len };
            let encoded = encode_header(fin, rsv, opcode, len, mask);
            let cfg = ParseConfig { allowed_rsv: 0b111, ..lenient(u64::MAX) };
            let parsed = parse_header(encoded.as_slice(), &cfg);
            let data_start = matches!(opcode, OpCode::Text | OpCode::Binary);
            if rsv != 0 && !data_start {
                prop_assert_eq!(parsed, Err(ProtocolError::ReservedBits(rsv)));
            } else {
                let expected = FrameHeader { fin, rsv, opcode, mask, payload_len: len };
                prop_assert_eq!(parsed, Ok(Some((expected, encoded.as_slice().len()))));
            }
        }

        #[test]
        fn build_round_trip(fin in any::<bool>(), opcode in opcode_strategy(),
                            payload in proptest::collection::vec(any::<u8>(), 0..400),
                            mask in any::<Option<[u8; 4]>>()) {
            let fin = fin || opcode.is_control();
            let payload = if opcode.is_control() { &payload[..payload.len().min(125)] } else { &payload[..] };
            let mut frame = build_frame(fin, opcode, payload, mask);
            let (header, len) = parse_header(&frame, &lenient(400)).unwrap().unwrap();
            let payload_len = payload.len() as u64;
            prop_assert_eq!(header, FrameHeader { fin, rsv: 0, opcode, mask, payload_len });
            prop_assert_eq!(frame.len(), len + payload.len());
            if let Some(key) = mask {
                apply_mask(&mut frame[len..], key, 0);
            }
            prop_assert_eq!(&frame[len..], payload);
        }
    }
}
