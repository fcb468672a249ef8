//! A standalone WebSocket echo server on fastwebsockets, single-threaded,
//! set up as fastwebsockets' own `echo_server` example does: hyper serves the
//! HTTP/1.1 upgrade, a `FragmentCollector` reassembles messages, and the
//! library answers pings and the closing handshake itself (auto pong, auto
//! close). It echoes text and binary messages, each with one write.
//!
//! usage: fws-echo [ADDR]   (default 127.0.0.1:9003; any path is accepted)

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::{TcpListener, TcpSocket};

/// The same message limit as the nginx side of the benchmark and rust-echo
/// (2 MiB; fastwebsockets refuses a frame of this length or more).
const MAX_MESSAGE: usize = 2 << 20;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(serve(addr));
}

async fn serve(addr: String) {
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR must be ip:port");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    eprintln!("fws-echo listening on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = http1::Builder::new()
                .serve_connection(io, service_fn(upgrade_request))
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("http: {e}");
            }
        });
    }
}

async fn upgrade_request(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(echo(fut)).await {
            eprintln!("websocket: {e}");
        }
    });
    Ok(response)
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(MAX_MESSAGE);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}
