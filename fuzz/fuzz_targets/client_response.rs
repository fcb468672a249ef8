//! The client's parser of an upstream's handshake response head.
//!
//! Input: `[flags, pad_at, pad_len, split sizes ((flags >> 1) & 15)..., bytes...]`.
//! With flags bit 0, `MAX_RESPONSE_HEAD_LEN - 128 + pad_len` bytes of `a`
//! are inserted at `pad_at` (capped to the length), so heads end near, at and
//! past the limit without 16 KB inputs.
//!
//! Invariants:
//! - `parse_response` never panics and agrees with an independent model of
//!   the head's grammar (status line `HTTP/1.x SP 3DIGIT [SP reason]`,
//!   `name ":" OWS value OWS` lines, a name without whitespace or controls);
//! - fed incrementally (every prefix of an input up to 256 bytes; else the
//!   first 16 prefixes of the split plus every prefix around the head's end
//!   and around the limit), it says `Ok(None)` until, at exactly the byte
//!   that decides, it gives the whole buffer's result, which never changes
//!   after;
//! - it never looks past `MAX_RESPONSE_HEAD_LEN`: the result on the buffer
//!   cut there is the same;
//! - an accepted head re-serialises to a head that parses the same;
//! - `validate`/`validate_with_extensions` never panic and accept only a 101
//!   with the right Sec-WebSocket-Accept and an offered subprotocol.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use ws_fuzz::protocol::handshake::MAX_RESPONSE_HEAD_LEN;
use ws_fuzz::protocol::{parse_response, HandshakeError, HandshakeResponse};
use ws_fuzz::{split, Input};

type Parsed = Result<Option<(HandshakeResponse, usize)>, HandshakeError>;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const OFFERED: [&str; 2] = ["chat", "superchat"];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    (0..hay.len().saturating_sub(needle.len() - 1)).find(|&i| hay[i..].starts_with(needle))
}

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

fn model(buf: &[u8]) -> Parsed {
    let end = match find(buf, b"\r\n\r\n") {
        Some(at) if at + 4 <= MAX_RESPONSE_HEAD_LEN => at,
        _ if buf.len() >= MAX_RESPONSE_HEAD_LEN => {
            return Err(HandshakeError::ResponseHeadTooLarge)
        }
        _ => return Ok(None),
    };
    let mut head = &buf[..end];
    let mut lines = Vec::new();
    loop {
        match find(head, b"\r\n") {
            Some(at) => {
                lines.push(&head[..at]);
                head = &head[at + 2..];
            }
            None => {
                lines.push(head);
                break;
            }
        }
    }
    let status_line = lines[0];
    let status = match status_line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor, b' ', d @ ..]
            if minor.is_ascii_digit()
                && d.len() >= 3
                && d[..3].iter().all(u8::is_ascii_digit)
                && (d.len() == 3 || d[3] == b' ') =>
        {
            d[..3]
                .iter()
                .fold(0u16, |s, c| s * 10 + u16::from(c - b'0'))
        }
        _ => return Err(HandshakeError::MalformedStatusLine),
    };
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(HandshakeError::MalformedHeaderLine);
        };
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(HandshakeError::MalformedHeaderLine);
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(trim(&line[colon + 1..])).into_owned(),
        ));
    }
    Ok(Some((HandshakeResponse { status, headers }, end + 4)))
}

fn check_accepted(resp: &HandshakeResponse, n: usize, buf: &[u8]) {
    assert!(n <= buf.len() && n <= MAX_RESPONSE_HEAD_LEN);
    assert_eq!(&buf[n - 4..n], b"\r\n\r\n");
    assert!(resp.status <= 999);
    // Re-serialised, it parses the same.
    let mut again = format!("HTTP/1.1 {:03} Again\r\n", resp.status);
    for (name, value) in &resp.headers {
        assert!(!name.is_empty());
        assert_eq!(trim(value.as_bytes()), value.as_bytes());
        again.push_str(&format!("{name}: {value}\r\n"));
    }
    again.push_str("\r\n");
    if again.len() <= MAX_RESPONSE_HEAD_LEN {
        let parsed = parse_response(again.as_bytes());
        assert_eq!(parsed, Ok(Some((resp.clone(), again.len()))), "{again:?}");
    }

    // The checks on the parsed head never panic and accept only good answers.
    let accepted = [
        resp.validate(KEY, &OFFERED),
        resp.validate(KEY, &[]),
        resp.validate_with_extensions(KEY, &OFFERED, &["permessage-deflate"]),
    ];
    for result in accepted {
        let Ok(chosen) = result else { continue };
        assert_eq!(resp.status, 101);
        let accepts: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(accepts, [ACCEPT]);
        if let Some(chosen) = chosen {
            assert!(OFFERED.contains(&chosen.as_str()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let pad_at = usize::from(input.byte());
    let pad_len = usize::from(input.byte());
    let sizes = input.take(usize::from((flags >> 1) & 15));
    let bytes = input.rest();
    let mut buf = bytes.to_vec();
    if flags & 1 != 0 {
        let at = pad_at.min(buf.len());
        let pad = vec![b'a'; MAX_RESPONSE_HEAD_LEN - 128 + pad_len];
        buf.splice(at..at, pad);
    }
    let buf = &buf[..];

    let whole = parse_response(buf);
    assert_eq!(whole, model(buf), "model");
    if buf.len() > MAX_RESPONSE_HEAD_LEN {
        assert_eq!(
            parse_response(&buf[..MAX_RESPONSE_HEAD_LEN]),
            whole,
            "cut at the limit"
        );
    }
    if let Ok(Some((resp, n))) = &whole {
        check_accepted(resp, *n, buf);
    }

    // Incrementally: the prefixes a reader would see.
    let mut ends = BTreeSet::new();
    if buf.len() <= 256 {
        ends.extend(0..=buf.len());
    } else {
        let mut at = 0;
        // The split's first prefixes only: each parse reads up to 16 KB.
        for chunk in split(buf, sizes).take(16) {
            at += chunk.len();
            ends.insert(at);
        }
        let mut around = |point: usize| {
            ends.extend(point.saturating_sub(2)..=(point + 1).min(buf.len()));
        };
        if let Some(at) = find(buf, b"\r\n\r\n") {
            around(at + 4);
        }
        around(MAX_RESPONSE_HEAD_LEN);
        ends.insert(buf.len());
    }
    let mut decided: Option<(usize, Parsed)> = None;
    for end in ends {
        let result = parse_response(&buf[..end]);
        match &decided {
            Some((_, first)) => assert_eq!(&result, first, "changed at {end}"),
            None if result == Ok(None) => {}
            None => {
                if let Ok(Some((_, n))) = &result {
                    assert_eq!(*n, end, "answered late");
                }
                decided = Some((end, result));
            }
        }
    }
    match decided {
        Some((_, first)) => assert_eq!(first, whole),
        None => assert_eq!(whole, Ok(None)),
    }
});
