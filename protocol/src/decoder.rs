//! A sans-I/O streaming decoder for one direction of a connection.
//!
//! Data payloads are never buffered here: they are unmasked in the caller's
//! buffer and handed back as chunks, so a relay can forward a frame before it
//! has all of it. Control payloads (at most 125 bytes) are copied, since they
//! may arrive split and are needed whole.

use std::fmt;

use super::close::parse_close_payload;
use super::deflate::{compressed_limit, compressed_message_limit, RSV1};
use super::error::ProtocolError;
use super::frame::{parse_header, FrameHeader, OpCode, ParseConfig};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Largest payload of a control frame.
const MAX_CONTROL_LEN: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    pub parse: ParseConfig,
    /// Limit on the sum of a message's fragments; 0 = unlimited. Over it: 1009.
    pub max_message_len: u64,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message,
    /// whose payload is handed out as it is (not UTF-8 checked) and may
    /// exceed the limits by deflate's overhead; its inflated size is the
    /// caller's to check.
    pub compression: bool,
}

/// What one call to [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeEvent<'a> {
    /// Bytes (maybe none) were consumed but no event is complete yet.
    NeedMore,
    /// A piece of a data frame's payload.
    Data {
        /// The message's type, Text or Binary (also for its continuation frames).
        opcode: OpCode,
        /// The header of the frame this chunk belongs to.
        frame_header: FrameHeader,
        /// The first chunk of a message.
        message_start: bool,
        /// Unmasked in place; for text, valid UTF-8 so far (unless compressed).
        chunk: &'a [u8],
        /// The message is compressed (RSV1 on its first frame).
        compressed: bool,
        frame_end: bool,
        message_end: bool,
    },
    /// A complete control frame.
    Control(ControlFrame),
}

/// A complete control frame with its payload copied out of the stream.
#[derive(Clone)]
pub struct ControlFrame {
    pub opcode: OpCode,
    payload: [u8; MAX_CONTROL_LEN],
    len: u8,
}

impl ControlFrame {
    fn empty(opcode: OpCode) -> Self {
        Self {
            opcode,
            payload: [0; MAX_CONTROL_LEN],
            len: 0,
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload[..usize::from(self.len)]
    }

    /// For a close frame with a status: its code and reason (validated by the decoder).
    pub fn close(&self) -> Option<(u16, &str)> {
        if self.opcode != OpCode::Close {
            return None;
        }
        parse_close_payload(self.payload()).ok().flatten()
    }
}

impl PartialEq for ControlFrame {
    fn eq(&self, other: &Self) -> bool {
        self.opcode == other.opcode && self.payload() == other.payload()
    }
}

impl Eq for ControlFrame {}

impl fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlFrame")
            .field("opcode", &self.opcode)
            .field("payload", &self.payload())
            .finish()
    }
}

/// Decodes the frames of one direction of a connection.
#[derive(Debug)]
pub struct Decoder {
    cfg: DecoderConfig,
    /// The frame rules on the wire: with compression, RSV1 is allowed and
    /// the payload limit has room for compressed messages.
    wire: ParseConfig,
    state: State,
    /// The data message being received, possibly over several frames.
    message: Option<Message>,
    utf8: Utf8Validator,
}

#[derive(Debug)]
enum State {
    /// Between frames.
    Header,
    /// Inside a data frame's payload.
    Data { header: FrameHeader, received: u64 },
    /// Inside a control frame's payload; what arrived of it when a read
    /// ended inside it. Boxed: a control frame whose payload arrives in
    /// one piece (the usual case) needs no room here, and an idle
    /// connection's decoder stays small.
    Control {
        header: FrameHeader,
        partial: Option<Box<ControlFrame>>,
    },
    /// The connection is failing; every call repeats the error.
    Failed(ProtocolError),
}

#[derive(Debug)]
struct Message {
    opcode: OpCode,
    /// Sum of the payload lengths announced so far.
    len: u64,
    /// A chunk of it has been handed out.
    started: bool,
    compressed: bool,
}

