"""The Python packing of the map ABI agrees with the C definitions (one source of truth: C)."""

from __future__ import annotations

import ast
import operator
import re
import struct

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists

from .btf_check import assert_layout_matches_btf, btf_object_of, enum_names


btf_object = btf_object_of("xdp_edge_object")


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


def test_every_map_capacity_python_knows_is_the_objects(btf_object):
    """One home per capacity: edge_maps.h's max_entries. abi.MAP_CAPACITY (what edge_rules, the
    agent, the tests and the bench size their reads and writes by) and _rules' pre-write capacity
    check both say what the compiled object says."""
    for name, capacity in abi.MAP_CAPACITY.items():
        assert btf_object.map(name).max_entries == capacity, name
    for name, capacity in _rules.CAPACITY.items():
        assert btf_object.map(name).max_entries == capacity, name


def test_member_offsets_python_reads_in_place_are_the_objects(btf_object):
    """The members readers take from raw values (the agent's scans, the cookie keys' rotation)
    sit where the object's BTF says, and the words the scans stride by follow from them."""
    for struct_name, offsets in abi.MEMBER_OFFSETS.items():
        members = dict((member.name, member) for member in btf_object.btf_type(struct_name).members)
        for name, offset in offsets.items():
            assert members[name].offset == offset, "%s.%s" % (struct_name, name)
    config_members = dict((member.name, member) for member in btf_object.btf_type("edge_config").members)
    assert config_members["cookie_key"].size == config_members["cookie_key_previous"].size == abi.COOKIE_KEY_SIZE
    slot = btf_object.btf_type("source_verification")
    assert slot.size == abi.SOURCE_VERIFICATION.size
    # A slot's first word is service_id | proof << 32: the two __u32 side by side, service_id first.
    assert [(member.name, member.offset) for member in slot.members[:2]] == [("service_id", 0), ("proof", 4)]
    state = abi.SourceState(ban_until_ns=11, last_seen_ns=12, packets=13, byte_count=14,
                            verified=[(5, 2, 15), (6, 1, 16)]).pack()
    words = memoryview(state).cast("Q")
    assert [words[abi.SOURCE_WORD[name]] for name in ("ban_until_ns", "last_seen_ns", "packets", "bytes")] == [
        11, 12, 13, 14]
    assert [(words[ids], words[active]) for ids, active in abi.SOURCE_SLOT_WORDS] == [(5 | 2 << 32, 15), (6 | 1 << 32, 16)]
    config = abi.pack_config("10.0.0.1", ban_sec=7, punch_idle_ns=8, cookie_key=(1, 2), cookie_key_previous=(3, 4),
                             verified_idle_ns=9)
    assert [abi.config_member(config, name) for name in ("ban_sec", "punch_idle_ns", "verified_idle_ns")] == [7, 8, 9]
    assert abi.config_member(config, "cookie_key_previous") == struct.pack("<QQ", 3, 4)


_C_OPERATORS = {ast.Mult: operator.mul, ast.Add: operator.add, ast.LShift: operator.lshift}


def _c_constant(header, name):
    """The value of a #define of integer literals, *, + and << (suffixes U, ULL dropped)."""
    expression = re.search(r"^#define %s\s+(.+?)\s*(/\*.*)?$" % name, header, re.M).group(1)

    def value(node):
        if isinstance(node, ast.BinOp):
            return _C_OPERATORS[type(node.op)](value(node.left), value(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int), (name, expression)
        return node.value

    return value(ast.parse(re.sub(r"(?<=\d)[uUlL]+\b", "", expression), mode="eval").body)


def test_constants_no_map_or_struct_carries_follow_the_header(repo_root):
    """What the object's BTF cannot tell (#defines used only in code) is compared with the header."""
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    for name, value in (("EDGE_NEXT_HOP_CACHE_NS", abi.NEXT_HOP_CACHE_NS),
                        ("EDGE_SRC_NETS_PER_ENTRY", abi.SRC_NETS_PER_ENTRY),
                        ("EDGE_VERIFIED_SLOTS", abi.VERIFIED_SLOTS),
                        ("EDGE_RULE_PAYLOAD_MAX", abi.RULE_PAYLOAD_MAX),
                        ("A2S_CACHE_MAX_PAYLOAD", abi.A2S_CACHE_MAX_PAYLOAD)):
        assert _c_constant(header, name) == value, name
    assert (_source_lists.FILTER_ENTRIES, _source_lists.NETS_PER_ENTRY, _source_lists.ENTRY_SIZE) == (
        abi.SRC_FILTER_ENTRIES, abi.SRC_NETS_PER_ENTRY, abi.SRC_FILTER_ENTRY.size)


def test_minecraft_flow_map_holds_the_flow_key_and_value(btf_object):
    """edge_mc_flows' key and value are struct mc_flow_key / mc_flow_value (its capacity: MAP_CAPACITY);
    the value packs and unpacks (syn_ns, syn_acked, isn, isn_ambiguous)."""
    flows = btf_object.map("edge_mc_flows")
    assert (flows.key_size, flows.value_size) == (abi.MC_FLOW_KEY.size, abi.MC_FLOW_VALUE.size)
    value = abi.MC_FLOW_VALUE.pack(1, abi.MC_FLOW_SYN_ACKED | 5001, 2 ** 32 - 1, 1)
    assert abi.MC_FLOW_VALUE.unpack(value) == (1, abi.MC_FLOW_SYN_ACKED | 5001, 2 ** 32 - 1, 1)
    assert value[16:20] == b"\xff" * 4 and value[20:] == b"\x01\x00\x00\x00"
