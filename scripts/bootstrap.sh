#!/bin/bash
# Set up everything bpflbr-shell needs on a fresh Debian 12 machine, idempotently:
# apt packages, the BCC kernel-headers arrangement, and a venv with the project installed.
# usage: scripts/bootstrap.sh            (prints the venv path on its last line)
# env:   BPFLBR_VENV (default .venv in the repo), BPFLBR_APT=0 to skip apt (already provisioned)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BPFLBR_VENV:-$repo/.venv}
log() { printf 'bootstrap: %s\n' "$*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || { log "must run as root (apt, kernel headers links); try: sudo $0"; exit 1; }; }

apt_packages=(python3-bpfcc python3-venv python3-dev libbpf1 libbpf-dev bpftool linux-headers-amd64
              clang llvm gcc make tmux binutils qemu-system-x86 xz-utils zstd
              bpftrace bpfcc-tools libc6-dbg)
if [ "${BPFLBR_APT:-1}" != 0 ]; then
  need_root
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -qq || log "apt-get update failed; trying the cached lists"
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# BCC compiles against /lib/modules/$(uname -r)/{build,source}. Keep real headers when present;
# otherwise point both at the newest Debian headers and say loudly that they do not match.
krel=$(uname -r)
moddir=/lib/modules/$krel
if [ -e "$moddir/build/include/linux/kconfig.h" ] || [ -e "$moddir/build/Makefile" ] && [ ! -L "$moddir/build" ]; then
  log "kernel headers for $krel found at $moddir/build"
else
  arch_hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
  common_hdr=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$arch_hdr" ] && [ -n "$common_hdr" ]; then
    if [ "$(id -u)" = 0 ]; then
      mkdir -p "$moddir"
      ln -sfn "$arch_hdr" "$moddir/build"
      ln -sfn "$common_hdr" "$moddir/source"
    fi
    log "WARNING: no headers for the running kernel $krel; BCC will compile against"
    log "WARNING:   $arch_hdr (+ ${common_hdr##*/}) -- programs that read kernel struct layouts may be wrong"
  else
    log "WARNING: no kernel headers at all; BCC cannot compile (apt-get install linux-headers-amd64)"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv (system site packages, for Debian's bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.bpflbr-installed-2"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  log "pip install -e .[test]"
  # compat mode: a plain path in a .pth file; the default import hook costs every start
  # about 10 ms (pathlib and more at interpreter start-up, before the shell's first line)
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test]" \
    --config-settings editable_mode=compat
  touch "$stamp"
fi
echo "$venv"
