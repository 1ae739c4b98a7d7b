/* SPDX-License-Identifier: MIT */
/*
 * Internet checksums (RFC 1071) for headers the program writes itself.
 *
 * Sums are accumulated in 64 bits over 16-bit words as they sit in memory (so the result is in
 * network byte order when stored back), then folded. Incremental updates (RFC 1624) are used where
 * one field changes; whole sums where the program builds a header from scratch.
 */
#ifndef EDGE_CSUM_H
#define EDGE_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Sum of the 16-bit words of a fixed-size, 2-byte-aligned block (no fold). */
static __always_inline __u64 csum_words(const void *buf, int len)
{
	const __u16 *word = buf;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < len / 2; i++)
		sum += word[i];
	return sum;
}

/* Full checksum of an IPv4 header without options (the program only builds 20-byte headers). */
static __always_inline void ipv4_set_csum(struct iphdr *ip)
{
	ip->check = 0;
	ip->check = ~csum_fold(csum_words(ip, sizeof(*ip)));
}

/* Incremental update of a checksum for one 16-bit field changing from old to new (RFC 1624). */
static __always_inline __u16 csum_replace2(__u16 check, __u16 old, __u16 new)
{
	__u64 sum = (__u16)~check;

	sum += (__u16)~old;
	sum += new;
	return ~csum_fold(sum);
}

/* Sum of the IPv4 pseudo header of a TCP or UDP checksum (addresses, protocol, L4 length). */
static __always_inline __u64 ipv4_pseudo_sum(__be32 saddr, __be32 daddr, __u8 proto, __be16 l4_len)
{
	__u64 sum = 0;

	sum += saddr & 0xffff;
	sum += saddr >> 16;
	sum += daddr & 0xffff;
	sum += daddr >> 16;
	sum += bpf_htons(proto);
	sum += l4_len;
	return sum;
}

/* Sum of the UDP pseudo header (addresses, protocol, UDP length). */
static __always_inline __u64 udp_pseudo_sum(__be32 saddr, __be32 daddr, __be16 udp_len)
{
	return ipv4_pseudo_sum(saddr, daddr, IPPROTO_UDP, udp_len);
}

/* Final UDP checksum from the pseudo header, the UDP header (check field 0) and a payload sum.
 * A computed 0 is sent as 0xffff: 0 would mean "no checksum". */
static __always_inline __u16 udp_finish_csum(__u64 sum)
{
	__u16 check = ~csum_fold(sum);

	return check ? check : 0xffff;
}

#endif /* EDGE_CSUM_H */
