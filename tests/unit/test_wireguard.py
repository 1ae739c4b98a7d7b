"""The pure part of the WireGuard modules (plugins/module_utils/_wireguard.py): reading
``wg show NAME dump`` (the private key kept apart), validating the peers, and the one ``wg set``
that turns what is there into what the task wants."""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _wireguard

PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUBLIC = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
PEER_1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PEER_2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

DUMP = (
    "%s\t%s\t51820\toff\n" % (PRIVATE, PUBLIC)
    + "%s\t(none)\t10.99.0.2:51821\t10.200.0.1/32,0.0.0.0/0\t1765000000\t1234\t5678\t25\n" % PEER_1
    + "%s\t(none)\t(none)\t(none)\t0\t0\t0\toff\n" % PEER_2
)


def test_the_dump_is_read_and_the_private_key_kept_apart():
    state, private_key = _wireguard.parse_dump(DUMP)
    assert private_key == PRIVATE
    assert PRIVATE not in repr(state)
    assert state == {"public_key": PUBLIC, "listen_port": 51820, "peers": {
        PEER_1: {"public_key": PEER_1, "endpoint": "10.99.0.2:51821", "allowed_ips": ["0.0.0.0/0", "10.200.0.1/32"],
                 "persistent_keepalive": 25},
        PEER_2: {"public_key": PEER_2, "endpoint": None, "allowed_ips": [], "persistent_keepalive": 0}}}


def test_a_fresh_interface_has_no_key():
    state, private_key = _wireguard.parse_dump("(none)\t(none)\t50917\toff\n")
    assert private_key is None and state == {"public_key": None, "listen_port": 50917, "peers": {}}


def wanted(peers, listen_port=51820, public_key=PUBLIC):
    return {"public_key": public_key, "private_key_file": "/etc/k", "listen_port": listen_port,
            "peers": _wireguard.wanted_peers(peers)}


PEER_1_WANTED = {"public_key": PEER_1, "endpoint": "10.99.0.2:51821", "allowed_ips": ["10.200.0.1/32", "0.0.0.0/0"],
                 "persistent_keepalive": 25}


def test_equal_state_plans_nothing():
    present, dummy = _wireguard.parse_dump(DUMP)
    peer_2 = {"public_key": PEER_2, "allowed_ips": []}
    assert _wireguard.plan(wanted([PEER_1_WANTED, peer_2]), present, prune=True) == ([], [])


def test_a_new_interface_gets_its_key_port_and_peers_in_one_wg_set():
    arguments, lines = _wireguard.plan(wanted([PEER_1_WANTED]), None, prune=True)
    assert arguments == ["private-key", "/etc/k", "listen-port", "51820",
                         "peer", PEER_1, "endpoint", "10.99.0.2:51821", "persistent-keepalive", "25",
                         "allowed-ips", "0.0.0.0/0,10.200.0.1/32"]
    assert lines == ["private key from /etc/k (public key none -> %s)" % PUBLIC, "listen port random -> 51820",
                     "add peer %s" % PEER_1]


def test_only_the_differences_are_set_and_unlisted_peers_pruned():
    present, dummy = _wireguard.parse_dump(DUMP)
    moved = dict(PEER_1_WANTED, endpoint="10.99.0.3:51821", persistent_keepalive=0)
    arguments, lines = _wireguard.plan(wanted([moved], listen_port=51830), present, prune=True)
    assert arguments == ["listen-port", "51830",
                         "peer", PEER_1, "endpoint", "10.99.0.3:51821", "persistent-keepalive", "0",
                         "allowed-ips", "0.0.0.0/0,10.200.0.1/32",
                         "peer", PEER_2, "remove"]
    assert lines == ["listen port 51820 -> 51830",
                     "peer %s: endpoint 10.99.0.2:51821 -> 10.99.0.3:51821, persistent_keepalive 25 -> 0" % PEER_1,
                     "remove peer %s" % PEER_2]
    arguments, dummy = _wireguard.plan(wanted([moved], listen_port=51830), present, prune=False)
    assert "remove" not in arguments


def test_an_endpoint_left_out_is_whatever_wireguard_learnt():
    present, dummy = _wireguard.parse_dump(DUMP)
    roaming = dict(PEER_1_WANTED)
    del roaming["endpoint"]
    assert _wireguard.plan(wanted([roaming, {"public_key": PEER_2}], listen_port=None), present, prune=True) == ([], [])
    after = _wireguard.after_state(wanted([roaming], listen_port=None), present, prune=True)
    assert after["peers"][PEER_1]["endpoint"] == "10.99.0.2:51821" and after["listen_port"] == 51820


def test_a_new_key_file_changes_the_key():
    present, dummy = _wireguard.parse_dump(DUMP)
    arguments, lines = _wireguard.plan(wanted([PEER_1_WANTED, {"public_key": PEER_2}], public_key=PEER_2),
                                       present, prune=True)
    assert arguments == ["private-key", "/etc/k"]
    assert lines == ["private key from /etc/k (public key %s -> %s)" % (PUBLIC, PEER_2)]


@pytest.mark.parametrize("peer, message", [
    ({"public_key": "abc"}, "peers[0].public_key: 'abc' is not a WireGuard public key"),
    ({"public_key": PUBLIC[:-2] + "B="}, "peers[0].public_key: '%s' is not a WireGuard public key" % (PUBLIC[:-2] + "B=")),
    ({"public_key": PEER_1, "endpoint": "10.0.0.1"}, "peers[0].endpoint: '10.0.0.1' is not an IPv4 address and port"),
    ({"public_key": PEER_1, "endpoint": "10.0.0.1:0"}, "peers[0].endpoint: '10.0.0.1:0' has no port in 1..65535"),
    ({"public_key": PEER_1, "endpoint": "10.0.0.1:5²"}, "peers[0].endpoint: '10.0.0.1:5²' has no port in 1..65535"),
    ({"public_key": PEER_1, "endpoint": "10.0.0.1:５１８２０"},
     "peers[0].endpoint: '10.0.0.1:５１８２０' has no port in 1..65535"),
    ({"public_key": PEER_1, "allowed_ips": ["10.0.0.1/24"]},
     "peers[0].allowed_ips[0]: '10.0.0.1/24' is not a network (CIDR without host bits)"),
    ({"public_key": PEER_1, "persistent_keepalive": 70000}, "peers[0].persistent_keepalive: 70000 is out of range"),
])
def test_bad_peers_name_the_field_and_the_value(peer, message):
    with pytest.raises(_wireguard.WireguardError) as error:
        _wireguard.wanted_peers([peer])
    assert str(error.value).startswith(message)


def test_a_peer_listed_twice_is_refused():
    with pytest.raises(_wireguard.WireguardError, match=r"peers\[1\].public_key: .* is listed twice"):
        _wireguard.wanted_peers([{"public_key": PEER_1}, {"public_key": PEER_1}])


def test_keys_are_base64_of_32_bytes():
    assert _wireguard.is_key(PUBLIC) and _wireguard.is_key(PRIVATE)
    assert not _wireguard.is_key(PUBLIC[:-1]) and not _wireguard.is_key(None) and not _wireguard.is_key("=" * 44)
