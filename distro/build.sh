#!/usr/bin/env bash
# Builds ngx_http_websocket_module against the system's packaged nginx (Debian's nginx-dev).
#
#   distro/build.sh            install what is missing (as root), configure, build; print .so path
#
# Everything lands under target/distro/ so the vendored build in target/release is untouched:
#   target/distro/nginx-src/            copy of /usr/share/nginx/src, configured with Debian's flags
#   target/distro/nginx-src/objs/       its build dir (ngx_auto_config.h, ngx_modules.c, ...)
#   target/distro/cargo/                CARGO_TARGET_DIR
#   target/distro/ngx_http_websocket_module.so
#
# Environment: CARGO (default cargo), PROFILE (default release), NGX_SRC (default
# /usr/share/nginx/src), DISTRO_NO_APT=1 to skip the package check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/distro"
SRC="$OUT/nginx-src"
OBJS="$SRC/objs"
CARGO="${CARGO:-cargo}"
PROFILE="${PROFILE:-release}"
NGX_SRC="${NGX_SRC:-/usr/share/nginx/src}"
PACKAGES=(nginx nginx-dev libssl-dev libpcre2-dev zlib1g-dev libclang-dev clang)

log() { echo "distro: $*" >&2; }

# 1. packages
[ "${DISTRO_NO_APT:-}" = 1 ] || "$ROOT/distro/apt-install.sh" "${PACKAGES[@]}"
[ -f "$NGX_SRC/conf_flags" ] || { log "$NGX_SRC/conf_flags not found (is nginx-dev installed?)"; exit 1; }

# 2. configure a private copy of the packaged source tree, once per nginx-dev version
pkgver="$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || echo unknown)"
stamp="$OBJS/.distro-configured"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$pkgver" ] || [ ! -f "$OBJS/ngx_auto_config.h" ]; then
    log "configuring $NGX_SRC ($pkgver) in $SRC"
    rm -rf "$SRC"
    mkdir -p "$OUT"
    cp -a "$NGX_SRC/." "$SRC/"
    (
        cd "$SRC"
        # shellcheck disable=SC1091
        . ./conf_flags
        ./configure "${NGX_CONF_FLAGS[@]}" --builddir="$OBJS" >"$OUT/configure.log" 2>&1 \
            || { tail -30 "$OUT/configure.log" >&2; exit 1; }
    )
    echo "$pkgver" >"$stamp"
fi

# 3. the module, without the vendored nginx
export NGINX_SOURCE_DIR="$SRC"
export NGINX_BUILD_DIR="$OBJS"
export CARGO_TARGET_DIR="$OUT/cargo"
log "cargo build --profile $PROFILE (NGINX_BUILD_DIR=$OBJS)"
(cd "$ROOT" && "$CARGO" build --profile "$PROFILE" --locked \
    --no-default-features --features export-modules)

case "$PROFILE" in dev) pdir=debug ;; *) pdir="$PROFILE" ;; esac
# A new inode: overwriting the file in place would crash a running nginx.
cp -f "$CARGO_TARGET_DIR/$pdir/libngx_http_websocket_module.so" "$OUT/ngx_http_websocket_module.so.tmp"
mv -f "$OUT/ngx_http_websocket_module.so.tmp" "$OUT/ngx_http_websocket_module.so"
echo "$OUT/ngx_http_websocket_module.so"
