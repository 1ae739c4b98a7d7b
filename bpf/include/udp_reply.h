/* SPDX-License-Identifier: MIT */
/*
 * Answering a UDP request in place: the request's frame becomes the reply (addresses and ports
 * swapped, resized, checksummed) and goes back the way it came. Used for the A2S_INFO challenge
 * and cached answers (xdp_edge.c), and by the bench's A2S floor program.
 */
#ifndef EDGE_UDP_REPLY_H
#define EDGE_UDP_REPLY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "edge_abi.h"
#include "csum.h"

#define REPLY_TTL 64

/*
 * Copy len bytes (1..A2S_CACHE_MAX_PAYLOAD) between the packet at offset and buf: into the packet
 * when to_packet, else out of it. A real (not inlined) function on purpose, and the empty asm
 * makes clang forget what the callers proved about the length: so the range check is emitted, on
 * the very register handed to the helper. Inlined, clang checks one copy of the length and passes
 * another, reloaded from the stack; the 6.1 verifier has lost the bounds of that copy and refuses
 * the call (the 6.18 verifier of the build host accepts it - the VM lab caught this).
 */
static __noinline int payload_copy(struct xdp_md *ctx, __u32 offset, __u8 *buf, __u64 len, int to_packet)
{
	asm volatile("" : "+r"(len)); /* what the callers checked is not known here: check it */
	if (len < 1 || len > A2S_CACHE_MAX_PAYLOAD)
		return -1;
	/* 1..1400 in a form every verifier follows: a mask (0..2047), a bound, then +1. */
	len = ((len - 1) & 0x7ff);
	if (len >= A2S_CACHE_MAX_PAYLOAD)
		return -1;
	if (to_packet)
		return bpf_xdp_store_bytes(ctx, offset, buf, len + 1);
	return bpf_xdp_load_bytes(ctx, offset, buf, len + 1);
}

/*
 * Turn the UDP request in the frame into a reply of payload_len bytes back the way it came, with
 * the payload left for the caller to fill. Returns the payload offset, or -1.
 *
 * The reply leaves by XDP_TX to the router that handed over the request: Ethernet addresses
 * swapped, the VLAN tag (if any) kept, no route lookup. The request came over a path to the
 * player, and a flood of queries cannot make the POP ask the FIB once per packet (it costs about
 * 100 ns, more than the rest of the answer). l3_off is ETH_HLEN, or ETH_HLEN + 4 under a tag:
 * callers pass a constant, so each case is inlined with fixed offsets every verifier follows.
 */
static __always_inline int udp_reply_in_place(struct xdp_md *ctx, const __u32 l3_off, __u32 payload_len)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	__u8 mac[ETH_ALEN];
	int frame_len, want_len;
	__be32 addr;
	__be16 port;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	frame_len = (int)(data_end - data);
	want_len = l3_off + sizeof(struct iphdr) + sizeof(struct udphdr) + payload_len;
	if (frame_len != want_len && bpf_xdp_adjust_tail(ctx, want_len - frame_len))
		return -1;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = data + l3_off;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return -1;

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + payload_len);
	ip->frag_off = 0;
	ip->ttl = REPLY_TTL;
	ipv4_set_csum(ip);

	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(sizeof(struct udphdr) + payload_len);
	udp->check = 0;
	return l3_off + sizeof(struct iphdr) + sizeof(struct udphdr);
}

/* Checksum the UDP reply built by udp_reply_in_place, given the sum of its payload. */
static __always_inline int udp_reply_set_csum(struct xdp_md *ctx, const __u32 l3_off, __u64 payload_sum)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + l3_off;
	struct udphdr *udp = (void *)(ip + 1);
	__u64 sum;

	if ((void *)(udp + 1) > data_end)
		return -1;
	sum = udp_pseudo_sum(ip->saddr, ip->daddr, udp->len);
	sum += csum_words(udp, sizeof(*udp));
	udp->check = udp_finish_csum(sum + payload_sum);
	return 0;
}

#endif /* EDGE_UDP_REPLY_H */
