#!/bin/sh
# deps.sh [test] — installs the Debian packages hangar needs, and only those
# that are missing (apt-get update runs once, and only when something is
# missing). "test" adds what the test suite needs on top (Postgres,
# Chromium for the dashboard and live-view tests, a static busybox for the
# agent's own test image, python3 for the stand-in servers of the network
# tests). ffmpeg (libvpx) is the live view's WebRTC encoder: the daemon
# runs it, so it is in both lists.
set -eu
pkgs="qemu-system-x86 qemu-utils debootstrap linux-source-6.1 build-essential bc flex bison
libelf-dev libssl-dev cpio xz-utils zstd e2fsprogs iproute2 nftables ca-certificates ffmpeg"
if [ "${1:-}" = test ]; then
	pkgs="$pkgs postgresql chromium chromium-driver busybox-static python3"
fi
# npm fetches Node.js and the CLIs for the images from the npm registry.
# A Node.js installed outside Debian (it bundles npm) conflicts with
# Debian's npm package, so only a missing npm command asks for it.
if ! command -v npm >/dev/null 2>&1; then
	pkgs="$pkgs npm"
fi
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	echo "deps: all packages present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages:$missing" >&2
	echo "deps: run as root, or: sudo apt-get install$missing" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
