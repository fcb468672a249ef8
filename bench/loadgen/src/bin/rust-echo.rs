//! A standalone WebSocket echo server on tokio-tungstenite, single-threaded:
//! the peer a user would write instead of putting nginx in front of
//! anything. It echoes text and binary messages; tungstenite itself answers
//! pings and the closing handshake.
//!
//! usage: rust-echo [ADDR [READ_BUFFER_BYTES]]
//!        (default 127.0.0.1:9002 and 16384; any path is accepted)

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// tungstenite's default read buffer is 128 KiB, and it zero-fills the free
/// part of it before every read() (about 128 KiB of memset per read, even
/// when the read would block). A user tuning the server at all lowers it;
/// we take 16 KiB. The second argument overrides it.
const READ_BUFFER: usize = 16 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let read_buffer: usize = args
        .next()
        .map(|v| v.parse().expect("READ_BUFFER_BYTES must be a number"))
        .unwrap_or(READ_BUFFER);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(serve(addr, read_buffer));
}

async fn serve(addr: String, read_buffer: usize) {
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR must be ip:port");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    eprintln!("rust-echo listening on {addr}");
    // The same message limits as the nginx side of the benchmark (2 MiB).
    let config = WebSocketConfig::default()
        .max_message_size(Some(2 << 20))
        .max_frame_size(Some(2 << 20))
        .read_buffer_size(read_buffer);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
                Ok(ws) => ws,
                Err(_) => return,
            };
            let (sink, source) = ws.split();
            // forward() feeds while messages are ready and flushes when the
            // source would block: the idiomatic, batching echo loop.
            let _ = source
                .try_filter(|m| future::ready(m.is_binary() || m.is_text()))
                .forward(sink)
                .await;
        });
    }
}
