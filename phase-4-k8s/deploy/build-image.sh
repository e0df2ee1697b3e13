#!/usr/bin/env bash
# Builds the agent/collector image with buildah (no Docker daemon, nothing pulled) and tags it
# as the manifests reference it; prints that reference. Run as root on x86-64 Debian with
# buildah installed (scripts/setup.sh). The binary is built without the default `demo`
# feature: the agent and collector only, no test harness or fake cluster linked.
#
#   phase-4-k8s/deploy/build-image.sh            # builds localhost/ebpf-audio-tracer:0.4.0
#   phase-4-k8s/deploy/build-image.sh REF        # or tags it REF
set -euo pipefail

die() { echo "build-image: $*" >&2; exit 1; }
ref=${1:-localhost/ebpf-audio-tracer:0.4.0}
deploy=$(cd "$(dirname "$0")" && pwd)
workspace=$(cd "$deploy/../.." && pwd)
[ "$(uname -m)" = x86_64 ] || die "x86-64 only: the eBPF objects are compiled against x86-64 headers"
command -v buildah >/dev/null || die "buildah is missing: run scripts/setup.sh"

# The workspace's target directory, whose dependencies the tests already built. The binary
# the tests run (target/release/phase-4-k8s, with `demo`) is put back afterwards: tests/image.rs
# builds this image, and the test binaries after it still run that one.
release=${CARGO_TARGET_DIR:-$workspace/target}/release
kept=$release/.phase-4-k8s.demo
[ ! -e "$release/phase-4-k8s" ] || ln -f "$release/phase-4-k8s" "$kept"
context=$(mktemp -d)
trap '[ ! -e "$kept" ] || mv -f "$kept" "$release/phase-4-k8s"; rm -rf "$context"' EXIT
cargo build --quiet --release --locked --manifest-path "$workspace/Cargo.toml" \
  -p phase-4-k8s --no-default-features --bin phase-4-k8s || die "cargo build failed"

rootfs=$context/rootfs
# Debian's merged /usr: /lib and /lib64 are links into /usr, as ldd names them.
mkdir -p "$rootfs/usr/lib" "$rootfs/usr/lib64"
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
# Copies a file to the same path under the rootfs; a symlink's target too, with the link
# unless the /lib links above already lead there.
stage() {
  local real
  real=$(readlink -f "$1")
  install -D -m 0755 "$real" "$rootfs$real"
  [ -e "$rootfs$1" ] || { mkdir -p "$rootfs$(dirname "$1")"; ln -s "$real" "$rootfs$1"; }
}
# Without its debug info: a tenth of the size.
mkdir -p "$rootfs/usr/local/bin"
strip --strip-debug -o "$rootfs/usr/local/bin/phase-4-k8s" "$release/phase-4-k8s"
# The dynamic loader and every library the binary links (libssl/libcrypto: its openssl).
for lib in $(ldd "$rootfs/usr/local/bin/phase-4-k8s" \
  | awk '$2 == "=>" && $3 ~ /^\// { print $3 } NF == 2 && $1 ~ /^\// { print $1 }' | sort -u); do
  stage "$lib"
done
# The system CA bundle: kube's TLS client refuses to start with no system root at all, even
# where the cluster's own CA (the service account's ca.crt) is what it checks.
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "$ca is missing: run scripts/setup.sh (ca-certificates)"
install -D -m 0644 "$ca" "$rootfs$ca"
cp "$deploy/Containerfile" "$context/"

previous=$(buildah images --quiet --noheading "$ref" 2>/dev/null || true)
buildah build --quiet --layers=false --format oci --arch amd64 --os linux \
  -f "$context/Containerfile" -t "$ref" "$context" >/dev/null || die "buildah build failed"
# The image this tag named before, left untagged: not kept across rebuilds.
[ -z "$previous" ] || [ "$(buildah images --quiet --noheading "$ref")" = "$previous" ] \
  || buildah rmi "$previous" >/dev/null 2>&1 || true
echo "$ref"
