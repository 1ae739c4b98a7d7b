/* SPDX-License-Identifier: MIT */
/*
 * The ICMPv4 header and the constants the programs use.
 *
 * Why not <linux/icmp.h>: that UAPI header pulls in <linux/if.h>, which includes glibc's
 * <sys/socket.h> and, through it, <gnu/stubs-32.h> (the BPF target is neither 64-bit x86 nor
 * any glibc target). A BPF object must not depend on which libc headers the build machine has
 * (a fresh Debian 12 has no 32-bit ones), so the few fields we need are spelled out here, as
 * RFC 792 defines them.
 */
#ifndef EDGE_ICMP_HDR_H
#define EDGE_ICMP_HDR_H

#include <linux/types.h>

#define ICMP_ECHOREPLY      0
#define ICMP_DEST_UNREACH   3
#define ICMP_FRAG_NEEDED    4  /* code of ICMP_DEST_UNREACH: fragmentation needed and DF set */
#define ICMP_ECHO           8

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
		__u8 reserved[4];
	} un;
};

#endif /* EDGE_ICMP_HDR_H */
