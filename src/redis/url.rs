//! `redis=redis://host:port[/db]` of `websocket_channel_zone`.

use std::fmt;

pub const DEFAULT_PORT: u16 = 6379;

/// Where a zone's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// The database `SELECT`ed on each connection.
    pub db: u32,
}

impl RedisUrl {
    /// `host:port` as nginx's `ngx_parse_url` takes it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.authority(), self.db)
    }
}

/// Parses `redis://host[:port][/db]`; the error is a sentence for
/// `nginx -t` ("invalid redis URL ...: ...").
pub fn parse(text: &str) -> Result<RedisUrl, String> {
    let fail = |why: &str| Err(format!("invalid redis URL \"{text}\": {why}"));
    let Some(rest) = text.strip_prefix("redis://") else {
        if text.starts_with("rediss://") {
            return fail("TLS (rediss://) is not supported");
        }
        return fail("it must start with redis://");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    if authority.contains('@') {
        return fail("a user or password is not supported");
    }
    if rest.contains('?') || rest.contains('#') {
        return fail("query strings and fragments are not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(close) = v6.find(']') else {
            return fail("unclosed '[' in the host");
        };
        let host = &v6[..close];
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return fail("bad IPv6 address");
        }
        match &v6[close + 1..] {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return fail("junk after the IPv6 address"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return fail("no host");
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return fail("bad host name");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match number(p) {
            Some(n) if (1..=65535).contains(&n) => n as u16,
            _ => return fail("the port must be a number from 1 to 65535"),
        },
    };
    let db = match path {
        None | Some("") => 0,
        Some(p) => match number(p) {
            Some(n) if n <= i32::MAX as u64 => n as u32,
            _ => return fail("the database must be a number"),
        },
    };
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        db,
    })
}

fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, db: u32) -> RedisUrl {
        RedisUrl {
            host: host.into(),
            port,
            db,
        }
    }

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("redis://10.0.0.5:6379", url("10.0.0.5", 6379, 0)),
            ("redis://10.0.0.5", url("10.0.0.5", 6379, 0)),
            ("redis://127.0.0.1:7000/3", url("127.0.0.1", 7000, 3)),
            ("redis://localhost/", url("localhost", 6379, 0)),
            ("redis://redis.internal:1/15", url("redis.internal", 1, 15)),
            ("redis://[::1]:6380/2", url("::1", 6380, 2)),
            ("redis://[::1]", url("::1", 6379, 0)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        assert_eq!(url("::1", 6380, 2).authority(), "[::1]:6380");
        assert_eq!(url("h", 1, 0).to_string(), "redis://h:1/0");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        let cases = [
            ("10.0.0.5:6379", "must start with redis://"),
            ("http://h:1", "must start with redis://"),
            ("rediss://h:1", "TLS"),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://h:", "port"),
            ("redis://h:0", "port"),
            ("redis://h:65536", "port"),
            ("redis://h:12ab", "port"),
            ("redis://h:1/x", "database"),
            ("redis://h:1/-1", "database"),
            ("redis://h:1/1/2", "database"),
            ("redis://h:1/99999999999", "database"),
            ("redis://user:pw@h:1", "password"),
            ("redis://h:1?db=2", "query"),
            ("redis://h o:1", "host"),
            ("redis://[::1:1", "unclosed"),
            ("redis://[::1]x", "junk"),
            ("redis://[zz]:1", "IPv6"),
        ];
        for (text, why) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }
}
