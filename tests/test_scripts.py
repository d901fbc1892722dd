"""Command scripts end to end, as a real ``bpflbr-shell`` process: ``-x FILE --batch`` exit
codes, ``FILE:LINE`` errors, ``\\`` continuation, ``define`` with ``$argN``/``$argc``,
``document``, nested ``source`` and its depth limit, ``script-errors continue``, an executable
script run through its ``#!`` line, the init file (``XDG_CONFIG_HOME``) and ``--nx``, and the
refusal of scripts someone else could have written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.shell.scripts import MAX_SOURCE_DEPTH

BIN_DIR = Path(sys.executable).parent
NOBODY = 65534


def shell(*args: str, cwd: Path, stdin: str | None = None, config: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BPFLBR_HISTORY="", XDG_CONFIG_HOME=str(config or cwd / "noconfig"))
    return subprocess.run([sys.executable, "-m", "bpflbr_shell", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_script_runs_and_its_first_error_stops_it_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "s.lbr", "# a comment\n\necho one\n   # indented comment\n"
                              "set lbr-trim bogus\necho never\n")
    res = shell("-x", "s.lbr", "--batch", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stdout == "one\n"
    assert res.stderr.splitlines() == [
        "error: s.lbr:5: invalid value 'bogus' for lbr-trim (one of: on, off)"]
    ok = shell("-x", "s.lbr", "--batch", "-c", "echo x", cwd=tmp_path)
    assert ok.returncode == 1 and "x" not in ok.stdout  # the run stopped at the script


def test_continuation_lines_join_and_errors_name_the_first_line(tmp_path: Path) -> None:
    write(tmp_path / "c.lbr", "echo a \\\n   b \\\n   c\n# not continued \\\necho d\n"
                              "show \\\n  nosuch\n")
    res = shell("-x", "c.lbr", "--batch", cwd=tmp_path)
    assert res.stdout == "a b c\nd\n"
    assert res.returncode == 1
    assert res.stderr.startswith("error: c.lbr:6: unknown command 'show nosuch'")
    write(tmp_path / "d.lbr", "echo a \\\n")
    res = shell("-x", "d.lbr", "--batch", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.startswith("error: d.lbr:1: line 1 ends in '\\'")


def test_script_errors_continue_goes_on_and_fails_at_the_end(tmp_path: Path) -> None:
    write(tmp_path / "k.lbr", "set script-errors continue\necho one\nshow nosuch\n"
                              "echo two\nset debug maybe\necho three\n")
    res = shell("-x", "k.lbr", "--batch", cwd=tmp_path)
    assert res.stdout == "one\ntwo\nthree\n"
    errors = res.stderr.splitlines()
    assert errors[0].startswith("error: k.lbr:3: unknown command 'show nosuch'")
    assert errors[1] == "error: k.lbr:5: invalid value 'maybe' for debug (one of: on, off)"
    assert errors[2].startswith("error: k.lbr: 2 commands failed")
    assert res.returncode == 1
    bad = shell("--batch", "-c", "set script-errors sometimes", cwd=tmp_path)
    assert bad.returncode == 1
    assert "invalid value 'sometimes' for script-errors (one of: stop, continue)" in bad.stderr


def test_define_with_arguments_and_document(tmp_path: Path) -> None:
    write(tmp_path / "d.lbr", """\
define greet
  echo hello $arg0 and $arg1: $argc words
  py print(len($arg1))
end
document greet
Greet two things.
The second is measured.
end
greet world 'a b c'
help greet
help
greet only
""")
    res = shell("-x", "d.lbr", "--batch", cwd=tmp_path)
    lines = res.stdout.splitlines()
    assert lines[:2] == ["hello world and 'a b c': 2 words", "5"]
    assert "usage: greet [-h] [ARG ...]" in res.stdout
    assert "Greet two things.\nThe second is measured." in res.stdout
    user = res.stdout.split("user:")[1]  # help lists it among user commands, documented
    assert "greet" in user and "Greet two things." in user
    assert res.returncode == 1
    assert res.stderr.startswith("error: d.lbr:12: greet: missing argument $arg1 "
                                 "(it was given 1)")


def test_define_refuses_builtins_and_document_needs_a_user_command(tmp_path: Path) -> None:
    for text, message in [
            ("define show\nend\n", "error: x.lbr:1: define: 'show' is a built-in command"),
            ("define help\nend\n", "error: x.lbr:1: define: 'help' is a built-in command"),
            ("document echo\nx\nend\n", "error: x.lbr:1: document: 'echo' is a built-in"),
            ("document nosuch\nend\n", "error: x.lbr:1: document: no user command 'nosuch'"),
            ("define open\necho x\n", "error: x.lbr:1: define open: no 'end' before the end"),
            ("define 9x\nend\n", "error: x.lbr:1: define: bad command name '9x'")]:
        write(tmp_path / "x.lbr", text)
        res = shell("-x", "x.lbr", "--batch", cwd=tmp_path)
        assert res.returncode == 1, text
        assert res.stderr.startswith(message), (text, res.stderr)


def test_a_user_command_can_be_redefined_and_nest_blocks(tmp_path: Path) -> None:
    write(tmp_path / "r.lbr", """\
define twice
  python
  for i in range(2):
      print("py", i, $argc)
  end
  echo tail
end
twice
define twice
  echo redefined
