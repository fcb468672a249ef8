#!/bin/sh
# Start the nginx built here with our module, run the Autobahn fuzzing client
# against websocket_echo, websocket_pass -> websocket_echo and websocket_subscribe (publish on, one
# subscriber per channel), stop nginx by PID, and exit with run.sh's verdict.
# Usage: autobahn/against-nginx.sh WSTEST OUTDIR CASES [EXCLUDE]
# AUTOBAHN_NGINX and AUTOBAHN_MODULE name another nginx binary and module (make test-deb:
# /usr/sbin/nginx and the module its package installed) instead of the ones built here.
set -eu
WSTEST=$1 OUTDIR=$2 CASES=$3 EXCLUDE=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
if [ -n "${AUTOBAHN_NGINX:-}" ]; then
    NGX_nginx=$AUTOBAHN_NGINX
    NGX_module=${AUTOBAHN_MODULE:?AUTOBAHN_NGINX needs AUTOBAHN_MODULE}
else
    eval "$(make -s -C "$ROOT" paths | sed 's/^/NGX_/')"
fi
RUN=$OUTDIR/nginx
mkdir -p "$RUN/logs"
RUN=$(cd "$RUN" && pwd)
# Free ports: bind to 0 and let the kernel pick.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
PORT2=$(free_port)
sed -e "s|@MODULE@|$NGX_module|" -e "s|@RUN@|$RUN|g" -e "s|@PORT@|$PORT|g" -e "s|@PORT2@|$PORT2|g" \
    "$HERE/nginx.conf.in" > "$RUN/nginx.conf"
"$NGX_nginx" -p "$RUN/" -c "$RUN/nginx.conf"
trap 'kill -QUIT "$(cat "$RUN/nginx.pid")" 2>/dev/null || true' EXIT
status=0
"$HERE/run.sh" --wstest "$WSTEST" --outdir "$OUTDIR" --cases "$CASES" --exclude "$EXCLUDE" \
    echo="ws://127.0.0.1:$PORT/echo" pass="ws://127.0.0.1:$PORT/pass" \
    subscribe="ws://127.0.0.1:$PORT/subscribe" || status=$?
if grep -E '\[(alert|crit|emerg)\]|exited on signal' "$RUN/logs/error.log"; then
    echo "against-nginx.sh: nginx logged alerts" >&2
    status=1
fi
exit $status
