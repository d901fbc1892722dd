"""Live (root, BCC): the wheel carries what tracing needs. Build it, install it into a fresh venv
outside the checkout, and run a uretprobe trace from there with the probe cache off (BCC
compiles the C the wheel shipped, not the checkout's bpf/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
REPO = Path(__file__).resolve().parent.parent


def test_a_wheel_installed_elsewhere_traces(require_root: None, require_bcc: None,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheels.glob("bpflbr_shell-*.whl")
    venv = tmp / "venv"
    base_python = os.path.join(sys.base_prefix, "bin", "python3")  # not the test venv's
    subprocess.run([base_python, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True).stdout
    # the dependencies (prompt_toolkit, capstone, drgn) from the test venv, as a plain path:
    # its .pth files (the editable install pointing at the checkout) are not read from there
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    where = subprocess.run([str(py), "-c", "import bpflbr_shell.trace.probes.bccprog as b; "
                            "print(b.__file__); print(b.BPF_DIR)"], check=True,
                           capture_output=True, text=True, cwd=tmp).stdout.split()
    assert all(str(venv) in p for p in where), where  # the wheel's modules and its C
    assert (Path(where[1]) / "uprobe.c").is_file()

    target = subprocess.Popen([sys.executable, "-c", "import os, time\nwhile True:\n"
                               "    os.getpid(); time.sleep(0.01)\n"])
    try:
        time.sleep(0.3)
        env = dict(os.environ, BPFLBR_SHELL_PROBE_CACHE="off")
        r = subprocess.run([str(venv / "bin" / "bpflbr-shell"), "--batch", "-c",
                            f"trace uretprobe c:getpid --pid {target.pid} --limit 3 --json"],
                           capture_output=True, text=True, timeout=240, cwd=tmp, env=env)
    finally:
        target.kill()
        target.wait()
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 3, r.stdout
    assert {e["pid"] for e in events} == {target.pid}
    assert all(e["retval"] == target.pid for e in events)
