//! `Sec-WebSocket-Extensions` for permessage-deflate (RFC 7692 §7): the
//! server accepts the first offer it can honour, the client checks what the
//! server answered to its own offer.

use core::fmt;

use super::{EXTENSION_NAME, MAX_WINDOW_BITS, MIN_DEFLATE_WINDOW_BITS};

/// What an endpoint is configured to allow (`websocket_deflate_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeflateConfig {
    /// The largest LZ77 window we compress with, 8–15.
    pub window_bits: u8,
    /// Off: no compression state survives a message, in either direction.
    pub context_takeover: bool,
}

/// The parameters both ends agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedDeflate {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// The window the server compresses with.
    pub server_max_window_bits: u8,
    /// The window the client compresses with.
    pub client_max_window_bits: u8,
}

/// One direction's compression parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    pub window_bits: u8,
    pub no_context_takeover: bool,
}

impl NegotiatedDeflate {
    /// What the server (`server == true`) or the client compresses with.
    pub fn sending(&self, server: bool) -> Direction {
        if server {
            Direction {
                window_bits: self.server_max_window_bits,
                no_context_takeover: self.server_no_context_takeover,
            }
        } else {
            Direction {
                window_bits: self.client_max_window_bits,
                no_context_takeover: self.client_no_context_takeover,
            }
        }
    }

    /// What the server (`server == true`) or the client inflates with.
    pub fn receiving(&self, server: bool) -> Direction {
        self.sending(!server)
    }
}

/// A `Sec-WebSocket-Extensions` header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionError {
    /// Not the RFC 6455 §9.1 grammar (a client's offer: 400).
    Malformed,
    /// A server answered with something we did not offer or cannot honour.
    BadResponse(String),
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionError::Malformed => f.write_str("malformed Sec-WebSocket-Extensions header"),
            ExtensionError::BadResponse(why) => {
                write!(f, "unacceptable Sec-WebSocket-Extensions response: {why}")
            }
        }
    }
}

/// One extension of a header: its name and parameters (values unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Extension {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// Parameters of one permessage-deflate offer or response.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only allowed in an offer).
    client_max_window_bits: Option<Option<u8>>,
}

/// Why a parameter list is not a valid permessage-deflate one.
type Invalid = String;

impl Params {
    fn parse(params: &[(String, Option<String>)]) -> Result<Params, Invalid> {
        let mut p = Params::default();
        for (name, value) in params {
            let duplicate = || format!("duplicate parameter {name}");
            match name.as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => {
                    if value.is_some() {
                        return Err(format!("{name} takes no value"));
                    }
                    let flag = if name.starts_with("server") {
                        &mut p.server_no_context_takeover
                    } else {
                        &mut p.client_no_context_takeover
                    };
                    if *flag {
                        return Err(duplicate());
                    }
                    *flag = true;
                }
                "server_max_window_bits" => {
                    if p.server_max_window_bits.is_some() {
                        return Err(duplicate());
                    }
                    let value = value.as_deref().ok_or(format!("{name} needs a value"))?;
                    p.server_max_window_bits = Some(window_bits(name, value)?);
                }
                "client_max_window_bits" => {
                    if p.client_max_window_bits.is_some() {
                        return Err(duplicate());
                    }
                    let bits = value.as_deref().map(|v| window_bits(name, v)).transpose()?;
                    p.client_max_window_bits = Some(bits);
                }
                _ => return Err(format!("unknown parameter {name}")),
            }
        }
        Ok(p)
    }
}

/// 8–15 in decimal without leading zeros (RFC 7692 §7.1.2).
fn window_bits(name: &str, value: &str) -> Result<u8, Invalid> {
    match value.parse::<u8>() {
        Ok(bits) if (8..=MAX_WINDOW_BITS).contains(&bits) && !value.starts_with('0') => Ok(bits),
        _ => Err(format!("{name}={value} is not a window size 8-15")),
    }
}

/// The server's answer to a client's offers: the agreed parameters and the
/// response header value, or `Ok(None)` when no offer is acceptable (plain
/// WebSocket). `values` are the request's `Sec-WebSocket-Extensions` headers.
pub fn accept_offer(
    values: &[&[u8]],
    cfg: &DeflateConfig,
) -> Result<Option<(NegotiatedDeflate, String)>, ExtensionError> {
    let offers = parse_header_values(values)?;
    Ok(offers
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(EXTENSION_NAME))
        .find_map(|e| accept_one(&e.params, cfg)))
}

