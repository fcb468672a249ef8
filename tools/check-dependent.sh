#!/bin/sh
# A crate outside the repository, in $TMPDIR, that depends on the module crate
# by path with default-features = false (as README says a dependent does) and
# writes a Handler and a ClientHandler with the public API only: it must build,
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
echo "check-dependent: a crate in $DIR built a Handler and a ClientHandler on the public API (default-features = false)"
