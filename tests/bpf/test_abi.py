"""The Python packing of the map ABI agrees with the C definitions (one source of truth: C)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists

from .btf_check import assert_layout_matches_btf, enum_names


@pytest.fixture(scope="module")
def btf_object(xdp_edge_object):
    obj = _bpf.BpfObject.open(xdp_edge_object)
    yield obj
    obj.close()


@pytest.mark.parametrize("name", sorted(abi.LAYOUTS))
def test_struct_layouts_match_the_objects_btf(btf_object, name):
    assert_layout_matches_btf(btf_object, abi.LAYOUTS, name)


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


def test_source_list_numbers_follow_the_c_enum(repo_root):
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "edge_src_list", "EDGE_SRC_LIST_")) == ("deny", "allow")
    assert (_source_lists.DENY, _source_lists.ALLOW) == (0, 1)


def test_allow_origin_bits_follow_the_c_enum(repo_root):
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "edge_allow_origin", "EDGE_ALLOW_")) == abi.ALLOW_ORIGINS
    values = re.findall(r"EDGE_ALLOW_[A-Z_]+ = 1 << ([0-9]+)", header)
    assert [1 << int(shift) for shift in values] == [abi.ALLOW_OPERATOR, abi.ALLOW_CONTROL_PLANE]


def test_trust_map_sizes_follow_the_c_constants(btf_object):
    """edge_tunnel_ifaces is indexed by ifindex up to MAX_IFINDEX (xdp_program refuses larger ones)
    and mmapable with 8-byte values (read whole); edge_own_addrs is one struct own_addrs."""
    ifaces = btf_object.map("edge_tunnel_ifaces")
    assert (ifaces.max_entries, ifaces.value_size) == (abi.MAX_IFINDEX, abi.IFACE_VALUE.size)
    assert ifaces.flags & _bpf.BPF_F_MMAPABLE
    own = btf_object.map("edge_own_addrs")
    assert (own.max_entries, own.value_size) == (1, abi.OWN_ADDRS.size)
    addresses = ["10.0.0.%d" % index for index in range(1, abi.MAX_OWN_ADDRS + 1)]
    assert abi.unpack_own_addrs(abi.pack_own_addrs(addresses)) == addresses
    with pytest.raises(ValueError, match="at most %d" % abi.MAX_OWN_ADDRS):
        abi.pack_own_addrs(addresses + ["10.0.1.1"])


def test_a2s_cache_keys_follow_the_c_definition(repo_root, btf_object):
    """One home for the cache key: edge_abi.h's a2s_cache_key (kind above the 16-bit service id);
    the Python packing uses the same enum order, shift and capacity (3 kinds per service)."""
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "a2s_kind", "A2S_KIND_")) == abi.A2S_KINDS
    shift = re.search(r"#define A2S_CACHE_KEY_KIND_SHIFT\s+(\d+)", header).group(1)
    assert int(shift) == abi.A2S_CACHE_KEY_KIND_SHIFT and abi.MAX_SERVICES <= 1 << abi.A2S_CACHE_KEY_KIND_SHIFT
    cache = btf_object.map("edge_a2s_cache")
    assert (cache.max_entries, cache.key_size, cache.value_size) == (
        abi.A2S_CACHE_MAX_ENTRIES, abi.U32.size, abi.A2S_CACHE_ENTRY.size)
    assert abi.a2s_cache_key(237) == 237                       # A2S_INFO: the service id, as before kinds
    assert abi.a2s_cache_key(237, "rules") == 237 | 2 << 16
    assert abi.unpack_a2s_cache_key(abi.pack_a2s_cache_key(1023, "player")) == (1023, "player")
    stats = btf_object.map("edge_a2s_stats")
    assert (stats.max_entries, stats.value_size) == (len(abi.A2S_KINDS), abi.A2S_COUNTER.size)


def test_payload_rule_enums_follow_the_c_enums(repo_root):
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert tuple(enum_names(header, "edge_rule_action", "EDGE_RULE_")) == abi.RULE_ACTIONS
    assert tuple(enum_names(header, "edge_rule_verified", "EDGE_RULE_SOURCE_")) == abi.RULE_VERIFIED


def test_payload_rule_maps_follow_the_c_constants(btf_object):
    """Two banks of MAX_PAYLOAD_RULES rules, one hit counter per position."""
    rules = btf_object.map("edge_payload_rules")
    assert (rules.max_entries, rules.value_size) == (
        abi.PAYLOAD_RULE_BANKS * abi.MAX_PAYLOAD_RULES, abi.PAYLOAD_RULE.size)
    assert btf_object.map("edge_payload_rule_stats").max_entries == abi.MAX_PAYLOAD_RULES
    assert btf_object.map("edge_rule_limits").max_entries == abi.MAX_RULE_LIMITS
    with pytest.raises(ValueError, match="at most 16"):
        abi.pack_payload_rule("drop", payload=bytes(17))
