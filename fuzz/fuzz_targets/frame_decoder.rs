//! The streaming frame decoder on arbitrary bytes in arbitrary splits.
//!
//! Input: `[cfg0, cfg1, split sizes (cfg1 >> 3 & 15 of them)..., stream...]`
//! - cfg0 bits 0-1: 0 server (frames must be masked), 1 client (must not be),
//!   2 lenient, 3 both rules at once (every frame fails); bits 2-4: the RSV
//!   bits extensions allow; bits 5-7: max_payload_len (table below).
//! - cfg1 bits 0-2: max_message_len (table below).
//!
//! The stream is decoded three times, fed the way the session's read loop
//! feeds it (append what arrived, call `decode` on the unconsumed bytes until
//! it needs more): whole, in the chunks the split sizes give, and byte by
//! byte. Invariants:
//! - the same completed frames (payload joined), control frames, frame in
//!   progress, unconsumed bytes and first error, whichever the split;
//! - every call consumes at most the buffer, a data chunk is the unmasked
//!   last bytes of what it consumed, and every completed frame re-encodes
//!   (`encode_header` + masking) to exactly the bytes it came from;
//! - the configuration's rules hold for everything delivered (masking,
//!   RSV bits, payload and message limits, control frame rules, valid close
//!   payloads, UTF-8 text messages, fragmentation order);
//! - after an error every later call returns the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_fuzz::protocol::{
    apply_mask, encode_header, parse_close_payload, DecodeEvent, Decoder, DecoderConfig,
    FrameHeader, OpCode, ParseConfig, ProtocolError,
};
use ws_fuzz::{bytewise, split, Input};

const MAX_PAYLOAD: [u64; 8] = [u64::MAX, 0, 1, 125, 126, 300, 65535, 65536];
const MAX_MESSAGE: [u64; 8] = [0, 1, 125, 126, 300, 1000, 65536, u64::MAX];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    /// A completed data frame with its chunks joined.
    Frame {
        opcode: OpCode,
        header: FrameHeader,
        message_start: bool,
        message_end: bool,
        payload: Vec<u8>,
    },
    Control {
        opcode: OpCode,
        payload: Vec<u8>,
    },
}

/// What a whole run saw; equal for every split of the same stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    /// Without an error: the data frame in progress and what arrived of it.
    partial: Option<(FrameHeader, Vec<u8>)>,
    /// Without an error: bytes not consumed (a partial header).
    leftover: Vec<u8>,
    error: Option<ProtocolError>,
    /// Stream offset where the frame being received started (at the end,
    /// or when the error came).
    frame_start: usize,
}

/// Checks the decoder's output against the stream as it goes.
struct Run<'r> {
    cfg: DecoderConfig,
    raw: &'r [u8],
    /// Stream offset of `pending[0]`.
    consumed: usize,
    frame_start: usize,
    /// The data frame being received: header, payload so far.
    frame: Option<(FrameHeader, bool, Vec<u8>)>,
    /// The open message: opcode, bytes so far.
    message: Option<(OpCode, Vec<u8>)>,
    events: Vec<Ev>,
}

