#!/bin/sh
# Install the Autobahn|Testsuite (wstest) under DIR, as root.
# Usage: autobahn/install.sh DIR        (e.g. target/autobahn)
# Prints the path of wstest on its last line. A second run is a no-op.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
VERSION=25.10.1
WSTEST=$DIR/py2/bin/wstest
STAMP=$DIR/.installed-$VERSION

# Fast path: the stamp is written only after a complete install.
if [ -f "$STAMP" ] && [ -x "$WSTEST" ]; then
    echo "wstest=$WSTEST"; exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=
apt_install() {
    [ -n "$APT_UPDATED" ] || { apt-get update -q; APT_UPDATED=1; }
    apt-get install -y -q --no-install-recommends "$@"
}

# wstest (autobahntestsuite) only runs on Python 2.7. It needs ssl and zlib,
# and the headers to compile wsaccel.
PY2=${AUTOBAHN_PYTHON2:-/root/.pyenv/versions/2.7.18/bin/python2.7}
py2_ok() {
    [ -x "$1" ] && "$1" -c 'import ssl, zlib, hashlib, ctypes, sysconfig, os
assert os.path.exists(os.path.join(sysconfig.get_config_var("INCLUDEPY"), "Python.h"))' 2>/dev/null
}
if ! py2_ok "$PY2"; then
    # Debian 12 has no python2; Debian 11's packages install on it as-is.
    # Reuse the mirror host of the existing Debian sources (no new host).
    PY2=/usr/bin/python2.7
    if ! py2_ok "$PY2"; then
        MIRROR=$(grep -rhvE '^[[:space:]]*#' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
            grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ')
        MIRROR=${MIRROR:-http://deb.debian.org/debian}
        echo "deb ${MIRROR%/} bullseye main" > /etc/apt/sources.list.d/bullseye.list
        apt_install python2.7 libpython2.7-dev
        py2_ok "$PY2" || { echo "install.sh: no usable python2.7" >&2; exit 1; }
    fi
fi

# Python 3 with venv hosts virtualenv (Python 2 has no venv module) and runs
# run.sh's report parser; gcc compiles wsaccel.
PY3=/usr/bin/python3
missing=
"$PY3" -c 'import ensurepip' 2>/dev/null || missing="python3 python3-venv"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
[ -z "$missing" ] || apt_install $missing

# virtualenv >= 20.22 can no longer create Python 2 environments.
[ -x "$DIR/venv3/bin/virtualenv" ] || {
    "$PY3" -m venv "$DIR/venv3"
    "$DIR/venv3/bin/pip" install -q 'virtualenv<20.22'
}
rm -rf "$DIR/py2"   # a half-built env from an interrupted run is not reused
"$DIR/venv3/bin/virtualenv" -q -p "$PY2" "$DIR/py2"
"$DIR/py2/bin/pip" install -q "autobahntestsuite==$VERSION"
"$WSTEST" --help >/dev/null   # fails loudly if an import is broken
touch "$STAMP"
echo "wstest=$WSTEST"
