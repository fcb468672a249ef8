//! The module's WebSocket client: connect to an upstream through nginx's
//! balancer, send the opening handshake, check the answer. Everything runs
//! on nginx's events; [`Connector::advance`] is called on each of them.

use core::ffi::c_void;
use core::fmt;
use std::ffi::CString;

use ngx::ffi::{ngx_connection_handler_pt, ngx_int_t, ngx_msec_t, NGX_LOG_ERR};
use ngx::ngx_log_error;

use crate::ngx_io::{now_msec, ConnectionRef, Direction, Io, NgxError};
use crate::ngx_peer::{Connect, EventHandler, UpstreamPeer};
use crate::ngx_ssl::{self, ClientTls, ConnCert, TlsHandshake};
use crate::protocol::deflate::{self, DeflateConfig, NegotiatedDeflate, EXTENSION_NAME};
use crate::random;
use crate::protocol::handshake::{
    generate_key, parse_response, ClientRequest, HandshakeError, MAX_RESPONSE_HEAD_LEN,
};

/// What the client handshake sends.
pub struct HandshakeOptions {
    /// Path and query of the request line.
    pub path: String,
    /// The Host header.
    pub host: String,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    pub origin: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Bound on connect, TLS and handshake together.
    pub connect_timeout: ngx_msec_t,
    /// Set for `wss://`.
    pub tls: Option<TlsTarget>,
    /// permessage-deflate to offer (`websocket_deflate on`).
    pub deflate: Option<DeflateConfig>,
    /// The `Sec-WebSocket-Key` to send; a fresh random one when `None`.
    pub key: Option<String>,
}

/// TLS parameters of one connection.
pub struct TlsTarget {
    pub ctx: ClientTls,
    /// The server name sent in SNI (none for an IP address).
    pub sni: Option<CString>,
    /// When verifying: the name the certificate must carry.
    pub verify_name: Option<Vec<u8>>,
    /// A client certificate of this connection (beside the context's).
    pub cert: Option<ConnCert>,
    /// Called by nginx when a handshake that could not finish at once ends;
    /// it must give the events back (`ngx_peer::set_handlers`) and advance.
    pub on_done: ngx_connection_handler_pt,
}

/// Why a [`connect`](crate::connect) failed (the seed's `err` of
/// `wb:connect`).
#[derive(Debug)]
pub enum ClientError {
    /// The URI is not a `ws://` or `wss://` URI (the seed's "bad uri").
    Uri(String),
    /// A `wss://` URI without [`ConnectOptions::tls`](crate::ConnectOptions::tls).
    NoTls,
    /// The host name could not be resolved (or no `resolver` is set).
    Resolve(String),
    /// The balancer has no live peer left.
    NoLivePeers,
    /// The last peer tried refused or was unreachable (each attempt is
    /// logged when it fails).
    Unreachable {
        /// The peer's address.
        peer: String,
        /// The connect's errno (0 when nginx reported it).
        errno: i32,
    },
    /// Connect, TLS and handshake together took longer than the connect
    /// timeout.
    Timeout {
        /// The peer's address.
        peer: String,
    },
    /// The upstream closed before it answered the handshake.
    Closed {
        /// The peer's address.
        peer: String,
    },
    /// TLS with the upstream failed (or its certificate did not verify).
    Tls {
        /// The peer's address.
        peer: String,
        /// What failed.
        why: String,
    },
    /// The upstream's handshake response was not a valid 101 for our
    /// request (a 403, a wrong `Sec-WebSocket-Accept`, ...).
    BadResponse {
        /// The peer's address.
        peer: String,
        /// What was wrong with the response.
        error: HandshakeError,
    },
    /// With a `backlog`, no pooled connection became free in time.
    PoolTimeout,
    /// With a `backlog`, the pool's line of waiting connects is full.
    PoolFull {
        /// The pool's name.
        pool: String,
    },
    /// The request's own client closed its connection before the connect
    /// finished.
    ClientClosed,
    /// nginx could not do what was asked (memory, an event, randomness).
    Internal(NgxError),
}