end
twice
""")
    res = shell("-x", "r.lbr", "--batch", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "py 0 0\npy 1 0\ntail\nredefined\n"


def test_nested_source_reports_the_innermost_line_and_the_depth_limit(tmp_path: Path) -> None:
    write(tmp_path / "outer.lbr", "echo outer\nsource inner.lbr\necho never\n")
    write(tmp_path / "inner.lbr", "echo inner\n\nshow nosuch\n")
    res = shell("-x", "outer.lbr", "--batch", cwd=tmp_path)
    assert res.stdout == "outer\ninner\n"
    assert res.returncode == 1
    assert res.stderr.startswith("error: inner.lbr:3: unknown command 'show nosuch'")
    write(tmp_path / "self.lbr", "echo again\nsource self.lbr\n")
    res = shell("-x", "self.lbr", "--batch", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stdout == "again\n" * MAX_SOURCE_DEPTH
    assert f"scripts nested more than {MAX_SOURCE_DEPTH} deep" in res.stderr


def test_an_executable_script_runs_through_its_shebang(tmp_path: Path) -> None:
    if not (BIN_DIR / "bpflbr-shell").exists():
        pytest.skip("the bpflbr-shell console script is not installed in this venv")
    script = write(tmp_path / "run-me.lbr", "#!/usr/bin/env -S bpflbr-shell -x\n"
                                            "echo from a shebang\nquit 3\n", 0o755)
    env = dict(os.environ, PATH=f"{BIN_DIR}:{os.environ.get('PATH', '')}", BPFLBR_HISTORY="",
               XDG_CONFIG_HOME=str(tmp_path / "noconfig"))
    res = subprocess.run([str(script)], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (3, "from a shebang\n", "")


def test_init_file_runs_first_and_nx_skips_it(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    (config / "bpflbr-shell").mkdir(parents=True)
    write(config / "bpflbr-shell" / "init.lbr", "set event-store 77\n"
                                                "define hi\n  echo hi from init\nend\n")
    res = shell("--batch", "-c", "hi", "-c", "show settings event-store --json",
                cwd=tmp_path, config=config)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("hi from init\n") and '"event-store": 77' in res.stdout
    res = shell("--nx", "--batch", "-c", "show settings event-store --json", cwd=tmp_path,
                config=config)
    assert res.returncode == 0 and '"event-store": 10000' in res.stdout
    res = shell("--nx", "--batch", "-c", "hi", cwd=tmp_path, config=config)
    assert res.returncode == 1 and "unknown command 'hi'" in res.stderr
    # a failing init file is reported with its location and fails a batch run
    write(config / "bpflbr-shell" / "init.lbr", "echo init\nset nosuch 1\n")
    res = shell("--batch", "-c", "echo after", cwd=tmp_path, config=config)
    assert res.returncode == 1 and res.stdout == "init\n"
    assert "init.lbr:2: unknown setting 'nosuch'" in res.stderr


def test_home_config_is_used_without_xdg(tmp_path: Path) -> None:
    (tmp_path / ".config" / "bpflbr-shell").mkdir(parents=True)
    write(tmp_path / ".config" / "bpflbr-shell" / "init.lbr", "echo from home\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(tmp_path), BPFLBR_HISTORY="")
    res = subprocess.run([sys.executable, "-m", "bpflbr_shell", "--batch", "-c", "echo x"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, "from home\nx\n"), res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to nobody")
def test_scripts_others_could_write_are_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    good = write(tmp_path / "good.lbr", "echo good\n")
    write(tmp_path / "wide.lbr", "echo wide\n", 0o666)
    write(tmp_path / "group.lbr", "echo group\n", 0o664)
    theirs = write(tmp_path / "theirs.lbr", "echo theirs\n")
    os.chown(theirs, NOBODY, NOBODY)
    (tmp_path / "link.lbr").symlink_to(good)
    cases = {"wide.lbr": "the script is writable by others (mode 666)",
             "group.lbr": "the script is writable by others (mode 664)",
             "theirs.lbr": f"the script is owned by uid {NOBODY}, not by you or root",
             "link.lbr": "the script is a symlink"}
    for name, why in cases.items():
        res = shell("--batch", "-x", name, cwd=tmp_path)
        assert res.returncode == 1 and res.stdout == "", name
        assert f"refusing '{name}': {why}" in res.stderr, (name, res.stderr)
    assert shell("--batch", "-x", "good.lbr", cwd=tmp_path).stdout == "good\n"
    # the init file is held to the same rules
    config = tmp_path / "cfg"
    (config / "bpflbr-shell").mkdir(parents=True)
    write(config / "bpflbr-shell" / "init.lbr", "echo init ran\n", 0o646)
    res = shell("--batch", "-c", "echo x", cwd=tmp_path, config=config)
    assert "init ran" not in res.stdout and "writable by others" in res.stderr
    # ... and so is its directory
    (config / "bpflbr-shell" / "init.lbr").chmod(0o644)
    (config / "bpflbr-shell").chmod(0o777)
    res = shell("--batch", "-c", "echo x", cwd=tmp_path, config=config)
    assert "init ran" not in res.stdout and "its directory is writable by others" in res.stderr


def test_stdin_scripts_take_continuations_and_blocks(tmp_path: Path) -> None:
    res = shell(cwd=tmp_path, stdin="echo a \\\n b\npython\nx = 6\nprint(x * 7)\nend\n"
                                    "py x\n")
    assert (res.returncode, res.stdout) == (0, "a b\n42\n6\n"), res.stderr
