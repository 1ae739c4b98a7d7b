/* SPDX-License-Identifier: MIT */
/*
 * SYN authentication at the POP for forwarded TCP services (docs/tcp-protection.md).
 *
 * A forwarding POP has no socket to hand a connection to, so it cannot complete handshakes with
 * SYN cookies the way xdp_synproxy does for a local server. Instead it makes the client's own TCP
 * stack prove the address, statelessly:
 *
 *   client                          POP (XDP)                         game server
 *   SYN seq=x          ------>      unverified source:
 *                      <------      SYN-ACK ack=C (C = cookie, deliberately not x+1), no options
 *   (SYN-SENT: an unacceptable ACK; RFC 9293 3.10.7.3: "send a reset <SEQ=SEG.ACK><CTL=RST>")
 *   RST seq=C          ------>      C is this tuple's cookie: source verified, RST dropped
 *   SYN seq=x (its retransmission, same attempt: Linux's a few ms later, others' ~1 s later)
 *                      ------>      verified: forwarded (IPIP)       ------>  SYN
 *
 * A spoofed SYN's SYN-ACK goes to the owner of the address, who never sent the SYN; a spoofer that
 * does not see that SYN-ACK cannot send the RST: its SYNs never reach the game server. The cost is
 * one round trip plus the wait for the client's SYN retransmission on the first connection of a
 * source to the service (docs/tcp-protection.md, "Cost"); afterwards the source is verified (edge_sources) and its SYNs pass at once.
 *
 * The cookie C is the fleet's edge cookie (a2s.h: SipHash-2-4 of the 4-tuple and the UTC epoch,
 * the key generations edge_rules rotates) under a key of its own (each generation's key with
 * SYN_AUTH_KEY_TWEAK xored into its first word), so that a TCP cookie is never an A2S challenge
 * of the same tuple and the other way round. Accepted: the current or the previous generation, in
 * this epoch or the previous one, so a client whose route moves to another POP mid-handshake, or
 * whose RST crosses a key rotation or an epoch boundary, still gets in. Nothing is stored before
 * the RST proves the address: a spoofed flood costs the POP no memory.
 *
 * Never more bytes back than came in: the SYN-ACK is 40 IP bytes (no options), a SYN at least 40
 * (a TCP header is at least 20 bytes; a real SYN carries options and is 52..60). One SYN-ACK per
 * SYN: a reflection of 1 packet per packet, no amplification.
 */
#ifndef EDGE_SYN_AUTH_H
#define EDGE_SYN_AUTH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "edge_abi.h"
#include "csum.h"
#include "a2s.h"
#include "udp_reply.h" /* REPLY_TTL */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define TCP_FLAGS_HANDSHAKE (TCP_FLAG_FIN | TCP_FLAG_SYN | TCP_FLAG_RST | TCP_FLAG_ACK)

/* The SYN-ACK: an IP header and a TCP header without options. */
#define SYN_AUTH_REPLY_IP_LEN (sizeof(struct iphdr) + sizeof(struct tcphdr))
#define SYN_AUTH_WINDOW 65535

/* Xored into the first word of each cookie key generation: the TCP cookie's own key. */
#define SYN_AUTH_KEY_TWEAK 0x7463702d73796e61ULL /* "tcp-syna" */

/* The segment's sequence and acknowledgement numbers and flags (bytes 4..13 of the TCP header). */
struct tcp_head {
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
} __attribute__((packed));

/* The TCP cookie's keys: the current generation's (issues) and the previous one's (accepted; all
 * zero when edge_config has none). */
static __always_inline void syn_auth_keys(const struct edge_config *cfg, __u64 key[2], __u64 previous[2])
{
	key[0] = cfg->cookie_key[0] ^ SYN_AUTH_KEY_TWEAK;
	key[1] = cfg->cookie_key[1];
	previous[0] = 0;
	previous[1] = 0;
	if (edge_cookie_key_set(cfg->cookie_key_previous)) {
		previous[0] = cfg->cookie_key_previous[0] ^ SYN_AUTH_KEY_TWEAK;
		previous[1] = cfg->cookie_key_previous[1];
	}
}

/*
 * Turn the SYN in the frame into the cookie SYN-ACK, back the way it came (XDP_TX: Ethernet
 * addresses swapped, VLAN tags kept, like the A2S answers of udp_reply.h). l3_off is a constant
 * per caller (14, 18 or 22), so every header access has a fixed offset any verifier follows.
 * The caller checked that the SYN's IP packet is at least SYN_AUTH_REPLY_IP_LEN long and has no
 * IP options. Returns the reply's frame length, or -1.
 */
static __always_inline int syn_ack_in_place(struct xdp_md *ctx, const __u32 l3_off, __u32 seq, __u32 ack)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int frame_len = (int)(data_end - data);
	int want_len = l3_off + SYN_AUTH_REPLY_IP_LEN;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u8 mac[ETH_ALEN];
	__be32 addr;
	__be16 port;
	__u64 sum;

	if (frame_len < want_len)
		return -1; /* never more bytes than the SYN */
	if (frame_len != want_len && bpf_xdp_adjust_tail(ctx, want_len - frame_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = data + l3_off;
	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return -1;

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(SYN_AUTH_REPLY_IP_LEN);
	ip->frag_off = 0;
	ip->ttl = REPLY_TTL;
	ipv4_set_csum(ip);

	port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;
	tcp->seq = bpf_htonl(seq);
	tcp->ack_seq = bpf_htonl(ack);
	/* Data offset 5 (no options, reserved bits 0), flags SYN and ACK. */
	*((__u8 *)tcp + 12) = 5 << 4;
	*((__u8 *)tcp + 13) = TCP_FLAG_SYN | TCP_FLAG_ACK;
	tcp->window = bpf_htons(SYN_AUTH_WINDOW);
	tcp->check = 0;
	tcp->urg_ptr = 0;
	sum = ipv4_pseudo_sum(ip->saddr, ip->daddr, IPPROTO_TCP, bpf_htons(sizeof(struct tcphdr)));
	sum += csum_words(tcp, sizeof(*tcp));
	tcp->check = ~csum_fold(sum);
	return want_len;
}

/* syn_ack_in_place with the frame's l3_off as a constant (no, one or two VLAN tags). */
static __always_inline int syn_ack_send(struct xdp_md *ctx, __u8 vlan_tags, __u32 seq, __u32 ack)
{
	if (vlan_tags == 2)
		return syn_ack_in_place(ctx, sizeof(struct ethhdr) + 8, seq, ack);
	if (vlan_tags == 1)
		return syn_ack_in_place(ctx, sizeof(struct ethhdr) + 4, seq, ack);
	return syn_ack_in_place(ctx, sizeof(struct ethhdr), seq, ack);
}

#endif /* EDGE_SYN_AUTH_H */
