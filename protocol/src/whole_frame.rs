//! The seed's whole-frame API: take one complete, unmasked frame off a buffer.
//!
//! Frame-level rules only: fragmentation and UTF-8 of text messages span
//! frames and are the caller's (or the [`Decoder`](super::decoder::Decoder)'s) job.

use bytes::{Buf, Bytes, BytesMut};

use super::close::parse_close_payload;
use super::error::ProtocolError;
use super::frame::{parse_header, OpCode, ParseConfig};
use super::mask::apply_mask;

/// One complete frame with its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: OpCode,
    pub payload: Bytes,
}

/// Removes one complete frame from the front of `buf`.
///
/// `Ok(None)` leaves `buf` untouched until the whole frame is there. With
/// `force_masking`, unmasked frames are refused (a server's view of its
/// client); without it, masked and unmasked frames are both accepted. A close
/// frame's payload is checked (code and UTF-8 reason).
pub fn recv_frame(
    buf: &mut BytesMut,
    max_payload_len: u64,
    force_masking: bool,
) -> Result<Option<Frame>, ProtocolError> {
    let cfg = ParseConfig {
        max_payload_len,
        require_masked: force_masking,
        require_unmasked: false,
        allowed_rsv: 0,
    };
    let Some((header, header_len)) = parse_header(buf, &cfg)? else {
        return Ok(None);
    };
    let payload_len =
        usize::try_from(header.payload_len).map_err(|_| ProtocolError::FrameTooBig {
            len: header.payload_len,
            max: max_payload_len,
        })?;
    if buf.len() - header_len < payload_len {
        return Ok(None);
    }
    let mut payload = buf.split_to(header_len + payload_len);
    payload.advance(header_len);
    if let Some(key) = header.mask {
        apply_mask(&mut payload, key, 0);
    }
    if header.opcode == OpCode::Close {
        parse_close_payload(&payload)?;
    }
    Ok(Some(Frame {
        fin: header.fin,
        rsv: header.rsv,
        opcode: header.opcode,
        payload: payload.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::build_frame;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [1, 2, 3, 4];

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn takes_frames_one_by_one() {
        let mut stream = build_frame(false, OpCode::Text, b"Hel", Some(KEY));
        stream.extend(build_frame(true, OpCode::Ping, b"p", Some(KEY)));
        stream.extend(build_frame(true, OpCode::Continuation, b"lo", Some(KEY)));
        stream.extend(build_frame(true, OpCode::Close, b"\x03\xe8", Some(KEY)));
        let mut buf = BytesMut::from(&stream[..]);
        assert_eq!(
            recv_frame(&mut buf, 125, true),
            Ok(Some(frame(false, OpCode::Text, b"Hel")))
        );
        assert_eq!(
            recv_frame(&mut buf, 125, true),
            Ok(Some(frame(true, OpCode::Ping, b"p")))
        );
        assert_eq!(
            recv_frame(&mut buf, 125, true),
            Ok(Some(frame(true, OpCode::Continuation, b"lo")))
        );
        assert_eq!(
            recv_frame(&mut buf, 125, true),
            Ok(Some(frame(true, OpCode::Close, b"\x03\xe8")))
        );
        assert_eq!(recv_frame(&mut buf, 125, true), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frame_leaves_buffer_untouched() {
        let bytes = build_frame(true, OpCode::Binary, &[9u8; 300], Some(KEY));
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(recv_frame(&mut buf, 1000, true), Ok(None), "cut {cut}");
            assert_eq!(&buf[..], &bytes[..cut]);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            recv_frame(&mut buf, 1000, true),
            Ok(Some(frame(true, OpCode::Binary, &[9u8; 300])))
        );
    }

    #[test]
    fn masking_is_optional_unless_forced() {
        let unmasked = build_frame(true, OpCode::Text, b"x", None);
        assert_eq!(
            recv_frame(&mut BytesMut::from(&unmasked[..]), 10, false),
            Ok(Some(frame(true, OpCode::Text, b"x")))
        );
        assert_eq!(
            recv_frame(&mut BytesMut::from(&unmasked[..]), 10, true),
            Err(ProtocolError::UnmaskedFrame)
        );
        let masked = build_frame(true, OpCode::Text, b"x", Some(KEY));
        assert_eq!(
            recv_frame(&mut BytesMut::from(&masked[..]), 10, false),
            Ok(Some(frame(true, OpCode::Text, b"x")))
        );
    }

    #[test]
    fn limits_and_rules() {
        let exact = build_frame(true, OpCode::Binary, &[0u8; 126], None);
        assert!(recv_frame(&mut BytesMut::from(&exact[..]), 126, false)
            .unwrap()
            .is_some());
        assert_eq!(
            recv_frame(&mut BytesMut::from(&exact[..]), 125, false),
            Err(ProtocolError::FrameTooBig { len: 126, max: 125 })
        );
        // The limit is checked with only the header present.
        assert_eq!(
            recv_frame(&mut BytesMut::from(&exact[..4]), 125, false),
            Err(ProtocolError::FrameTooBig { len: 126, max: 125 })
        );
        assert_eq!(
            recv_frame(&mut BytesMut::from(&[0x83u8, 0x00][..]), 10, false),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            recv_frame(&mut BytesMut::from(&[0xc1u8, 0x00][..]), 10, false),
            Err(ProtocolError::ReservedBits(4))
        );
        assert_eq!(
            recv_frame(&mut BytesMut::from(&[0x09u8, 0x00][..]), 10, false),
            Err(ProtocolError::FragmentedControlFrame)
        );
    }

    #[test]
    fn close_payload_is_checked() {
        let table: &[(&[u8], Result<(), ProtocolError>)] = &[
            (b"", Ok(())),
            (b"\x03\xe8bye", Ok(())),
            (b"\x03", Err(ProtocolError::InvalidClosePayload)),
            (b"\x03\xec", Err(ProtocolError::InvalidCloseCode(1004))),
            (b"\x03\xe8\xff", Err(ProtocolError::InvalidCloseReason)),
        ];
        for (payload, expected) in table {
            let bytes = build_frame(true, OpCode::Close, payload, None);
            let got = recv_frame(&mut BytesMut::from(&bytes[..]), 125, false).map(|_| ());
            assert_eq!(&got, expected, "{payload:x?}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..1000),
                      mask in any::<Option<[u8; 4]>>(),
                      binary in any::<bool>(), fin in any::<bool>()) {
            let opcode = if binary { OpCode::Binary } else { OpCode::Continuation };
            let mut buf = BytesMut::from(&build_frame(fin, opcode, &payload, mask)[..]);
            buf.extend_from_slice(b"\x89\x00");
            prop_assert_eq!(recv_frame(&mut buf, 1000, false), Ok(Some(frame(fin, opcode, &payload))));
            prop_assert_eq!(&buf[..], b"\x89\x00");
        }
    }
}
