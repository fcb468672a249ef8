#!/bin/sh
# A crate outside the repository, in $TMPDIR, that depends on the module crate
# by path with default-features = false (as README says a dependent does) and
# writes a Handler, a ClientHandler and relays (the library's Relay, and a
# RelayHandler of its own) with the public API only: it must build,
# and its cdylib must export no symbol of ours (no second ngx_modules, no ngx_http_websocket_module).
#
# Environment: CARGO (cargo), PROFILE (release), CARGO_TARGET_DIR (default the
# repository's target/: what the module build compiled is reused, so it is quick).
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
CARGO="${CARGO:-cargo}"
PROFILE="${PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/ws-dependent-XXXXXX")
trap 'rm -rf "$DIR"' EXIT

mkdir -p "$DIR/src"
cat > "$DIR/Cargo.toml" <<TOML
[package]
name = "ws-dependent-check"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
ngx_http_websocket_module = { path = "$REPO", default-features = false, features = ["vendored"] }

[profile.release]
lto = "thin"
codegen-units = 4
panic = "abort"
TOML
# The repository's lock file: the same versions, no registry lookup.
cp "$REPO/Cargo.lock" "$DIR/Cargo.lock"

cat > "$DIR/src/lib.rs" <<'RUST'
//! The smallest complete handler (README "Writing your own WebSocket handler
//! in Rust"), outside the module's repository.
#![deny(unsafe_op_in_unsafe_fn)]
use ngx_http_websocket_module::protocol::OpCode;
use ngx_http_websocket_module::{
    serve, upgrade, Context, Handler, Next, Received, RequestRef, ServerOptions,
};

/// Answers every text message with its length; echoes binary ones.
pub struct Lengths;

impl Handler for Lengths {
    fn step(&mut self, cx: &mut Context<'_>) -> Next {
        let ws = cx.ws();
        loop {
            let sent = match ws.recv() {
                Ok(Some(Received::Message { opcode: OpCode::Text, data })) => {
                    ws.send_text(data.len().to_string().as_bytes())
                }
                Ok(Some(Received::Message { data, .. })) => ws.send_binary(&data),
                Ok(Some(Received::Ping(p))) => ws.send_pong(p.payload()),
                Ok(Some(Received::Pong(_))) => Ok(()),
                Ok(Some(Received::Close(_))) => return Next::Close(1000),
                Ok(None) => return Next::Wait,
                Err(e) => return Next::Fail(e),
            };
            if let Err(e) = sent {
                return Next::Fail(e);
            }
        }
    }
}

/// A content handler, for a module's directive to install.
///
/// # Safety
/// nginx calls it with a live request; `module` is the caller's HTTP module.
pub unsafe fn content_handler(
    r: *mut ngx::ffi::ngx_http_request_t,
    module: &'static ngx::ffi::ngx_module_t,
) -> ngx::ffi::ngx_int_t {
    // SAFETY: guaranteed by the caller.
    let r = unsafe { RequestRef::from_raw(r) };
    let opts = ServerOptions { max_payload_len: 1 << 20, timeout: 30_000, ..Default::default() };
    match upgrade(r, &opts) {
        // SAFETY: guaranteed by the caller.
        Ok(upgraded) => unsafe { serve(upgraded, module, Lengths) },
        Err(status) => status,
    }
}

// The client of README's "A client": answers the HTTP request with the
// upstream's first text frame.
use ngx_http_websocket_module::{
    connect, ClientContext, ClientError, ClientHandler, ClientNext, ClientOptions, ConnectOptions,
    Connected,
};

/// Answers the HTTP request with the upstream's first text frame.
pub struct First;

impl ClientHandler for First {
    fn connected(&mut self, cx: &mut ClientContext<'_>, res: Result<Connected, ClientError>) -> ClientNext {
        match res {
            Ok(_) => self.step(cx),
            Err(e) => ClientNext::Finish(e.status()),
        }
    }

    fn step(&mut self, cx: &mut ClientContext<'_>) -> ClientNext {
        if cx.timed_out() {
            return ClientNext::Finish(504);
        }
        let Some(wb) = cx.client() else { return ClientNext::Finish(500) };
        let data = loop {
            match wb.recv_frame() {
                Ok(None) => return ClientNext::Wait,
                Ok(Some(f)) if f.typ == OpCode::Text => break f.data,
                Ok(Some(_)) => continue,
                Err(_) => return ClientNext::Finish(502),
            }
        };
        let _ = wb.close(); // or wb.set_keepalive(10_000, 4)
        let r = cx.request();
        r.set_status(200, None);
        ClientNext::Finish(r.send_small_response(&data))
    }
}