impl Run<'_> {
    fn check_header(&self, header: &FrameHeader) {
        let parse = &self.cfg.parse;
        assert!(header.payload_len <= parse.max_payload_len, "{header:?}");
        if parse.require_masked {
            assert!(header.mask.is_some());
        }
        if parse.require_unmasked {
            assert!(header.mask.is_none());
        }
        if header.rsv != 0 {
            assert!(matches!(header.opcode, OpCode::Text | OpCode::Binary));
            assert_eq!(header.rsv & !parse.allowed_rsv, 0);
        }
        assert!(header.rsv < 8);
        assert!(header.payload_len >> 63 == 0);
    }

    /// The frame that started at `frame_start` and ends at `end` re-encodes to
    /// exactly its bytes.
    fn check_rebuild(&self, header: &FrameHeader, payload: &[u8], end: usize) {
        let mut frame = encode_header(
            header.fin,
            header.rsv,
            header.opcode,
            header.payload_len,
            header.mask,
        )
        .as_slice()
        .to_vec();
        let header_len = frame.len();
        frame.extend_from_slice(payload);
        if let Some(key) = header.mask {
            apply_mask(&mut frame[header_len..], key, 0);
        }
        assert_eq!(
            &self.raw[self.frame_start..end],
            &frame[..],
            "rebuilt frame"
        );
    }

    /// A `DecodeEvent::Data` whose chunk starts at stream offset `chunk_at`.
    fn data(&mut self, event: &DecodeEvent<'_>, chunk_at: usize) {
        let DecodeEvent::Data {
            opcode,
            frame_header: header,
            message_start,
            chunk,
            frame_end,
            message_end,
            ..
        } = *event
        else {
            unreachable!("called for data events")
        };
        self.check_header(&header);
        assert!(header.opcode.is_data());
        assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
        assert_eq!(message_end, frame_end && header.fin);
        assert!(
            !chunk.is_empty() || header.payload_len == 0,
            "empty chunk of a non-empty frame"
        );
        let first_chunk = self.frame.is_none();
        if first_chunk {
            // A new frame: its opcode must fit the message state.
            match (&self.message, header.opcode) {
                (None, OpCode::Text | OpCode::Binary) => {
                    assert!(message_start);
                    assert_eq!(opcode, header.opcode);
                    self.message = Some((opcode, Vec::new()));
                }
                (Some((open, _)), OpCode::Continuation) => {
                    assert!(!message_start);
                    assert_eq!(opcode, *open);
                }
                (state, op) => panic!("{op:?} frame delivered with message {state:?}"),
            }
            // Its header sits right before the first chunk.
            let encoded = encode_header(
                header.fin,
                header.rsv,
                header.opcode,
                header.payload_len,
                header.mask,
            );
            assert_eq!(
                &self.raw[self.frame_start..chunk_at],
                encoded.as_slice(),
                "header bytes"
            );
            self.frame = Some((header, message_start, Vec::new()));
        } else {
            assert!(!message_start, "message_start on a later chunk");
        }
        let (frame_header, start, payload) = self.frame.as_mut().expect("frame in progress");
        assert_eq!(*frame_header, header);
        // The chunk is the stream's bytes, unmasked.
        let raw = &self.raw[chunk_at..chunk_at + chunk.len()];
        for (i, (&got, &sent)) in chunk.iter().zip(raw).enumerate() {
            let key = header.mask.map_or(0, |k| k[(payload.len() + i) % 4]);
            assert_eq!(got, sent ^ key, "unmasking");
        }
        payload.extend_from_slice(chunk);
        assert!(payload.len() as u64 <= header.payload_len);
        assert_eq!(frame_end, payload.len() as u64 == header.payload_len);
        let start = *start;
        let (_, message) = self.message.as_mut().expect("message open");
        message.extend_from_slice(chunk);
        if self.cfg.max_message_len != 0 {
            assert!(message.len() as u64 <= self.cfg.max_message_len);
        }
        if frame_end {
            let (header, _, payload) = self.frame.take().expect("frame in progress");
            let end = chunk_at + chunk.len();
            self.check_rebuild(&header, &payload, end);
            self.frame_start = end;
            self.events.push(Ev::Frame {
                opcode,
                header,
                message_start: start,
                message_end,
                payload,
            });
        }
        if message_end {
            let (opcode, message) = self.message.take().expect("message open");
            if opcode == OpCode::Text {
                assert!(
                    std::str::from_utf8(&message).is_ok(),
                    "invalid text delivered"
                );
            }
        }
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8], end: usize) {
        assert!(opcode.is_control());
        assert!(payload.len() <= 125);
        assert!(self.frame.is_none(), "control frame inside a data frame");
        if opcode == OpCode::Close {
            // Empty, or a code allowed on the wire and a UTF-8 reason.
            match payload {
                [] => {}
                [hi, lo, reason @ ..] => {
                    let code = u16::from_be_bytes([*hi, *lo]);
                    assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999));
                    assert!(std::str::from_utf8(reason).is_ok());
                    assert!(parse_close_payload(payload).is_ok());
                }
                [_] => panic!("1-byte close payload delivered"),
            }
        }
        // Re-encode with the mask key found where the header keeps it.
        let header_len = end - self.frame_start - payload.len();
        let masked = self.raw[self.frame_start + 1] & 0x80 != 0;
        let mask = masked.then(|| {
            let key = &self.raw[self.frame_start + header_len - 4..][..4];
            [key[0], key[1], key[2], key[3]]
        });
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        self.check_header(&header);
        self.check_rebuild(&header, payload, end);
        self.frame_start = end;
        self.events.push(Ev::Control {
            opcode,
            payload: payload.to_vec(),
        });
    }
}

