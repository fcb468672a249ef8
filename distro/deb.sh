#!/usr/bin/env bash
# Builds the Debian package libnginx-mod-http-websocket_<version>_<arch>.deb (make deb).
#
#   distro/deb.sh      build the module (distro/build.sh), package it with debhelper from
#                      debian/, run lintian; print the .deb's path
#
# The module is built outside dpkg-buildpackage (see debian/rules: the rustup toolchain), then
# debian/ and the .so are copied to target/deb/<package>-<version>/ and dpkg-buildpackage -b
# runs there, so its output (.deb, .buildinfo, .changes) lands in target/deb/ and the work
# tree keeps no debhelper leftovers. dh_nginx (nginx-dev) makes the maintainer scripts and
# the dependency on the nginx ABI that nginx-dev was built for.
#
# Environment: DISTRO_NO_BUILD=1 packages target/distro/ngx_http_websocket_module.so as is;
# DISTRO_NO_APT=1 installs nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/deb"
PKG=libnginx-mod-http-websocket
ABI_FILE=/usr/share/nginx/src/debian/libnginx-mod.abisubstvars

log() { echo "deb: $*" >&2; }

# The package is versioned from Cargo.toml; debian/changelog must say the same.
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
changelog_version="$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)"
if [ "$version" != "$changelog_version" ]; then
    log "Cargo.toml says $version, debian/changelog $changelog_version: add a changelog entry" \
        "(dch -v $version)"
    exit 1
fi

[ "${DISTRO_NO_APT:-}" = 1 ] || "$ROOT/distro/apt-install.sh" debhelper lintian nginx-dev
if [ "${DISTRO_NO_BUILD:-}" = 1 ]; then
    MODULE="$ROOT/target/distro/ngx_http_websocket_module.so"
    [ -f "$MODULE" ] || { log "$MODULE missing; run distro/build.sh"; exit 1; }
else
    MODULE="$("$ROOT/distro/build.sh" | tail -n 1)"
fi

# dh_nginx takes the ABI from nginx-dev; the nginx installed must provide the same one, or
# the package would depend on an nginx other than the one the module was built against.
abi="$(sed -n 's/^nginx:abi=//p' "$ABI_FILE")"
provides="$(dpkg-query -W -f='${Provides}' nginx)"
case ", $provides," in
    *", $abi,"*) log "nginx $(dpkg-query -W -f='${Version}' nginx) provides $abi" ;;
    *) log "nginx-dev's ABI $abi is not one the installed nginx provides ($provides)"; exit 1 ;;
esac

STAGE="$OUT/$PKG-$version"
rm -rf "$STAGE" "$OUT"/"$PKG"*_*
mkdir -p "$STAGE"
cp -a "$ROOT/debian" "$STAGE/"
cp "$MODULE" "$STAGE/"
log "dpkg-buildpackage -b in $STAGE"
(cd "$STAGE" && dpkg-buildpackage -b -us -uc) >"$OUT/build.log" 2>&1 ||
    { tail -n 30 "$OUT/build.log" >&2; log "dpkg-buildpackage failed: $OUT/build.log"; exit 1; }

arch="$(dpkg --print-architecture)"
DEB="$OUT/${PKG}_${version}_$arch.deb"
[ -f "$DEB" ] || { log "$DEB was not built"; exit 1; }
log "lintian (errors, warnings, info and pedantic tags fail)"
lintian --fail-on error,warning,info,pedantic --info --pedantic "$OUT/${PKG}_${version}_$arch.changes" >&2
echo "$DEB"
