//! Server side: checking a client's upgrade request (RFC 6455 §4.2.1).

use base64::alphabet::STANDARD as ALPHABET;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::accept_key;
use super::error::HandshakeError;
use super::headers::{has_token, list_items, values};

/// `http_version` of HTTP/1.1, nginx style (major * 1000 + minor).
const HTTP_1_1: u32 = 1001;
/// `http_version` of HTTP/2, the first version that cannot be upgraded.
const HTTP_2: u32 = 2000;

/// The parts of an HTTP request the handshake looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest<'a> {
    pub method: &'a [u8],
    /// nginx style: 1001 = HTTP/1.1.
    pub http_version: u32,
    /// (name, value) in any case; a header may repeat.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// What an accepted request offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest<'a> {
    /// `Sec-WebSocket-Key`, trimmed.
    pub key: &'a str,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Offered subprotocols in the client's order of preference.
    pub protocols: Vec<&'a str>,
    pub origin: Option<&'a [u8]>,
    /// Raw `Sec-WebSocket-Extensions` values, for an extension to negotiate.
    pub extensions: Vec<&'a [u8]>,
}

/// Checks an upgrade request; the error says which status to refuse it with.
pub fn validate_request<'a>(
    req: &HandshakeRequest<'a>,
) -> Result<ValidRequest<'a>, HandshakeError> {
    let headers = req.headers.as_slice();
    // First, so that every request on an HTTP/2 or HTTP/3 stream gets the
    // same answer: it has no connection of its own to take over.
    if req.http_version >= HTTP_2 {
        return Err(HandshakeError::NotHttp1(req.http_version / 1000));
    }
    if req.method != b"GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.http_version < HTTP_1_1 {
        return Err(HandshakeError::HttpVersionTooOld);
    }
    if !has_token(headers, "Upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, "Connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    check_version(values(headers, "Sec-WebSocket-Version"))?;
    let key = single_key(values(headers, "Sec-WebSocket-Key"))?;

    let mut protocols = Vec::new();
    for value in values(headers, "Sec-WebSocket-Protocol") {
        for item in list_items(value) {
            protocols.push(std::str::from_utf8(item).map_err(|_| HandshakeError::InvalidProtocol)?);
        }
    }
    Ok(ValidRequest {
        key,
        accept: accept_key(key.as_bytes()),
        protocols,
        origin: values(headers, "Origin").next(),
        extensions: values(headers, "Sec-WebSocket-Extensions").collect(),
    })
}

/// The first subprotocol of the client's list that the server accepts
/// (names compare case-sensitively, RFC 6455 §4.1).
pub fn select_subprotocol<'a>(
    offered: &[&'a str],
    accepted: &[impl AsRef<str>],
) -> Option<&'a str> {
    offered
        .iter()
        .copied()
        .find(|name| accepted.iter().any(|ok| ok.as_ref() == *name))
}

