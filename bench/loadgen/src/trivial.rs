//! A trivial WebSocket echo server, only for measuring the load generator's
//! own ceiling: it answers the handshake, then unmasks every frame and sends
//! it straight back, all frames that arrived in one read written with one
//! write. No validation, no limits, no fragmentation handling beyond passing
//! frames through: it is meant to cost less than any real server.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub fn serve(addr: &str) {
    let addr: std::net::SocketAddr = addr.parse().expect("--serve-trivial needs ip:port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        eprintln!("trivial echo listening on {addr}");
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = connection(s).await;
            });
        }
    });
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn connection(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let head_end = loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(resp.as_bytes()).await?;
    buf.drain(..head_end);

    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let mut pos = 0;
        let mut closing = false;
        loop {
            let avail = &mut buf[pos..];
            if avail.len() < 2 {
                break;
            }
            let (b0, b1) = (avail[0], avail[1]);
            let masked = b1 & 0x80 != 0;
            let (len, hl) = match b1 & 0x7f {
                126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
                127 if avail.len() >= 10 => {
                    (u64::from_be_bytes(avail[2..10].try_into().unwrap()) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let ml = if masked { 4 } else { 0 };
            if avail.len() < hl + ml + len {
                break;
            }
            let mut mask = [0u8; 4];
            mask[..ml].copy_from_slice(&avail[hl..hl + ml]);
            let payload = &mut avail[hl + ml..hl + ml + len];
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            out.push(b0);
            if len < 126 {
                out.push(len as u8);
            } else if len <= 0xffff {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            out.extend_from_slice(payload);
            pos += hl + ml + len;
            if b0 & 0x0f == 8 {
                closing = true;
                break;
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if closing {
            s.shutdown().await?;
            return Ok(());
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
