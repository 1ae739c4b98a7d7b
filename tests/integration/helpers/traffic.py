"""UDP senders and an AF_PACKET capture, each in its own thread, for traffic through XDP.

Every packet a UdpSender sends carries ``MAGIC``, the sender's number and a sequence number,
so the capture can say exactly which packets came back, in which form (IPIP-encapsulated or
plain) and which are missing.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MAGIC = b"AEIT"
PAYLOAD = struct.Struct("!4sHI")   # magic, sender number, sequence number
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
IPPROTO_IPIP = 4
IPPROTO_UDP = 17


class _SocketThread:
    """A socket's loop (``_run``) in a daemon thread: start() starts it, _finish() stops it, waits
    for it and closes the socket."""

    sock: socket.socket

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def _finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class UdpSender(_SocketThread):
    """Send one tagged UDP datagram every ``interval`` seconds from ``source`` (an address of
    the namespace) to ``destination``, until stop()."""

    def __init__(self, netns, number: int, source: str, destination: tuple, interval: float = 0.001):
        super().__init__()
        self.number = number
        self.destination = destination
        self.interval = interval
        with netns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sent = 0

    def _run(self) -> None:
        next_send = time.monotonic()
        while not self._stop.is_set():
            self.sock.sendto(PAYLOAD.pack(MAGIC, self.number, self.sent) + bytes(16), self.destination)
            self.sent += 1
            next_send += self.interval
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> int:
        """Stop sending; returns how many were sent (sequence numbers 0..sent-1)."""
        self._finish()
        return self.sent


@dataclass
class Seen:
    """What the capture saw of our tagged packets, per sender number."""
    encapsulated: dict = field(default_factory=dict)  # sender -> [seq, ...] inside IPIP
    plain: dict = field(default_factory=dict)         # sender -> [seq, ...] as plain UDP
    outer: set = field(default_factory=set)           # (outer source, outer destination) of IPIP


def _tag(udp_payload: bytes):
    if len(udp_payload) < PAYLOAD.size:
        return None
    magic, sender, seq = PAYLOAD.unpack_from(udp_payload)
    return (sender, seq) if magic == MAGIC else None


def _udp_payload(ip_packet: bytes):
    """(protocol, source, destination, payload after the IP header[+UDP header])."""
    header_len = (ip_packet[0] & 0x0F) * 4
    proto = ip_packet[9]
    source = socket.inet_ntoa(ip_packet[12:16])
    destination = socket.inet_ntoa(ip_packet[16:20])
    body = ip_packet[header_len:]
    if proto == IPPROTO_UDP:
        body = body[8:]
    return proto, source, destination, body


class Capture(_SocketThread):
    """Record the tagged packets arriving on ``dev`` (frames the interface sends are ignored)."""

    def __init__(self, netns, dev: str):
        super().__init__()
        with netns.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind((dev, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.seen = Seen()
        self.last_seen = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(socket.timeout):   # nothing within 0.1 s: look at _stop again
                self._take(*self.sock.recvfrom(65536))

    def _take(self, frame: bytes, address) -> None:
        """Record a received frame (not one the interface sent) that carries IPv4."""
        if address[2] == PACKET_OUTGOING or len(frame) < 34:
            return
        if struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
            return
        self._record(frame[14:])

    def _record(self, ip_packet: bytes) -> None:
        proto, source, destination, body = _udp_payload(ip_packet)
        if proto == IPPROTO_IPIP:
            inner_proto, dummy, dummy2, inner_body = _udp_payload(body)
            tag = _tag(inner_body) if inner_proto == IPPROTO_UDP else None
            if tag:
                self.seen.encapsulated.setdefault(tag[0], []).append(tag[1])
                self.seen.outer.add((source, destination))
                self.last_seen[tag[0]] = time.monotonic()
        elif proto == IPPROTO_UDP:
            tag = _tag(body)
            if tag:
                self.seen.plain.setdefault(tag[0], []).append(tag[1])

    def wait_for(self, sender: int, count: int, timeout: float = 10) -> None:
        """Block until ``count`` encapsulated packets of ``sender`` were seen."""
        deadline = time.monotonic() + timeout
        while len(self.seen.encapsulated.get(sender, ())) < count:
            if time.monotonic() > deadline:
                raise AssertionError("only %d of %d forwarded packets of sender %d seen in %.0f s"
                                     % (len(self.seen.encapsulated.get(sender, ())), count, sender, timeout))
            time.sleep(0.02)

    def stop(self) -> Seen:
        # Let the last packets in flight arrive before closing.
        time.sleep(0.2)
        self._finish()
        return self.seen