fn accept_one(
    params: &[(String, Option<String>)],
    cfg: &DeflateConfig,
) -> Option<(NegotiatedDeflate, String)> {
    // An offer we cannot read is declined, not refused (RFC 7692 §5).
    let offer = Params::parse(params).ok()?;
    let own_window = cfg.window_bits.max(MIN_DEFLATE_WINDOW_BITS);
    if offer.server_max_window_bits == Some(8) {
        return None; // zlib cannot compress with a 256-byte window
    }
    let server_bits = own_window.min(offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS));
    let agreed = NegotiatedDeflate {
        server_no_context_takeover: offer.server_no_context_takeover || !cfg.context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover || !cfg.context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: match offer.client_max_window_bits {
            Some(offered) => cfg.window_bits.min(offered.unwrap_or(MAX_WINDOW_BITS)),
            None => MAX_WINDOW_BITS,
        },
    };
    let mut response = String::from(EXTENSION_NAME);
    if agreed.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if agreed.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if offer.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS {
        response.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    if offer.client_max_window_bits.is_some() {
        let bits = agreed.client_max_window_bits;
        response.push_str(&format!("; client_max_window_bits={bits}"));
    }
    Some((agreed, response))
}

/// The offer a client sends (`websocket_pass` towards its upstream).
pub fn offer(cfg: &DeflateConfig) -> String {
    let mut offer = format!("{EXTENSION_NAME}; client_max_window_bits");
    if !cfg.context_takeover {
        offer.push_str("; server_no_context_takeover; client_no_context_takeover");
    }
    offer
}

/// Checks a server's `Sec-WebSocket-Extensions` answer to [`offer`]:
/// `Ok(None)` when it declined, the agreed parameters when it accepted.
pub fn check_response(
    values: &[&[u8]],
    cfg: &DeflateConfig,
) -> Result<Option<NegotiatedDeflate>, ExtensionError> {
    let bad = |why: String| ExtensionError::BadResponse(why);
    let extensions =
        parse_header_values(values).map_err(|_| bad("not a valid header value".into()))?;
    let answer = match extensions.as_slice() {
        [] => return Ok(None),
        [one] if one.name.eq_ignore_ascii_case(EXTENSION_NAME) => one,
        [one] => return Err(bad(format!("{} was not offered", one.name))),
        _ => return Err(bad("more than one extension".into())),
    };
    let params = Params::parse(&answer.params).map_err(bad)?;
    if !cfg.context_takeover && !params.server_no_context_takeover {
        return Err(bad("server_no_context_takeover was asked for".into()));
    }
    let client_bits = match params.client_max_window_bits {
        Some(None) => return Err(bad("client_max_window_bits needs a value".into())),
        Some(Some(8)) => return Err(bad("a client window of 8 bits cannot be honoured".into())),
        Some(Some(bits)) => bits,
        None => MAX_WINDOW_BITS,
    };
    Ok(Some(NegotiatedDeflate {
        server_no_context_takeover: params.server_no_context_takeover,
        client_no_context_takeover: params.client_no_context_takeover || !cfg.context_takeover,
        server_max_window_bits: params.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
        client_max_window_bits: client_bits.min(cfg.window_bits.max(MIN_DEFLATE_WINDOW_BITS)),
    }))
}

