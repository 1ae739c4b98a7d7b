"""The Python packing of the map ABI agrees with the C definitions (one source of truth: C)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi


@pytest.fixture(scope="module")
def btf_object(xdp_edge_object):
    obj = _bpf.BpfObject.open(xdp_edge_object)
    yield obj
    obj.close()


def member_offsets(layout_struct):
    """Offsets of each top-level member of a struct.Struct whose format is '<' + fields."""
    offsets, offset = [], 0
    for token in re.findall(r"(\d*)([a-zA-Z])", layout_struct.format.lstrip("<")):
        count, code = int(token[0] or 1), token[1]
        size = {"B": 1, "H": 2, "I": 4, "Q": 8, "s": 1, "x": 1}[code]
        offsets.append(offset)
        offset += size * count if code != "s" else count
    return offsets


@pytest.mark.parametrize("name", sorted(abi.LAYOUTS))
def test_struct_layouts_match_the_objects_btf(btf_object, name):
    layout, members = abi.LAYOUTS[name]
    btf = btf_object.btf_type(name)
    assert btf.size == layout.size, "%s: C says %d bytes, Python packs %d" % (name, btf.size, layout.size)
    assert [m.name for m in btf.members] == list(members)
    for member in btf.members:
        assert member.offset in member_offsets(layout), "%s.%s at offset %d is not a field start in Python" % (
            name, member.name, member.offset)


def enum_names(header_text, enum_name, prefix):
    body = re.search(r"enum %s \{(.*?)\};" % enum_name, header_text, re.S).group(1)
    names = re.findall(r"^\s*%s([A-Z0-9_]+)" % prefix, body, re.M)
    return [n.lower() for n in names if n not in ("COUNT",)]


def test_reason_names_follow_the_c_enum(repo_root):
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "edge_reason", "EDGE_REASON_")) == abi.REASONS


def test_protocol_classes_follow_the_c_enum(repo_root):
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "edge_proto_class", "EDGE_CLASS_")) == abi.PROTO_CLASSES


def test_the_verifier_accepts_the_program_on_this_kernel(xdp_edge_object):
    """Loading fails loudly with the verifier's log (BpfError carries it) if the kernel refuses."""
    with _bpf.BpfObject.open(xdp_edge_object) as obj:
        obj.load()
        program = obj.program("xdp_edge")
        assert program.id > 0 and len(program.tag) == 16
