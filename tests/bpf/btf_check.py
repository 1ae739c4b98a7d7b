"""Checks that a Python packing module agrees with the C structs and enums it mirrors.

Used by test_abi.py (the POP program) and test_mapper_abi.py (the TC mapper): the C headers are
the one definition; these helpers compare the Python side with the object's BTF and the header.
"""

from __future__ import annotations

import re

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf


def btf_object_of(object_fixture: str):
    """A module fixture: the object the fixture ``object_fixture`` builds, opened for its BTF."""
    @pytest.fixture(scope="module")
    def btf_object(request):
        with _bpf.BpfObject.open(request.getfixturevalue(object_fixture)) as obj:
            yield obj
    return btf_object


def member_offsets(layout_struct):
    """Offsets of each top-level member of a struct.Struct whose format is '<' + fields."""
    offsets, offset = [], 0
    for token in re.findall(r"(\d*)([a-zA-Z])", layout_struct.format.lstrip("<")):
        count, code = int(token[0] or 1), token[1]
        size = {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8, "s": 1, "x": 1}[code]
        offsets.append(offset)
        offset += size * count if code != "s" else count
    return offsets


def assert_layout_matches_btf(btf_object, layouts, name):
    """layouts[name] = (struct.Struct, member names): same size, same members, same offsets as BTF."""
    layout, members = layouts[name]
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
