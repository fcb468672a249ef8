#!/usr/bin/env bash
# Runs the integration suite against the system's packaged nginx with the distro-built module.
#
#   distro/test.sh                      build (distro/build.sh), then prove -r nginx-tests/
#   distro/test.sh nginx-tests/02-echo.t ...   only these test files
#
# As root, installs libnginx-mod-stream when nginx has stream as a dynamic module and it is missing.
# Environment: NGINX (default /usr/sbin/nginx), PROVE_ARGS (extra prove options, e.g. "-v -j2"),
# DISTRO_NO_APT=1 to install nothing, DISTRO_NO_BUILD=1 to use the existing target/distro/ngx_http_websocket_module.so as is,
# DISTRO_MODULE=PATH to test that .so instead (make test-deb: the one the package installed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NGINX="${NGINX:-/usr/sbin/nginx}"
# nginx reads an environment variable NGINX as the sockets a binary upgrade hands over.
export -n NGINX

if [ -n "${DISTRO_MODULE:-}" ]; then
    MODULE="$DISTRO_MODULE"
    [ -f "$MODULE" ] || { echo "distro: $MODULE missing" >&2; exit 1; }
elif [ "${DISTRO_NO_BUILD:-}" = 1 ]; then
    MODULE="$ROOT/target/distro/ngx_http_websocket_module.so"
    [ -f "$MODULE" ] || { echo "distro: $MODULE missing; run distro/build.sh" >&2; exit 1; }
else
    MODULE="$("$ROOT/distro/build.sh" | tail -n 1)"
fi
[ -x "$NGINX" ] || { echo "distro: $NGINX is not executable" >&2; exit 1; }

# Debian builds stream{} as a dynamic module (package libnginx-mod-stream); some tests
# (25-pass-tls.t: a stream{} TLS terminator) need it. WsNginx.pm loads what
# TEST_NGINX_LOAD_MODULES lists before our module.
if "$NGINX" -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    STREAM_SO="${STREAM_SO:-/usr/lib/nginx/modules/ngx_stream_module.so}"
    if [ ! -f "$STREAM_SO" ] && [ "$(id -u)" = 0 ] && [ "${DISTRO_NO_APT:-}" != 1 ]; then
        "$ROOT/distro/apt-install.sh" libnginx-mod-stream
    fi
    if [ -f "$STREAM_SO" ]; then
        export TEST_NGINX_LOAD_MODULES="${TEST_NGINX_LOAD_MODULES:-} $STREAM_SO"
    else
        echo "distro: $STREAM_SO missing: tests with stream{} will fail" >&2
    fi
fi

echo "distro: $("$NGINX" -v 2>&1) with $MODULE ${TEST_NGINX_LOAD_MODULES:+(and$TEST_NGINX_LOAD_MODULES)}" >&2
cd "$ROOT"
[ "$#" -gt 0 ] || set -- -r nginx-tests/
# shellcheck disable=SC2086
TEST_NGINX_BINARY="$NGINX" TEST_NGINX_MODULE="$MODULE" exec prove ${PROVE_ARGS:-} "$@"