/// Parses `1#extension` over every header value (RFC 6455 §9.1), with
/// optional whitespace around separators and quoted parameter values.
fn parse_header_values(values: &[&[u8]]) -> Result<Vec<Extension>, ExtensionError> {
    let mut extensions = Vec::new();
    for value in values {
        let mut cursor = Cursor { s: value, at: 0 };
        loop {
            cursor.skip_ws();
            if cursor.eat(b',') {
                continue; // empty list elements are allowed
            }
            if cursor.done() {
                break;
            }
            extensions.push(cursor.extension()?);
            cursor.skip_ws();
            if !cursor.done() && !cursor.eat(b',') {
                return Err(ExtensionError::Malformed);
            }
        }
    }
    Ok(extensions)
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.at += usize::from(found);
        found
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> Result<String, ExtensionError> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        if self.at == start {
            return Err(ExtensionError::Malformed);
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// A quoted-string whose content must itself be a token (§9.1).
    fn quoted_token(&mut self) -> Result<String, ExtensionError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ExtensionError::Malformed),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self.s.get(self.at + 1).copied();
                    out.push(escaped.ok_or(ExtensionError::Malformed)?);
                    self.at += 2;
                }
                Some(b) => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
        if out.is_empty() || !out.iter().copied().all(is_tchar) {
            return Err(ExtensionError::Malformed);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn extension(&mut self) -> Result<Extension, ExtensionError> {
        let name = self.token()?;
        let mut params = Vec::new();
        loop {
            self.skip_ws();
            if !self.eat(b';') {
                break;
            }
            self.skip_ws();
            let param = self.token()?.to_ascii_lowercase();
            self.skip_ws();
            let value = if self.eat(b'=') {
                self.skip_ws();
                Some(if self.eat(b'"') {
                    self.quoted_token()?
                } else {
                    self.token()?
                })
            } else {
                None
            };
            params.push((param, value));
        }
        Ok(Extension { name, params })
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: DeflateConfig = DeflateConfig {
        window_bits: 15,
        context_takeover: true,
    };

    fn accept(header: &str, cfg: &DeflateConfig) -> Option<String> {
        accept_offer(&[header.as_bytes()], cfg)
            .expect("well-formed")
            .map(|(_, response)| response)
    }

    #[test]
    fn server_answers_offers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("permessage-deflate", Some("permessage-deflate")),
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            (
                "permessage-deflate; client_max_window_bits=10",
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=12",
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"9\"",
                Some("permessage-deflate; server_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                Some(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                ),
            ),
            // Declined offers: zlib cannot use 8 bits, bad values, unknown
            // and duplicate parameters, values where none belong.
            ("permessage-deflate; server_max_window_bits=8", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; client_max_window_bits=7", None),
            ("permessage-deflate; x=1", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            ("x-webkit-deflate-frame", None),
            // The first acceptable offer wins.
            (
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            (
                "foo, permessage-deflate;server_max_window_bits=10 , permessage-deflate",
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
        ];
        for (offer, want) in cases {
            assert_eq!(accept(offer, &DEFAULT).as_deref(), *want, "offer {offer:?}");
        }
    }

    #[test]
    fn configuration_shapes_the_answer() {
        let small = DeflateConfig {
            window_bits: 10,
            context_takeover: false,
        };
        assert_eq!(
            accept("permessage-deflate; client_max_window_bits", &small).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10; client_max_window_bits=10"
            )
        );
        // 8 compresses with 9, zlib's smallest window; inflating with 8 is fine.
        let tiny = DeflateConfig {
            window_bits: 8,
            context_takeover: true,
        };
        let (agreed, response) =
            accept_offer(&[b"permessage-deflate; client_max_window_bits"], &tiny)
                .unwrap()
                .unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits=8"
        );
        assert_eq!(agreed.sending(true).window_bits, 9);
        assert_eq!(agreed.receiving(true).window_bits, 8);
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let values: &[&[u8]] = &[b"x-foo", b"permessage-deflate; server_no_context_takeover"];
        let (agreed, _) = accept_offer(values, &DEFAULT).unwrap().unwrap();
        assert!(agreed.server_no_context_takeover);
        assert!(!agreed.client_no_context_takeover);
        assert_eq!(agreed.receiving(true).window_bits, 15);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; =1",
            "permessage-deflate; a=",
            "permessage-deflate; a=\"unterminated",
            "permessage-deflate; a=\"\"",
            "permessage-deflate; a=\"b c\"",
            "permessage deflate",
            "permessage-deflate; a=b c",
            ";x",
            "permessage-deflate\u{1}",
        ] {
            assert_eq!(
                accept_offer(&[bad.as_bytes()], &DEFAULT),
                Err(ExtensionError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(accept_offer(&[b" , ,"], &DEFAULT), Ok(None));
        assert_eq!(accept_offer(&[], &DEFAULT), Ok(None));
    }

    #[test]
    fn client_offer_and_response() {
        assert_eq!(
            offer(&DEFAULT),
            "permessage-deflate; client_max_window_bits"
        );
        let check = |resp: &str, cfg: &DeflateConfig| check_response(&[resp.as_bytes()], cfg);
        let agreed = check("permessage-deflate; server_max_window_bits=10", &DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(agreed.receiving(false).window_bits, 10);
        assert_eq!(agreed.sending(false).window_bits, 15);
        let agreed = check("permessage-deflate; client_max_window_bits=11", &DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(agreed.sending(false).window_bits, 11);
        assert_eq!(check_response(&[], &DEFAULT), Ok(None));
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; x=1",
            "x-other",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate;",
        ] {
            assert!(
                matches!(check(bad, &DEFAULT), Err(ExtensionError::BadResponse(_))),
                "{bad:?}"
            );
        }
        let no_takeover = DeflateConfig {
            window_bits: 15,
            context_takeover: false,
        };
        assert_eq!(
            offer(&no_takeover),
            "permessage-deflate; client_max_window_bits; server_no_context_takeover; \
             client_no_context_takeover"
        );
        assert!(check("permessage-deflate", &no_takeover).is_err());
        let agreed = check(
            "permessage-deflate; server_no_context_takeover",
            &no_takeover,
        )
        .unwrap()
        .unwrap();
        assert!(agreed.sending(false).no_context_takeover);
        assert!(agreed.receiving(false).no_context_takeover);
    }
}