impl ClientError {
    /// The HTTP status a request that proxies the upstream answers with:
    /// 504 for timeouts, 503 for a full pool line, 500 for our own errors,
    /// 499 when the client left, 502 otherwise.
    pub fn status(&self) -> ngx_int_t {
        match self {
            ClientError::Timeout { .. } | ClientError::PoolTimeout => 504,
            ClientError::PoolFull { .. } => 503,
            ClientError::ClientClosed => 499,
            ClientError::Internal(_) | ClientError::Uri(_) | ClientError::NoTls => 500,
            _ => 502,
        }
    }
}

impl ClientError {
    /// Whether the peer itself failed (it is unreachable, slow, broke TLS
    /// or the protocol, or answered 5xx), rather than refused this request
    /// with an HTTP answer of its choice, which a client can provoke.
    fn peer_failed(&self) -> bool {
        match self {
            ClientError::BadResponse {
                error: HandshakeError::ResponseStatus(status),
                ..
            } => *status >= 500,
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            | ClientError::Tls { .. }
            | ClientError::BadResponse { .. } => true,
            _ => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Uri(why) => write!(f, "bad uri: {why}"),
            ClientError::NoTls => f.write_str("wss:// without a TLS context"),
            ClientError::Resolve(why) => f.write_str(why),
            ClientError::PoolTimeout => f.write_str(
                "no upstream connection became free within websocket_connect_timeout",
            ),
            ClientError::PoolFull { pool } => {
                write!(f, "too many waiting connect operations (pool \"{pool}\")")
            }
            ClientError::ClientClosed => {
                f.write_str("client closed the connection before the upgrade")
            }
            ClientError::NoLivePeers => f.write_str("no live upstreams"),
            ClientError::Unreachable { peer, errno } => {
                write!(
                    f,
                    "no upstream reachable, last tried {peer} ({errno}: {})",
                    os_error_text(*errno)
                )
            }
            ClientError::Timeout { peer } => write!(f, "upstream {peer} timed out"),
            ClientError::Closed { peer } => {
                write!(
                    f,
                    "upstream {peer} closed the connection before answering the handshake"
                )
            }
            ClientError::BadResponse { peer, error } => {
                write!(f, "upstream {peer} failed the handshake: {error}")
            }
            ClientError::Tls { peer, why } => write!(f, "TLS with upstream {peer} failed: {why}"),
            ClientError::Internal(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The upstream handshake request of `opts` with the key `key`.
fn request_bytes(opts: &HandshakeOptions, key: &str) -> Vec<u8> {
    let protocols: Vec<&str> = opts.protocols.iter().map(String::as_str).collect();
    let offer = opts.deflate.as_ref().map(deflate::offer);
    let headers: Vec<(&str, &str)> = opts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(offer.as_deref().map(|o| ("Sec-WebSocket-Extensions", o)))
        .collect();
    ClientRequest {
        path: &opts.path,
        host: &opts.host,
        key,
        protocols: &protocols,
        origin: opts.origin.as_deref(),
        extra_headers: &headers,
    }
    .to_bytes()
}

impl HandshakeOptions {
    /// The upstream handshake these options send, byte for byte, but for
    /// its random key: a pooled connection serves only an identical one.
    pub fn handshake(&self) -> Vec<u8> {
        request_bytes(self, "")
    }
}

/// What the upstream's handshake response agreed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agreed {
    pub subprotocol: Option<String>,
    /// permessage-deflate, when the upstream accepted our offer.
    pub deflate: Option<NegotiatedDeflate>,
}

/// A finished handshake.
pub struct Established {
    pub peer: UpstreamPeer,
    pub agreed: Agreed,
    /// The upstream's handshake response head.
    pub response: Vec<u8>,
    /// Bytes the upstream sent right behind its 101 response (frames).
    pub leftover: Vec<u8>,
}

/// Where [`Connector::advance`] stands.
pub enum Progress {
    Pending,
    Ready(Established),
    Failed(ClientError),
}

enum Stage {
    /// Waiting for a non-blocking connect to complete.
    Connect,
    /// nginx drives the TLS handshake.
    Tls,
    Send {
        pos: usize,
    },
    Receive,
}

/// An upstream connection being set up.
pub struct Connector {
    peer: Option<UpstreamPeer>,
    stage: Stage,
    key: String,
    /// What the handshake sends (its TLS target taken out).
    opts: HandshakeOptions,
    request: Vec<u8>,
    response: Vec<u8>,
    deadline: ngx_msec_t,
    data: *mut c_void,
    handler: EventHandler,
    tls: Option<TlsTarget>,
}

impl Connector {
    /// Starts connecting to the peer the balancer picked (or picks). `data`
    /// and `handler` are installed on the new connection; the handler must
    /// call [`Connector::advance`].
    pub fn start(
        peer: UpstreamPeer,
        mut opts: HandshakeOptions,
        data: *mut c_void,
        handler: EventHandler,
    ) -> Result<Connector, ClientError> {
        let key = match &opts.key {
            Some(key) => key.clone(),
            None => new_key()?,
        };
        let request = request_bytes(&opts, &key);
        let mut connector = Connector {
            peer: Some(peer),
            stage: Stage::Connect,
            key,
            request,
            response: Vec::new(),
            deadline: now_msec().wrapping_add(opts.connect_timeout),
            data,
            handler,
            tls: opts.tls.take(),
            opts,
        };
        match connector.connect_next() {
            Progress::Failed(e) => Err(e),
            _ => Ok(connector),
        }
    }

    fn peer(&mut self) -> &mut UpstreamPeer {
        self.peer
            .as_mut()
            .expect("the peer is taken only when the handshake is done")
    }

    /// Tries peers until one connects or is in progress.
    fn connect_next(&mut self) -> Progress {
        let (data, handler) = (self.data, self.handler);
        loop {
            match self.peer().connect(data, handler) {
                // Connected at once: go on from the write event like after an
                // in-progress connect, so the caller always gets Pending first.
                Connect::Connected | Connect::InProgress => {
                    self.stage = Stage::Connect;
                    return self.wait(Direction::Write);
                }
                Connect::Declined => {
                    // nginx has logged why this peer failed.
                    self.peer().fail();
                    if !self.peer().tries_left() {
                        let peer = self.peer().name();
                        return Progress::Failed(ClientError::Unreachable { peer, errno: 0 });
                    }
                }
                Connect::NoLivePeers => return Progress::Failed(ClientError::NoLivePeers),
                Connect::Error => {
                    return Progress::Failed(ClientError::Internal(NgxError(
                        "ngx_event_connect_peer",
                    )))
                }
            }
        }
    }

    /// Moves the handshake on after an event of the upstream connection.
    pub fn advance(&mut self) -> Progress {
        loop {
            let Some(c) = connection(&self.peer) else {
                return Progress::Failed(ClientError::Internal(NgxError("upstream connection")));
            };
            if c.take_timedout(Direction::Read) | c.take_timedout(Direction::Write) {
                let peer = self.peer().name();
                return self.next_peer(ClientError::Timeout { peer });
            }
            match self.stage {
                Stage::Connect => match test_connect(&self.peer) {
                    Ok(()) => match &self.tls {
                        None => self.stage = Stage::Send { pos: 0 },
                        Some(tls) => {
                            match ngx_ssl::start(tls.ctx, c, tls.sni.as_deref(), tls.cert.as_ref(), tls.on_done) {
                                TlsHandshake::Done => self.stage = Stage::Tls,
                                TlsHandshake::Again => {
                                    self.stage = Stage::Tls;
                                    return self.wait(Direction::Write);
                                }
                                TlsHandshake::Failed => {
                                    return self.tls_failed("handshake failed".into())
                                }
                            }
                        }
                    },
                    Err(errno) => return self.connect_failed(errno),
                },
                Stage::Tls => {
                    if !ngx_ssl::handshaked(c) {
                        return self.tls_failed("handshake failed".into());
                    }
                    let verified = match self.tls.as_ref().and_then(|t| t.verify_name.as_deref()) {
                        Some(name) => ngx_ssl::verify(c, name),
                        None => Ok(()),
                    };
                    if let Err(why) = verified {
                        return self.tls_failed(why);
                    }
                    self.stage = Stage::Send { pos: 0 };
                }
                Stage::Send { pos } => match c.send(&self.request[pos..]) {
                    Io::Done(n) if pos + n == self.request.len() => self.stage = Stage::Receive,
                    Io::Done(n) => self.stage = Stage::Send { pos: pos + n },
                    Io::Again => return self.wait(Direction::Write),
                    Io::Eof | Io::Error => return self.closed(),
                },
                Stage::Receive => {
                    let start = self.response.len();
                    self.response.resize(start + 4096, 0);
                    let io = c.recv(&mut self.response[start..]);
                    let got = if let Io::Done(n) = io { n } else { 0 };
                    self.response.truncate(start + got);
                    match io {
                        Io::Done(_) => {
                            if let Some(progress) = self.check_response() {
                                return progress;
                            }
                        }
                        Io::Again => return self.wait(Direction::Read),
                        Io::Eof | Io::Error => return self.closed(),
                    }
                }
            }
        }
    }

    fn tls_failed(&mut self, why: String) -> Progress {
        let peer = self.peer().name();
        self.next_peer(ClientError::Tls { peer, why })
    }

    /// A non-blocking connect failed: log it, then try the next peer.
    fn connect_failed(&mut self, errno: i32) -> Progress {
        let peer = self.peer().name();
        if let Some(c) = connection(&self.peer) {
            ngx_log_error!(
                NGX_LOG_ERR,
                c.log(),
                "websocket: connect() to {peer} failed ({errno}: {})",
                os_error_text(errno)
            );
        }
        self.next_peer(ClientError::Unreachable { peer, errno })
    }

    /// The attempt with this peer failed. When the peer itself failed, the
    /// balancer hears it (nginx's `max_fails` counts it) and, as nginx's
    /// next_upstream does, the next peer is tried while the balancer allows
    /// it and `websocket_connect_timeout` leaves time; otherwise the session
    /// fails with `error`. An HTTP refusal of this request is not the peer
    /// failing: the balancer hears of it as done when the connector drops.
    fn next_peer(&mut self, error: ClientError) -> Progress {
        if !error.peer_failed() {
            return Progress::Failed(error);
        }
        let log = connection(&self.peer).map(ConnectionRef::log);
        self.peer().fail();
        let time_left = self.deadline.wrapping_sub(now_msec()) as i64 > 0;
        if !(self.peer().tries_left() && time_left) {
            return Progress::Failed(error);
        }
        if let (Some(log), false) = (log, matches!(error, ClientError::Unreachable { .. })) {
            // Unreachable peers were logged as their connect failed.
            ngx_log_error!(NGX_LOG_ERR, log, "websocket: {error}, trying the next one");
        }
        self.response.clear();
        self.key = match self.opts.key.clone().map_or_else(new_key, Ok) {
            Ok(key) => key,
            Err(e) => return Progress::Failed(e),
        };
        self.request = request_bytes(&self.opts, &self.key);
        self.connect_next()
    }

    /// Parses what arrived of the response; `None` while it is incomplete.
    fn check_response(&mut self) -> Option<Progress> {
        let parsed = parse_response(&self.response).and_then(|head| match head {
            None if self.response.len() > MAX_RESPONSE_HEAD_LEN => {
                Err(HandshakeError::ResponseHeadTooLarge)
            }
            None => Ok(None),
            Some((response, used)) => {
                let offered: Vec<&str> = self.opts.protocols.iter().map(String::as_str).collect();
                let extensions: &[&str] = match self.opts.deflate {
                    Some(_) => &[EXTENSION_NAME],
                    None => &[],
                };
                let chosen = response.validate_with_extensions(&self.key, &offered, extensions)?;
                let agreed = match &self.opts.deflate {
                    Some(cfg) => {
                        let values = response.header_values("Sec-WebSocket-Extensions");
                        deflate::check_response(&values, cfg)
                            .map_err(|e| HandshakeError::ResponseBadExtension(e.to_string()))?
                    }
                    None => None,
                };
                Ok(Some((chosen, agreed, used)))
            }
        });
        match parsed {
            Ok(None) => None,
            Ok(Some((subprotocol, deflate, used))) => {
                let leftover = self.response.split_off(used);
                let response = core::mem::take(&mut self.response);
                let peer = self.peer.take().expect("the peer is still held");
                Some(Progress::Ready(Established {
                    peer,
                    agreed: Agreed {
                        subprotocol,
                        deflate,
                    },
                    response,
                    leftover,
                }))
            }
            Err(error) => {
                let peer = self.peer().name();
                Some(self.next_peer(ClientError::BadResponse { peer, error }))
            }
        }
    }

    fn closed(&mut self) -> Progress {
        let peer = self.peer().name();
        self.next_peer(ClientError::Closed { peer })
    }

    /// Waits for `dir` on the upstream connection until the deadline.
    fn wait(&mut self, dir: Direction) -> Progress {
        let left = self.deadline.wrapping_sub(now_msec()) as i64;
        if left <= 0 || left > i64::from(u32::MAX) {
            let peer = self.peer().name();
            return self.next_peer(ClientError::Timeout { peer });
        }
        let Some(c) = connection(&self.peer) else {
            return Progress::Failed(ClientError::Internal(NgxError("upstream connection")));
        };
        if c.handle_event(dir).is_err() {
            return Progress::Failed(ClientError::Internal(NgxError("ngx_handle_event")));
        }
        c.add_timer(dir, left as ngx_msec_t);
        Progress::Pending
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(peer) = self.peer.as_mut() {
            peer.close();
        }
    }
}

/// The system's text for an errno, as nginx prints it.
fn os_error_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn test_connect(peer: &Option<UpstreamPeer>) -> Result<(), i32> {
    peer.as_ref().map_or(Err(0), UpstreamPeer::test_connect)
}

fn connection(peer: &Option<UpstreamPeer>) -> Option<&ConnectionRef> {
    peer.as_ref().and_then(UpstreamPeer::connection)
}

/// A fresh `Sec-WebSocket-Key` from the OS's CSPRNG.
fn new_key() -> Result<String, ClientError> {
    let mut nonce = [0u8; 16];
    random::fill(&mut nonce)
        .map_err(|_| ClientError::Internal(NgxError("no random bytes for Sec-WebSocket-Key")))?;
    Ok(generate_key(nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> HandshakeOptions {
        HandshakeOptions {
            path: String::from("/chat?room=1"),
            host: String::from("backend"),
            protocols: vec![String::from("chat")],
            origin: Some(String::from("https://example.com")),
            headers: vec![(String::from("Authorization"), String::from("Bearer a"))],
            connect_timeout: 1000,
            tls: None,
            deflate: None,
            key: None,
        }
    }

    #[test]
    fn handshake_identity_is_every_byte_but_the_key() {
        let same = options();
        assert_eq!(options().handshake(), same.handshake());
        assert!(!options().handshake().is_empty());
        let changes: [fn(&mut HandshakeOptions); 6] = [
            |o| o.path.push('2'),
            |o| o.host.push('2'),
            |o| o.protocols.push(String::from("b")),
            |o| o.origin = None,
            |o| o.headers[0].1.push('b'),
            |o| {
                o.deflate = Some(DeflateConfig {
                    window_bits: 15,
                    context_takeover: false,
                })
            },
        ];
        for change in changes {
            let mut other = options();
            change(&mut other);
            assert_ne!(other.handshake(), same.handshake());
        }
        // Only what reaches the upstream counts.
        let mut other = options();
        other.connect_timeout = 5;
        assert_eq!(other.handshake(), same.handshake());
    }

    #[test]
    fn only_the_peer_failing_counts_against_it() {
        let peer = || String::from("127.0.0.1:1");
        let status = |s| ClientError::BadResponse {
            peer: peer(),
            error: HandshakeError::ResponseStatus(s),
        };
        assert!(status(500).peer_failed());
        assert!(status(503).peer_failed());
        assert!(!status(403).peer_failed());
        assert!(!status(404).peer_failed());
        assert!(!status(302).peer_failed());
        assert!(!status(200).peer_failed());
        assert!(ClientError::BadResponse {
            peer: peer(),
            error: HandshakeError::ResponseInvalidAccept
        }
        .peer_failed());
        assert!(ClientError::Closed { peer: peer() }.peer_failed());
        assert!(ClientError::Timeout { peer: peer() }.peer_failed());
        assert!(!ClientError::NoLivePeers.peer_failed());
    }
}