/// A content handler that connects, for a module's directive to install.
///
/// # Safety
/// nginx calls it with a live request; `module` is the caller's HTTP module.
pub unsafe fn client_content_handler(
    r: *mut ngx::ffi::ngx_http_request_t,
    module: &'static ngx::ffi::ngx_module_t,
) -> ngx::ffi::ngx_int_t {
    // SAFETY: guaranteed by the caller.
    let r = unsafe { RequestRef::from_raw(r) };
    let (client, opts) = (ClientOptions::default(), ConnectOptions::default());
    // SAFETY: guaranteed by the caller.
    unsafe { connect(r, module, "ws://127.0.0.1:9000/feed", &client, opts, First) }
}

// A relay (README "Relays"): the library's Relay as is, or a RelayHandler of
// one's own, here one that upper-cases the upstream's text frames and keeps
// the timeouts, backpressure and keepalive pooling of Relay with the public
// methods of WebSocket, WsClient and Fence.
use ngx_http_websocket_module::{
    validate, Direction, Fence, Quiet, Relay, RelayContext, RelayHandler, RelayNext,
    WebSocket, WsError,
};

/// Queued bytes towards a leg above which the other leg is not read.
const HIGH_WATER: usize = 64 * 1024;

/// Relays frames, the upstream's text upper-cased.
pub struct Shout {
    started: bool,
    pool_size: Option<usize>,
    /// The client's close (its code), held back while the upstream is fenced.
    fence: Option<(Fence, Option<u16>)>,
    pooling: bool,
    closing: bool,
}

impl Shout {
    /// A relay whose upstream has a keepalive pool of `pool_size`.
    pub fn new(pool_size: Option<usize>) -> Shout {
        Shout { started: false, pool_size, fence: None, pooling: false, closing: false }
    }

    /// Moves frames from `src` to `dst`: true when it stopped for `dst`'s queue.
    fn pump(&mut self, src: &mut WebSocket, dst: &mut WebSocket, to_client: bool) -> Result<bool, WsError> {
        while !src.close_received() {
            if dst.queued() > HIGH_WATER {
                return Ok(true);
            }
            let Some(frame) = src.recv_frame_in_place()? else {
                return Ok(src.take_throttled());
            };
            let (typ, fin, code) = (frame.typ, !frame.again, frame.close_code);
            let fenced = self.fence.filter(|_| to_client);
            match typ {
                OpCode::Pong if fenced.is_some_and(|(f, _)| f.answered_by(frame.data())) => {
                    // All the upstream sent for the session was relayed: pool it.
                    self.fence = None;
                    self.pooling = true;
                    dst.send_close(fenced.and_then(|(_, code)| code), b"")?;
                    return Ok(false);
                }
                OpCode::Ping => dst.send_ping(frame.data())?,
                OpCode::Pong => dst.send_pong(frame.data())?,
                OpCode::Close if !to_client && self.pool_size.is_some() && dst.reusable() => {
                    self.fence = Some((Fence::send(dst)?, code));
                }
                OpCode::Close => dst.send_close(code, frame.data())?,
                OpCode::Text if to_client => dst.send_frame(fin, typ, &frame.data().to_ascii_uppercase())?,
                _ => dst.send_frame(fin, typ, frame.data())?,
            }
            // Data or a close from a fenced upstream: it is closed as usual.
            if let Some((_, code)) = fenced.filter(|_| !matches!(typ, OpCode::Ping | OpCode::Pong)) {
                self.fence = None;
                src.send_close(code, b"")?;
            }
        }
        Ok(false)
    }

    /// A quiet leg's read deadline: its close code, if it is to be closed.
    fn quiet(leg: &mut WebSocket) -> Option<u16> {
        if !leg.take_timedout(Direction::Read) {
            return None;
        }
        match leg.on_read_timeout() {
            Quiet::Pinged | Quiet::Due => None,
            Quiet::Idle => Some(1001),
            Quiet::Dead => Some(1011),
        }
    }

    fn close_both(&mut self, client: &mut WebSocket, upstream: &mut WebSocket, code: u16) {
        self.closing = true;
        let _ = client.send_close(Some(code), b"");
        let _ = upstream.send_close(Some(code), b"");
    }
}

