"""SYN authentication against a real Linux TCP stack (issue 14).

The POP namespace runs the compiled xdp_edge natively on its veth (helpers/edge_lab.py); the
world namespace holds the client - its own kernel's TCP stack, through connect() - the upstream
router, and a stand-in for the game server's host: a raw IPIP socket on 10.1.0.10 that answers a
forwarded SYN with the game server's SYN-ACK, sent back inside IPIP to the POP's tunnel address as
the host's TC mapper would. So the whole handshake crosses the program both ways:

    client SYN -> POP: SYN-ACK with the cookie -> client's stack: RST <SEQ=cookie> -> POP: verified
    client SYN (retransmitted) -> POP: IPIP -> game server: SYN-ACK -> POP: decapsulated -> client

This is what proves the technique on a real stack: that Linux answers the unacceptable ACK with the
RST the POP expects, keeps its connection attempt, and retransmits the SYN (Linux at once, after
TCP_TIMEOUT_MIN: see the test). The first connection of the source waits for that retransmission;
a later one does not.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns

from helpers import edge_lab as topo

GAME, GAME_PORT, SERVICE_ID = "198.51.100.10", 27015, 21
CLIENT = topo.ALLOWED_PLAYER          # one of the world's addresses (not on any list: unverified)
SPOOFED = ["100.%d.%d.%d" % (index // 250, index % 250, 7) for index in range(200)]   # nobody's


class GameServerHost:
    """10.1.0.10 in the world: reads the POP's IPIP, answers SYNs with the game server's SYN-ACK."""

    def __init__(self, world):
        world.ip("addr", "add", topo.BACKEND + "/32", "dev", topo.WORLD_IFACE)
        with world.entered():
            self.receiver = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IPIP)
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.receiver.settimeout(0.2)
        self.syns = []            # (monotonic time, inner source, inner source port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                outer = self.receiver.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            inner = IP(outer[(outer[0] & 0x0F) * 4:])
            if TCP not in inner or inner[TCP].flags != "S":
                continue
            self.syns.append((time.monotonic(), inner.src, inner[TCP].sport))
            reply = IP(src=inner.dst, dst=inner.src) / TCP(sport=inner[TCP].dport, dport=inner[TCP].sport, flags="SA",
                                                           seq=0x5EED, ack=inner[TCP].seq + 1)
            tunnel = IP(src=topo.BACKEND, dst=topo.POP_ADDRESS, proto=4) / raw(reply)
            self.sender.sendto(raw(tunnel), (topo.POP_ADDRESS, 0))

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.receiver.close()
        self.sender.close()


@pytest.fixture
def pop_with_syn_auth(edge_lab, repo_root):
    """xdp_edge on the POP's veth (native), its maps as edge_rules writes them for one TCP service."""
    obj = _bpf.BpfObject.open(str(repo_root / "build" / "xdp_edge.o"))
    obj.load()
    with edge_lab.pop.entered():
        ifindex = socket.if_nametoindex(topo.POP_IFACE)
        _bpf.xdp_attach(ifindex, obj.program("xdp_edge").fd, _bpf.XDP_FLAGS_DRV_MODE)
    maps = dict((bpf_map.name, bpf_map) for bpf_map in obj.maps())
    maps["edge_config"].update(abi.U32.pack(0), abi.pack_config(
        topo.POP_ADDRESS, punch_idle_ns=120 * 10**9, cookie_epoch_ns=30 * 10**9,
        cookie_key=(0x0123456789ABCDEF, 0xFEDCBA9876543210), cookie_tai_offset_ns=tai_offset_ns(), nr_cpus=1))
    maps["edge_anycast_v4"].update(abi.pack_lpm_v4(topo.ANYCAST_PREFIX), abi.U32.pack(1))
    maps["edge_backends"].update(abi.ipv4(topo.BACKEND), abi.BACKEND_VALUE.pack(0))
    maps["edge_tunnel_ifaces"].update(abi.U32.pack(ifindex), abi.IFACE_VALUE.pack(abi.IFACE_F_IPIP))

    def service(syn_auth):
        maps["edge_services"].update(abi.pack_service_key("tcp", GAME, GAME_PORT),
                                     abi.pack_service_value(SERVICE_ID, topo.BACKEND, syn_auth=syn_auth))

    host = GameServerHost(edge_lab.world)
    try:
        yield edge_lab, maps, service, host
    finally:
        host.close()
        with edge_lab.pop.entered():
            _bpf.xdp_detach(ifindex, _bpf.XDP_FLAGS_DRV_MODE)
        obj.close()


