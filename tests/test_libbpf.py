"""libbpf.py, the one owner of bpf(2)/libbpf constants, structs and prototypes: its layouts and
constants against the C compiler (the system's uapi and libbpf headers), and no other module
re-declaring them. Unit tests: no root."""

from __future__ import annotations

import ast
import ctypes
import re
from pathlib import Path

import pytest
from conftest import gcc_oracle

from bpflbr_shell.kernel import features as F
from bpflbr_shell.kernel import libbpf as L

LOAD_OPTS_FIELDS = [name for name, _ in L.BpfProgLoadOpts._fields_]
LINK_OPTS_FIELDS = ["sz", "flags", "iter_info", "iter_info_len", "target_btf_id"]
MAP_OPTS_FIELDS = [name for name, _ in L.BpfMapCreateOpts._fields_]
PROG_INFO_FIELDS = [name for name, _ in L.BpfProgInfo._fields_
                    if name not in ("gpl_flags", "_pad")]  # a bitfield and tail padding in C
BTF_INFO_FIELDS = [name for name, _ in L.BpfBtfInfo._fields_]
MAP_INFO_FIELDS = [name for name, _ in L.BpfMapInfo._fields_]
LINK_INFO_FIELDS = ["type", "id", "prog_id", "tracing"]
TRACING_FIELDS = [name for name, _ in L.BpfLinkInfoTracing._fields_]
BPF_CONSTS = {
    "BPF_PROG_TYPE_KPROBE": L.BPF_PROG_TYPE_KPROBE,
    "BPF_PROG_TYPE_TRACING": L.BPF_PROG_TYPE_TRACING,
    "BPF_TRACE_FENTRY": L.BPF_TRACE_FENTRY,
    "BPF_TRACE_FEXIT": L.BPF_TRACE_FEXIT,
    "BPF_TRACE_KPROBE_MULTI": L.BPF_TRACE_KPROBE_MULTI,
    "BPF_F_KPROBE_MULTI_RETURN": L.BPF_F_KPROBE_MULTI_RETURN,
    "BTF_KIND_FUNC": L.BTF_KIND_FUNC,
}


