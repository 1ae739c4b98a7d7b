"""The Python packing of the TC mapper's map ABI agrees with the C definitions (one source of truth: C)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _mapper_abi as abi

from .btf_check import assert_layout_matches_btf, btf_object_of, enum_names


btf_object = btf_object_of("tc_mapper_object")


@pytest.mark.parametrize("name", sorted(abi.LAYOUTS))
def test_struct_layouts_match_the_objects_btf(btf_object, name):
    assert_layout_matches_btf(btf_object, abi.LAYOUTS, name)


def test_every_map_key_and_value_is_the_size_python_packs(btf_object):
    """Keys and values that are not structs of LAYOUTS (the __be32 POP key, the __u32 indexes) too."""
    btf_object.load()
    expected = abi.MAP_SIZES
    assert sorted(m.name for m in btf_object.maps()) == sorted(abi.MAPS)
    for name, sizes in expected.items():
        bpf_map = btf_object.map(name)
        assert (bpf_map.key_size, bpf_map.value_size) == sizes, name
    assert btf_object.map("mapper_stats").max_entries == len(abi.REASONS)
    assert btf_object.map("mapper_flows").max_entries == abi.MAX_FLOWS


def test_reason_names_follow_the_c_enum(repo_root):
    header = (repo_root / "bpf" / "include" / "mapper_abi.h").read_text()
    assert tuple(enum_names(header, "mapper_reason", "MAPPER_REASON_")) == abi.REASONS


def test_constants_follow_the_c_header(repo_root):
    header = (repo_root / "bpf" / "include" / "mapper_abi.h").read_text()
    assert re.search(r"#define MAPPER_SERVICE_F_DSR \(1U << 0\)", header)
    assert re.search(r"#define MAPPER_F_FIB_NEXT_HOP \(1U << 0\)", header)
    assert re.search(r"#define MAPPER_DEFAULT_IDLE_NS \(120ULL \* 1000000000ULL\)", header)
    assert abi.DEFAULT_IDLE_NS == 120 * 10**9 and abi.SERVICE_F_DSR == 1 and abi.F_FIB_NEXT_HOP == 1


def test_the_verifier_accepts_both_programs_on_this_kernel(tc_mapper_object):
    """Loading fails loudly with the verifier's log (BpfError carries it) if the kernel refuses."""
    with _bpf.BpfObject.open(tc_mapper_object) as obj:
        obj.load()
        for name in (abi.INGRESS_PROGRAM, abi.EGRESS_PROGRAM):
            program = obj.program(name)
            assert program.id > 0 and len(program.tag) == 16
