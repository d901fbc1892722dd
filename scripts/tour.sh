#!/bin/bash
# The main job: set up (scripts/bootstrap.sh), start the example workload (examples/workload.py:
# a libbpf tc classifier with several subprograms and a BCC socket filter, triggered every
# 200 ms), take a guided tour through bpflbr-shell, then, on a terminal, leave you in the
# interactive shell with the workload still running. The workload is stopped on exit.
# usage: scripts/tour.sh [--no-shell]      (as root)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

no_shell=0
for arg in "$@"; do
  case "$arg" in
    --no-shell) no_shell=1 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tour: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "tour: run as root: BPF programs need CAP_SYS_ADMIN (sudo scripts/tour.sh)" >&2
  exit 1
fi

venv=$(scripts/bootstrap.sh | tail -n 1)
shell=$venv/bin/bpflbr-shell
rundir=$(mktemp -d /tmp/bpflbr-tour.XXXXXX)
pidfile=$rundir/workload.pid

stop_workload() {
  if [ -f "$pidfile" ]; then
    local pid
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "tour: workload $pid did not stop; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    else
      echo "tour: example workload stopped, its programs unloaded"
    fi
  fi
  rm -rf "$rundir"
}
trap stop_workload EXIT

if [ -t 1 ]; then bold=$'\e[1m'; off=$'\e[0m'; else bold=; off=; fi
say() { printf '\n%s%s%s\n' "$bold" "$*" "$off"; }

say "Starting the example workload (examples/workload.py)"
ready=$("$venv/bin/python" examples/workload.py --pidfile "$pidfile" --trigger-ms 200 \
          --log "$rundir/workload.log")
ids=${ready#ready ids=}
IFS=, read -r tc_id sock_id _ <<<"$ids"
wl_pid=$(<"$pidfile")
echo "workload pid $wl_pid: tc_classify is prog $tc_id (libbpf), sock_stats is prog ${sock_id:-?} (BCC)"

failures=0
step() {  # one shell command, run through 'bpflbr-shell -c'
  say "(bpflbr) $1"
  "$shell" -q -c "$1" || { failures=$((failures + 1)); echo "tour: step failed: $1" >&2; }
}

say "Part 1: one command at a time (bpflbr-shell -c CMD)"
step "help"
step "show features"
step "show progs"
step "show progs pid:$wl_pid"
step "show prog $tc_id"
if [ -n "${sock_id:-}" ]; then step "show prog $sock_id"; fi
step "show ksym bpf_map_lookup_elem"
step "disasm prog $tc_id"
# tracing: the workload runs its programs through libbpf's bpf_prog_test_run_opts() every 200 ms;
# a uretprobe there shows a user function's args, retval and duration (this host has no LBR, so
# the user stack stands in), then show stats the in-kernel counters
libbpf_so=$(/usr/bin/python3 -c 'import ctypes.util; print(ctypes.util.find_library("bpf") or "")')
[ -e "/usr/lib/x86_64-linux-gnu/$libbpf_so" ] && libbpf_so=/usr/lib/x86_64-linux-gnu/$libbpf_so
step "trace uretprobe $libbpf_so:bpf_prog_test_run_opts --pid $wl_pid --limit 2 --duration 10s"
step "trace kfunc 'tcp_v4_*' --dry-run"

say "Part 2: a command script (bpflbr-shell -x scripts/tour.lbr --batch)"
"$shell" -q -x scripts/tour.lbr --batch || {
  failures=$((failures + 1)); echo "tour: scripts/tour.lbr failed" >&2; }

if [ "$failures" != 0 ]; then
  say "tour: $failures step(s) failed (see above)"
fi
if [ "$no_shell" = 0 ] && [ -t 0 ] && [ -t 1 ]; then
  say "Your turn: the workload is still running (progs $ids). Try 'show progs', 'disasm prog $tc_id parse_packet', 'help'. Ctrl-D leaves and stops the workload."
  "$shell" || true
fi
[ "$failures" = 0 ]