impl RelayHandler for Shout {
    fn step(&mut self, cx: &mut RelayContext<'_>) -> RelayNext {
        let due = cx.due_to_close();
        let (client, upstream) = cx.legs();
        if !self.started {
            // Each leg's own queue holds what the other leg's pump put there
            // (one frame over HIGH_WATER) and its own closes and pings.
            self.started = true;
            for leg in [&mut *client, &mut **upstream] {
                let frame = usize::try_from(leg.max_send_len()).unwrap_or(usize::MAX);
                leg.pause_reading_above(HIGH_WATER.saturating_add(frame).saturating_add(HIGH_WATER));
            }
        }
        // A leg that took nothing for the timeout is given up.
        if client.take_timedout(Direction::Write) {
            client.discard_output();
            self.close_both(client, upstream, 1001);
        }
        if upstream.take_timedout(Direction::Write) {
            upstream.discard_output();
            self.close_both(client, upstream, 1011);
        }
        let quiet = (Self::quiet(client), Self::quiet(upstream));
        if let Some(code) = quiet.0.or(quiet.1).or(due.then_some(1001)) {
            if !self.closing {
                self.close_both(client, upstream, code);
            }
        }
        loop {
            let (client, upstream) = cx.legs();
            let mut waited = false;
            if !self.closing && !self.pooling {
                match (self.pump(client, upstream, false), self.pump(upstream, client, true)) {
                    (Ok(up), Ok(down)) => waited = up || down,
                    (Err(WsError::Protocol(e)), _) | (_, Err(WsError::Protocol(e))) => {
                        self.close_both(client, upstream, e.close_code())
                    }
                    _ => self.close_both(client, upstream, 1011),
                }
            }
            if let Some(size) = self.pool_size.filter(|_| self.pooling) {
                let _ = upstream.set_keepalive(30_000, size);
            }
            let Ok(flushed) = cx.flush() else {
                return RelayNext::Abort;
            };
            let (client, upstream) = cx.legs();
            let over = client.close_sent() && upstream.close_sent()
                && client.close_received() && upstream.close_received();
            if flushed && (self.pooling || self.closing || over) {
                return RelayNext::Finish;
            }
            let blocked = |src: &WebSocket, dst: &WebSocket| dst.queued() > HIGH_WATER || src.reading_paused();
            let read_client = !self.closing && !client.close_received() && !blocked(client, upstream);
            let read_upstream = !self.closing && !upstream.close_received() && !blocked(upstream, client);
            // Output drained while reading waited for it: go on at once.
            if waited && (read_client || read_upstream) {
                continue;
            }
            return RelayNext::Wait {
                read_client: read_client && client.queued() == 0,
                read_upstream: read_upstream && upstream.queued() == 0,
            };
        }
    }
}

/// Relays its request to the upstream: with [`Relay`], or [`Shout`].
pub struct Relayed {
    shout: bool,
}

impl ClientHandler for Relayed {
    fn connected(&mut self, cx: &mut ClientContext<'_>, res: Result<Connected, ClientError>) -> ClientNext {
        if let Err(e) = res {
            return ClientNext::Finish(e.status());
        }
        let protocols = cx.client().and_then(|u| u.subprotocol().map(str::to_owned));
        let opts = ServerOptions { protocols: protocols.into_iter().collect(), ..Default::default() };
        match cx.upgrade(&opts) {
            Ok(relaying) if self.shout => relaying.serve(Shout::new(Some(4))),
            Ok(relaying) => relaying.serve(Relay::new(Some(4), 30_000)),
            Err(rc) => return ClientNext::Finish(rc),
        }
        ClientNext::Wait
    }

    /// Not called once the relay serves the request.
    fn step(&mut self, _: &mut ClientContext<'_>) -> ClientNext {
        ClientNext::Finish(500)
    }
}

/// A content handler that relays, for a module's directive to install.
///
/// # Safety
/// nginx calls it with a live request; `module` is the caller's HTTP module.
pub unsafe fn relay_content_handler(
    r: *mut ngx::ffi::ngx_http_request_t,
    module: &'static ngx::ffi::ngx_module_t,
    shout: bool,
) -> ngx::ffi::ngx_int_t {
    // SAFETY: guaranteed by the caller.
    let r = unsafe { RequestRef::from_raw(r) };
    // The client's handshake is checked before the upstream is connected.
    let handshake = match validate(r, &ServerOptions::default()) {
        Ok(handshake) => handshake,
        Err(status) => return status,
    };
    let opts = ConnectOptions {
        protocols: handshake.protocols().to_vec(),
        pool: Some("feed".into()),
        pool_size: Some(4),
        ..Default::default()
    };
    let client = ClientOptions::default();
    // SAFETY: guaranteed by the caller.
    unsafe { connect(r, module, "ws://127.0.0.1:9000/feed", &client, opts, Relayed { shout }) }
}
RUST
# ngx for its ffi types: the version the module crate uses.
sed -i 's|^\[dependencies\]$|[dependencies]\nngx = { version = "0.5.1", default-features = false, features = ["std"] }|' \
    "$DIR/Cargo.toml"

(cd "$DIR" && "$CARGO" build --profile "$PROFILE" --offline --quiet)
SO="$CARGO_TARGET_DIR/$PROFILE/libws_dependent_check.so"
test -f "$SO" || { echo "check-dependent: $SO was not built" >&2; exit 1; }
if nm -D --defined-only "$SO" | grep -E ' (ngx_modules|ngx_module_names|ngx_http_websocket_module)$'; then
    echo "check-dependent: the dependent exports the module's symbols" >&2
    exit 1
fi
echo "check-dependent: a crate in $DIR built a Handler, a ClientHandler and a RelayHandler on the public API (default-features = false)"
