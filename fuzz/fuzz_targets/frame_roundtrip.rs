//! Frames built by `encode_header`/`build_frame` parse back to what was built.
//!
//! Input: `[b0, b1, key (4), length (8, big-endian), payload...]`
//! - b0: bit 7 FIN, bits 4-6 RSV, bits 0-3 opcode (index into the six defined
//!   opcodes, mod 6);
//! - b1: bit 0 masked, bit 1 `recv_frame`'s force_masking, bits 2-7 a cut
//!   point for chunked unmasking and prefix checks;
//! - length: the payload length for the header-only round trip (any u64).
//!
//! Invariants:
//! - `encode_header` with any length/RSV/FIN gives the shortest form, parses
//!   back to the same fields (or to the rule it breaks: RSV on a
//!   non-data-start frame, fragmented or long control frames, a length with
//!   the top bit set) and re-encodes to the same bytes; no prefix of it
//!   parses;
//! - `build_frame` + `parse_header` + unmasking (in two pieces) gives back
//!   FIN, opcode, mask and payload; the masking rules and the payload limit
//!   reject exactly what they should;
//! - `recv_frame` on the frame (followed by the start of another) returns the
//!   same frame and leaves exactly the rest; on any prefix it returns
//!   `Ok(None)` and leaves the buffer alone.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ws_fuzz::protocol::{
    apply_mask, build_frame, encode_header, parse_close_payload, parse_header, recv_frame, Frame,
    FrameHeader, OpCode, ParseConfig, ProtocolError, MAX_HEADER_LEN,
};
use ws_fuzz::Input;

const OPCODES: [OpCode; 6] = [
    OpCode::Continuation,
    OpCode::Text,
    OpCode::Binary,
    OpCode::Close,
    OpCode::Ping,
    OpCode::Pong,
];

fn lenient(max_payload_len: u64) -> ParseConfig {
    ParseConfig {
        max_payload_len,
        require_masked: false,
        require_unmasked: false,
        allowed_rsv: 0,
    }
}

/// What `parse_header` must say about a whole header with these fields,
/// following its documented order of checks.
fn expected(
    header: FrameHeader,
    header_len: usize,
    cfg: &ParseConfig,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let data_start = matches!(header.opcode, OpCode::Text | OpCode::Binary);
    let allowed = if data_start { cfg.allowed_rsv } else { 0 };
    if header.rsv & !allowed != 0 {
        return Err(ProtocolError::ReservedBits(header.rsv));
    }
    if header.opcode.is_control() && !header.fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }
    if header.mask.is_some() && cfg.require_unmasked {
        return Err(ProtocolError::MaskedFrame);
    }
    if header.mask.is_none() && cfg.require_masked {
        return Err(ProtocolError::UnmaskedFrame);
    }
    if header.opcode.is_control() && header.payload_len > 125 {
        return Err(ProtocolError::ControlFrameTooLong);
    }
    if header.payload_len >> 63 != 0 {
        return Err(ProtocolError::LengthMsbSet);
    }
    if header.payload_len > cfg.max_payload_len {
        return Err(ProtocolError::FrameTooBig {
            len: header.payload_len,
            max: cfg.max_payload_len,
        });
    }
    Ok(Some((header, header_len)))
}