/// Exactly one `Sec-WebSocket-Version`, and it is 13.
fn check_version<'a>(mut versions: impl Iterator<Item = &'a [u8]>) -> Result<(), HandshakeError> {
    match (versions.next(), versions.next()) {
        (None, _) => Err(HandshakeError::MissingVersion),
        (Some(b"13"), None) => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &ALPHABET,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Exactly one `Sec-WebSocket-Key`, the base64 of 16 bytes.
fn single_key<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> Result<&'a str, HandshakeError> {
    let key = keys.next().ok_or(HandshakeError::MissingKey)?;
    if keys.next().is_some() {
        return Err(HandshakeError::DuplicateKey);
    }
    let key = std::str::from_utf8(key).map_err(|_| HandshakeError::InvalidKey)?;
    // Padding is required, but unused low bits in the last character are
    // tolerated, as common clients' decoders do: the key is only hashed.
    match LENIENT.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(key),
        _ => Err(HandshakeError::InvalidKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

    fn base_headers() -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b"Host", b"server.example.com"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", KEY),
            (b"Sec-WebSocket-Version", b"13"),
        ]
    }

    fn request(headers: Vec<(&'static [u8], &'static [u8])>) -> HandshakeRequest<'static> {
        HandshakeRequest {
            method: b"GET",
            http_version: 1001,
            headers,
        }
    }

    /// The base request with header `name` dropped and `extra` added.
    fn with(name: &[u8], extra: &[(&'static [u8], &'static [u8])]) -> HandshakeRequest<'static> {
        let mut headers: Vec<_> = base_headers()
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect();
        headers.extend_from_slice(extra);
        request(headers)
    }

    #[test]
    fn rfc_example_request() {
        let mut req = request(base_headers());
        req.headers.push((b"Origin", b"http://example.com"));
        req.headers
            .push((b"Sec-WebSocket-Protocol", b"chat, superchat"));
        let valid = validate_request(&req).unwrap();
        assert_eq!(
            valid,
            ValidRequest {
                key: "dGhlIHNhbXBsZSBub25jZQ==",
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string(),
                protocols: vec!["chat", "superchat"],
                origin: Some(b"http://example.com"),
                extensions: vec![],
            }
        );
    }

    #[test]
    fn lenient_where_http_is() {
        let req = HandshakeRequest {
            method: b"GET",
            http_version: 1001,
            headers: vec![
                (b"upgrade", b"WebSocket"),
                (b"CONNECTION", b"keep-alive, Upgrade"),
                (b"sec-websocket-key", b"  dGhlIHNhbXBsZSBub25jZQ== "),
                (b"SEC-WEBSOCKET-VERSION", b" 13"),
                (b"Sec-WebSocket-Protocol", b"a,, b "),
                (b"Sec-WebSocket-Protocol", b"c"),
                (
                    b"Sec-WebSocket-Extensions",
                    b"permessage-deflate; client_max_window_bits",
                ),
                (b"Sec-WebSocket-Extensions", b"x-foo"),
            ],
        };
        let valid = validate_request(&req).unwrap();
        assert_eq!(valid.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(valid.protocols, vec!["a", "b", "c"]);
        assert_eq!(valid.origin, None);
        assert_eq!(
            valid.extensions,
            vec![&b"permessage-deflate; client_max_window_bits"[..], b"x-foo"]
        );
    }

    #[test]
    fn http_1_1_and_later_minors_are_upgraded() {
        for http_version in [1001, 1009] {
            let req = HandshakeRequest {
                http_version,
                ..request(base_headers())
            };
            assert!(validate_request(&req).is_ok(), "{http_version}");
        }
    }

    #[test]
    fn key_with_unused_bits_set_is_accepted() {
        let req = with(
            b"Sec-WebSocket-Key",
            &[(b"Sec-WebSocket-Key", b"BBBBBBBBBBBBBBBBBBBBBB==")],
        );
        let valid = validate_request(&req).expect("16 bytes, padded");
        assert_eq!(valid.key, "BBBBBBBBBBBBBBBBBBBBBB==");
        assert_eq!(valid.accept, accept_key(b"BBBBBBBBBBBBBBBBBBBBBB=="));
    }

    #[test]
    fn each_defect_and_its_status() {
        let post = HandshakeRequest {
            method: b"POST",
            ..request(base_headers())
        };
        let version = |http_version| HandshakeRequest {
            http_version,
            ..request(base_headers())
        };
        let table: Vec<(HandshakeRequest, HandshakeError, u16)> = vec![
            (post, HandshakeError::MethodNotGet, 405),
            (
                HandshakeRequest {
                    method: b"get",
                    ..request(base_headers())
                },
                HandshakeError::MethodNotGet,
                405,
            ),
            (version(1000), HandshakeError::HttpVersionTooOld, 400),
            (version(2000), HandshakeError::NotHttp1(2), 400),
            (version(3000), HandshakeError::NotHttp1(3), 400),
            (
                HandshakeRequest {
                    method: b"CONNECT",
                    ..version(2000)
                },
                HandshakeError::NotHttp1(2),
                400,
            ),
            (with(b"Upgrade", &[]), HandshakeError::MissingUpgrade, 400),
            (
                with(b"Upgrade", &[(b"Upgrade", b"h2c")]),
                HandshakeError::MissingUpgrade,
                400,
            ),
            (
                with(b"Upgrade", &[(b"Upgrade", b"websocketx")]),
                HandshakeError::MissingUpgrade,
                400,
            ),
            (
                with(b"Connection", &[]),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with(b"Connection", &[(b"Connection", b"keep-alive")]),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with(b"Connection", &[(b"Connection", b"upgrades")]),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with(b"Sec-WebSocket-Version", &[]),
                HandshakeError::MissingVersion,
                426,
            ),
            (
                with(
                    b"Sec-WebSocket-Version",
                    &[(b"Sec-WebSocket-Version", b"8")],
                ),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with(
                    b"Sec-WebSocket-Version",
                    &[(b"Sec-WebSocket-Version", b"13, 8")],
                ),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with(b"Sec-WebSocket-Version", &[(b"Sec-WebSocket-Version", b"")]),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with(b"", &[(b"Sec-WebSocket-Version", b"13")]),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with(b"Sec-WebSocket-Key", &[]),
                HandshakeError::MissingKey,
                400,
            ),
            (
                with(b"", &[(b"Sec-WebSocket-Key", KEY)]),
                HandshakeError::DuplicateKey,
                400,
            ),
            (
                with(b"Sec-WebSocket-Key", &[(b"Sec-WebSocket-Key", b"")]),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with(
                    b"Sec-WebSocket-Key",
                    &[(b"Sec-WebSocket-Key", b"not base64!")],
                ),
                HandshakeError::InvalidKey,
                400,
            ),
            // 15 and 17 bytes.
            (
                with(
                    b"Sec-WebSocket-Key",
                    &[(b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAA")],
                ),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with(
                    b"Sec-WebSocket-Key",
                    &[(b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAAAAA=")],
                ),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with(
                    b"Sec-WebSocket-Key",
                    &[(b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAAAA")],
                ),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with(b"", &[(b"Sec-WebSocket-Protocol", b"chat, \xff")]),
                HandshakeError::InvalidProtocol,
                400,
            ),
        ];
        for (req, expected, status) in table {
            let err = validate_request(&req).unwrap_err();
            assert_eq!(err, expected, "{req:?}");
            assert_eq!(err.status(), status);
        }
    }

    #[test]
    fn subprotocol_selection() {
        let offered = ["chat", "superchat"];
        assert_eq!(
            select_subprotocol(&offered, &["superchat", "chat"]),
            Some("chat")
        );
        assert_eq!(
            select_subprotocol(&offered, &[String::from("superchat")]),
            Some("superchat")
        );
        assert_eq!(select_subprotocol(&offered, &["Chat"]), None);
        assert_eq!(select_subprotocol(&offered, &[] as &[&str]), None);
        assert_eq!(select_subprotocol(&[], &["chat"]), None);
    }
}
