#!/bin/bash
# Run the vm test tier (pytest -m vm) inside the 6.12 QEMU guest that scripts/vmtest boots: one
# boot for the whole session. Fails when pytest fails, when the guest gives no status, and when
# no vm test passed (junit XML from the rw share, and conftest's --require-passed vm).
# Prints the wall time of the preparation (downloads on a cold cache, extraction, initramfs) and
# of the VM run separately. Run as root; extra arguments go to pytest.
# usage: scripts/test-vm.sh [PYTEST_ARGS...]
# env:   everything scripts/vmtest takes (BPFLBR_VM_CACHE, BPFLBR_VM_SMP, BPFLBR_VM_MEM,
#        BPFLBR_VM_TIMEOUT, ...); BPFLBR_VM_SHARE (default: a new /tmp/bpflbr-vm-tier.* dir,
#        kept: it holds junit-vm.xml); BPFLBR_APT=0 skips bootstrap's apt step
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf 'test-vm: %s\n' "$*" >&2; }

venv=$(scripts/bootstrap.sh | tail -n 1)
share=${BPFLBR_VM_SHARE:-$(mktemp -d /tmp/bpflbr-vm-tier.XXXXXX)}
mkdir -p "$share"
junit=$share/junit-vm.xml
rm -f "$junit"

t0=$(date +%s.%N)
scripts/vmtest --prepare >/dev/null
t1=$(date +%s.%N)
status=0
BPFLBR_VM_SHARE=$share scripts/vmtest -- \
  "$venv/bin/python" -m pytest -m vm -p no:cacheprovider -rs --require-passed vm \
  --junitxml="$junit" "$@" "$repo/tests" || status=$?
t2=$(date +%s.%N)

# Count what really ran, from the junit XML the guest wrote to the share.
summary=$(/usr/bin/python3 - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    print(f"no junit XML ({exc})")
    sys.exit(3)
counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
for case in root.iter("testcase"):
    kinds = {child.tag for child in case}
    if "failure" in kinds:
        counts["failed"] += 1
    elif "error" in kinds:
        counts["error"] += 1
    elif "skipped" in kinds:
        counts["skipped"] += 1
    else:
        counts["passed"] += 1
print(", ".join(f"{v} {k}" for k, v in counts.items()))
sys.exit(0 if counts["passed"] else 4)
PY
) || { [ "$status" != 0 ] || status=1; }

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
say "vm tier: ${summary:-no summary} (junit: $junit)"
say "wall time: prepare $(secs "$t0" "$t1") s (downloads only on a cold cache), VM boot+tests $(secs "$t1" "$t2") s, total $(secs "$t0" "$t2") s"
case $summary in
  *" 0 passed"*|"0 passed"*|"no junit"*) say "FAILED: no vm test passed"; [ "$status" != 0 ] || status=1 ;;
esac
if [ "$status" != 0 ]; then
  say "FAILED (status $status)"
else
  say "vm tier passed"
fi
exit "$status"