impl Decoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        let mut wire = cfg.parse;
        if cfg.compression {
            wire.allowed_rsv |= RSV1;
            wire.max_payload_len = compressed_limit(wire.max_payload_len);
        }
        Self {
            cfg,
            wire,
            state: State::Header,
            message: None,
            utf8: Utf8Validator::new(),
        }
    }

    /// Consumes bytes from the front of `buf` and reports at most one event;
    /// call again with the unconsumed rest until it returns `NeedMore` with
    /// nothing left. A partial header is not consumed: keep it and append.
    /// After an error the decoder only repeats it.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
    ) -> Result<(usize, DecodeEvent<'a>), ProtocolError> {
        if let State::Failed(err) = self.state {
            return Err(err);
        }
        let result = self.step(buf);
        if let Err(err) = result {
            self.state = State::Failed(err);
        }
        result
    }

    /// A fragmented message is open.
    pub fn in_message(&self) -> bool {
        self.message.is_some()
    }

    /// At a frame boundary with no data message under way: the next frame,
    /// if it is a data frame, starts a new message (a rate limit checks each
    /// message once, at its first frame).
    pub fn between_messages(&self) -> bool {
        matches!(self.state, State::Header) && self.message.is_none()
    }

    /// Payload bytes of the current data frame still to come (0 between
    /// frames or in a control frame): a receiver that collects the frame
    /// can make room for all of it at once.
    pub fn frame_left(&self) -> u64 {
        match self.state {
            State::Data { header, received } => header.payload_len - received,
            _ => 0,
        }
    }

    /// Like [`frame_left`](Self::frame_left), but only inside a frame of an
    /// uncompressed message that has begun (a chunk of it was reported):
    /// then the next bytes are payload that [`decode`](Self::decode) only
    /// unmasks and checks in place, so a receiver may read them straight
    /// into where it collects the message.
    pub fn plain_payload_left(&self) -> u64 {
        match &self.message {
            Some(m) if m.started && !m.compressed => self.frame_left(),
            _ => 0,
        }
    }

    /// Forgets everything received, including a failure.
    pub fn reset(&mut self) {
        *self = Self::new(self.cfg);
    }

    fn step<'a>(&mut self, buf: &'a mut [u8]) -> Result<(usize, DecodeEvent<'a>), ProtocolError> {
        let mut header_len = 0;
        if let State::Header = self.state {
            let Some((header, len)) = parse_header(buf, &self.wire)? else {
                return Ok((0, DecodeEvent::NeedMore));
            };
            self.start_frame(header)?;
            header_len = len;
        }
        let payload = &mut buf[header_len..];
        let (used, event) = match self.state {
            State::Data { header, received } => self.data_chunk(header, received, payload)?,
            State::Control { .. } => self.control_bytes(payload)?,
            State::Header | State::Failed(_) => unreachable!("a frame was just started"),
        };
        Ok((header_len + used, event))
    }

    fn start_frame(&mut self, header: FrameHeader) -> Result<(), ProtocolError> {
        if header.opcode.is_control() {
            self.state = State::Control {
                header,
                partial: None,
            };
            return Ok(());
        }
        let message = match (header.opcode, self.message.as_mut()) {
            (OpCode::Continuation, Some(message)) => message,
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (opcode, None) => self.message.insert(Message {
                opcode,
                len: 0,
                started: false,
                // RSV1 means compressed only under permessage-deflate;
                // another extension may have been allowed the bit.
                compressed: self.cfg.compression && header.rsv & RSV1 != 0,
            }),
        };
        // A compressed message is limited by what it inflates to (the
        // caller's check); its wire size only by the bound of that limit.
        let (frame_max, message_max) = if message.compressed {
            let max = compressed_message_limit(self.cfg.max_message_len);
            (self.wire.max_payload_len, max)
        } else {
            (self.cfg.parse.max_payload_len, self.cfg.max_message_len)
        };
        if frame_max != 0 && header.payload_len > frame_max {
            return Err(ProtocolError::FrameTooBig {
                len: header.payload_len,
                max: frame_max,
            });
        }
        let len = message.len.saturating_add(header.payload_len);
        if message_max != 0 && len > message_max {
            return Err(if message.compressed {
                ProtocolError::CompressedTooBig {
                    len,
                    max: message_max,
                }
            } else {
                ProtocolError::MessageTooBig {
                    len,
                    max: message_max,
                }
            });
        }
        message.len = len;
        self.state = State::Data {
            header,
            received: 0,
        };
        Ok(())
    }

    fn data_chunk<'a>(
        &mut self,
        header: FrameHeader,
        received: u64,
        payload: &'a mut [u8],
    ) -> Result<(usize, DecodeEvent<'a>), ProtocolError> {
        let remaining = header.payload_len - received;
        let take = usize::try_from(remaining).map_or(payload.len(), |r| r.min(payload.len()));
        if take == 0 && remaining != 0 {
            return Ok((0, DecodeEvent::NeedMore));
        }
        let chunk = &mut payload[..take];
        if let Some(key) = header.mask {
            apply_mask(chunk, key, (received % 4) as usize);
        }
        let message = self
            .message
            .as_mut()
            .expect("a data frame belongs to a message");
        let frame_end = take as u64 == remaining;
        let message_end = frame_end && header.fin;
        if message.opcode == OpCode::Text && !message.compressed {
            self.utf8.feed(chunk)?;
            if message_end {
                self.utf8.finish()?;
            }
        }
        let opcode = message.opcode;
        let compressed = message.compressed;
        let message_start = !message.started;
        message.started = true;
        if message_end {
            self.message = None;
        }
        self.state = if frame_end {
            State::Header
        } else {
            State::Data {
                header,
                received: received + take as u64,
            }
        };
        let event = DecodeEvent::Data {
            opcode,
            frame_header: header,
            message_start,
            chunk,
            compressed,
            frame_end,
            message_end,
        };
        Ok((take, event))
    }

    fn control_bytes<'a>(
        &mut self,
        payload: &[u8],
    ) -> Result<(usize, DecodeEvent<'a>), ProtocolError> {
        let State::Control { header, partial } = &mut self.state else {
            unreachable!("called inside a control frame")
        };
        let header = *header;
        let mut frame = match partial.take() {
            Some(frame) => *frame,
            None => ControlFrame::empty(header.opcode),
        };
        // parse_header allows control frames of at most 125 bytes.
        let wanted = header.payload_len as usize;
        let have = usize::from(frame.len);
        let take = (wanted - have).min(payload.len());
        frame.payload[have..have + take].copy_from_slice(&payload[..take]);
        frame.len += take as u8;
        if usize::from(frame.len) < wanted {
            *partial = Some(Box::new(frame));
            return Ok((take, DecodeEvent::NeedMore));
        }
        if let Some(key) = header.mask {
            apply_mask(&mut frame.payload[..wanted], key, 0);
        }
        if frame.opcode == OpCode::Close {
            parse_close_payload(frame.payload())?;
        }
        self.state = State::Header;
        Ok((take, DecodeEvent::Control(frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::build_frame;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

    fn server(max_payload_len: u64, max_message_len: u64) -> DecoderConfig {
        DecoderConfig {
            parse: ParseConfig::server(max_payload_len),
            max_message_len,
            compression: false,
        }
    }

    fn control(opcode: OpCode, payload: &[u8]) -> ControlFrame {
        let mut frame = ControlFrame::empty(opcode);
        frame.payload[..payload.len()].copy_from_slice(payload);
        frame.len = payload.len() as u8;
        frame
    }

    /// An event with the chunks of one frame joined, so that runs with
    /// different splits can be compared.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Frame {
            opcode: OpCode,
            header: FrameHeader,
            message_start: bool,
            payload: Vec<u8>,
            message_end: bool,
        },
        Control(ControlFrame),
    }

    /// Feeds `chunks` in order the way an I/O layer would (keeping unconsumed
    /// bytes), joins data chunks per frame and stops at the first error.
    fn run(cfg: DecoderConfig, chunks: &[&[u8]]) -> (Vec<Ev>, Option<ProtocolError>) {
        let mut decoder = Decoder::new(cfg);
        let mut pending: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        let mut frame: Option<Ev> = None;
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            loop {
                let (used, event) = match decoder.decode(&mut pending) {
                    Ok(step) => step,
                    Err(err) => return (events, Some(err)),
                };
                let waiting = matches!(event, DecodeEvent::NeedMore);
                match event {
                    DecodeEvent::NeedMore => {}
                    DecodeEvent::Control(c) => events.push(Ev::Control(c)),
                    DecodeEvent::Data {
                        opcode,
                        frame_header,
                        message_start,
                        chunk,
                        frame_end,
                        message_end,
                        ..
                    } => {
                        assert!(
                            !chunk.is_empty() || frame_header.payload_len == 0,
                            "empty chunk"
                        );
                        assert!(message_end == (frame_end && frame_header.fin));
                        match frame.as_mut() {
                            Some(Ev::Frame {
                                payload,
                                header,
                                message_end: end,
                                ..
                            }) => {
                                assert!(!message_start, "message_start on a later chunk");
                                assert_eq!(*header, frame_header);
                                payload.extend_from_slice(chunk);
                                *end = message_end;
                            }
                            _ => {
                                frame = Some(Ev::Frame {
                                    opcode,
                                    header: frame_header,
                                    message_start,
                                    payload: chunk.to_vec(),
                                    message_end,
                                })
                            }
                        }
                        if frame_end {
                            events.push(frame.take().expect("frame in progress"));
                        }
                    }
                }
                pending.drain(..used);
                if waiting {
                    break;
                }
            }
        }
        assert!(pending.is_empty() || decoder.decode(&mut pending).unwrap().0 == 0);
        (events, None)
    }

    fn data(opcode: OpCode, frame_opcode: OpCode, fin: bool, start: bool, payload: &[u8]) -> Ev {
        let header = FrameHeader {
            fin,
            rsv: 0,
            opcode: frame_opcode,
            mask: Some(KEY),
            payload_len: payload.len() as u64,
        };
        Ev::Frame {
            opcode,
            header,
            message_start: start,
            payload: payload.to_vec(),
            message_end: fin,
        }
    }

    /// Fragmented text with a ping in the middle, a binary message and a close.
    fn sample_stream() -> Vec<u8> {
        let frames = [
            build_frame(false, OpCode::Text, "Hé".as_bytes(), Some(KEY)),
            build_frame(true, OpCode::Ping, b"ping!", Some(KEY)),
            build_frame(false, OpCode::Continuation, b"", Some(KEY)),
            build_frame(true, OpCode::Continuation, "llo €".as_bytes(), Some(KEY)),
            build_frame(true, OpCode::Binary, &[0u8, 1, 2, 255], Some(KEY)),
            build_frame(true, OpCode::Binary, &[7u8; 300], Some(KEY)),
            build_frame(true, OpCode::Close, b"\x03\xe8done", Some(KEY)),
        ];
        frames.concat()
    }

    fn sample_events() -> Vec<Ev> {
        vec![
            data(OpCode::Text, OpCode::Text, false, true, "Hé".as_bytes()),
            Ev::Control(control(OpCode::Ping, b"ping!")),
            data(OpCode::Text, OpCode::Continuation, false, false, b""),
            data(
                OpCode::Text,
                OpCode::Continuation,
                true,
                false,
                "llo €".as_bytes(),
            ),
            data(OpCode::Binary, OpCode::Binary, true, true, &[0, 1, 2, 255]),
            data(OpCode::Binary, OpCode::Binary, true, true, &[7u8; 300]),
            Ev::Control(control(OpCode::Close, b"\x03\xe8done")),
        ]
    }

    #[test]
    fn one_shot_stream() {
        let stream = sample_stream();
        assert_eq!(run(server(1000, 0), &[&stream]), (sample_events(), None));
    }

    #[test]
    fn one_byte_at_a_time() {
        let stream = sample_stream();
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(server(1000, 0), &bytes), (sample_events(), None));
    }

    #[test]
    fn split_at_every_offset() {
        let stream = sample_stream();
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                run(server(1000, 0), &[a, b]),
                (sample_events(), None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn exact_events_of_a_split_frame() {
        let mut decoder = Decoder::new(server(100, 0));
        let stream = build_frame(true, OpCode::Text, b"abcdef", Some(KEY));
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Text,
            mask: Some(KEY),
            payload_len: 6,
        };

        assert_eq!(
            decoder.decode(&mut stream[..4].to_vec()),
            Ok((0, DecodeEvent::NeedMore))
        );
        let mut first = stream[..8].to_vec();
        let expected = DecodeEvent::Data {
            opcode: OpCode::Text,
            frame_header: header,
            message_start: true,
            chunk: b"ab",
            compressed: false,
            frame_end: false,
            message_end: false,
        };
        assert_eq!(decoder.decode(&mut first), Ok((8, expected)));
        assert!(decoder.in_message());
        assert_eq!(decoder.frame_left(), 4, "cdef is still to come");
        assert_eq!(decoder.plain_payload_left(), 4, "and the message has begun");
        assert_eq!(decoder.decode(&mut []), Ok((0, DecodeEvent::NeedMore)));

        let mut rest = stream[8..].to_vec();
        let expected = DecodeEvent::Data {
            opcode: OpCode::Text,
            frame_header: header,
            message_start: false,
            chunk: b"cdef",
            compressed: false,
            frame_end: true,
            message_end: true,
        };
        assert_eq!(decoder.decode(&mut rest), Ok((4, expected)));
        // Unmasked in the caller's buffer.
        assert_eq!(rest, b"cdef");
        assert!(!decoder.in_message());
        assert_eq!(decoder.frame_left(), 0, "between frames");
        assert_eq!(decoder.plain_payload_left(), 0);
    }

    #[test]
    fn between_messages_only_at_the_start_of_a_message() {
        let mut decoder = Decoder::new(server(1000, 0));
        assert!(decoder.between_messages());
        // A single frame that arrives in two parts: not between messages
        // once its header is taken, again once it ends.
        let whole = build_frame(true, OpCode::Text, b"abcdef", Some(KEY));
        let mut head = whole[..8].to_vec();
        let (used, _) = decoder.decode(&mut head).unwrap();
        assert_eq!(used, 8);
        assert!(!decoder.between_messages());
        let mut rest = whole[8..].to_vec();
        decoder.decode(&mut rest).unwrap();
        assert!(decoder.between_messages());
        // A partial header is not consumed: still between messages.
        let mut partial = whole[..1].to_vec();
        assert_eq!(decoder.decode(&mut partial), Ok((0, DecodeEvent::NeedMore)));
        assert!(decoder.between_messages());
        // A fragmented message: a ping between its fragments is inside it.
        let mut first = build_frame(false, OpCode::Binary, b"ab", Some(KEY));
        decoder.decode(&mut first).unwrap();
        assert!(!decoder.between_messages());
        let mut ping = build_frame(true, OpCode::Ping, b"p", Some(KEY));
        decoder.decode(&mut ping).unwrap();
        assert!(!decoder.between_messages());
        let mut last = build_frame(true, OpCode::Continuation, b"cd", Some(KEY));
        decoder.decode(&mut last).unwrap();
        assert!(decoder.between_messages());
        // After a failure nothing starts.
        let mut bad = build_frame(true, OpCode::Continuation, b"x", Some(KEY));
        assert!(decoder.decode(&mut bad).is_err());
        assert!(!decoder.between_messages());
    }

    #[test]
    fn compressed_messages_with_permessage_deflate() {
        let deflate = DecoderConfig {
            compression: true,
            ..server(100, 100)
        };
        let mut rsv1_text = build_frame(false, OpCode::Text, &[0xff, 0xfe], Some(KEY));
        rsv1_text[0] |= 0x40;
        let more = build_frame(true, OpCode::Continuation, &[0xc0], Some(KEY));
        let stream = [rsv1_text.clone(), more.clone()].concat();
        // Without the extension RSV1 is a violation.
        let (_, err) = run(server(100, 100), &[&stream]);
        assert_eq!(err, Some(ProtocolError::ReservedBits(0b100)));
        // With it, compressed bytes pass unchecked (they are not UTF-8 yet).
        let mut decoder = Decoder::new(deflate);
        let mut buf = stream.clone();
        let (used, event) = decoder.decode(&mut buf).unwrap();
        assert!(matches!(
            event,
            DecodeEvent::Data {
                compressed: true,
                message_start: true,
                chunk: [0xff, 0xfe],
                ..
            }
        ));
        let (_, event) = decoder.decode(&mut buf[used..]).unwrap();
        assert!(matches!(
            event,
            DecodeEvent::Data {
                compressed: true,
                message_end: true,
                chunk: [0xc0],
                ..
            }
        ));
        // RSV1 allowed without permessage-deflate (another extension): the
        // message is not compressed and its UTF-8 is checked as usual.
        let other = DecoderConfig {
            parse: ParseConfig {
                allowed_rsv: 0b100,
                ..ParseConfig::server(100)
            },
            ..server(100, 100)
        };
        let mut invalid = build_frame(true, OpCode::Text, &[0xff], Some(KEY));
        invalid[0] |= 0x40;
        assert_eq!(run(other, &[&invalid]).1, Some(ProtocolError::InvalidUtf8));
        // RSV1 on a continuation frame stays a violation.
        let mut bad = more.clone();
        bad[0] |= 0x40;
        let (_, err) = run(
            deflate,
            &[&build_frame(false, OpCode::Text, b"a", Some(KEY)), &bad],
        );
        assert_eq!(err, Some(ProtocolError::ReservedBits(0b100)));
        // An uncompressed message keeps its UTF-8 check and exact limits.
        let (_, err) = run(
            deflate,
            &[&build_frame(true, OpCode::Text, &[0xff], Some(KEY))],
        );
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        let (_, err) = run(
            deflate,
            &[&build_frame(true, OpCode::Binary, &[0; 101], Some(KEY))],
        );
        assert_eq!(err, Some(ProtocolError::FrameTooBig { len: 101, max: 100 }));
        // A compressed one may exceed them by deflate's overhead.
        let mut big = build_frame(true, OpCode::Binary, &[0; 1124], Some(KEY));
        big[0] |= 0x40;
        assert_eq!(run(deflate, &[&big]).1, None);
        let mut bigger = build_frame(true, OpCode::Binary, &[0; 1131], Some(KEY));
        bigger[0] |= 0x40;
        assert_eq!(
            run(deflate, &[&bigger]).1,
            Some(ProtocolError::FrameTooBig {
                len: 1131,
                max: 1130
            })
        );
    }

    /// A compressed message is counted against the bound of its inflated
    /// limit (8 x 100 + 1024 = 1824 bytes here), however many fragments it
    /// takes; an uncompressed one against the limit itself.
    #[test]
    fn compressed_message_bound_is_summed_over_fragments() {
        let deflate = DecoderConfig {
            compression: true,
            ..server(100, 100)
        };
        let message = |sizes: &[usize], compressed: bool| {
            let last = sizes.len() - 1;
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let opcode = if i == 0 {
                        OpCode::Binary
                    } else {
                        OpCode::Continuation
                    };
                    let mut frame = build_frame(i == last, opcode, &vec![0u8; n], Some(KEY));
                    if i == 0 && compressed {
                        frame[0] |= 0x40;
                    }
                    frame
                })
                .collect();
            frames.concat()
        };
        // 1824 bytes in fragments of 7 (a byte each, sync-flushed) and one
        // of 3: at the bound.
        let mut at_bound = vec![7; 260];
        at_bound.push(4);
        assert_eq!(at_bound.iter().sum::<usize>(), 1824);
        assert_eq!(run(deflate, &[&message(&at_bound, true)]).1, None);
        at_bound.push(1);
        assert_eq!(
            run(deflate, &[&message(&at_bound, true)]).1,
            Some(ProtocolError::CompressedTooBig {
                len: 1825,
                max: 1824
            })
        );
        // The same fragments uncompressed: over the limit at the 15th.
        assert_eq!(
            run(deflate, &[&message(&at_bound, false)]).1,
            Some(ProtocolError::MessageTooBig { len: 105, max: 100 })
        );
        // Each compressed message is counted on its own.
        let two = [message(&[900, 900], true), message(&[900, 900], true)].concat();
        assert_eq!(run(deflate, &[&two]).1, None);
        // Without a message limit, no bound.
        let unlimited = DecoderConfig {
            compression: true,
            ..server(100_000, 0)
        };
        assert_eq!(run(unlimited, &[&message(&[70_000; 3], true)]).1, None);
    }

    #[test]
    fn header_without_payload_yet() {
        let mut decoder = Decoder::new(server(100, 0));
        let mut stream = build_frame(true, OpCode::Binary, b"xyz", Some(KEY));
        assert_eq!(
            decoder.decode(&mut stream[..6]),
            Ok((6, DecodeEvent::NeedMore))
        );
        let (used, event) = decoder.decode(&mut stream[6..]).unwrap();
        assert_eq!(used, 3);
        assert!(matches!(
            event,
            DecodeEvent::Data {
                chunk: b"xyz",
                message_end: true,
                ..
            }
        ));
    }

    #[test]
    fn zero_length_frames_give_one_event() {
        let mut stream = build_frame(true, OpCode::Text, b"", Some(KEY));
        stream.extend(build_frame(true, OpCode::Ping, b"", Some(KEY)));
        stream.extend(build_frame(true, OpCode::Close, b"", Some(KEY)));
        let expected = vec![
            data(OpCode::Text, OpCode::Text, true, true, b""),
            Ev::Control(control(OpCode::Ping, b"")),
            Ev::Control(control(OpCode::Close, b"")),
        ];
        assert_eq!(run(server(10, 0), &[&stream]), (expected, None));

        let mut decoder = Decoder::new(server(10, 0));
        let mut frame = build_frame(true, OpCode::Binary, b"", Some(KEY));
        let (used, event) = decoder.decode(&mut frame).unwrap();
        assert_eq!(used, 6);
        assert!(matches!(
            event,
            DecodeEvent::Data {
                chunk: b"",
                frame_end: true,
                message_end: true,
                ..
            }
        ));
    }

    #[test]
    fn control_frames() {
        let mut close = build_frame(true, OpCode::Close, b"\x0f\xa0app", Some(KEY));
        let mut decoder = Decoder::new(server(10, 0));
        let close_len = close.len();
        let (used, event) = decoder.decode(&mut close).unwrap();
        assert_eq!(used, close_len);
        let DecodeEvent::Control(frame) = event else {
            panic!("expected a control frame")
        };
        assert_eq!(frame.opcode, OpCode::Close);
        assert_eq!(frame.payload(), b"\x0f\xa0app");
        assert_eq!(frame.close(), Some((4000, "app")));
        assert_eq!(control(OpCode::Close, b"").close(), None);
        assert_eq!(control(OpCode::Ping, b"\x03\xe8").close(), None);

        let long = [0x55u8; 125];
        let stream = build_frame(true, OpCode::Pong, &long, Some(KEY));
        let bytes: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(
            run(server(125, 0), &bytes),
            (vec![Ev::Control(control(OpCode::Pong, &long))], None)
        );
        // The frame limit covers control frames too.
        assert_eq!(
            run(server(124, 0), &bytes),
            (
                vec![],
                Some(ProtocolError::FrameTooBig { len: 125, max: 124 })
            )
        );
    }

    fn expect_error(cfg: DecoderConfig, stream: &[u8], expected: ProtocolError) {
        let (_, err) = run(cfg, &[stream]);
        assert_eq!(err, Some(expected), "one shot");
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (_, err) = run(cfg, &bytes);
        assert_eq!(err, Some(expected), "byte by byte");
    }

    #[test]
    fn protocol_errors() {
        let cfg = server(1000, 0);
        let m = Some(KEY);
        let f = build_frame;
        let table: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                f(true, OpCode::Continuation, b"x", m),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [
                    f(true, OpCode::Text, b"a", m),
                    f(true, OpCode::Continuation, b"b", m),
                ]
                .concat(),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [
                    f(false, OpCode::Text, b"a", m),
                    f(true, OpCode::Text, b"b", m),
                ]
                .concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (
                [
                    f(false, OpCode::Binary, b"a", m),
                    f(false, OpCode::Binary, b"b", m),
                ]
                .concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (
                f(true, OpCode::Text, b"a", None),
                ProtocolError::UnmaskedFrame,
            ),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(3),
            ),
            (
                vec![0xc1, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedBits(0b100),
            ),
            (
                vec![0x09, 0x80, 0, 0, 0, 0],
                ProtocolError::FragmentedControlFrame,
            ),
            (
                vec![0x89, 0xfe, 0x00, 0x7e],
                ProtocolError::ControlFrameTooLong,
            ),
            (
                f(true, OpCode::Binary, &[0u8; 1001], m),
                ProtocolError::FrameTooBig {
                    len: 1001,
                    max: 1000,
                },
            ),
            (
                f(true, OpCode::Text, b"\xce\xba\xed\xa0\x80", m),
                ProtocolError::InvalidUtf8,
            ),
            (
                f(true, OpCode::Text, b"ok\xe2\x82", m),
                ProtocolError::InvalidUtf8,
            ),
            (
                [
                    f(false, OpCode::Text, b"\xe2", m),
                    f(true, OpCode::Continuation, b"\x28\xa1", m),
                ]
                .concat(),
                ProtocolError::InvalidUtf8,
            ),
            (
                [
                    f(false, OpCode::Text, b"\xe2", m),
                    f(true, OpCode::Continuation, b"\x82", m),
                ]
                .concat(),
                ProtocolError::InvalidUtf8,
            ),
            (
                f(true, OpCode::Close, b"\x03", m),
                ProtocolError::InvalidClosePayload,
            ),
            (
                f(true, OpCode::Close, b"\x03\xed", m),
                ProtocolError::InvalidCloseCode(1005),
            ),
            (
                f(true, OpCode::Close, b"\x03\xe8\xff", m),
                ProtocolError::InvalidCloseReason,
            ),
        ];
        for (stream, expected) in table {
            expect_error(cfg, &stream, expected);
        }
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let stream = build_frame(true, OpCode::Binary, b"\xff\xfe", Some(KEY));
        let (events, err) = run(server(10, 0), &[&stream]);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![data(
                OpCode::Binary,
                OpCode::Binary,
                true,
                true,
                b"\xff\xfe"
            )]
        );
    }

    #[test]
    fn text_split_inside_a_character_across_frames() {
        let stream = [
            build_frame(false, OpCode::Text, b"\xf0\x9f", Some(KEY)),
            build_frame(true, OpCode::Ping, b"", Some(KEY)),
            build_frame(true, OpCode::Continuation, b"\x98\x80", Some(KEY)),
        ]
        .concat();
        let (events, err) = run(server(10, 0), &[&stream]);
        assert_eq!(err, None);
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn max_message_len_boundaries() {
        let two_frames = |first: usize, second: usize| {
            [
                build_frame(false, OpCode::Binary, &vec![1u8; first], Some(KEY)),
                build_frame(true, OpCode::Continuation, &vec![2u8; second], Some(KEY)),
            ]
            .concat()
        };
        assert_eq!(run(server(1000, 10), &[&two_frames(4, 6)]).1, None);
        assert_eq!(run(server(1000, 10), &[&two_frames(10, 0)]).1, None);
        expect_error(
            server(1000, 10),
            &two_frames(4, 7),
            ProtocolError::MessageTooBig { len: 11, max: 10 },
        );
        expect_error(
            server(1000, 10),
            &two_frames(11, 0),
            ProtocolError::MessageTooBig { len: 11, max: 10 },
        );
        assert_eq!(run(server(1000, 0), &[&two_frames(1000, 1000)]).1, None);
        // Each message is counted on its own.
        let stream = [two_frames(5, 5), two_frames(5, 5)].concat();
        assert_eq!(run(server(1000, 10), &[&stream]).1, None);
        assert_eq!(
            ProtocolError::MessageTooBig { len: 11, max: 10 }.close_code(),
            1009
        );
    }

    #[test]
    fn too_big_fails_before_payload_arrives() {
        let mut decoder = Decoder::new(server(65535, 0));
        let mut header = build_frame(true, OpCode::Binary, &[0u8; 65536], Some(KEY));
        assert_eq!(
            decoder.decode(&mut header[..10]),
            Err(ProtocolError::FrameTooBig {
                len: 65536,
                max: 65535
            })
        );
    }

    #[test]
    fn failure_is_sticky_until_reset() {
        let mut decoder = Decoder::new(server(10, 0));
        let mut bad = build_frame(true, OpCode::Continuation, b"", Some(KEY));
        assert_eq!(
            decoder.decode(&mut bad),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut good = build_frame(true, OpCode::Text, b"ok", Some(KEY));
        assert_eq!(
            decoder.decode(&mut good.clone()),
            Err(ProtocolError::UnexpectedContinuation)
        );
        decoder.reset();
        assert!(matches!(
            decoder.decode(&mut good),
            Ok((8, DecodeEvent::Data { chunk: b"ok", .. }))
        ));
    }

    #[test]
    fn reset_closes_an_open_message() {
        let mut decoder = Decoder::new(server(10, 0));
        let mut first = build_frame(false, OpCode::Text, b"a", Some(KEY));
        decoder.decode(&mut first).unwrap();
        assert!(decoder.in_message());
        decoder.reset();
        assert!(!decoder.in_message());
        let mut cont = build_frame(true, OpCode::Continuation, b"b", Some(KEY));
        assert_eq!(
            decoder.decode(&mut cont),
            Err(ProtocolError::UnexpectedContinuation)
        );
    }

    #[test]
    fn client_side_unmasked_frames() {
        let cfg = DecoderConfig {
            parse: ParseConfig::client(100),
            max_message_len: 0,
            compression: false,
        };
        let stream = build_frame(true, OpCode::Text, b"hi", None);
        let (events, err) = run(cfg, &[&stream]);
        assert_eq!(err, None);
        let Ev::Frame {
            payload, header, ..
        } = &events[0]
        else {
            panic!("expected data")
        };
        assert_eq!((payload.as_slice(), header.mask), (&b"hi"[..], None));
        let masked = build_frame(true, OpCode::Text, b"hi", Some(KEY));
        expect_error(cfg, &masked, ProtocolError::MaskedFrame);
    }

    /// A message as a list of fragments, with a ping after some of them.
    #[derive(Debug, Clone)]
    struct Message {
        binary: bool,
        fragments: Vec<(Vec<u8>, bool)>,
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        let fragment = || (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>());
        prop_oneof![
            (proptest::collection::vec(fragment(), 1..4)).prop_map(|fragments| Message {
                binary: true,
                fragments
            }),
            (
                "\\PC{0,30}",
                proptest::collection::vec((any::<usize>(), any::<bool>()), 0..3)
            )
                .prop_map(|(text, cuts)| {
                    // Cut the text at arbitrary byte positions, even inside characters.
                    let bytes = text.into_bytes();
                    let mut points: Vec<usize> =
                        cuts.iter().map(|(c, _)| c % (bytes.len() + 1)).collect();
                    points.sort_unstable();
                    let mut fragments = Vec::new();
                    let mut start = 0;
                    for (point, (_, ping)) in points.iter().zip(&cuts) {
                        fragments.push((bytes[start..*point].to_vec(), *ping));
                        start = *point;
                    }
                    fragments.push((bytes[start..].to_vec(), false));
                    Message {
                        binary: false,
                        fragments,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn messages_survive_any_split(messages in proptest::collection::vec(message_strategy(), 1..5),
                                      mask in any::<Option<[u8; 4]>>(),
                                      cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for message in &messages {
                let opcode = if message.binary { OpCode::Binary } else { OpCode::Text };
                let last = message.fragments.len() - 1;
                for (i, (payload, ping)) in message.fragments.iter().enumerate() {
                    let frame_opcode = if i == 0 { opcode } else { OpCode::Continuation };
                    stream.extend(build_frame(i == last, frame_opcode, payload, mask));
                    let fin = i == last;
                    let payload_len = payload.len() as u64;
                    let header = FrameHeader { fin, rsv: 0, opcode: frame_opcode, mask, payload_len };
                    let payload = payload.clone();
                    expected.push(Ev::Frame { opcode, header, message_start: i == 0, payload, message_end: fin });
                    if *ping {
                        stream.extend(build_frame(true, OpCode::Ping, b"p", mask));
                        expected.push(Ev::Control(control(OpCode::Ping, b"p")));
                    }
                }
            }
            let parse = ParseConfig { require_masked: false, ..ParseConfig::server(100) };
            let cfg = DecoderConfig { parse, max_message_len: 0, compression: false };
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            prop_assert_eq!(run(cfg, &chunks), (expected, None));
        }
    }
}
