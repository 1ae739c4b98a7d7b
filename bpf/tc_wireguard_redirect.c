// SPDX-License-Identifier: MIT
/*
 * tc_wireguard_redirect: on the POP's uplink, TC ingress, beside xdp_edge.
 *
 * xdp_edge forwards a packet to a backend whose pair is WireGuard by passing it to the kernel
 * marked with the pair's device (struct edge_wireguard_handoff, edge_abi.h, in the frame's
 * Ethernet addresses): XDP cannot encrypt, and a WireGuard device has no XDP transmit. This
 * program moves such a packet to that device's transmit (bpf_redirect; the device is L3, so the
 * kernel drops the Ethernet header and the mark with it), where it is encrypted. It checks and
 * counts nothing: xdp_edge did all of that, once. A packet without the mark - everything xdp_edge
 * passed without forwarding it (the POP's own traffic: SSH, BGP) - goes on untouched; xdp_edge
 * drops any such packet that arrived carrying the mark, so only its forward step makes one.
 *
 * Its own object, without maps: it shares nothing with xdp_edge but the layout of the mark, so
 * anycast.edge.tc_program loads it without xdp_edge's maps, and xdp_edge's object, its loader
 * and its pinned maps stay as they are (docs/transport.md).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "edge_abi.h"

SEC("tc")
int tc_wireguard_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;       /* at TC ingress: the Ethernet header */
	void *data_end = (void *)(long)skb->data_end;
	struct edge_wireguard_handoff *handoff = data;

	if ((void *)(handoff + 1) > data_end || !is_wireguard_handoff_dest(handoff->dest))
		return TC_ACT_OK;
	return bpf_redirect(handoff->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
