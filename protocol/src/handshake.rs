//! The opening handshake (RFC 6455 §4): the server's request checks, the
//! client's request and response checks, and the key/accept computation.

mod client;
mod error;
mod headers;
mod server;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

pub use client::{parse_response, ClientRequest, HandshakeResponse, MAX_RESPONSE_HEAD_LEN};
pub use error::HandshakeError;
pub use server::{select_subprotocol, validate_request, HandshakeRequest, ValidRequest};

/// Appended to the client's key before hashing (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    STANDARD.encode(sha1.finalize())
}

/// A `Sec-WebSocket-Key` from 16 random bytes the caller supplies.
pub fn generate_key(random16: [u8; 16]) -> String {
    STANDARD.encode(random16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generated_keys() {
        assert_eq!(
            generate_key(*b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(generate_key([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(generate_key([0xff; 16]).len(), 24);
    }
}
