//! Client side: the upgrade request we send and the checks on the server's
//! response (RFC 6455 §4.1).

use super::accept_key;
use super::error::HandshakeError;
use super::headers::{has_token, list_items, trim, values, RawHeaders};

/// Longest response head (status line and headers) we wait for.
pub const MAX_RESPONSE_HEAD_LEN: usize = 16 * 1024;

/// The upgrade request a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest<'a> {
    /// Request target; empty means "/".
    pub path: &'a str,
    pub host: &'a str,
    /// `Sec-WebSocket-Key`, e.g. from [`generate_key`](super::generate_key).
    pub key: &'a str,
    pub protocols: &'a [&'a str],
    pub origin: Option<&'a str>,
    pub extra_headers: &'a [(&'a str, &'a str)],
}

impl ClientRequest<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"GET ");
        push_clean(&mut out, if self.path.is_empty() { "/" } else { self.path });
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_header(&mut out, "Host", self.host);
        push_header(&mut out, "Upgrade", "websocket");
        push_header(&mut out, "Connection", "Upgrade");
        push_header(&mut out, "Sec-WebSocket-Key", self.key);
        push_header(&mut out, "Sec-WebSocket-Version", "13");
        if !self.protocols.is_empty() {
            push_header(
                &mut out,
                "Sec-WebSocket-Protocol",
                &self.protocols.join(", "),
            );
        }
        if let Some(origin) = self.origin {
            push_header(&mut out, "Origin", origin);
        }
        for (name, value) in self.extra_headers {
            push_header(&mut out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_clean(out, name);
    out.extend_from_slice(b": ");
    push_clean(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Copies `text` without CR, LF and NUL: values may come from nginx variables
/// holding client input, which must not be able to add headers of their own.
fn push_clean(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub status: u16,
    /// (name, value) as received, values trimmed; invalid UTF-8 replaced.
    pub headers: Vec<(String, String)>,
}

impl HandshakeResponse {
    /// The values of every header named `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
            .collect()
    }

    /// Checks a response to a request that offered `offered_protocols` and no
    /// extensions; returns the subprotocol the server chose.
    pub fn validate(
        &self,
        key: &str,
        offered_protocols: &[&str],
    ) -> Result<Option<String>, HandshakeError> {
        self.validate_with_extensions(key, offered_protocols, &[])
    }

    /// As [`validate`](Self::validate), for a request that also offered the
    /// extensions named in `offered_extensions`.
    pub fn validate_with_extensions(
        &self,
        key: &str,
        offered_protocols: &[&str],
        offered_extensions: &[&str],
    ) -> Result<Option<String>, HandshakeError> {
        if self.status != 101 {
            return Err(HandshakeError::ResponseStatus(self.status));
        }
        let raw: Vec<(&[u8], &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let headers = raw.as_slice();
        if !has_token(headers, "Upgrade", "websocket") {
            return Err(HandshakeError::ResponseMissingUpgrade);
        }
        if !has_token(headers, "Connection", "upgrade") {
            return Err(HandshakeError::ResponseMissingConnectionUpgrade);
        }
        let mut accepts = values(headers, "Sec-WebSocket-Accept");
        match (accepts.next(), accepts.next()) {
            (None, _) => return Err(HandshakeError::ResponseMissingAccept),
            (Some(accept), None) if accept == accept_key(key.as_bytes()).as_bytes() => {}
            _ => return Err(HandshakeError::ResponseInvalidAccept),
        }
        check_extensions(headers, offered_extensions)?;
        chosen_protocol(headers, offered_protocols)
    }
}

/// The one subprotocol the server chose, which must be one we offered.
fn chosen_protocol(
    headers: &RawHeaders<'_>,
    offered: &[&str],
) -> Result<Option<String>, HandshakeError> {
    let chosen: Vec<&[u8]> = values(headers, "Sec-WebSocket-Protocol").collect();
    match chosen.as_slice() {
        [] => Ok(None),
        [name] if offered.iter().any(|o| o.as_bytes() == *name) => Ok(Some(lossy(name))),
        // Several headers or a list: the server must pick exactly one.
        _ => Err(HandshakeError::ResponseUnofferedProtocol(lossy(
            &chosen.join(&b", "[..]),
        ))),
    }
}

/// Every extension in the response must be one we offered.
fn check_extensions(headers: &RawHeaders<'_>, offered: &[&str]) -> Result<(), HandshakeError> {
    for value in values(headers, "Sec-WebSocket-Extensions") {
        for item in list_items(value) {
            let name = trim(item.split(|&b| b == b';').next().unwrap_or_default());
            if !offered
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(name))
            {
                return Err(HandshakeError::ResponseUnofferedExtension(lossy(name)));
            }
        }
    }
    Ok(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses the response head at the front of `buf`: `Ok(None)` until the
/// blank line ending it has arrived, then the response and the head's length
/// (bytes after it already belong to the WebSocket stream).
pub fn parse_response(buf: &[u8]) -> Result<Option<(HandshakeResponse, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD_LEN)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_RESPONSE_HEAD_LEN {
            Err(HandshakeError::ResponseHeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let mut lines = split_lines(&buf[..end]);
    let status = parse_status_line(lines.next().unwrap_or_default())?;
    let headers = lines.map(parse_header_line).collect::<Result<_, _>>()?;
    Ok(Some((HandshakeResponse { status, headers }, end + 4)))
}

fn split_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                rest = Some(&text[at + 2..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// `HTTP/1.x SP 3DIGIT [SP reason]`.
fn parse_status_line(line: &[u8]) -> Result<u16, HandshakeError> {
    let malformed = HandshakeError::MalformedStatusLine;
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(malformed.clone())?;
    let [minor, b' ', d1, d2, d3, reason @ ..] = rest else {
        return Err(malformed);
    };
    let digits = [*minor, *d1, *d2, *d3];
    if !digits.iter().all(u8::is_ascii_digit) || !(reason.is_empty() || reason[0] == b' ') {
        return Err(malformed);
    }
    Ok(digits[1..]
        .iter()
        .fold(0, |status, d| status * 10 + u16::from(d - b'0')))
}

/// `name ":" OWS value OWS`; a name with whitespace (including obs-fold
/// continuation lines) is refused, as RFC 9112 §5 asks.
fn parse_header_line(line: &[u8]) -> Result<(String, String), HandshakeError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HandshakeError::MalformedHeaderLine)?;
    let name = &line[..colon];
    if name.is_empty()
        || name
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(HandshakeError::MalformedHeaderLine);
    }
    Ok((lossy(name), lossy(trim(&line[colon + 1..]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn response(status: u16, headers: &[(&str, &str)]) -> HandshakeResponse {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        HandshakeResponse { status, headers }
    }

    fn good_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ACCEPT),
        ]
    }

    fn good_with(extra: &[(&'static str, &'static str)]) -> HandshakeResponse {
        let mut headers = good_headers();
        headers.extend_from_slice(extra);
        response(101, &headers)
    }

    #[test]
    fn request_bytes() {
        let req = ClientRequest {
            path: "/chat?room=1",
            host: "server.example.com:8080",
            key: KEY,
            protocols: &["chat", "superchat"],
            origin: Some("http://example.com"),
            extra_headers: &[("X-Token", "abc")],
        };
        let expected = "GET /chat?room=1 HTTP/1.1\r\n\
                        Host: server.example.com:8080\r\n\
                        Upgrade: websocket\r\n\
                        Connection: Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Version: 13\r\n\
                        Sec-WebSocket-Protocol: chat, superchat\r\n\
                        Origin: http://example.com\r\n\
                        X-Token: abc\r\n\
                        \r\n";
        assert_eq!(String::from_utf8(req.to_bytes()).unwrap(), expected);
    }

    #[test]
    fn minimal_request_bytes() {
        let req = ClientRequest {
            path: "",
            host: "h",
            key: KEY,
            protocols: &[],
            origin: None,
            extra_headers: &[],
        };
        let expected = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(String::from_utf8(req.to_bytes()).unwrap(), expected);
    }

    #[test]
    fn request_cannot_inject_headers() {
        let req = ClientRequest {
            path: "/a\r\nX: y",
            host: "h",
            key: KEY,
            protocols: &[],
            origin: None,
            extra_headers: &[("X-Name", "v\r\nEvil: 1\0")],
        };
        let bytes = String::from_utf8(req.to_bytes()).unwrap();
        assert!(bytes.starts_with("GET /aX: y HTTP/1.1\r\n"));
        assert!(bytes.contains("X-Name: vEvil: 1\r\n"));
        assert_eq!(bytes.matches("\r\n").count(), 8);
    }

    #[test]
    fn parse_is_incremental() {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol:  chat \r\n\r\n"
        );
        let mut stream = head.clone().into_bytes();
        stream.extend_from_slice(b"\x81\x02hi");
        for cut in 0..head.len() {
            assert_eq!(parse_response(&stream[..cut]), Ok(None), "cut {cut}");
        }
        let (resp, len) = parse_response(&stream).unwrap().unwrap();
        assert_eq!(len, head.len());
        assert_eq!(
            resp,
            response(
                101,
                &[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", ACCEPT),
                    ("Sec-WebSocket-Protocol", "chat"),
                ]
            )
        );
        assert_eq!(
            resp.validate(KEY, &["superchat", "chat"]),
            Ok(Some("chat".to_string()))
        );
    }

    #[test]
    fn parse_status_lines() {
        let table: &[(&[u8], Result<u16, HandshakeError>)] = &[
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Ok(101)),
            (b"HTTP/1.1 101\r\n\r\n", Ok(101)),
            (b"HTTP/1.0 403 Forbidden\r\n\r\n", Ok(403)),
            (b"HTTP/1.1 599 \r\n\r\n", Ok(599)),
            (
                b"HTTP/2 101\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (
                b"HTTP/1.1 10 x\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (
                b"HTTP/1.1 1011\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (
                b"HTTP/1.1  101\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (
                b"http/1.1 101\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                Err(HandshakeError::MalformedStatusLine),
            ),
            (b"\r\n\r\n", Err(HandshakeError::MalformedStatusLine)),
        ];
        for (head, expected) in table {
            let got = parse_response(head).map(|r| r.unwrap().0.status);
            assert_eq!(&got, expected, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn parse_header_lines() {
        let (resp, _) =
            parse_response(b"HTTP/1.1 101 OK\r\nA:b\r\nEmpty:\r\nX-Y: \t v w \t\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            resp,
            response(101, &[("A", "b"), ("Empty", ""), ("X-Y", "v w")])
        );
        for bad in [
            &b"HTTP/1.1 101 OK\r\nno colon\r\n\r\n"[..],
            b"HTTP/1.1 101 OK\r\n: v\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nBad Name: v\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad),
                Err(HandshakeError::MalformedHeaderLine),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_size_limit() {
        let mut head = b"HTTP/1.1 101 OK\r\nX: ".to_vec();
        head.resize(MAX_RESPONSE_HEAD_LEN - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), MAX_RESPONSE_HEAD_LEN);
        assert!(parse_response(&head).unwrap().is_some());

        // One byte longer: the blank line ends past the limit.
        let mut long = head[..MAX_RESPONSE_HEAD_LEN - 4].to_vec();
        long.push(b'a');
        assert_eq!(parse_response(&long), Ok(None));
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_response(&long),
            Err(HandshakeError::ResponseHeadTooLarge)
        );
        assert_eq!(
            parse_response(&long[..MAX_RESPONSE_HEAD_LEN]),
            Err(HandshakeError::ResponseHeadTooLarge)
        );
        assert_eq!(parse_response(&long[..MAX_RESPONSE_HEAD_LEN - 1]), Ok(None));
    }

    #[test]
    fn validation_outcomes() {
        let offered = ["chat", "superchat"];
        let table: Vec<(HandshakeResponse, Result<Option<String>, HandshakeError>)> = vec![
            (good_with(&[]), Ok(None)),
            (
                good_with(&[("Sec-WebSocket-Protocol", "superchat")]),
                Ok(Some("superchat".into())),
            ),
            (
                response(
                    101,
                    &[
                        ("upgrade", "WebSocket"),
                        ("connection", "keep-alive, upgrade"),
                        ("sec-websocket-accept", ACCEPT),
                    ],
                ),
                Ok(None),
            ),
            (
                response(200, &good_headers()),
                Err(HandshakeError::ResponseStatus(200)),
            ),
            (response(403, &[]), Err(HandshakeError::ResponseStatus(403))),
            (
                response(
                    101,
                    &[("Connection", "Upgrade"), ("Sec-WebSocket-Accept", ACCEPT)],
                ),
                Err(HandshakeError::ResponseMissingUpgrade),
            ),
            (
                response(
                    101,
                    &[("Upgrade", "websocket"), ("Sec-WebSocket-Accept", ACCEPT)],
                ),
                Err(HandshakeError::ResponseMissingConnectionUpgrade),
            ),
            (
                response(101, &[("Upgrade", "websocket"), ("Connection", "Upgrade")]),
                Err(HandshakeError::ResponseMissingAccept),
            ),
            (
                response(
                    101,
                    &[
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Accept", KEY),
                    ],
                ),
                Err(HandshakeError::ResponseInvalidAccept),
            ),
            (
                good_with(&[("Sec-WebSocket-Accept", ACCEPT)]),
                Err(HandshakeError::ResponseInvalidAccept),
            ),
            (
                good_with(&[("Sec-WebSocket-Protocol", "Chat")]),
                Err(HandshakeError::ResponseUnofferedProtocol("Chat".into())),
            ),
            (
                good_with(&[("Sec-WebSocket-Protocol", "chat, superchat")]),
                Err(HandshakeError::ResponseUnofferedProtocol(
                    "chat, superchat".into(),
                )),
            ),
            (
                good_with(&[
                    ("Sec-WebSocket-Protocol", "chat"),
                    ("Sec-WebSocket-Protocol", "chat"),
                ]),
                Err(HandshakeError::ResponseUnofferedProtocol(
                    "chat, chat".into(),
                )),
            ),
            (
                good_with(&[("Sec-WebSocket-Extensions", "permessage-deflate")]),
                Err(HandshakeError::ResponseUnofferedExtension(
                    "permessage-deflate".into(),
                )),
            ),
        ];
        for (resp, expected) in table {
            assert_eq!(resp.validate(KEY, &offered), expected, "{resp:?}");
        }
        assert_eq!(
            good_with(&[("Sec-WebSocket-Protocol", "chat")]).validate(KEY, &[]),
            Err(HandshakeError::ResponseUnofferedProtocol("chat".into()))
        );
    }

    #[test]
    fn offered_extensions_are_accepted() {
        let resp = good_with(&[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; server_no_context_takeover",
        )]);
        assert_eq!(
            resp.validate_with_extensions(KEY, &[], &["permessage-deflate"]),
            Ok(None)
        );
        let resp = good_with(&[("Sec-WebSocket-Extensions", "permessage-deflate, x-other")]);
        assert_eq!(
            resp.validate_with_extensions(KEY, &[], &["permessage-deflate"]),
            Err(HandshakeError::ResponseUnofferedExtension("x-other".into()))
        );
    }

    #[test]
    fn round_trip_with_server_side() {
        let key = super::super::generate_key(*b"0123456789abcdef");
        let req = ClientRequest {
            path: "/",
            host: "h",
            key: &key,
            protocols: &["a"],
            origin: None,
            extra_headers: &[],
        };
        let bytes = req.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        let headers: Vec<(&[u8], &[u8])> = text
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(": "))
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let valid = super::super::validate_request(&super::super::HandshakeRequest {
            method: b"GET",
            http_version: 1001,
            headers,
        })
        .unwrap();
        assert_eq!(valid.protocols, vec!["a"]);
        let resp = response(
            101,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", &valid.accept),
                ("Sec-WebSocket-Protocol", "a"),
            ],
        );
        assert_eq!(resp.validate(&key, &["a"]), Ok(Some("a".into())));
    }
}