def connect_time(world, timeout=10.0):
    """Seconds a connect() from the client to the service takes (the kernel's own handshake)."""
    with world.entered():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.settimeout(timeout)
        client.bind((CLIENT, 0))
        started = time.monotonic()
        client.connect((GAME, GAME_PORT))
        return time.monotonic() - started, client.getsockname()[1]
    finally:
        client.close()


def reasons(maps):
    totals = {}
    for index, name in enumerate(abi.REASONS):
        totals[name] = abi.unpack_counters(maps["edge_reason_stats"].lookup_percpu(abi.U32.pack(index)))[0]
    return totals


def test_a_linux_client_connects_through_syn_auth_and_spoofed_syns_never_reach_the_game_server(pop_with_syn_auth):
    lab, maps, service, host = pop_with_syn_auth
    # The unprotected path first (syn_auth never): the SYN goes straight to the game server.
    service("never")
    unprotected, dummy = connect_time(lab.world)
    assert len(host.syns) == 1

    service("always")
    first, first_port = connect_time(lab.world)
    counts = reasons(maps)
    # The POP answered the first SYN, the client's stack sent the RST with the cookie, and its
    # retransmitted SYN was the first the game server saw from that port.
    assert counts["tx_syn_auth"] == 1 and counts["drop_syn_auth_verified"] == 1
    assert counts["drop_tcp_unverified"] == 0
    state = abi.SourceState.unpack(maps["edge_sources"].lookup(abi.ipv4(CLIENT)))
    assert [slot[:2] for slot in state.verified if slot[0] == SERVICE_ID] == [
        (SERVICE_ID, abi.VERIFY_PROOFS.index("syn_auth"))]
    assert [(address, port) for dummy, address, port in host.syns[1:]] == [(CLIENT, first_port)]
    later, dummy = connect_time(lab.world)
    assert reasons(maps)["tx_syn_auth"] == 1           # verified: no second SYN-ACK from the POP
    print("\nSYN authentication, real Linux client: first connect %.3f s, later connect %.4f s "
          "(unprotected %.4f s)" % (first, later, unprotected))
    # Linux (since 5.8: tcp_rcv_synsent_state_process, "Previous FIN/ACK or RST/ACK might be
    # ignored") answers an unacceptable ACK in SYN-SENT with the RST and, if it has not
    # retransmitted yet, retransmits its SYN after TCP_TIMEOUT_MIN (2 jiffies), not after its
    # 1 s RTO: the first connection costs one round trip and a few milliseconds more.
    assert first < 1.0
    assert later < 0.5 and unprotected < 0.5

    # Spoofed SYNs from 200 addresses: each answered, none verified, none at the game server.
    seen = len(host.syns)
    with lab.world.entered():
        spoofer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for index, address in enumerate(SPOOFED):
            syn = IP(src=address, dst=GAME) / TCP(sport=40000 + index, dport=GAME_PORT, flags="S", seq=index)
            spoofer.sendto(raw(syn), (GAME, 0))
    finally:
        spoofer.close()
    deadline = time.monotonic() + 5
    while reasons(maps)["tx_syn_auth"] < 1 + len(SPOOFED) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)                                     # any RST or retransmission would be in by now
    assert reasons(maps)["tx_syn_auth"] == 1 + len(SPOOFED)
    assert len(host.syns) == seen
    assert {socket.inet_ntoa(key) for key in maps["edge_sources"].keys()} == {CLIENT}
