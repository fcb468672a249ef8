#!/usr/bin/env bash
# make test-deb: the package as an operator uses it, on Debian as root (skipped elsewhere).
#
#   distro/test-deb.sh                   all of it, with the whole integration suite
#   distro/test-deb.sh nginx-tests/02-echo.t ...   only these test files of the suite
#
# Builds the package (distro/deb.sh), checks that apt refuses a copy of it made for another
# nginx ABI, installs it with apt (which brings Debian's nginx when missing; its service is not
# started), checks that nginx loads the module through /etc/nginx/modules-enabled/ and serves
# websocket_echo with it, runs nginx-tests/ (distro/test.sh) and the Autobahn|Testsuite cases
# AUTOBAHN_CASES (default 1-10) against /usr/sbin/nginx with the installed module, then removes
# and purges the package and checks that nothing it installed is left.
# Environment: TEST_DEB_NO_AUTOBAHN=1 skips Autobahn (while iterating).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG=libnginx-mod-http-websocket
NGINX=/usr/sbin/nginx
SO=/usr/lib/nginx/modules/ngx_http_websocket_module.so
SNIPPET=/usr/share/nginx/modules-available/mod-http-websocket.conf
LINK=/etc/nginx/modules-enabled/50-mod-http-websocket.conf
AUTOBAHN_CASES="${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*}"
WORK="$ROOT/target/deb/test"

