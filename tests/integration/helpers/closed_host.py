"""A host on the internet that never connected anywhere: a kernel's TCP stack with no socket open.

What its stack answers an unsolicited segment with is what a spoofer can make any such host send
in its own name. ``answer_of_a_closed_host`` gives it one IPv4 packet (addressed to ``host``) in a
namespace of its own, where ``host`` and the packet's source are local addresses, and returns the
TCP segment its kernel sent back (RFC 9293 3.10.7.1, CLOSED: "If the ACK bit is on,
<SEQ=SEG.ACK><CTL=RST>"), as IPv4 bytes, or None.
"""

from __future__ import annotations

import select
import socket
import time

from .netns import NetNs


def answer_of_a_closed_host(ip_packet: bytes, timeout: float = 2.0):
    source, host = socket.inet_ntoa(ip_packet[12:16]), socket.inet_ntoa(ip_packet[16:20])
    ns = NetNs("closed")
    try:
        for address in (host, source):
            ns.ip("addr", "add", address + "/32", "dev", "lo")
        with ns.entered():
            listener = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
            sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with listener, sender:
            sender.sendto(ip_packet, (host, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not select.select([listener], [], [], max(deadline - time.monotonic(), 0))[0]:
                    break
                packet = listener.recv(65535)
                if packet[12:16] == ip_packet[16:20] and packet[16:20] == ip_packet[12:16]:
                    return packet                  # from the host back to the packet's source
        return None
    finally:
        ns.delete()
