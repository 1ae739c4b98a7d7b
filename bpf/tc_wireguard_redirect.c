// SPDX-License-Identifier: MIT
/*
 * tc_wireguard_redirect: on the POP's uplink, TC ingress, beside xdp_edge.
 *
 * xdp_edge forwards a packet to a backend whose pair is WireGuard by passing it to the kernel
 * marked with the pair's backend (struct edge_wireguard_handoff, edge_abi.h, in the frame's
 * Ethernet addresses): XDP cannot encrypt, and a WireGuard device has no XDP transmit. This
 * program moves such a packet to the transmit of that pair's device (edge_wireguard_pairs) (bpf_redirect; the device is L3, so the
 * kernel drops the Ethernet header and the mark with it), where it is encrypted. It counts
 * nothing: xdp_edge did all of that, once. A packet without the mark - everything xdp_edge
 * passed without forwarding it (the POP's own traffic: SSH, BGP) - goes on untouched; xdp_edge
 * drops any such packet that arrived carrying the mark, so only its forward step makes one.
 *
 * It does not trust the mark alone, for where xdp_edge is not in front of it (detached, or
 * attached to other devices): a mark whose padding is not zero, or that names a backend that
 * has no WireGuard pair with this POP (edge_wireguard_pairs, written by edge_rules), is dropped,
 * never redirected; and the device is the map's, never the frame's. So a frame from the wire
 * posing as a handoff can at worst reach a pair's device, never the POP's loopback, its underlay
 * or any other device; that it reaches none at all is the
 * order the modules keep: tc_program attaches this program only behind xdp_edge, and
 * xdp_program refuses to detach xdp_edge while it is attached (docs/transport.md).
 *
 * Its own object, with the one map it reads (wireguard_maps.h: the pinned edge_wireguard_pairs of
 * xdp_edge, through anycast.edge.tc_program's share_maps), so xdp_edge's object, its loader and
 * its pinned maps stay as they are.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "edge_abi.h"
#include "wireguard_maps.h"

SEC("tc")
int tc_wireguard_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;       /* at TC ingress: the Ethernet header */
	void *data_end = (void *)(long)skb->data_end;
	struct edge_wireguard_handoff *handoff = data;
	struct wireguard_pair *pair;
	__be32 backend_addr;

	if ((void *)(handoff + 1) > data_end || !is_wireguard_handoff_dest(handoff->dest))
		return TC_ACT_OK;
	/* xdp_edge writes the padding as zero: anything else was not made by it. */
	if (handoff->pad[0] | handoff->pad[1])
		return TC_ACT_SHOT;
	backend_addr = handoff->backend_addr;
	pair = bpf_map_lookup_elem(&edge_wireguard_pairs, &backend_addr);
	if (!pair)
		return TC_ACT_SHOT;
	return bpf_redirect(pair->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
