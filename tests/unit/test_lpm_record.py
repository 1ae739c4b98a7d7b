"""The packed deny record (_rules.LpmRecord, cidr_record, settle_records): what edge_rules compares a
million prefixes with must say "equal" exactly when the dicts it replaces would, and hand the plan
the same dicts whenever anything differs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules


def cidr_text(address, length):
    """'a.b.c.d/len' of an address with its host bits cleared."""
    network = (address >> (32 - length) << (32 - length)) if length else 0
    return "%s/%d" % (".".join(str(octet) for octet in network.to_bytes(4, "big")), length)


PREFIXES = st.builds(cidr_text, st.integers(0, 0xFFFFFFFF), st.integers(0, 32))


def kernel_record(entries):
    """A record as edge_rules reads the trie back: the keys and the values each in one buffer, in
    an order of their own (the kernel's)."""
    keys = sorted(entries, reverse=True)
    return _rules.LpmRecord.from_chunks([(len(keys), b"".join(keys), b"".join(entries[key] for key in keys))])


@given(st.lists(PREFIXES, max_size=30), st.lists(PREFIXES, max_size=30), st.booleans())
def test_a_record_equals_another_exactly_when_their_dicts_do(wanted, present, other_value):
    desired = _rules.cidr_record(wanted, "deny")
    present_entries = _rules.cidr_entries(present, "deny")
    if other_value and present_entries:
        present_entries[sorted(present_entries)[0]] = abi.U32.pack(2)   # a value changed by hand
    have = kernel_record(present_entries)
    assert desired.as_dict() == _rules.cidr_entries(wanted, "deny")
    assert (have == desired) == (present_entries == _rules.cidr_entries(wanted, "deny"))
    assert (desired == have) == (have == desired)
    assert len(desired) == len(_rules.cidr_entries(wanted, "deny"))
    assert list(desired) == list(_rules.cidr_entries(wanted, "deny"))   # the order given, duplicates once


@given(st.lists(PREFIXES, max_size=30), st.lists(PREFIXES, max_size=30))
def test_settled_maps_plan_what_the_dicts_plan(wanted, present):
    """compare() and plan_writes() on settled records give what they give on plain dicts."""
    def maps(deny, record):
        entries = _rules.cidr_entries(deny, "deny")
        return {"edge_deny_v4": kernel_record(entries) if record == "kernel"
                else _rules.cidr_record(deny, "deny") if record == "wanted" else entries,
                "edge_allow_v4": {}}

    have, want = maps(present, "kernel"), maps(wanted, "wanted")
    _rules.settle_records(have, want)
    # the dicts edge_rules made before: the trie's entries in the kernel's order, the wanted ones in the order given
    plain_have, plain_want = maps(present, None), maps(wanted, None)
    plain_have["edge_deny_v4"] = dict(kernel_record(plain_have["edge_deny_v4"]).items())
    assert _rules.compare(have, want)["edge_deny_v4"] == _rules.compare(plain_have, plain_want)["edge_deny_v4"]
    assert _rules.plan_writes(have, want) == _rules.plan_writes(plain_have, plain_want)
    if set(present) != set(wanted):
        assert not isinstance(have["edge_deny_v4"], _rules.LpmRecord) and not isinstance(want["edge_deny_v4"], _rules.LpmRecord)


def test_membership_and_lookup_without_a_dict():
    record = _rules.cidr_record(["10.0.0.0/8", "192.0.2.0/24", "10.0.0.0/8"], "deny")
    assert len(record) == 2
    assert abi.pack_lpm_v4("10.0.0.0/8") in record and abi.pack_lpm_v4("10.0.0.0/9") not in record
    assert record[abi.pack_lpm_v4("192.0.2.0/24")] == _rules.LPM_PRESENT
    assert record._dict is None   # answered from the packed keys
    assert _rules.covering_prefix(record, abi.pack_lpm_v4("10.1.2.3/32")) == abi.pack_lpm_v4("10.0.0.0/8")


def test_items_the_bulk_parse_refuses_are_parsed_one_by_one_with_the_same_result():
    cidrs = ["10.0.0.0/08", "192.0.2.1", "198.51.100.0/24"]   # a leading zero, a bare address
    assert _rules.cidr_record(cidrs, "deny") == _rules.cidr_entries(cidrs, "deny")
    assert _rules.cidr_record([], "deny") == {}


@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)), max_size=30))
def test_keys_with_host_bits_are_those_that_are_not_their_own_network(pairs):
    keys = [abi.LPM_V4_KEY.pack(length, address.to_bytes(4, "big")) for address, length in pairs]
    assert _rules.keys_with_host_bits(keys) == [key for key in keys if _rules.lpm_network(key) != key]
    assert _rules.keys_with_host_bits([_rules.lpm_network(key) for key in keys]) == []
    assert all(_rules.render_lpm(_rules.lpm_network(key)) == cidr_text(address, length)
               for key, (address, length) in zip(keys, pairs))


def test_a_network_is_its_key_with_the_host_bits_cleared():
    assert _rules.lpm_network(abi.pack_lpm_v4("10.0.0.1/8")) == abi.pack_lpm_v4("10.0.0.0/8")
    assert _rules.lpm_network(abi.pack_lpm_v4("10.0.0.1/32")) == abi.pack_lpm_v4("10.0.0.1/32")
    assert _rules.lpm_network(abi.pack_lpm_v4("255.255.255.255/0")) == abi.pack_lpm_v4("0.0.0.0/0")
    assert _rules.keys_with_host_bits({abi.pack_lpm_v4("10.0.0.0/8"): 1, abi.pack_lpm_v4("100.64.5.0/22"): 1}) == [
        abi.pack_lpm_v4("100.64.5.0/22")]
