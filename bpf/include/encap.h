/* SPDX-License-Identifier: MIT */
/*
 * IPv4-in-IPv4 encapsulation and decapsulation in XDP, and the next hop from the kernel's FIB.
 *
 * Output frames are always untagged Ethernet: VLAN tags (one or two) on the way in are consumed here, and the
 * FIB decides the egress device. Outer header (RFC 2003): TOS copied from the inner header (ECN
 * included, RFC 6040 normal mode), DF copied, ID 0, TTL 64, source = the POP's tunnel address
 * (never a per-flow source: providers with anti-spoofing drop those, katran #116).
 */
#ifndef EDGE_ENCAP_H
#define EDGE_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "parsing.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#define IPIP_OUTER_TTL 64
#define IPIP_HDR_LEN ((int)sizeof(struct iphdr))

/* Result of asking the FIB where a packet goes next. */
struct next_hop {
	int fib_rc;          /* BPF_FIB_LKUP_RET_* */
	__u32 ifindex;       /* egress device */
	__u16 mtu;           /* on BPF_FIB_LKUP_RET_FRAG_NEEDED: the path MTU */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

/* Look up the route for an IPv4 packet of ip_tot_len bytes; the kernel also checks the MTU. */
static __always_inline void fib_next_hop(struct xdp_md *ctx, __be32 saddr, __be32 daddr, __u8 tos,
					 __u8 proto, __u32 ip_tot_len, struct next_hop *hop)
{
	struct bpf_fib_lookup params = {};

	params.family = AF_INET;
	params.l4_protocol = proto;
	params.tot_len = ip_tot_len;
	params.ifindex = ctx->ingress_ifindex;
	params.tos = tos;
	params.ipv4_src = saddr;
	params.ipv4_dst = daddr;

	hop->fib_rc = bpf_fib_lookup(ctx, &params, sizeof(params), 0);
	hop->ifindex = params.ifindex;
	hop->mtu = hop->fib_rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? params.mtu_result : 0;
	__builtin_memcpy(hop->smac, params.smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, params.dmac, ETH_ALEN);
}

/*
 * Move the frame so that l3 starts at new_l3_off (after a fresh, untagged Ethernet header), keeping
 * the IP packet in place. grow_front > 0 leaves that many bytes free before the IP packet for a new
 * outer header. The Ethernet addresses of the original frame are preserved (the FIB rewrites them
 * when it knows the next hop; otherwise the kernel gets the frame addressed as it arrived).
 */
static __always_inline int reframe(struct xdp_md *ctx, __u32 old_l3_off, int grow_front)
{
	struct ethhdr saved;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int delta;

	if ((void *)(eth + 1) > data_end)
		return -1;
	saved = *eth;
	delta = (int)old_l3_off - (int)sizeof(struct ethhdr) - grow_front;
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return -1;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, saved.h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_source, saved.h_source, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	return 0;
}

/* Decrement the TTL of the IPv4 header at l3_off, updating its checksum. */
static __always_inline int ipv4_decrement_ttl(struct xdp_md *ctx, __u32 l3_off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip;
	__u16 old, new;

	if (l3_off > EDGE_MAX_FRAME)
		return -1;
	ip = data + l3_off;
	if ((void *)(ip + 1) > data_end)
		return -1;
	old = *(__u16 *)&ip->ttl; /* TTL and protocol share a 16-bit word */
	ip->ttl--;
	new = *(__u16 *)&ip->ttl;
	ip->check = csum_replace2(ip->check, old, new);
	return 0;
}

/*
 * Wrap the IPv4 packet at pkt->l3_off in an outer IPv4 header from outer_src to outer_dst.
 * Afterwards the frame is: Ethernet (original addresses) | outer IPv4 | inner packet.
 */
static __always_inline int ipip_encap(struct xdp_md *ctx, const struct packet *pkt,
				      __be32 outer_src, __be32 outer_dst)
{
	void *data, *data_end;
	struct iphdr *outer;

	if (reframe(ctx, pkt->l3_off, IPIP_HDR_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > data_end)
		return -1;

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = pkt->tos;
	outer->tot_len = bpf_htons(pkt->ip_tot_len + IPIP_HDR_LEN);
	outer->id = 0;
	outer->frag_off = pkt->dont_fragment ? IP_DF_BE : 0;
	outer->ttl = IPIP_OUTER_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->saddr = outer_src;
	outer->daddr = outer_dst;
	ipv4_set_csum(outer);
	return 0;
}

/* Remove the outer IPv4 header (outer_hdr_len bytes at l3_off): Ethernet | inner packet. */
static __always_inline int ipip_decap(struct xdp_md *ctx, __u32 l3_off, __u32 outer_hdr_len)
{
	if (outer_hdr_len > 60)
		return -1;
	return reframe(ctx, l3_off + outer_hdr_len, 0);
}

#endif /* EDGE_ENCAP_H */
