#!/usr/bin/env bash
# Kernel matrix: runs one command, as root in the repo root, on several Debian kernels and on this
# machine's own kernel. Like aya's CI, no VM image is built: virtme-ng boots each kernel under qemu
# with this machine's root filesystem shared read-only, so the command sees the same binaries, and
# the repo, /tmp and $HOME through throwaway overlays (writable; writes stay in the guest's RAM).
#
#   bash scripts/kernel-matrix/boot.sh [--kernels REGEX...] [--no-host] [--] COMMAND...
#   e.g. bash scripts/kernel-matrix/boot.sh 'echo "MATRIX btf $(ls /sys/kernel/btf/vmlinux)"'
#
# Kernels: the newest linux-image-VERSION package of bookworm-security or trixie-backports whose
# VERSION matches each regex in full. Default: Debian 12's 6.1 and 6.12, and trixie-backports'
# newest 6.18 and newest 7.x. --kernels (its regexes end at the next option or "--") or
# KERNEL_MATRIX_KERNELS (space-separated) replace that set, e.g. --kernels '6\.1\.0-[0-9]+-amd64'
# '6\.12\..*\+deb12-amd64' -- 'COMMAND'. --no-host or KERNEL_MATRIX_HOST=0 skip this machine.
# Every stdout line of COMMAND that starts with "MATRIX " is printed prefixed by "[<kernel>]"; a
# summary line per kernel ends the output; the exit status is 1 if any kernel failed.
# KERNEL_MATRIX_TIMEOUT: seconds per kernel (900). KERNEL_MATRIX_CACHE: downloads, tools and logs
# (/var/cache/ebpf-audio-tracer/kernel-matrix). KERNEL_MATRIX_MIRROR: Debian mirror
# (http://deb.debian.org/debian; security updates from the same URL + "-security").
# KERNEL_MATRIX_KVM: 1/0 force hardware virtualisation on/off (default: on unless /dev/kvm is
# PVM-backed, where stock kernels die with "KVM internal error" or qemu asserts on an MSR).
# Guests get 2 CPUs and 3G; under TCG a short command takes about 15 s of boot per kernel.
set -euo pipefail

usage() { sed -n '7,8p' "$0" | sed 's/^# *//' >&2; exit 2; }
die() { echo "kernel-matrix: $*" >&2; exit 2; }

regexes=() host=${KERNEL_MATRIX_HOST:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --kernels) shift  # its regexes run up to the next option or "--"
      while [ $# -gt 0 ] && [[ $1 != -* ]]; do
        read -ra r <<<"$1"; regexes+=("${r[@]}"); shift
      done ;;
    --no-host) host=0; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage
