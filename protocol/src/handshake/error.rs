//! Why a handshake was refused, with the HTTP status to answer with.

use std::fmt;

/// A defect in a client's upgrade request (400/405/426) or in an upstream's
/// handshake response (502: the module is then a gateway that got a bad answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    MethodNotGet,
    HttpVersionTooOld,
    /// HTTP/2 or later (the major version): RFC 6455 upgrades HTTP/1.1
    /// only, and RFC 8441's extended CONNECT is not offered to modules.
    NotHttp1(u32),
    MissingUpgrade,
    MissingConnectionUpgrade,
    MissingVersion,
    UnsupportedVersion,
    MissingKey,
    DuplicateKey,
    InvalidKey,
    InvalidProtocol,
    ResponseHeadTooLarge,
    MalformedStatusLine,
    MalformedHeaderLine,
    ResponseStatus(u16),
    ResponseMissingUpgrade,
    ResponseMissingConnectionUpgrade,
    ResponseMissingAccept,
    ResponseInvalidAccept,
    ResponseUnofferedProtocol(String),
    ResponseUnofferedExtension(String),
    /// The extension parameters the server chose cannot be used.
    ResponseBadExtension(String),
}

impl HandshakeError {
    /// The HTTP status of the refusal; 426 responses must carry
    /// `Sec-WebSocket-Version: 13`.
    pub fn status(&self) -> u16 {
        match self {
            Self::MethodNotGet => 405,
            Self::MissingVersion | Self::UnsupportedVersion => 426,
            Self::HttpVersionTooOld
            | Self::NotHttp1(_)
            | Self::MissingUpgrade
            | Self::MissingConnectionUpgrade
            | Self::MissingKey
            | Self::DuplicateKey
            | Self::InvalidKey
            | Self::InvalidProtocol => 400,
            _ => 502,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MethodNotGet => f.write_str("method is not GET"),
            Self::HttpVersionTooOld => f.write_str("HTTP version older than 1.1"),
            Self::NotHttp1(major) => write!(f, "WebSocket needs HTTP/1.1, not HTTP/{major}"),
            Self::MissingUpgrade => f.write_str("missing \"Upgrade: websocket\""),
            Self::MissingConnectionUpgrade => f.write_str("missing \"Connection: upgrade\""),
            Self::MissingVersion => f.write_str("missing Sec-WebSocket-Version"),
            Self::UnsupportedVersion => f.write_str("unsupported Sec-WebSocket-Version"),
            Self::MissingKey => f.write_str("missing Sec-WebSocket-Key"),
            Self::DuplicateKey => f.write_str("duplicate Sec-WebSocket-Key"),
            Self::InvalidKey => f.write_str("invalid Sec-WebSocket-Key"),
            Self::InvalidProtocol => f.write_str("invalid Sec-WebSocket-Protocol"),
            Self::ResponseHeadTooLarge => f.write_str("handshake response header too large"),
            Self::MalformedStatusLine => f.write_str("malformed status line in handshake response"),
            Self::MalformedHeaderLine => f.write_str("malformed header line in handshake response"),
            Self::ResponseStatus(status) => {
                write!(f, "unexpected status {status} in handshake response")
            }
            Self::ResponseMissingUpgrade => {
                f.write_str("missing \"Upgrade: websocket\" in handshake response")
            }
            Self::ResponseMissingConnectionUpgrade => {
                f.write_str("missing \"Connection: upgrade\" in handshake response")
            }
            Self::ResponseMissingAccept => {
                f.write_str("missing Sec-WebSocket-Accept in handshake response")
            }
            Self::ResponseInvalidAccept => {
                f.write_str("wrong Sec-WebSocket-Accept in handshake response")
            }
            Self::ResponseUnofferedProtocol(name) => write!(
                f,
                "handshake response chose subprotocol \"{name}\" that was not offered"
            ),
            Self::ResponseUnofferedExtension(name) => write!(
                f,
                "handshake response chose extension \"{name}\" that was not offered"
            ),
            Self::ResponseBadExtension(why) => write!(f, "handshake response: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let table: &[(HandshakeError, u16, &str)] = &[
            (HandshakeError::MethodNotGet, 405, "method is not GET"),
            (
                HandshakeError::HttpVersionTooOld,
                400,
                "HTTP version older than 1.1",
            ),
            (
                HandshakeError::NotHttp1(2),
                400,
                "WebSocket needs HTTP/1.1, not HTTP/2",
            ),
            (
                HandshakeError::MissingUpgrade,
                400,
                "missing \"Upgrade: websocket\"",
            ),
            (
                HandshakeError::MissingConnectionUpgrade,
                400,
                "missing \"Connection: upgrade\"",
            ),
            (
                HandshakeError::MissingVersion,
                426,
                "missing Sec-WebSocket-Version",
            ),
            (
                HandshakeError::UnsupportedVersion,
                426,
                "unsupported Sec-WebSocket-Version",
            ),
            (HandshakeError::MissingKey, 400, "missing Sec-WebSocket-Key"),
            (
                HandshakeError::DuplicateKey,
                400,
                "duplicate Sec-WebSocket-Key",
            ),
            (HandshakeError::InvalidKey, 400, "invalid Sec-WebSocket-Key"),
            (
                HandshakeError::InvalidProtocol,
                400,
                "invalid Sec-WebSocket-Protocol",
            ),
            (
                HandshakeError::ResponseHeadTooLarge,
                502,
                "handshake response header too large",
            ),
            (
                HandshakeError::MalformedStatusLine,
                502,
                "malformed status line in handshake response",
            ),
            (
                HandshakeError::MalformedHeaderLine,
                502,
                "malformed header line in handshake response",
            ),
            (
                HandshakeError::ResponseStatus(403),
                502,
                "unexpected status 403 in handshake response",
            ),
            (
                HandshakeError::ResponseMissingUpgrade,
                502,
                "missing \"Upgrade: websocket\" in handshake response",
            ),
            (
                HandshakeError::ResponseMissingConnectionUpgrade,
                502,
                "missing \"Connection: upgrade\" in handshake response",
            ),
            (
                HandshakeError::ResponseMissingAccept,
                502,
                "missing Sec-WebSocket-Accept in handshake response",
            ),
            (
                HandshakeError::ResponseInvalidAccept,
                502,
                "wrong Sec-WebSocket-Accept in handshake response",
            ),
            (
                HandshakeError::ResponseUnofferedProtocol("chat".into()),
                502,
                "handshake response chose subprotocol \"chat\" that was not offered",
            ),
            (
                HandshakeError::ResponseUnofferedExtension("x-foo".into()),
                502,
                "handshake response chose extension \"x-foo\" that was not offered",
            ),
            (
                HandshakeError::ResponseBadExtension("why".into()),
                502,
                "handshake response: why",
            ),
        ];
        for (err, status, reason) in table {
            assert_eq!(err.status(), *status, "{err:?}");
            assert_eq!(err.to_string(), *reason);
        }
    }
}
