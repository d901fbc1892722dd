"""The kernel view against independent oracles on the live kernel (root).

Programs come from examples/workload.py (a clang+libbpf program with subprograms and a BCC one);
the CLI is run for real (``bpflbr-shell -c ... --json``) and compared with bpftool.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.kernel.btf import Btf
from bpflbr_shell.kernel.progs import read_btf_blob, read_prog_info

pytestmark = pytest.mark.live

SHELL = [sys.executable, "-m", "bpflbr_shell"]
BTF_KINDS = {1: "INT", 2: "PTR", 3: "ARRAY", 4: "STRUCT", 5: "UNION", 6: "ENUM", 7: "FWD",
             8: "TYPEDEF", 9: "VOLATILE", 10: "CONST", 11: "RESTRICT", 12: "FUNC",
             13: "FUNC_PROTO", 14: "VAR", 15: "DATASEC", 16: "FLOAT", 17: "DECL_TAG",
             18: "TYPE_TAG", 19: "ENUM64"}


def bpftool(*args: str) -> object:
    if not Path("/usr/sbin/bpftool").exists():
        pytest.skip("needs bpftool (apt-get install bpftool)")
    out = subprocess.run(["bpftool", *args, "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def shell_json(command: str) -> object:
    res = subprocess.run([*SHELL, "--batch", "-c", command], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


FIELDS = ("id", "name", "tag", "type", "bytes_xlated", "bytes_jited", "jited", "map_ids",
          "btf_id", "uid", "gpl_compatible")


def test_show_progs_json_matches_bpftool(example_workload) -> None:
    ours = {p["id"]: p for p in shell_json("show progs --json")}
    theirs = {p["id"]: p for p in bpftool("prog", "show")}
    for prog_id in example_workload:
        assert prog_id in ours and prog_id in theirs
        for key in FIELDS:
            assert ours[prog_id][key] == theirs[prog_id].get(key), (prog_id, key)
        # bpftool prints load time in wall seconds; ours derives it from the boot clock
        assert abs(ours[prog_id]["loaded_at"] - theirs[prog_id]["loaded_at"]) <= 1
    # the programs of other tests may come and go, but ours are all listed
    assert set(example_workload) <= set(ours)


def test_show_prog_detail_json(example_workload) -> None:
    prog_id = example_workload.by_name["tc_classify"]
    doc = shell_json(f"show prog {prog_id} --json")
    theirs = bpftool("prog", "show", "id", str(prog_id))
    for key in FIELDS:
        assert doc[key] == theirs.get(key), key
    subs = doc["subprogs"]
    assert len(subs) > 1, "the example program has subprograms"
    # every subprogram's ksym is a real [bpf] symbol at its address
    kallsyms = {}
    for row in Path("/proc/kallsyms").read_text().splitlines():
        if row.endswith("[bpf]"):
            addr, _, name = row.split()[:3]
            kallsyms.setdefault(int(addr, 16), set()).add(name)
    for sp in subs:
        assert sp["ksym"] in kallsyms.get(sp["addr"], set()), sp["ksym"]
    assert sum(sp["size"] for sp in subs) == theirs["bytes_jited"]
    # the process holding it is the workload
    assert example_workload.pid in {p["pid"] for p in doc["pids"]}


def xlated_lines(prog_id: int) -> set[tuple[str, int, int]]:
    text = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                          check=True, capture_output=True, text=True).stdout
    rx = re.compile(r"^; (.*) \[file:(\S+) line_num:(\d+) line_col:(\d+)\]$")
    return {(m.group(2), int(m.group(3)), int(m.group(4)))
            for line in text.splitlines() if (m := rx.match(line)) and int(m.group(3))}


def test_line_info_matches_bpftool_xlated_linum(example_workload) -> None:
    for prog_id in example_workload:
        info = read_prog_info(prog_id)
        ours = {(li.file, li.line, li.col) for sp in info.subprogs for li in sp.lines
                if li.line}
        assert ours, "no line info decoded"
        assert ours == xlated_lines(prog_id)
        # JIT addresses of lines lie inside their subprogram, in order
        for sp in info.subprogs:
            assert all(sp.addr <= li.addr < sp.end for li in sp.lines)
            assert sp.lines[0].addr == sp.addr


def test_btf_parser_matches_bpftool(example_workload) -> None:
    for prog_id in example_workload:
        info = read_prog_info(prog_id)
        btf = Btf.parse(read_btf_blob(info.btf_id))
        theirs = bpftool("btf", "dump", "id", str(info.btf_id))["types"]
        assert len(btf.types) - 1 == len(theirs)
        for t in theirs:
            ours = btf.types[t["id"]]
            assert BTF_KINDS[ours.kind] == t["kind"], t
            assert (ours.name or "(anon)") == t["name"], t
        funcs = {t["name"] for t in theirs if t["kind"] == "FUNC"}
        assert {sp.name for sp in info.subprogs} <= funcs


def test_prototypes_match_the_source(example_workload) -> None:
    """Prototypes rebuilt from BTF equal the declarations written in the C source."""
    source = (Path(__file__).parent.parent / "examples" / "lbrdemo.bpf.c").read_text()
    info = read_prog_info(example_workload.by_name["tc_classify"])
    for sp in info.subprogs:
        assert sp.prototype, sp.name
        # the source spells the declaration across qualifiers; compare token streams
        decl = re.search(r"^(?:static\s+)?(?:__noinline\s+)?([^\n;{}]*\b"
                         + re.escape(sp.name) + r"\([^)]*\))\s*$", source, re.M)
        assert decl, sp.name
        want = re.sub(r"\s+", " ", decl.group(1)).replace("( ", "(").strip()
        want = re.sub(r"\s*\*\s*", " *", want)
        got = re.sub(r"\s*\*\s*", " *", sp.prototype)
        assert got.split() == want.split(), (got, want)


def test_errors_are_one_line_and_the_shell_goes_on(example_workload) -> None:
    script = "show prog id:notanumber\nshow prog 999999999\nshwo progs\nshow progs\n"
    res = subprocess.run([*SHELL], input=script, capture_output=True, text=True, timeout=60)
    # stdin scripts stop at the first error: exit 1, one line naming the problem and fix
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a number" in lines[0] and "id:" in lines[0]
    # interactive-style: -i keeps going after errors
    res = subprocess.run([*SHELL, "-c", "show prog 999999999", "-c", "shwo",
                          "-c", "show progs --json", "-i", "--batch"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1


def test_not_root_message(require_root: None) -> None:
    """An unprivileged user gets one line naming the capability, and exit status 1.

    A forked child drops to uid/gid 65534 after importing everything the command needs, so
    the check does not depend on the checkout being readable by that user."""
    import importlib

    from bpflbr_shell import cli
    from bpflbr_shell.shell import load_builtin_commands

    load_builtin_commands()
    for mod in ("bpflbr_shell.kernel.view", "bpflbr_shell.kernel.progs",
                "bpflbr_shell.kernel.selectors", "bpflbr_shell.render.text"):
        importlib.import_module(mod)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery past this point, only os._exit
        try:
            os.dup2(write_end, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            # pytest replaced sys.stdout/err with its capture: write to the real fds again
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ["BPFLBR_HISTORY"] = ""
            code = cli.main(["--batch", "-c", "show progs"])
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "CAP_SYS_ADMIN" in lines[0] and "root" in lines[0]
