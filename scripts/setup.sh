#!/usr/bin/env bash
# Installs what the project needs on Debian (idempotent) and mounts tracefs. Run as root.
set -euo pipefail

die() { echo "setup: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (eBPF programs need CAP_BPF and CAP_PERFMON)"
command -v cargo >/dev/null || die "cargo not found: install Rust 1.95 (rustup) first"

packages=(
  # eBPF C toolchain: clang-14 compiles the .bpf.c files in each phase's build.rs
  clang llvm libbpf-dev linux-libc-dev bpftool
  # ip: the network namespaces that stand for nodes and pods in tests; unshare and setpriv
  # (util-linux): tests that run the agent in a new namespace or without capabilities
  iproute2 util-linux
  # kube-proxy-style Service rules (S11, the NAT link tests) and their connection tracking
  iptables
  # protoc: phase 3's agent/collector gRPC protocol is compiled in its build.rs
  protobuf-compiler
  # real audio for scenarios and the window study (../shared/audio.md)
  asterisk-core-sounds-en-wav asterisk-moh-opsound-wav pocketsphinx-testdata
  # real external hops (S5 broker, S6 TLS proxy) and the system libssl.so.3 the harness's TLS
  # ends link to (the openssl crate builds against libssl-dev with pkg-config): the tracer
  # uprobes SSL_write/SSL_read there
  nats-server stunnel4 libssl-dev pkg-config
  # TLS stacks other than OpenSSL (S12, S13): the harness builds its Go crypto/tls relay and
  # compiles its JDK TLS relay (harness/relays) at run time
  golang-go openjdk-17-jdk-headless
  # a second Go toolchain the Go TLS conformance tests build their relay with, besides golang-go's
  # go1.19: go1.23 in /usr/lib/go-1.23/bin (not on PATH), from bookworm-backports (PACKAGE/SUITE)
  golang-1.23-go/bookworm-backports
  # phase 3's metrics test has a real Prometheus server scrape the collector
  prometheus
  # phase 4's cgroup attribution test runs busybox containers with crun (no docker, no systemd)
  crun busybox-static
  # phase 4's image (deploy/build-image.sh, tests/image.rs): built and run without a Docker
  # daemon; strip (binutils) drops the binary's debug info; the CA bundle kube's client needs
  buildah binutils ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "${p%/*}" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # bookworm-backports' source, added only if no file lists it (apt rejects a suite listed twice
  # with different Signed-By); its packages keep apt's priority 100: installed only when named.
  if [[ " ${missing[*]}" == */bookworm-backports* ]] &&
      ! grep -Eqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; then
    [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ] ||
      die "${missing[*]}: the bookworm-backports packages need Debian 12 (bookworm)"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
      http://deb.debian.org/debian /usr/share/keyrings/debian-archive-keyring.gpg \
      > /etc/apt/sources.list.d/bookworm-backports.sources
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing || die "cannot mount tracefs on /sys/kernel/tracing"
fi
