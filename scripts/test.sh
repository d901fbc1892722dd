#!/bin/bash
# Set up (scripts/bootstrap.sh) and run every test tier, plus ruff and mypy:
#   unit  (no marker)  parsing, symbolizing, disasm, rendering over recorded fixtures
#   live  (-m live)    root + this host's kernel: real programs, bpftool as the oracle
#   vm    (-m vm)      inside QEMU with Debian's 6.12 kernel (scripts/test-vm.sh: one boot),
#                      where fentry/fexit and kprobe.multi work; the first run downloads the
#                      kernel (~120 MB) into /var/cache/bpflbr-vmtest
# A tier that passed nothing (everything skipped or deselected) fails the run: --require-passed
# in tests/conftest.py. Run as root (CI does). Extra arguments go to the unit+live pytest run;
# BPFLBR_SKIP_VM=1 leaves the vm tier out (for quick local runs only: CI runs it).
# usage: scripts/test.sh [PYTEST_ARGS...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

venv=$(scripts/bootstrap.sh | tail -n 1)
status=0

echo "== ruff check"
"$venv/bin/ruff" check . || status=1
echo "== mypy bpflbr_shell"
"$venv/bin/mypy" bpflbr_shell || status=1

guard=(--require-passed unit)
if [ "$(id -u)" = 0 ]; then
  guard+=(--require-passed live)
  # the live tier pins programs (pinned: selectors, bpftool loadall): bpffs must be mounted,
  # which a fresh machine of this kind does not do by itself
  if ! mountpoint -q /sys/fs/bpf; then
    echo "test.sh: mounting bpffs at /sys/fs/bpf for the live tier"
    mount -t bpf bpf /sys/fs/bpf
  fi
else
  echo "test.sh: WARNING: not root: the live tier will be skipped (run as root for CI parity)" >&2
fi

echo "== pytest: unit + live tiers"
"$venv/bin/python" -m pytest -m "not vm" -rs "${guard[@]}" "$@" || status=1

if [ "${BPFLBR_SKIP_VM:-0}" = 1 ]; then
  echo "test.sh: WARNING: BPFLBR_SKIP_VM=1: the vm tier was not run" >&2
elif [ "$(id -u)" != 0 ]; then
  echo "test.sh: the vm tier needs root (QEMU, its kernel cache); not run" >&2
  status=1
else
  echo "== pytest: vm tier (QEMU, 6.12)"
  BPFLBR_APT=0 scripts/test-vm.sh || status=1
fi

if [ "$status" != 0 ]; then
  echo "test.sh: FAILED" >&2
else
  echo "test.sh: all tiers passed"
fi
exit "$status"