def _oracle_source() -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", "#include <linux/bpf.h>",
        "#include <linux/btf.h>", "#include <bpf/bpf.h>",
        "#define P(k, v) printf(\"%s %lld\\n\", k, (long long)(v))",
        "int main(void) {",
        "  P(\"sizeof.load_opts\", sizeof(struct bpf_prog_load_opts));",
        "  P(\"sizeof.link_opts\", sizeof(struct bpf_link_create_opts));",
        "  P(\"sizeof.map_opts\", sizeof(struct bpf_map_create_opts));",
        "  P(\"sizeof.prog_info\", sizeof(struct bpf_prog_info));",
        "  P(\"sizeof.btf_info\", sizeof(struct bpf_btf_info));",
        "  P(\"off.link.kprobe_multi\", offsetof(struct bpf_link_create_opts, kprobe_multi));",
        "  P(\"off.link.kprobe_multi.syms\", offsetof(struct bpf_link_create_opts,"
        " kprobe_multi.syms));",
    ]
    for tag, struct, fields in (
        ("load", "bpf_prog_load_opts", LOAD_OPTS_FIELDS),
        ("link", "bpf_link_create_opts", LINK_OPTS_FIELDS),
        ("map", "bpf_map_create_opts", MAP_OPTS_FIELDS),
        ("prog_info", "bpf_prog_info", PROG_INFO_FIELDS),
        ("btf_info", "bpf_btf_info", BTF_INFO_FIELDS),
        ("map_info", "bpf_map_info", MAP_INFO_FIELDS),
        ("link_info", "bpf_link_info", LINK_INFO_FIELDS),
    ):
        lines += [f'  P("off.{tag}.{f}", offsetof(struct {struct}, {f}));' for f in fields]
    lines += [f'  P("off.tracing.{f}", offsetof(struct bpf_link_info, tracing.{f})'
              f' - offsetof(struct bpf_link_info, tracing));' for f in TRACING_FIELDS]
    lines += [f'  P("const.{c}", {c});' for c in BPF_CONSTS]
    lines += ["  return 0; }"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """sizeof/offsetof/constants as gcc sees them in the system headers."""
    return gcc_oracle(tmp_path_factory.mktemp("oracle"), _oracle_source(),
                      ("/usr/include/linux/bpf.h", "/usr/include/linux/btf.h",
                       "/usr/include/bpf/bpf.h"))


def test_libbpf_opts_match_gcc(c_oracle: dict[str, int]) -> None:
    assert ctypes.sizeof(L.BpfProgLoadOpts) == c_oracle["sizeof.load_opts"] == 104
    for f in LOAD_OPTS_FIELDS:
        assert getattr(L.BpfProgLoadOpts, f).offset == c_oracle[f"off.load.{f}"], f
    assert ctypes.sizeof(L.BpfLinkCreateOpts) == c_oracle["sizeof.link_opts"]
    for f in LINK_OPTS_FIELDS:
        assert getattr(L.BpfLinkCreateOpts, f).offset == c_oracle[f"off.link.{f}"], f
    km = L.BpfLinkCreateOpts.kprobe_multi.offset
    assert km == c_oracle["off.link.kprobe_multi"]
    assert km + L.KprobeMultiOpts.syms.offset == c_oracle["off.link.kprobe_multi.syms"]
    assert ctypes.sizeof(L.BpfMapCreateOpts) == c_oracle["sizeof.map_opts"]
    for f in MAP_OPTS_FIELDS:
        assert getattr(L.BpfMapCreateOpts, f).offset == c_oracle[f"off.map.{f}"], f


def test_bpf_constants_match_gcc(c_oracle: dict[str, int]) -> None:
    for c, val in BPF_CONSTS.items():
        assert val == c_oracle[f"const.{c}"], c


def test_info_structs_match_gcc(c_oracle: dict[str, int]) -> None:
    assert ctypes.sizeof(L.BpfProgInfo) == c_oracle["sizeof.prog_info"]
    for f in PROG_INFO_FIELDS:
        assert getattr(L.BpfProgInfo, f).offset == c_oracle[f"off.prog_info.{f}"], f
    assert ctypes.sizeof(L.BpfBtfInfo) == c_oracle["sizeof.btf_info"]
    for f in BTF_INFO_FIELDS:
        assert getattr(L.BpfBtfInfo, f).offset == c_oracle[f"off.btf_info.{f}"], f
    for f in MAP_INFO_FIELDS:  # a head: the kernel fills only as much as we pass
        assert getattr(L.BpfMapInfo, f).offset == c_oracle[f"off.map_info.{f}"], f
    for f in LINK_INFO_FIELDS:
        assert getattr(L.BpfLinkInfo, f).offset == c_oracle[f"off.link_info.{f}"], f
    for f in TRACING_FIELDS:
        assert getattr(L.BpfLinkInfoTracing, f).offset == c_oracle[f"off.tracing.{f}"], f


# ------------------------------------------------------------------------------ one owner

PACKAGE = Path(L.__file__).resolve().parents[1]
_BPF_NAME = re.compile(r"(BPF|BTF)_[A-Z0-9_]+")


def test_no_other_module_declares_bpf_constants_or_prototypes() -> None:
    """BPF_*/BTF_* constants, libbpf struct classes and ctypes prototypes of libbpf symbols
    live in libbpf.py only (kernel/features.py used to re-declare them)."""
    owner = Path(L.__file__).resolve()
    structs = {name for name, obj in vars(L).items()
               if isinstance(obj, type) and issubclass(obj, ctypes.Structure | ctypes.Union)
               and obj.__module__ == L.__name__}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == owner:
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                literal = isinstance(node.value, ast.Constant | ast.BinOp | ast.UnaryOp)
                for t in targets:  # an alias of libbpf's (x = libbpf.X) is no second owner
                    if (literal and isinstance(t, ast.Name) and _BPF_NAME.fullmatch(t.id)
                            and t.id in vars(L)):
                        found.append(f"{path.name}: {t.id} = {ast.unparse(node.value)}")
            elif isinstance(node, ast.ClassDef) and node.name in structs:
                found.append(f"{path.name}: class {node.name}")
        if path.name == "features.py" and "CFUNCTYPE" in text:
            found.append("features.py: its own ctypes prototypes")
    assert not found, found


def test_features_uses_the_owners_objects() -> None:
    for name in ("BPF_PROG_TYPE_KPROBE", "BPF_PROG_TYPE_TRACING", "BPF_TRACE_FENTRY",
                 "BPF_TRACE_KPROBE_MULTI", "BTF_KIND_FUNC", "BpfProgLoadOpts",
                 "BpfLinkCreateOpts"):
        assert getattr(F, name) is getattr(L, name), name


def test_lib_declares_every_symbol_features_calls() -> None:
    """features.py calls libbpf symbols through ``lib()``: each must have its prototype there
    (an undeclared one would be called with int arguments and an int result)."""
    text = Path(F.__file__).read_text()
    called = set(re.findall(r"\blib(?:\(\))?\.((?:bpf|btf)_\w+)\(", text))
    assert {"bpf_prog_load", "bpf_prog_get_next_id", "bpf_link_create",
            "btf__load_vmlinux_btf", "btf__find_by_name_kind", "btf__free"} <= called
    try:
        lib = L.lib()
    except Exception as exc:  # noqa: BLE001 - a host without libbpf1
        pytest.skip(f"no libbpf here: {exc}")
    for name in sorted(called):
        fn = getattr(lib, name)
        assert fn.argtypes is not None, name
    assert lib.btf__load_vmlinux_btf.restype is ctypes.c_void_p
    assert lib.btf__free.restype is None
