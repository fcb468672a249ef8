//! The WebSocket protocol (RFC 6455) without I/O: frames, masking, UTF-8 and
//! close rules, a streaming decoder and the opening handshake. Nothing here
//! knows about nginx; bytes go in, events and bytes come out.

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
pub mod whole_frame;

pub use close::{build_close_payload, is_valid_close_code, parse_close_payload};
pub use decoder::{ControlFrame, DecodeEvent, Decoder, DecoderConfig};
pub use error::ProtocolError;
pub use frame::{
    build_frame, encode_header, parse_header, EncodedHeader, FrameHeader, OpCode, ParseConfig,
    MAX_HEADER_LEN,
};
pub use handshake::{
    accept_key, generate_key, parse_response, select_subprotocol, validate_request, ClientRequest,
    HandshakeError, HandshakeRequest, HandshakeResponse, ValidRequest,
};
pub use mask::apply_mask;
pub use utf8::Utf8Validator;
pub use whole_frame::{recv_frame, Frame};