fn run<'c>(cfg: DecoderConfig, raw: &[u8], chunks: impl IntoIterator<Item = &'c [u8]>) -> Outcome {
    let mut decoder = Decoder::new(cfg);
    let mut run = Run {
        cfg,
        raw,
        consumed: 0,
        frame_start: 0,
        frame: None,
        message: None,
        events: Vec::new(),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        pending.extend_from_slice(chunk);
        // As Session::decode_buffered does.
        loop {
            let base = pending.as_ptr() as usize;
            let len = pending.len();
            let (used, event) = match decoder.decode(&mut pending) {
                Ok(step) => step,
                Err(err) => {
                    error = Some(err);
                    break 'feed;
                }
            };
            assert!(used <= len, "consumed {used} of {len}");
            let stream_at = run.consumed;
            let mut waiting = false;
            match &event {
                DecodeEvent::NeedMore => waiting = used == 0,
                DecodeEvent::Data { chunk, .. } => {
                    // The chunk is the tail of what this call consumed.
                    let offset = chunk.as_ptr() as usize - base;
                    assert!(chunk.is_empty() || offset + chunk.len() == used);
                    assert!(chunk.len() <= used);
                    let chunk_at = stream_at + used - chunk.len();
                    run.data(&event, chunk_at);
                }
                DecodeEvent::Control(frame) => {
                    if let Some((code, reason)) = frame.close() {
                        assert_eq!(&frame.payload()[..2], &code.to_be_bytes());
                        assert_eq!(&frame.payload()[2..], reason.as_bytes());
                    }
                    run.control(frame.opcode, frame.payload(), stream_at + used);
                }
            }
            pending.drain(..used);
            run.consumed += used;
            // The decoder opens a message with its first frame's header,
            // before any of its payload is handed out.
            if run.message.is_some() {
                assert!(decoder.in_message());
            } else if decoder.in_message() {
                assert!(run.frame.is_none() && run.consumed >= run.frame_start + 2);
            }
            if waiting || pending.is_empty() {
                break;
            }
        }
    }

    if let Some(err) = error {
        // The connection stays failed, whatever comes next.
        assert_eq!(decoder.decode(&mut pending), Err(err));
        assert_eq!(decoder.decode(&mut []), Err(err));
        assert_eq!(decoder.decode(&mut [0x82, 0x80, 1, 2, 3, 4]), Err(err));
        assert!((1000..=1011).contains(&err.close_code()));
        decoder.reset();
        assert_eq!(decoder.decode(&mut []), Ok((0, DecodeEvent::NeedMore)));
        assert!(!decoder.in_message());
        return Outcome {
            events: run.events,
            partial: None,
            leftover: Vec::new(),
            error: Some(err),
            frame_start: run.frame_start,
        };
    }

    // Everything that could be delivered was.
    assert_eq!(decoder.decode(&mut []), Ok((0, DecodeEvent::NeedMore)));
    assert!(pending.len() < 14, "a whole header left unparsed");
    assert_eq!(run.consumed + pending.len(), raw.len());
    if let Some((opcode, message)) = &run.message {
        if *opcode == OpCode::Text {
            // Fail-fast: what was delivered can still become valid UTF-8.
            let ok =
                std::str::from_utf8(message).map_or_else(|e| e.error_len().is_none(), |_| true);
            assert!(ok, "text delivered that can no longer be valid");
        }
    }
    Outcome {
        events: run.events,
        partial: run.frame.map(|(header, _, payload)| (header, payload)),
        leftover: pending,
        error: None,
        frame_start: run.frame_start,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg0 = input.byte();
    let cfg1 = input.byte();
    let (require_masked, require_unmasked) = match cfg0 & 3 {
        0 => (true, false),
        1 => (false, true),
        2 => (false, false),
        _ => (true, true),
    };
    let cfg = DecoderConfig {
        parse: ParseConfig {
            max_payload_len: MAX_PAYLOAD[usize::from(cfg0 >> 5)],
            require_masked,
            require_unmasked,
            allowed_rsv: (cfg0 >> 2) & 0b111,
        },
        max_message_len: MAX_MESSAGE[usize::from(cfg1 & 7)],
        // permessage-deflate's decoder rules are covered by the deflate
        // target and the decoder's unit tests; the model here has none.
        compression: false,
    };
    let sizes = input.take(usize::from((cfg1 >> 3) & 15));
    let stream = input.rest();

    let whole = run(cfg, stream, [stream]);
    let chunked = run(cfg, stream, split(stream, sizes));
    assert_eq!(whole, chunked, "whole vs split {sizes:?}");
    let bytes = run(cfg, stream, bytewise(stream));
    assert_eq!(whole, bytes, "whole vs byte by byte");
});
