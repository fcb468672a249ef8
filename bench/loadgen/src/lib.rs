//! What the `loadgen` and `soak` binaries share: the command line, the
//! server address and the tokio-tungstenite connection.

use std::net::{SocketAddr, ToSocketAddrs};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// The command line as `--option value` pairs, in order; `-h` or `--help`
/// prints `usage` and exits.
pub fn options(usage: &'static str) -> impl Iterator<Item = Result<(String, String), String>> {
    let mut args = std::env::args().skip(1);
    std::iter::from_fn(move || {
        let key = args.next()?;
        if key == "-h" || key == "--help" {
            println!("{usage}");
            std::process::exit(0);
        }
        Some(match args.next() {
            Some(val) => Ok((key, val)),
            None => Err(format!("{key} needs a value")),
        })
    })
}

/// The value of option `key` as a number.
pub fn number(key: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .map_err(|_| format!("{key}: not a number: {v}"))
}

/// ws://host[:port]/path -> the server's socket address (port 80 by default)
pub fn resolve(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported: {url}"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// A WebSocket connection to `url` at `addr` (TCP_NODELAY), with `config`.
pub async fn connect(addr: SocketAddr, url: &str, config: WebSocketConfig) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = url.into_client_request().map_err(|e| e.to_string())?;
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("handshake {url}: {e}"))?;
    Ok(ws)
}
