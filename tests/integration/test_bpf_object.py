"""bpf_object compiles for real with clang, and rebuilds exactly when an input changed.

One playbook walks a copy of bpf/ through the cases an operator meets: first build (check mode
first), no-op rerun, an edited header, another flag, an object overwritten behind our back, and
compile errors that must fail with clang's words and leave the previous object in place.
"""

from __future__ import annotations

import hashlib
import shutil

from ansible_collections.anycast.edge.plugins.module_utils import _bpf

from helpers.playbook import run_tasks, task

OBJ = "anycast.edge.bpf_object"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_module_compiles_with_the_makefiles_flags(repo_root, tmp_path, bpf_cflags):
    """One home for the BPF compile flags (the Makefile's BPF_CFLAGS, `make print-bpf-cflags`):
    bpf_object's command line for bpf/xdp_edge.c, with its default include folder, is make's."""
    src, dest = repo_root / "bpf" / "xdp_edge.c", tmp_path / "xdp_edge.o"
    result = run_tasks([task(OBJ, {"src": str(src), "dest": str(dest)}, check=True)], tmp_path / "run").results[0]
    assert not result.get("failed"), result
    assert result["command"][1:] == bpf_cflags + ["-c", str(src), "-o", str(dest)]


def test_compile_is_idempotent_by_inputs_and_fails_with_clangs_message(repo_root, tmp_path):
    src_dir = tmp_path / "bpf"
    shutil.copytree(repo_root / "bpf", src_dir)
    (src_dir / "bad.c").write_text("int broken(\n")
    dest = tmp_path / "build" / "xdp_edge.o"
    header = src_dir / "include" / "edge_maps.h"
    args = {"src": str(src_dir / "xdp_edge.c"), "dest": str(dest)}

    run = run_tasks([
        task(OBJ, args, check=True, diff=True),                                         # 0
        task(OBJ, args, diff=True),                                                     # 1
        task(OBJ, args),                                                                # 2
        task("ansible.builtin.lineinfile", {"path": str(header), "line": "/* edited */"}),  # 3
        task(OBJ, args, check=True),                                                    # 4
        task(OBJ, args),                                                                # 5
        task(OBJ, dict(args, extra_cflags=["-DANYCAST_EDGE_TEST_FLAG"])),               # 6
        task("ansible.builtin.copy", {"dest": str(dest), "content": "overwritten\n"}),  # 7
        task(OBJ, dict(args, extra_cflags=["-DANYCAST_EDGE_TEST_FLAG"])),               # 8
        task(OBJ, dict(args, extra_cflags=["-DANYCAST_EDGE_TEST_FLAG"])),               # 9
        task(OBJ, {"src": str(src_dir / "bad.c"), "dest": str(tmp_path / "build" / "bad.o")}),  # 10
        task("ansible.builtin.lineinfile", {"path": str(header), "line": "#error the header is broken"}),  # 11
        task(OBJ, args),                                                                # 12
        task(OBJ, dict(args, clang="no-such-clang-binary")),                            # 13
        task(OBJ, {"src": str(src_dir / "missing.c"), "dest": str(tmp_path / "m.o")}),  # 14
    ], tmp_path / "run")
    results = run.results
    for index in (0, 1, 2, 4, 5, 6, 8, 9):
        assert not results[index].get("failed"), (index, results[index])

    check = results[0]
    assert check["changed"] and check["sha256"] is None and check["programs"] == []
    assert check["diff"]["before"]["inputs_sha256"] is None
    assert check["diff"]["after"]["inputs_sha256"] == check["inputs_sha256"]

    built, rerun = results[1], results[2]
    # changed (again) after check mode: check mode had written neither object nor stamp.
    assert built["changed"] and built["path"] == str(dest) and built["sha256"]
    assert built["inputs_sha256"] == check["inputs_sha256"]
    assert built["programs"] == [{"name": "xdp_edge", "section": "xdp"}]
    assert "edge_config" in built["maps"] and "edge_tx_ports" in built["maps"]
    assert built["command"][1:8] == ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"]
    assert built["command"][8:10] == ["-I", str(src_dir / "include")]
    assert str(header) in built["dependencies"] and built["dependencies"][0] == args["src"]
    assert any(path.endswith("bpf/bpf_helpers.h") for path in built["dependencies"])
    assert "clang version" in built["clang_version"]
    assert not rerun["changed"] and rerun["sha256"] == built["sha256"], rerun
    assert rerun["inputs_sha256"] == built["inputs_sha256"]

    # An edited header (only a comment) changes the inputs: rebuilt (check mode says so).
    assert results[4]["changed"] and results[4]["inputs_sha256"] != built["inputs_sha256"]
    assert results[5]["changed"] and results[5]["inputs_sha256"] == results[4]["inputs_sha256"]
    # A flag is an input too.
    assert results[6]["changed"] and "-DANYCAST_EDGE_TEST_FLAG" in results[6]["command"]
    # An object replaced behind the module's back is rebuilt, to the same bytes; then stable.
    assert results[8]["changed"] and results[8]["sha256"] == results[6]["sha256"]
    assert not results[9]["changed"]

    bad = results[10]
    assert bad["failed"] and not bad.get("changed"), bad
    assert "clang failed to compile" in bad["msg"] and "bad.c:1:" in bad["msg"] and "error:" in bad["msg"]
    assert not (tmp_path / "build" / "bad.o").exists()

    broken = results[12]
    assert broken["failed"] and "the header is broken" in broken["msg"], broken
    # The previous object is untouched and still opens.
    assert sha256(dest) == results[8]["sha256"]
    with _bpf.BpfObject.open(str(dest)) as obj:
        assert [prog.name for prog in obj.programs()] == ["xdp_edge"]

    assert results[13]["failed"] and "no-such-clang-binary" in results[13]["msg"]
    assert results[14]["failed"] and "src:" in results[14]["msg"] and "missing.c" in results[14]["msg"]
