#!/usr/bin/env bash
# Installs Debian packages (names or ./paths of .deb files) that are missing, as root, without
# starting their services: nginx's postinst starts nginx on port 80 unless policy-rc.d forbids it,
# and the tests run their own nginx. A policy-rc.d already in place (containers have one) is kept.
#
#   distro/apt-install.sh PACKAGE|./FILE.deb ...
set -euo pipefail

missing=()
for p in "$@"; do
    case "$p" in
        */*) missing+=("$p") ;;   # a .deb file: apt decides whether it is new
        *) [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
               missing+=("$p") ;;
    esac
done
[ "${#missing[@]}" -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ]; then
    echo "distro: missing packages: ${missing[*]} (run as root)" >&2; exit 1
fi

POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# distro/apt-install.sh: no service starts while it installs\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi

echo "distro: installing: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >&2
