//! `ws://` and `wss://` URLs as `websocket_pass` takes them.

use core::fmt;

/// A parsed WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    /// Host name, IPv4 address, or IPv6 address in brackets; may name an
    /// `upstream {}` block.
    pub host: String,
    /// The explicit port, if the URL has one.
    pub port: Option<u16>,
    /// Path and query, starting with `/`; `None` when the URL has none, in
    /// which case the client's request URI is passed on.
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Scheme,
    EmptyHost,
    Port,
    Userinfo,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "URL must start with \"ws://\" or \"wss://\"",
            UrlError::EmptyHost => "URL has no host",
            UrlError::Port => "URL has an invalid port",
            UrlError::Userinfo => "URL must not contain user info",
        })
    }
}

impl std::error::Error for UrlError {}

impl WsUrl {
    pub fn parse(url: &str) -> Result<WsUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = strip_prefix_ci(url, "ws://") {
            (false, rest)
        } else if let Some(rest) = strip_prefix_ci(url, "wss://") {
            (true, rest)
        } else {
            return Err(UrlError::Scheme);
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], Some(rest[i..].to_owned())),
            Some(i) => (&rest[..i], Some(format!("/{}", &rest[i..]))),
            None => (rest, None),
        };
        if authority.contains('@') {
            return Err(UrlError::Userinfo);
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        Ok(WsUrl {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The port to connect to: explicit, or 80 / 443 by scheme.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 443 } else { 80 })
    }

    /// The Host header value: the port is left out when it is the default.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        match self.port {
            Some(p) if p != default => format!("{}:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    /// `host` or `host:port` as nginx's URL parser and `upstream {}` names take it.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), UrlError> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(UrlError::EmptyHost)?;
        let host = &authority[..=end];
        match &authority[end + 1..] {
            "" => (host, None),
            rest => (host, Some(rest.strip_prefix(':').ok_or(UrlError::Port)?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(UrlError::Port),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(tls: bool, host: &str, port: Option<u16>, path: Option<&str>) -> WsUrl {
        WsUrl {
            tls,
            host: host.into(),
            port,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("ws://a", url(false, "a", None, None)),
            ("ws://a:8080", url(false, "a", Some(8080), None)),
            ("wss://a/p?q=1", url(true, "a", None, Some("/p?q=1"))),
            (
                "WS://backend:1/x/y",
                url(false, "backend", Some(1), Some("/x/y")),
            ),
            ("ws://a?x", url(false, "a", None, Some("/?x"))),
            ("ws://[::1]:9/", url(false, "[::1]", Some(9), Some("/"))),
            ("ws://[::1]", url(false, "[::1]", None, None)),
            (
                "ws://127.0.0.1:65535/",
                url(false, "127.0.0.1", Some(65535), Some("/")),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(WsUrl::parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("http://a", UrlError::Scheme),
            ("ws:/a", UrlError::Scheme),
            ("ws://", UrlError::EmptyHost),
            ("ws://:80", UrlError::EmptyHost),
            ("ws://a:0", UrlError::Port),
            ("ws://a:65536", UrlError::Port),
            ("ws://a:+1", UrlError::Port),
            ("ws://a:", UrlError::Port),
            ("ws://[::1]x", UrlError::Port),
            ("ws://u@a", UrlError::Userinfo),
        ];
        for (input, want) in cases {
            assert_eq!(WsUrl::parse(input), Err(want), "{input}");
        }
    }

    #[test]
    fn host_header_and_authority() {
        let u = WsUrl::parse("ws://a:80/").unwrap();
        assert_eq!(
            (u.host_header(), u.authority(), u.port_or_default()),
            ("a".into(), "a:80".into(), 80)
        );
        let u = WsUrl::parse("wss://a:8443").unwrap();
        assert_eq!(
            (u.host_header(), u.port_or_default()),
            ("a:8443".into(), 8443)
        );
        let u = WsUrl::parse("wss://a").unwrap();
        assert_eq!(
            (u.host_header(), u.authority(), u.port_or_default()),
            ("a".into(), "a".into(), 443)
        );
    }
}
