#!/bin/bash
# Set up (scripts/bootstrap.sh) and run every test tier this checkout has, plus ruff:
#   unit  (no marker)  parsing, symbolizing, disasm, rendering over recorded fixtures
#   live  (-m live)    root + this host's kernel: real programs, bpftool as the oracle
# The vm tier (-m vm) runs inside QEMU through scripts/vmtest, not here.
# A tier that passed nothing (everything skipped or deselected) fails the run: --require-passed
# in tests/conftest.py. Run as root (CI does); extra arguments go to pytest.
# usage: scripts/test.sh [PYTEST_ARGS...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

venv=$(scripts/bootstrap.sh | tail -n 1)
status=0

echo "== ruff check"
"$venv/bin/ruff" check . || status=1

guard=(--require-passed unit)
if [ "$(id -u)" = 0 ]; then
  guard+=(--require-passed live)
else
  echo "test.sh: WARNING: not root: the live tier will be skipped (run as root for CI parity)" >&2
fi

echo "== pytest: unit + live tiers"
"$venv/bin/python" -m pytest -m "not vm" -rs "${guard[@]}" "$@" || status=1

if [ "$status" != 0 ]; then
  echo "test.sh: FAILED" >&2
else
  echo "test.sh: all tiers passed"
fi
exit "$status"
