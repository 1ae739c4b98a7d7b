/* SPDX-License-Identifier: MIT */
/*
 * Parsing an IPv4-in-IPv4 packet on a TC (__sk_buff) hook.
 *
 * parsing.h works on an xdp_md with direct packet access. Here every header is copied out with
 * bpf_skb_load_bytes() instead: on TC the headers may sit in paged data (GRO'd or locally built
 * skbs), where direct access would first need bpf_skb_pull_data(); a copy works wherever the bytes
 * are and fails cleanly (a negative return) when the packet is shorter than asked.
 *
 * skb_parse_ipip() answers:
 *   SKB_PARSE_IPIP       a well-formed outer IPv4 header with protocol IPIP, not a fragment, and a
 *                        well-formed inner IPv4 header whose length is exactly the outer payload;
 *                        ports filled for unfragmented TCP/UDP with a complete header;
 *   SKB_PARSE_NOT_IPIP   anything else that is not broken: ARP, IPv6, IPv4 of another protocol;
 *   SKB_PARSE_IPIP_FRAGMENT  an outer IPIP fragment: only the outer addresses are filled in (its
 *                        inner header cannot be trusted to be whole), so the caller can still
 *                        tell whose packet the kernel would reassemble and decapsulate;
 *   SKB_PARSE_MALFORMED  truncated or inconsistent Ethernet, VLAN or outer IPv4 header;
 *   SKB_PARSE_BAD_INNER  a well-formed outer IPIP header (outer addresses filled in, so the caller
 *                        knows whose packet it is) around a truncated or inconsistent inner IPv4
 *                        header, or a TCP/UDP header that is missing or does not fit it.
 * Ethernet padding after the outer total length is allowed. One in-band 802.1Q/802.1ad tag is
 * skipped (with offload the kernel keeps tags out of the frame).
 */
#ifndef SKB_PARSING_H
#define SKB_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SKB_ETH_P_8021Q_BE   bpf_htons(0x8100)
#define SKB_ETH_P_8021AD_BE  bpf_htons(0x88A8)
#define SKB_IP_MF_BE         bpf_htons(0x2000)
#define SKB_IP_OFFSET_BE     bpf_htons(0x1FFF)

enum skb_parse_result {
	SKB_PARSE_IPIP = 0,
	SKB_PARSE_NOT_IPIP,
	SKB_PARSE_MALFORMED,
	SKB_PARSE_BAD_INNER,
	SKB_PARSE_IPIP_FRAGMENT,
};

/* An IPIP packet as the mapper sees it. Offsets are from the start of the frame. */
struct ipip_packet {
	__u32 l3_off;          /* outer IPv4 header: 14, or 18 with an in-band VLAN tag */
	__u32 outer_hdr_len;   /* outer IHL * 4 */
	__u32 inner_off;       /* inner IPv4 header */
	__u32 inner_tot_len;
	__be32 outer_saddr;
	__be32 outer_daddr;
	__be32 inner_saddr;
	__be32 inner_daddr;
	__be16 inner_sport;    /* 0 unless unfragmented TCP/UDP */
	__be16 inner_dport;
	__u8 inner_proto;
	__u8 inner_is_fragment;
	__u8 pad[2];
};

/* Where the IPv4 header starts, or -1 (malformed) / 0 (not IPv4). */
static __always_inline int skb_l3_offset(struct __sk_buff *skb)
{
	struct ethhdr eth;
	__be16 proto;
	int l3_off = sizeof(eth);

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return -1;
	proto = eth.h_proto;
	if (proto == SKB_ETH_P_8021Q_BE || proto == SKB_ETH_P_8021AD_BE) {
		__be16 tag[2]; /* TCI, encapsulated protocol */

		if (bpf_skb_load_bytes(skb, sizeof(eth), tag, sizeof(tag)))
			return -1;
		proto = tag[1];
		l3_off += sizeof(tag);
	}
	return proto == bpf_htons(ETH_P_IP) ? l3_off : 0;
}

static __always_inline int skb_parse_ipip(struct __sk_buff *skb, struct ipip_packet *pkt)
{
	struct iphdr outer, inner;
	__u32 available, inner_hdr_len;
	int l3_off = skb_l3_offset(skb);

	if (l3_off < 0)
		return SKB_PARSE_MALFORMED;
	if (l3_off == 0)
		return SKB_PARSE_NOT_IPIP;
	pkt->l3_off = l3_off;

	if (bpf_skb_load_bytes(skb, l3_off, &outer, sizeof(outer)))
		return SKB_PARSE_MALFORMED;
	if (outer.version != 4 || outer.ihl < 5)
		return SKB_PARSE_MALFORMED;
	available = skb->len > (__u32)l3_off ? skb->len - l3_off : 0;
	pkt->outer_hdr_len = outer.ihl * 4;
	if (bpf_ntohs(outer.tot_len) < pkt->outer_hdr_len || bpf_ntohs(outer.tot_len) > available)
		return SKB_PARSE_MALFORMED;
	if (outer.protocol != IPPROTO_IPIP)
		return SKB_PARSE_NOT_IPIP;
	pkt->outer_saddr = outer.saddr;
	pkt->outer_daddr = outer.daddr;
	if (outer.frag_off & (SKB_IP_MF_BE | SKB_IP_OFFSET_BE))
		return SKB_PARSE_IPIP_FRAGMENT;

	/* l3_off <= 18 and outer_hdr_len <= 60: every offset below is a small constant range. */
	pkt->inner_off = l3_off + pkt->outer_hdr_len;
	if (bpf_skb_load_bytes(skb, pkt->inner_off, &inner, sizeof(inner)))
		return SKB_PARSE_BAD_INNER;
	if (inner.version != 4 || inner.ihl < 5)
		return SKB_PARSE_BAD_INNER;
	inner_hdr_len = inner.ihl * 4;
	pkt->inner_tot_len = bpf_ntohs(inner.tot_len);
	if (pkt->inner_tot_len != bpf_ntohs(outer.tot_len) - pkt->outer_hdr_len || pkt->inner_tot_len < inner_hdr_len)
		return SKB_PARSE_BAD_INNER;
	pkt->inner_saddr = inner.saddr;
	pkt->inner_daddr = inner.daddr;
	pkt->inner_proto = inner.protocol;
	pkt->inner_is_fragment = (inner.frag_off & (SKB_IP_MF_BE | SKB_IP_OFFSET_BE)) != 0;
	pkt->inner_sport = 0;
	pkt->inner_dport = 0;
	if (pkt->inner_is_fragment)
		return SKB_PARSE_IPIP;

	if (inner.protocol == IPPROTO_UDP || inner.protocol == IPPROTO_TCP) {
		__u32 l4_len = pkt->inner_tot_len - inner_hdr_len;
		__u32 need = inner.protocol == IPPROTO_UDP ? sizeof(struct udphdr) : sizeof(struct tcphdr);
		__be16 ports[2];

		if (l4_len < need)
			return SKB_PARSE_BAD_INNER;
		if (bpf_skb_load_bytes(skb, pkt->inner_off + inner_hdr_len, ports, sizeof(ports)))
			return SKB_PARSE_BAD_INNER;
		pkt->inner_sport = ports[0];
		pkt->inner_dport = ports[1];
	}
	return SKB_PARSE_IPIP;
}

#endif /* SKB_PARSING_H */
