"""roles/bird_anycast: rendered configs are accepted by BIRD; bad inventories are rejected.

Rendering uses plain Jinja2 with Ansible's template settings (trim_blocks) and the role's
defaults; the template uses no Ansible-only filters, so this is what the role renders. Each
rendering is then parsed by the real ``bird -p -c`` (Debian's bird2; parsing needs no root).

Bad BGP inventories are refused by validate_inventory (plugins/module_utils/_inventory.py),
before any host is touched; every inventory rendered here passes it.
Also here: the birdc reply parser on recorded BIRD 2.0.12 replies.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _birdc, _inventory

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE = REPO_ROOT / "roles" / "bird_anycast"
BIRD = shutil.which("bird") or "/usr/sbin/bird"


def render(**inventory) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,  # Ansible's template default
    )
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    variables.update(inventory_hostname="pop1")
    variables.update(inventory)
    return env.get_template("bird.conf.j2").render(**variables)


def bird_parse(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "bird.conf"
    path.write_text(config)
    return subprocess.run([BIRD, "-p", "-c", str(path)], capture_output=True, text=True, check=False)


BASE = {
    "anycast_edge_asn": 64500,
    "anycast_edge_prefixes": ["198.51.100.0/24"],
    "anycast_edge_tunnel_address": "10.0.0.1",
}
NEIGHBOR = {"name": "transit1", "address": "192.0.2.1", "asn": 64600}

INVENTORIES = {
    "no neighbors": {},
    "one neighbor, defaults": {"anycast_edge_bgp_neighbors": [NEIGHBOR]},
    "everything": {
        "anycast_edge_asn": 4200000001,
        "anycast_edge_prefixes": ["198.51.100.0/24", "203.0.113.0/25"],
        "anycast_edge_router_id": "10.255.0.1",
        "anycast_edge_bgp_communities": ["64500:100", "0:0", "65535:65535"],
        "anycast_edge_rtbh": ["198.51.100.66", "203.0.113.7/32"],
        "anycast_edge_bfd_timers": {"interval_ms": 50, "multiplier": 5},
        "anycast_edge_bgp_timers": {"hold": 6, "keepalive": 2, "connect_retry": 1},
        "anycast_edge_bgp_neighbors": [
            dict(NEIGHBOR, password="s3cret vault", communities=["64600:7"]),
            {"name": "ix_rs", "address": "192.0.2.99", "asn": 4200000000, "multihop": 2, "bfd": False},
        ],
    },
    "all neighbors without bfd": {"anycast_edge_bgp_neighbors": [dict(NEIGHBOR, bfd=False)]},
    "gshut": {"anycast_edge_bgp_neighbors": [NEIGHBOR], "anycast_edge_drain_state": "gshut"},
    "withdrawn": {"anycast_edge_bgp_neighbors": [NEIGHBOR], "anycast_edge_drain_state": "withdrawn"},
}


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_rendered_config_is_accepted_by_bird(name, tmp_path):
    config = render(**{**BASE, **INVENTORIES[name]})
    proc = bird_parse(config, tmp_path)
    assert proc.returncode == 0, proc.stderr + "\n" + config


def test_announcement_shape():
    config = render(**{**BASE, **INVENTORIES["everything"]})
    assert "router id 10.255.0.1;" in config
    assert "define ANYCAST_EDGE_ASN = 4200000001;" in config
    assert "route 198.51.100.0/24 blackhole;" in config and "route 203.0.113.0/25 blackhole;" in config
    # The kernel never gets the blackholes.
    kernel = config[config.index("protocol kernel"):config.index("protocol static")]
    assert "export none;" in kernel
    # Import none and an export filter on every session; one session per neighbor.
    assert config.count("protocol bgp ") == 2
    assert config.count("import none;") == 3  # kernel + two sessions
    assert "export filter anycast_edge_export_transit1;" in config
    assert 'password "s3cret vault";' in config
    assert "multihop 2;" in config
    assert config.count("bfd on;") == 1 and "protocol bfd anycast_edge_bfd" in config
    assert "interval 50 ms;" in config and "multiplier 5;" in config
    # RTBH: BLACKHOLE + NO_EXPORT, only for host routes inside the anycast prefixes.
    assert "route 198.51.100.66/32 blackhole;" in config and "route 203.0.113.7/32 blackhole;" in config
    assert "define ANYCAST_EDGE_RTBH = [ 198.51.100.0/24{32,32}, 203.0.113.0/25{32,32} ];" in config
    assert "bgp_community.add((65535, 666));" in config and "bgp_community.add((65535, 65281));" in config
    transit = config[config.index("filter anycast_edge_export_transit1"):config.index("protocol bgp bgp_transit1")]
    assert "bgp_community.add((64600,7));" in transit and "bgp_community.add((64500,100));" in transit
    ix_rs = config[config.index("filter anycast_edge_export_ix_rs"):]
    assert "(64600,7)" not in ix_rs
    assert "65535, 0" not in config


def test_router_id_defaults_to_tunnel_address():
    assert "router id 10.0.0.1;" in render(**BASE)


def test_no_bfd_protocol_when_no_session_wants_it():
    config = render(**{**BASE, **INVENTORIES["all neighbors without bfd"]})
    assert "protocol bfd" not in config and "bfd on" not in config


def test_drain_states():
    gshut = render(**{**BASE, **INVENTORIES["gshut"]})
    assert "bgp_community.add((65535, 0));" in gshut and "disabled yes" not in gshut
    withdrawn = render(**{**BASE, **INVENTORIES["withdrawn"]})
    announce = withdrawn[withdrawn.index("protocol static anycast_edge_announce"):]
    assert announce.index("disabled yes;") < announce.index("}")
    assert "bgp_community.add((65535, 0));" in withdrawn


@pytest.mark.parametrize("inventory, message", [
    ({"anycast_edge_bgp_communities": ["70000:1"]}, "out of bounds"),
    ({"anycast_edge_prefixes": ["198.51.100.1/24"]}, ""),
], ids=["community out of range", "prefix with host bits"])
def test_bird_rejects_what_slips_past_the_template(inventory, message, tmp_path):
    # Second line of defence: even if validation missed these, bird -p refuses them.
    config = render(**{**BASE, "anycast_edge_bgp_neighbors": [NEIGHBOR], **inventory})
    proc = bird_parse(config, tmp_path)
    assert proc.returncode != 0, config
    assert message in proc.stderr


# ---- the BGP inventory is checked by validate_inventory (the front door), not by this role ----
# (plugins/module_utils/_inventory.py; its unit tests name path and value for each rule. Here:
# every inventory the template renders for BIRD passes it, and each bad one is refused.)

BAD_INVENTORIES = {
    "asn zero": ({"anycast_edge_asn": 0}, "anycast_edge_asn: 0"),
    "asn too big": ({"anycast_edge_asn": 4294967296}, "anycast_edge_asn: 4294967296"),
    "no prefixes": ({"anycast_edge_prefixes": []}, "anycast_edge_prefixes"),
    "no router id": ({"anycast_edge_tunnel_address": ""}, "anycast_edge_tunnel_address"),
    "router id not IPv4": ({"anycast_edge_router_id": "10.0.0"}, "anycast_edge_router_id: 10.0.0"),
    "neighbor name with dash": ({"anycast_edge_bgp_neighbors": [dict(NEIGHBOR, name="transit-1")]}, "transit-1"),
    "neighbor bad address": ({"anycast_edge_bgp_neighbors": [dict(NEIGHBOR, address="192.0.2")]},
                             "anycast_edge_bgp_neighbors[0].address: 192.0.2"),
    "neighbor asn missing": ({"anycast_edge_bgp_neighbors": [{"name": "t", "address": "192.0.2.1"}]},
                             "anycast_edge_bgp_neighbors[0].asn: is required"),
    "duplicate neighbor names": ({"anycast_edge_bgp_neighbors": [NEIGHBOR, dict(NEIGHBOR, address="192.0.2.2")]},
                                 "anycast_edge_bgp_neighbors[1].name: transit1 is also the name"),
    "password with a quote": ({"anycast_edge_bgp_neighbors": [dict(NEIGHBOR, password='a"b')]},
                              "anycast_edge_bgp_neighbors[0].password: (not shown)"),
    "neighbor community out of range": (
        {"anycast_edge_bgp_neighbors": [dict(NEIGHBOR, communities=["64600:65536"])]}, "64600:65536"),
    "global community not asn:value": ({"anycast_edge_bgp_communities": ["no-export"]},
                                       "anycast_edge_bgp_communities[0]: no-export"),
    "rtbh not a host": ({"anycast_edge_rtbh": ["198.51.100.0/24"]}, "anycast_edge_rtbh[0]: 198.51.100.0/24"),
    "keepalive not below hold": ({"anycast_edge_bgp_timers": {"hold": 6, "keepalive": 6, "connect_retry": 1}},
                                 "anycast_edge_bgp_timers.keepalive: 6"),
}
GLOBAL_VARS = ("anycast_edge_asn", "anycast_edge_prefixes")


def front_door(inventory: dict) -> list:
    """The problems validate_inventory reports for a one-POP inventory (BASE + inventory)."""
    variables = dict(BASE, **inventory)
    pop = dict((name, variables.get(name)) for name in _inventory.POP_VARS)
    pop["anycast_edge_uplink"] = "eth1"
    return _inventory.validate(dict((name, variables[name]) for name in GLOBAL_VARS), {"pop1": pop}, {})


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_every_rendered_inventory_passes_validate_inventory(name):
    assert front_door(INVENTORIES[name]) == []


@pytest.mark.parametrize("name", sorted(BAD_INVENTORIES))
def test_validate_inventory_rejects_bad_bgp_inventory(name):
    inventory, mention = BAD_INVENTORIES[name]
    problems = front_door(inventory)
    assert any(mention in line for line in problems), problems
    # the password itself never appears
    assert not any('a"b' in line for line in problems)


def test_the_role_checks_no_inventory_itself():
    """One front door: bird_anycast has no validation tasks of its own any more."""
    assert not (ROLE / "tasks" / "validate.yml").exists()
    assert "assert" not in (ROLE / "tasks" / "main.yml").read_text().replace(
        "- name: Check the drain state\n  ansible.builtin.assert", "")


# ---- birdc reply parsing (replies recorded from BIRD 2.0.12) -----------------------------

def test_parse_reply_folds_continuations_and_drops_banner():
    reply = _birdc.parse_reply(
        "0001 BIRD 2.0.12 ready.\n"
        "0002-Reading configuration from /etc/bird/bird.conf\n"
        "8002 /etc/bird/bird.conf:3:1 syntax error, unexpected CF_SYM_UNDEFINED\n")
    assert reply.codes == ["0002", "8002"]
    assert reply.errors() == [("8002", "/etc/bird/bird.conf:3:1 syntax error, unexpected CF_SYM_UNDEFINED")]


def test_parse_protocols():
    reply = _birdc.parse_reply(
        "0001 BIRD 2.0.12 ready.\n"
        "2002-Name       Proto      Table      State  Since         Info\n"
        "1002-device1    Device     ---        up     10:17:54.675  \n"
        " anycast_edge_announce Static     master4    down   10:17:54.727  \n"
        " bgp_upstream1 BGP        ---        up     2024-01-02 10:17:58  Established   \n"
        " bgp_other  BGP        ---        start  10:17:58.861  Active        Socket: Connection refused\n")
    protocols = {p["name"]: p for p in _birdc.parse_protocols(reply)}
    assert protocols["anycast_edge_announce"]["state"] == "down"
    assert protocols["bgp_upstream1"]["since"] == "2024-01-02 10:17:58"
    assert _birdc.is_established(protocols["bgp_upstream1"])
    assert not _birdc.is_established(protocols["bgp_other"])
    assert protocols["bgp_other"]["info"].startswith("Active")


def test_parse_routes_with_attributes():
    reply = _birdc.parse_reply(
        "0001 BIRD 2.0.12 ready.\n"
        "1007-Table master4:\n"
        "     198.51.100.0/24      unicast [pop 10:18:00.510] * (100) [AS64500i]\n"
        "     \tvia 10.77.0.1 on veth-up\n"
        "1008-\tType: BGP univ\n"
        "1012-\tBGP.origin: IGP\n"
        "     \tBGP.as_path: 64500 64501\n"
        "     \tBGP.community: (64500,100) (65535,0)\n"
        "1007-198.51.100.66/32     blackhole [anycast_edge_rtbh 10:17:54.727] * (200)\n"
        "1008-\tType: static univ\n")
    routes = _birdc.parse_routes(reply)
    assert [r["network"] for r in routes] == ["198.51.100.0/24", "198.51.100.66/32"]
    assert routes[0]["as_path"] == [64500, 64501]
    assert routes[0]["communities"] == ["64500:100", "65535:0"]
    assert routes[0]["nexthops"] == ["via 10.77.0.1 on veth-up"]
    assert routes[1]["type"] == "blackhole" and routes[1]["protocol"] == "anycast_edge_rtbh"


def test_birdc_without_a_socket_says_so():
    birdc = _birdc.Birdc("/nonexistent/bird.ctl", shutil.which("birdc") or "/usr/sbin/birdc")
    with pytest.raises(_birdc.BirdcError, match="birdc show protocols failed"):
        birdc.protocols()


def test_an_empty_answer_is_no_routes_but_no_answer_at_all_is_an_error():
    """BIRD 2.0.12 answers `show route export <session> all` for a session that is sent nothing
    with its banner alone (seen in the VM lab after drain.yml's withdrawal): no routes. Without
    even the banner birdc never reached BIRD: an error that says so."""
    banner_only = _birdc.Birdc("/run/bird/bird.ctl", run_command=lambda argv: (0, "0001 BIRD 2.0.12 ready.\n", ""))
    assert banner_only.routes("export bgp_upstream") == []
    unreachable = _birdc.Birdc("/run/bird/bird.ctl", run_command=lambda argv: (
        1, "", "Unable to connect to server control socket (/run/bird/bird.ctl): No such file or directory\n"))
    with pytest.raises(_birdc.BirdcError, match="Unable to connect"):
        unreachable.routes("export bgp_upstream")
