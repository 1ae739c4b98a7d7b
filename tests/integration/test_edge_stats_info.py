"""edge_stats_info reads what the attached program counted for real traffic.

The POP of helpers/edge_lab.py gets the program (xdp_program) and its rules; players in the
world namespace send a known number of datagrams of each kind; the module must report exactly
those numbers, per reason, per service and per client.
"""

from __future__ import annotations

import socket

from helpers import edge_lab as topo
from helpers.playbook import run_tasks, task

STATS = "anycast.edge.edge_stats_info"
PAYLOAD = b"x" * 22
FRAME_LEN = 14 + 20 + 8 + len(PAYLOAD)   # Ethernet + IPv4 + UDP + payload, what XDP counts


def send(world, source, port, count):
    with world.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    for dummy in range(count):
        sock.sendto(PAYLOAD, (topo.SERVICE[1], port))
    sock.close()


def test_counters_per_reason_service_and_client(edge_lab, xdp_edge_object, pin_root, tmp_path):
    edge_lab.attach_with_rules(xdp_edge_object, pin_root, tmp_path / "attach")

    service_port = topo.SERVICE[2]
    send(edge_lab.world, topo.ALLOWED_PLAYER, service_port, 30)        # forwarded
    send(edge_lab.world, topo.ROUTER_ADDRESS, service_port, 5)         # forwarded, another client
    send(edge_lab.world, topo.DENIED_PLAYER, service_port, 20)         # deny list
    send(edge_lab.world, topo.ALLOWED_PLAYER, service_port + 1, 10)    # no such service

    args = {"iface": topo.POP_IFACE, "pin_root": pin_root}
    run = run_tasks([
        task(STATS, args),
        task(STATS, dict(args, top_clients=1), check=True),
        task(STATS, dict(args, iface="lo")),
        task(STATS, dict(args, top_clients=-1)),
    ], tmp_path / "stats", netns=edge_lab.pop)
    stats, top_one, not_attached, negative = run.results

    assert not stats["changed"] and not stats.get("failed"), stats
    reasons = stats["reasons"]
    assert reasons["tx_forward"] == {"packets": 35, "bytes": 35 * FRAME_LEN}
    assert reasons["drop_deny"] == {"packets": 20, "bytes": 20 * FRAME_LEN}
    assert reasons["drop_no_service"] == {"packets": 10, "bytes": 10 * FRAME_LEN}
    assert stats["totals"]["dropped"] == {"packets": 30, "bytes": 30 * FRAME_LEN}
    assert stats["totals"]["transmitted"] == {"packets": 35, "bytes": 35 * FRAME_LEN}
    assert stats["totals"]["all"]["packets"] == sum(r["packets"] for r in reasons.values())

    assert stats["services"] == [{
        "id": topo.SERVICE_ID, "protocol": "udp", "address": topo.SERVICE[1], "port": service_port,
        "backend": topo.BACKEND, "in_packets": 35, "in_bytes": 35 * FRAME_LEN,
        "out_packets": 0, "out_bytes": 0,
    }]

    assert stats["clients_tracked"] == 2
    assert [(c["address"], c["packets"], c["bytes"]) for c in stats["top_clients"]] == [
        (topo.ALLOWED_PLAYER, 40, 40 * FRAME_LEN), (topo.ROUTER_ADDRESS, 5, 5 * FRAME_LEN)]
    assert all(c["last_seen_ns"] > 0 for c in stats["top_clients"])

    # Check mode reads the same; top_clients limits the list, not the count.
    assert not top_one["changed"] and top_one["reasons"] == reasons, top_one
    assert [c["address"] for c in top_one["top_clients"]] == [topo.ALLOWED_PLAYER]
    assert top_one["clients_tracked"] == 2

    assert not_attached["failed"] and "attach it with anycast.edge.xdp_program" in not_attached["msg"]
    assert negative["failed"] and "top_clients" in negative["msg"]