cmd="$*"
[ ${#regexes[@]} -gt 0 ] || read -ra regexes <<<"${KERNEL_MATRIX_KERNELS:-}"
[ ${#regexes[@]} -gt 0 ] || regexes=(
  '6\.1\.0-[0-9]+-amd64'            # bookworm-security
  '6\.12\.[0-9]+\+deb12-amd64'      # bookworm-security
  '6\.18\.[0-9]+\+deb13-amd64'      # trixie-backports
  '7\.[0-9]+\.[0-9]+\+deb13-amd64'  # trixie-backports, newest
)
[ "$(id -u)" = 0 ] || die "must run as root (it installs qemu and the command loads eBPF programs)"
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${KERNEL_MATRIX_CACHE:-/var/cache/ebpf-audio-tracer/kernel-matrix}
timeout=${KERNEL_MATRIX_TIMEOUT:-900}
mirror=${KERNEL_MATRIX_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$cache"/{kernels,logs,run,apt/lists/partial,apt/cache/archives/partial}
# One run at a time: runs share the apt lists, the unpacked kernels and the log files.
exec 9>"$cache/lock"
flock -n 9 || { echo "kernel-matrix: waiting for another run to finish" >&2; flock 9; }

# --- Host tools -------------------------------------------------------------------------------
# qemu; depmod (virtme-ng regenerates modules.dep of unpacked kernels); file (virtme-ng reads the
# kernel version with it); venv for virtme-ng. And a static busybox for the guest's initramfs,
# unpacked into the cache rather than installed: busybox-static conflicts with the busybox
# package most Debian hosts have (initramfs-tools).
packages=(qemu-system-x86 kmod file python3-venv)
busybox=$cache/busybox-static/bin/busybox
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ! -x "$busybox" ]; then
  echo "kernel-matrix: installing qemu and the tools virtme-ng needs" >&2
  # On Debian 12 qemu comes from bookworm-backports: bookworm's qemu 7.2 conflicts with the
  # qemu-utils 10.x from backports that this project's machines have. The source is added only
  # if no other file lists it (apt rejects a suite listed twice with different Signed-By), and
  # the pin takes qemu and the seabios it needs from it; every other backport keeps apt's
  # default priority 100, i.e. is never installed unless asked for by name.
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
    if ! grep -Eqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; then
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$mirror" "$keyring" > /etc/apt/sources.list.d/bookworm-backports.sources
    fi
    printf '%s\n' '# scripts/kernel-matrix/boot.sh of ebpf-audio-tracer: qemu from bookworm-backports' \
      'Package: qemu-* seabios' 'Pin: release n=bookworm-backports' 'Pin-Priority: 500' \
      > /etc/apt/preferences.d/kernel-matrix-qemu
  fi
  apt-get update -qq
  # --no-remove: abort rather than let apt remove anything of the host's to make room.
  [ ${#missing[@]} -eq 0 ] ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove \
      "${missing[@]}" >/dev/null
  rm -rf "$cache/run/busybox"; mkdir -p "$cache/run/busybox"
  (cd "$cache/run/busybox" && apt-get -qq -o APT::Sandbox::User=root download busybox-static)
  dpkg-deb -x "$cache"/run/busybox/busybox-static_*.deb "$cache/busybox-static"
  rm -rf "$cache/run/busybox"
fi
# virtme-ng from PyPI (Debian 12 has none), pinned: its guest init and flags change often.
if [ ! -x "$cache/venv/bin/vng" ]; then
  rm -rf "$cache/venv"
  /usr/bin/python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q --disable-pip-version-check virtme-ng==1.42
fi

# --- Kernels ----------------------------------------------------------------------------------
# A private apt configuration (own sources, lists and an empty dpkg status) only for downloading:
# the host's apt sources stay as they are and no kernel is ever installed on the host.
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror-security" bookworm-security \
  "$keyring" "$mirror" trixie-backports > "$cache/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$cache/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$cache/apt/lists" -o Dir::Cache="$cache/apt/cache"
     -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
# Refreshed daily so "newest" means newest; an offline run goes on with the lists it has.
if ! find "$cache/apt/lists" -name '*Packages*' -mtime -1 | grep -q .; then
  apt-get "${APT[@]}" -qq update || find "$cache/apt/lists" -name '*Packages*' | grep -q . ||
    die "cannot download the package lists of bookworm-security and trixie-backports"
fi
available=$(apt-cache "${APT[@]}" search --names-only '^linux-image-[0-9]' | cut -d' ' -f1 |
            sed 's/^linux-image-//' | sort -rV)
# From 6.19 on (trixie-backports) the image package is split: linux-binary-VERSION has the
# vmlinuz, linux-modules-VERSION the modules, linux-base-VERSION modules.builtin for depmod. An
# older version's parts can leave the archive before its image package does ("<...>" below:
# only a name), and booting it without modules panics; such a version does not count.
debs_of() {  # VERSION: the packages to download, or failure
  local deps; deps=$(apt-cache "${APT[@]}" depends "linux-image-$1" | awk '{print $NF}')
  ! grep -Fxq -e "<linux-binary-$1>" -e "<linux-modules-$1>" <<<"$deps" || return 1
  echo "linux-image-$1"
  grep -Fx -e "linux-base-$1" -e "linux-binary-$1" -e "linux-modules-$1" <<<"$deps" || true
}
versions=() images=()
for re in "${regexes[@]}"; do
  ver=""
  for v in $(grep -E "^($re)\$" <<<"$available" || true); do
    debs=$(debs_of "$v") && { ver=$v; break; }
  done
  [ -n "$ver" ] || die "no linux-image package matches '$re' (with all its parts still available)"
  dir="$cache/kernels/$ver"
  if [ ! -e "$dir/.unpacked" ]; then
    echo "kernel-matrix: downloading linux-image-$ver" >&2
    rm -rf "$dir" "$cache/run/debs"; mkdir -p "$dir" "$cache/run/debs"
    # shellcheck disable=SC2086 # $debs: one package name a line
    (cd "$cache/run/debs" && apt-get "${APT[@]}" -qq download $debs)
    for deb in "$cache/run/debs"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
    rm -rf "$cache/run/debs"
    touch "$dir/.unpacked"
  fi
  img=$(find "$dir" -name 'vmlinuz*' -type f | head -1)
  [ -n "$img" ] || die "no vmlinuz in linux-image-$ver"
  versions+=("$ver"); images+=("$img")
done

# --- Runs -------------------------------------------------------------------------------------
printf '%s\n' "$cmd" > "$cache/run/command.sh"
# In the guest: the mounts the host has and virtme-ng may not make (bpffs, tracefs, a writable
# /tmp), the host's PATH (cargo, pyenv), the kernel's console log level lowered so its messages
# cannot land inside the command's output lines (virtme-ng's output channel needs udev, so
# without it the command writes to the console), then the kernel messages the command caused,
# and the exit status as a marker line: vng's own exit status is not the command's.
{
  printf 'export PATH=%q HOME=%q\n' "$PATH" "$HOME"
  cat <<'EOF'
dmesg -n 1
[ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf
[ "$(stat -f -c %T /sys/kernel/tracing)" = tracefs ] || mount -t tracefs nodev /sys/kernel/tracing
[ -w /tmp ] || mount -t tmpfs -o mode=1777 tmpfs /tmp
echo "KERNEL_MATRIX_BOOTED $(uname -r) after $(cut -d' ' -f1 /proc/uptime) s"
before=$(dmesg | wc -l)
bash "${0%/*}/command.sh"
rc=$?
dmesg | tail -n +"$((before + 1))"
echo "KERNEL_MATRIX_RC=$rc"
EOF
} > "$cache/run/guest.sh"

accel=--disable-kvm
if [ "${KERNEL_MATRIX_KVM:-}" = 1 ] ||
   { [ -z "${KERNEL_MATRIX_KVM:-}" ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; }; then
  accel=
fi

summary=() failed=0
report() {  # VERSION LOG EXIT-STATUS("" if none) SECONDS TIMED-OUT(0/1)
  local ver=$1 log=$2 rc=${3:-none} secs=$4 note=""
  tr -d '\r' < "$log" | grep -a '^MATRIX ' | sed "s/^/[$ver] /" || true
  if [ "$rc" = 0 ]; then
    summary+=("kernel $ver: ok (exit 0, $secs s)")
  else
    if [ "$5" = 1 ]; then note="; timed out after $timeout s"
    elif [ "$rc" = none ]; then note="; the kernel did not boot or crashed"; fi
    summary+=("kernel $ver: FAILED (exit $rc, $secs s$note)")
    failed=1
    echo "[$ver] FAILED: full log $log; its last lines that are not kernel messages:"
    tr -d '\r' < "$log" | grep -av '^\[ *[0-9]*\.[0-9]*\]' | tail -n 30 | sed "s/^/[$ver]   /" || true
  fi
}

if [ "$host" != 0 ]; then
  ver=$(uname -r); log="$cache/logs/host-$ver.log"; start=$SECONDS
  echo "== kernel $ver (this machine)"
  # The same mounts as in the guests (tracefs: scripts/setup.sh mounts it on this machine too).
  # By type, not mountpoint: in a container /sys/fs/bpf can be a bind mount of sysfs.
  [ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf
  [ "$(stat -f -c %T /sys/kernel/tracing)" = tracefs ] || mount -t tracefs nodev /sys/kernel/tracing
  rc=0
  (cd "$repo" && timeout -k 10 "$timeout" bash "$cache/run/command.sh") </dev/null >"$log" 2>&1 9>&- ||
    rc=$?
  report "$ver" "$log" "$rc" $((SECONDS - start)) $((rc == 124))
fi

boot() {  # INDEX LOG: boots kernel INDEX and runs the command, its output in LOG; sets rc, timed_out
  # --verbose puts the console, and with it the command's output, on vng's stdout.
  # vng runs its sibling virtme-run through PATH. --rodir: virtme-ng's init mounts a tmpfs on
  # /var/cache, which would hide the default cache and with it guest.sh and the kernel's modules.
  # $HOME gets an overlay too: cargo and pip write there, and virtme-ng leaves /root read-only.
  local vng_rc
  (cd "$repo" && PATH="$cache/venv/bin:$PATH" timeout -k 30 "$timeout" vng --verbose $accel \
     --run "${images[$1]}" --user root --cpus 2 --memory 3G --busybox "$busybox" \
     --rodir "$cache" --overlay-rwdir "$repo" --overlay-rwdir "$HOME" --cwd "$repo" \
     ${KERNEL_MATRIX_APPEND:+--append "$KERNEL_MATRIX_APPEND"} --exec "bash $(printf %q "$cache/run/guest.sh")") \
    </dev/null >"$2" 2>&1 9>&- && vng_rc=0 || vng_rc=$?
  rc=$(tr -d '\r' < "$2" | grep -aoE '^KERNEL_MATRIX_RC=[0-9]+' | tail -1 | cut -d= -f2 || true)
  timed_out=0
  if [ -z "$rc" ] && [ "$vng_rc" = 124 ]; then timed_out=1; fi
}

for i in "${!versions[@]}"; do
  ver=${versions[$i]}; log="$cache/logs/$ver.log"; start=$SECONDS
  echo "== kernel $ver (qemu${accel:+, TCG})"
  boot "$i" "$log"
  # A guest kernel that panicked is booted once more, its first log kept: under TCG a vCPU can
  # run kernel text another vCPU has just patched back (tracepoints and static keys are
  # switched by int3 text poking), an Oops in the emulator, not in the programs (7.3.4, once,
  # in __schedule). A second panic fails the kernel.
  if [ -z "$rc" ] && [ "$timed_out" = 0 ] && grep -aq 'Kernel panic' "$log"; then
    mv "$log" "$cache/logs/$ver.panicked.log"
    echo "[$ver] the kernel panicked (log: $cache/logs/$ver.panicked.log): booting it once more"
    boot "$i" "$log"
  fi
  report "$ver" "$log" "$rc" $((SECONDS - start)) $timed_out
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