log() { echo "test-deb: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    log "skipped: it installs and purges a package system-wide, which needs root"; exit 0
fi
if [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null; then
    log "skipped: not a Debian system (no apt-get)"; exit 0
fi
started=$(date +%s)

DEB="$("$ROOT/distro/deb.sh" | tail -n 1)"
if dpkg -s "$PKG" >/dev/null 2>&1; then
    log "purging the $PKG already installed"
    apt-get purge -y -qq -o Dpkg::Use-Pty=0 "$PKG" >&2
fi
# The machine's own nginx service, if one runs, is the operator's: note it to tell ours apart.
service_running() { [ -f /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; }
service_before=no; service_running && service_before=yes

# 0. apt refuses the package next to an nginx of another ABI: the same package depending on an
# ABI no nginx provides (a dpkg-deb copy with Depends edited) must not install.
rm -rf "$WORK" && mkdir -p "$WORK/abi"
dpkg-deb -R "$DEB" "$WORK/abi/root"
abi="$(dpkg-deb -f "$DEB" Depends | grep -o 'nginx-abi-[^, ]*')" || fail "$DEB does not depend on an nginx ABI"
sed -i "s/$abi/nginx-abi-0.0.0-0/" "$WORK/abi/root/DEBIAN/control"
dpkg-deb -b --root-owner-group "$WORK/abi/root" "$WORK/abi/other-abi.deb" >/dev/null
if apt-get install -s "$WORK/abi/other-abi.deb" >"$WORK/abi/apt.log" 2>&1 ||
    ! grep -q 'nginx-abi-0.0.0-0' "$WORK/abi/apt.log"; then
    cat "$WORK/abi/apt.log" >&2; fail "apt would install the package for another nginx ABI"
fi
log "ok: depends on $abi; apt refuses the package built for another ABI"

# On a failure below, take the package away again (the checks of removal run only on success).
trap 'dpkg -s "$PKG" >/dev/null 2>&1 && { log "purging $PKG after the failure"; apt-get purge -y -qq -o Dpkg::Use-Pty=0 "$PKG" >&2; }' EXIT

log "apt-get install $DEB"
"$ROOT/distro/apt-install.sh" "$DEB"
dpkg-query -W -f='${Status}\n' "$PKG" | grep -qx 'install ok installed' || fail "$PKG is not installed"
mapfile -t FILES < <(dpkg -L "$PKG")
[ "$service_before" = yes ] || ! service_running || fail "installing started nginx's service"

# 1. enabled the way Debian's module packages are: the link, nginx -t, nginx -T
[ -f "$SO" ] || fail "$SO missing"
[ -f "$SNIPPET" ] || fail "$SNIPPET missing"
[ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$SNIPPET" ] || fail "$LINK is not a link to $SNIPPET"
"$NGINX" -t -q || fail "nginx -t fails with the package installed"
"$NGINX" -T 2>/dev/null | grep -A1 -Fx "# configuration file $LINK:" |
    grep -qFx 'load_module modules/ngx_http_websocket_module.so;' ||
    fail "nginx -T shows no load_module from $LINK"
log "ok: $LINK loads the module into $NGINX (nginx -t, nginx -T)"

# 2. a configuration that takes the module from modules-enabled serves websocket_echo
mkdir -p "$WORK/logs"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$WORK/nginx.conf" <<CONF
include /etc/nginx/modules-enabled/*.conf;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log info;
events { worker_connections 64; }
http {
    access_log $WORK/logs/access.log;
    client_body_temp_path $WORK/logs/client_body;
    proxy_temp_path $WORK/logs/proxy;
    fastcgi_temp_path $WORK/logs/fastcgi;
    uwsgi_temp_path $WORK/logs/uwsgi;
    scgi_temp_path $WORK/logs/scgi;
    server {
        listen 127.0.0.1:$PORT;
        location /echo { websocket_echo; }
    }
}
CONF
"$NGINX" -t -q -c "$WORK/nginx.conf" || fail "nginx -t fails on a configuration with websocket_echo"
"$NGINX" -c "$WORK/nginx.conf"
echo_rc=0
python3 - "$PORT" <<'PY' || echo_rc=$?
import base64, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("connection closed during the handshake: %r" % data)
    data += chunk
head, data = data.split(b"\r\n\r\n", 1)
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit("no 101: %r" % head)
payload = b"from the Debian package"
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
          + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
while len(data) < 2 + len(payload):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
if data[:2 + len(payload)] != bytes([0x81, len(payload)]) + payload:
    sys.exit("no echo: %r" % data)
PY
kill -QUIT "$(cat "$WORK/nginx.pid")"
[ "$echo_rc" = 0 ] || fail "websocket_echo through the modules-enabled load_module did not echo"
if grep -E '\[(alert|crit|emerg)\]' "$WORK/logs/error.log"; then fail "nginx logged alerts"; fi
log "ok: websocket_echo answers with the module loaded from modules-enabled"

# 3. the integration suite and Autobahn against /usr/sbin/nginx with the installed .so
log "nginx-tests/ against $NGINX with $SO"
DISTRO_MODULE="$SO" "$ROOT/distro/test.sh" "$@"
if [ "${TEST_DEB_NO_AUTOBAHN:-}" != 1 ]; then
    log "Autobahn|Testsuite cases $AUTOBAHN_CASES against $NGINX with $SO"
    "$ROOT/autobahn/install.sh" "$ROOT/target/autobahn" >&2
    AUTOBAHN_NGINX="$NGINX" AUTOBAHN_MODULE="$SO" "$ROOT/autobahn/against-nginx.sh" \
        "$ROOT/target/autobahn/py2/bin/wstest" "$ROOT/target/deb/autobahn" "$AUTOBAHN_CASES"
fi

# 4. remove: the module goes, the link is set aside (as Debian's modules do), nginx -t passes
log "apt-get remove $PKG"
apt-get remove -y -qq -o Dpkg::Use-Pty=0 "$PKG" >&2
[ ! -e "$SO" ] || fail "$SO left after remove"
[ ! -e "$LINK" ] && [ ! -L "$LINK" ] || fail "$LINK left after remove"
[ -L "$LINK.removed" ] || fail "remove did not set $LINK aside as $LINK.removed"
"$NGINX" -t -q || fail "nginx -t fails after the package is removed"

# 5. purge: nothing the package installed is left, but directories other packages own
log "apt-get purge $PKG"
apt-get purge -y -qq -o Dpkg::Use-Pty=0 "$PKG" >&2
! dpkg -s "$PKG" >/dev/null 2>&1 || fail "dpkg still knows $PKG after purge"
for path in "${FILES[@]}" "$LINK" "$LINK.removed"; do
    [ "$path" != /. ] || continue
    [ -e "$path" ] || [ -L "$path" ] || continue
    if [ -d "$path" ] && [ ! -L "$path" ] && dpkg -S "$path" >/dev/null 2>&1; then
        continue
    fi
    fail "$path left after purge"
done
[ "$service_before" = yes ] || ! service_running || fail "nginx's service runs after the test"
"$NGINX" -t -q || fail "nginx -t fails after the package is purged"
log "ok: removed and purged, ${#FILES[@]} paths checked, nothing left"
log "passed in $(( $(date +%s) - started )) s"
