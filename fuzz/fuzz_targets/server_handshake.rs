//! The server's check of a client's upgrade request, against an independent
//! model of the rules.
//!
//! Input: `[mode, method, '\n', name ':' value, '\n', name ':' value, ...]`:
//! bits 0-2 of byte 0 pick the HTTP version (table below), the rest is split
//! at `\n` into lines; the first is the method, each other one a header split
//! at its first `:` (a line without one is a name with an empty value). With
//! bit 3 of byte 0 set, the separators are 0x00 and 0x01 instead, so that
//! names may hold `:` and values `\n`: every byte can appear anywhere.
//!
//! Invariants: `validate_request` never panics and agrees with the model
//! (same error, or the same accepted request); an accepted key is the
//! padded base64 of 16 bytes and its accept value is SHA-1 + base64 of the
//! key and the GUID, as `accept_key` computes it; refusals map to 400, 405 or
//! 426; `select_subprotocol` picks the first offered name the server accepts.
#![no_main]

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use ws_fuzz::protocol::{
    accept_key, select_subprotocol, validate_request, HandshakeError, HandshakeRequest,
    ValidRequest,
};

const VERSIONS: [u32; 8] = [1001, 1000, 1002, 2000, 3000, 0, 999, u32::MAX];

fn trim(value: &[u8]) -> &[u8] {
    let mut v = value;
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn values<'a>(headers: &[(&'a [u8], &'a [u8])], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase() == name.to_ascii_lowercase().as_bytes())
        .map(|(_, v)| trim(v))
        .collect()
}

fn items(value: &[u8]) -> Vec<&[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|i| !i.is_empty())
        .collect()
}

fn has_token(headers: &[(&[u8], &[u8])], name: &str, token: &str) -> bool {
    values(headers, name).iter().any(|v| {
        items(v)
            .iter()
            .any(|i| i.to_ascii_lowercase() == token.as_bytes())
    })
}

/// Padded base64 of exactly 16 bytes: 22 alphabet characters and "==" (the
/// last character's unused low bits may be set).
fn is_key(key: &[u8]) -> bool {
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24 && key[..22].iter().all(alphabet) && &key[22..] == b"=="
}

fn model<'a>(req: &HandshakeRequest<'a>) -> Result<ValidRequest<'a>, HandshakeError> {
    let h = req.headers.as_slice();
    // HTTP/2 and later first, whatever the method: RFC 6455 upgrades HTTP/1.1 only.
    if req.http_version >= 2000 {
        return Err(HandshakeError::NotHttp1(req.http_version / 1000));
    }
    if req.method != b"GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.http_version < 1001 {
        return Err(HandshakeError::HttpVersionTooOld);
    }
    if !has_token(h, "upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(h, "connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match values(h, "sec-websocket-version").as_slice() {
        [] => return Err(HandshakeError::MissingVersion),
        [b"13"] => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = match values(h, "sec-websocket-key").as_slice() {
        [] => return Err(HandshakeError::MissingKey),
        [key] if is_key(key) => std::str::from_utf8(key).expect("ASCII"),
        [_] => return Err(HandshakeError::InvalidKey),
        _ => return Err(HandshakeError::DuplicateKey),
    };
    let mut protocols = Vec::new();
    for value in values(h, "sec-websocket-protocol") {
        for item in items(value) {
            protocols.push(std::str::from_utf8(item).map_err(|_| HandshakeError::InvalidProtocol)?);
        }
    }
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    Ok(ValidRequest {
        key,
        accept: STANDARD.encode(sha1.finalize()),
        protocols,
        origin: values(h, "origin").first().copied(),
        extensions: values(h, "sec-websocket-extensions"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let (line_end, colon) = if mode & 8 == 0 { (b'\n', b':') } else { (0, 1) };
    let mut lines = text.split(|&b| b == line_end);
    let method = lines.next().unwrap_or_default();
    let headers: Vec<(&[u8], &[u8])> = lines
        .map(|line| match line.iter().position(|&b| b == colon) {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &b""[..]),
        })
        .collect();
    let req = HandshakeRequest {
        method,
        http_version: VERSIONS[usize::from(mode & 7)],
        headers,
    };

    let got = validate_request(&req);
    assert_eq!(got, model(&req), "{req:?}");
    match &got {
        Ok(valid) => {
            // The base64 of 16 bytes (unused low bits may be set).
            let lenient = GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
            );
            assert_eq!(lenient.decode(valid.key).map(|k| k.len()), Ok(16));
            assert!(is_key(valid.key.as_bytes()));
            assert_eq!(valid.accept, accept_key(valid.key.as_bytes()));
            assert_eq!(valid.accept.len(), 28);
            let accepted = ["chat", valid.protocols.last().copied().unwrap_or("x")];
            let chosen = select_subprotocol(&valid.protocols, &accepted);
            let first = valid
                .protocols
                .iter()
                .copied()
                .find(|p| accepted.contains(p));
            assert_eq!(chosen, first);
        }
        Err(err) => assert!(matches!(err.status(), 400 | 405 | 426), "{err:?}"),
    }
    // Deterministic.
    assert_eq!(validate_request(&req), got);
});