fn header_len_for(len: u64, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let b0 = input.byte();
    let b1 = input.byte();
    let key: [u8; 4] = input.bytes();
    let any_len = u64::from_be_bytes(input.bytes());
    let payload = input.rest();

    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0b111;
    let opcode = OPCODES[usize::from(b0 & 0x0f) % OPCODES.len()];
    let mask = (b1 & 1 != 0).then_some(key);
    let force_masking = b1 & 2 != 0;
    let cut = usize::from(b1 >> 2);

    // 1. Header alone, any length and RSV bits.
    let encoded = encode_header(fin, rsv, opcode, any_len, mask);
    let bytes = encoded.as_slice();
    assert!(bytes.len() <= MAX_HEADER_LEN);
    // Lengths with the top bit set cannot be encoded validly; the encoder
    // still writes them in the 64-bit form.
    assert_eq!(bytes.len(), header_len_for(any_len, mask.is_some()));
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len: any_len,
    };
    for allowed_rsv in [0, 0b111] {
        let cfg = ParseConfig {
            allowed_rsv,
            ..lenient(u64::MAX)
        };
        let parsed = parse_header(bytes, &cfg);
        assert_eq!(parsed, expected(header, bytes.len(), &cfg), "{bytes:x?}");
        if let Ok(Some((parsed, _))) = parsed {
            let again = encode_header(
                parsed.fin,
                parsed.rsv,
                parsed.opcode,
                parsed.payload_len,
                parsed.mask,
            );
            assert_eq!(again.as_slice(), bytes);
        }
        // A prefix is incomplete, or already shows the whole header's error.
        for end in 0..bytes.len() {
            match parse_header(&bytes[..end], &cfg) {
                Ok(None) => {}
                Err(err) => assert_eq!(Err(err), parsed, "prefix {end}"),
                Ok(Some(_)) => panic!("prefix {end} of {bytes:x?} parsed"),
            }
        }
    }

    // 2. A whole frame from build_frame (no RSV).
    let frame = build_frame(fin, opcode, payload, mask);
    let header_len = header_len_for(payload.len() as u64, mask.is_some());
    assert_eq!(frame.len(), header_len + payload.len());
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let limit = payload.len() as u64;
    let configs = [
        lenient(limit),
        lenient(limit.saturating_sub(1)),
        ParseConfig::server(limit),
        ParseConfig::client(limit),
    ];
    for cfg in &configs {
        let parsed = parse_header(&frame, cfg);
        assert_eq!(parsed, expected(header, header_len, cfg), "{cfg:?}");
    }
    if let Ok(Some((parsed, len))) = parse_header(&frame, &lenient(limit)) {
        assert_eq!(parsed, header);
        let mut body = frame[len..].to_vec();
        // The payload is masked with the key from offset 0, and can be
        // unmasked in pieces.
        for (i, (&m, &p)) in body.iter().zip(payload).enumerate() {
            assert_eq!(m, p ^ mask.map_or(0, |k| k[i % 4]));
        }
        if let Some(key) = parsed.mask {
            let cut = cut.min(body.len());
            let (a, b) = body.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
        }
        assert_eq!(body, payload);
    }

    // 3. recv_frame, with the start of a next frame behind it.
    let next = &frame[..frame.len().min(3)];
    let mut buf = BytesMut::from(&frame[..]);
    buf.extend_from_slice(next);
    let got = recv_frame(&mut buf, limit, force_masking);
    let rules = ParseConfig {
        require_masked: force_masking,
        ..lenient(limit)
    };
    match expected(header, header_len, &rules) {
        Err(err) => assert_eq!(got, Err(err)),
        Ok(_) if opcode == OpCode::Close && parse_close_payload(payload).is_err() => {
            assert_eq!(got, Err(parse_close_payload(payload).unwrap_err()));
        }
        Ok(_) => {
            let frame_back = Frame {
                fin,
                rsv: 0,
                opcode,
                payload: bytes::Bytes::copy_from_slice(payload),
            };
            assert_eq!(got, Ok(Some(frame_back)));
            assert_eq!(&buf[..], next);
            // What is left parses as it would on its own.
            let mut alone = BytesMut::from(next);
            assert_eq!(
                recv_frame(&mut buf, limit, force_masking),
                recv_frame(&mut alone, limit, force_masking)
            );
            assert_eq!(buf, alone);
            // Prefixes: the header bytes one by one, the cut and the last byte.
            let cuts = (0..=header_len.min(frame.len() - 1))
                .chain([cut.min(frame.len() - 1), frame.len() - 1]);
            for end in cuts {
                let mut prefix = BytesMut::from(&frame[..end]);
                assert_eq!(
                    recv_frame(&mut prefix, limit, force_masking),
                    Ok(None),
                    "prefix {end}"
                );
                assert_eq!(&prefix[..], &frame[..end]);
            }
        }
    }
});
