/* SPDX-License-Identifier: MIT */
/*
 * Payload rules (anycast_edge_filters.rules): the operator's ordered list, matched against an
 * inbound packet to a service. First match wins. See struct payload_rule (edge_abi.h) for the
 * fields and docs/payload-rules.md for the semantics and examples.
 *
 * The list is data, not code: the matcher is one bpf_loop() over the map (kernel >= 5.17; Debian
 * 12's 6.1 has it), so the program and its verification stay the same size with 0 or 256 rules
 * (XDP-Firewall compiles its rules into the program and fails to load as they grow). The loop
 * stops at the list's end (the first empty entry) or at the first rule that matches: a packet
 * costs the rules before its match and nothing after it; a packet no rule matches costs every
 * rule of the list (a lookup of an inlined array and a few compares each, plus one
 * bpf_xdp_load_bytes() for a rule with a payload match whose offset is inside the packet).
 *
 * Actions, as the caller applies them (xdp_edge.c, inbound_ipv4):
 *   drop   dropped, reason drop_rule;
 *   pass   the rest of the list is skipped; the packet goes on through the rest of the pipeline
 *          (port punch, rate limit, A2S) exactly as if no rule had matched. It never skips what
 *          came before the rules (deny list, own source, bans, ICMP type, admission): to exempt
 *          a source from limits, the allow list is the one place.
 *   limit  counted per (source, rule) in one-second windows (edge_rule_limits); over the rule's
 *          limit_pps / limit_bps dropped as drop_rule (no ban), else on through the pipeline like
 *          pass. Allow-listed sources are never limited (the allow list exempts from limits).
 * Every match is counted in edge_payload_rule_stats at the rule's position.
 */
#ifndef EDGE_PAYLOAD_RULES_H
#define EDGE_PAYLOAD_RULES_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "edge_abi.h"
#include "edge_maps.h"
#include "parsing.h"

/* What the rules look at, read once per packet; the loop's callback reads it through a pointer. */
struct rule_match {
	struct xdp_md *xdp;
	__u32 base;         /* the bank's first entry in edge_payload_rules */
	__u32 payload_off;  /* first byte after the L4 header */
	__u32 payload_len;  /* L4 payload bytes inside the IP total length (never Ethernet padding) */
	__u16 sport;        /* host byte order */
	__u16 dport;
	__u16 ip_len;
	__u8 proto;
	__u8 ttl;
	__u8 tcp_flags;     /* TCP only; 0 otherwise */
	__u8 verified;
	__u8 pad[2];
	__s32 matched;      /* position of the first matching rule; -1: none */
};

static __always_inline int rule_range_holds(__u32 min, __u32 max, __u32 value)
{
	return value >= min && value <= max;
}

static __always_inline int payload_rule_matches(const struct rule_match *m, const struct payload_rule *rule)
{
	__u64 window[2] = {};
	__u32 len, offset;

	if (rule->proto && rule->proto != m->proto)
		return 0;
	if (rule->verified == EDGE_RULE_SOURCE_VERIFIED && !m->verified)
		return 0;
	if (rule->verified == EDGE_RULE_SOURCE_UNVERIFIED && m->verified)
		return 0;
	if (!rule_range_holds(rule->dport_min, rule->dport_max, m->dport) ||
	    !rule_range_holds(rule->sport_min, rule->sport_max, m->sport) ||
	    !rule_range_holds(rule->len_min, rule->len_max, m->ip_len) ||
	    !rule_range_holds(rule->ttl_min, rule->ttl_max, m->ttl))
		return 0;
	if (rule->tcp_flags_mask &&
	    (m->proto != IPPROTO_TCP || (m->tcp_flags & rule->tcp_flags_mask) != rule->tcp_flags_value))
		return 0;
	len = rule->payload_len;
	if (!len)
		return 1;
	if (len > EDGE_RULE_PAYLOAD_MAX)
		return 0;
	offset = rule->payload_offset;
	/* Bytes past the IP packet's end are not the packet's: a rule that would read them does not
	 * match (whatever Ethernet padding or junk follows). */
	if (offset + len > m->payload_len)
		return 0;
	/* A size the verifier can prove is 1..16: the kernel of Debian 12 (6.1) refuses a helper size
	 * that may be zero ("invalid zero-sized read"), and the compiler's form of the checks above
	 * loses the lower bound (newer kernels accept a zero size). The barrier keeps clang from
	 * folding the mask away, since it knows len is already in range. */
	asm volatile("" : "+r"(len));
	len = ((len - 1) & (EDGE_RULE_PAYLOAD_MAX - 1)) + 1;
	if (bpf_xdp_load_bytes(m->xdp, m->payload_off + offset, window, len))
		return 0;
	/* The mask is zero past payload_len, and the value is stored masked (edge_rules packs both). */
	return (window[0] & *(const __u64 *)&rule->payload_mask[0]) == *(const __u64 *)&rule->payload_value[0] &&
	       (window[1] & *(const __u64 *)&rule->payload_mask[8]) == *(const __u64 *)&rule->payload_value[8];
}

/* bpf_loop callback: rule `position` of the bank. 1 stops the loop (the list's end, or a match). */
static long payload_rule_step(__u32 position, void *data)
{
	struct rule_match *m = data;
	__u32 key = m->base + position;
	struct payload_rule *rule = bpf_map_lookup_elem(&edge_payload_rules, &key);

	if (!rule || rule->action == EDGE_RULE_END)
		return 1;
	if (!payload_rule_matches(m, rule))
		return 0;
	m->matched = position;
	return 1;
}

/* Has this source sent more than the limit rule at `position` lets through this second? Atomic
 * counts: two CPUs receiving the same source never lose a count. */
static __always_inline int rule_limit_exceeded(const struct payload_rule *rule, __u32 position,
					       const struct packet *pkt, __u64 now)
{
	struct rule_limit_key key = { .saddr = pkt->saddr, .window = (__u32)(now / 1000000000ULL),
				      .rule = (__u16)position };
	struct rule_limit_value *counter = bpf_map_lookup_elem(&edge_rule_limits, &key);
	__u64 packets, bytes, len = pkt->ip_tot_len;

	if (!counter) {
		struct rule_limit_value first = { .packets = 1, .bytes = len };

		if (bpf_map_update_elem(&edge_rule_limits, &key, &first, BPF_NOEXIST) == 0) {
			packets = 1;
			bytes = len;
			goto check;
		}
		counter = bpf_map_lookup_elem(&edge_rule_limits, &key);
		if (!counter)
			return 0;
	}
	packets = __sync_fetch_and_add(&counter->packets, 1) + 1;
	bytes = __sync_fetch_and_add(&counter->bytes, len) + len;
check:
	return (rule->limit_pps && packets > rule->limit_pps) || (rule->limit_bps && bytes > rule->limit_bps);
}

/*
 * Run the packet (to a service, unfragmented, no IP options: parse_l4 ran) through the rules.
 * verified: whether the source counts as verified for the service. allowed: whether it is on the
 * allow list (never limited). Returns 1 when a rule drops it (reason drop_rule), 0 when it goes on.
 */
static __always_inline int payload_rules_drop(struct xdp_md *ctx, const struct packet *pkt, int verified,
					      int allowed, __u64 now)
{
	struct rule_match m = {};
	struct payload_rule_bank *bank;
	struct payload_rule *rule;
	struct edge_counter *hits;
	__u32 zero = 0, key, position;

	bank = bpf_map_lookup_elem(&edge_payload_rule_bank, &zero);
	if (!bank)
		return 0;
	m.base = (bank->bank & 1) * EDGE_MAX_PAYLOAD_RULES;
	/* An empty list costs this one lookup more. */
	rule = bpf_map_lookup_elem(&edge_payload_rules, &m.base);
	if (!rule || rule->action == EDGE_RULE_END)
		return 0;

	m.xdp = ctx;
	m.payload_off = pkt->payload_off;
	m.payload_len = pkt->payload_len;
	m.sport = bpf_ntohs(pkt->sport);
	m.dport = bpf_ntohs(pkt->dport);
	m.ip_len = pkt->ip_tot_len;
	m.proto = pkt->proto;
	m.ttl = pkt->ttl;
	m.verified = !!verified;
	m.matched = -1;
	if (pkt->proto == IPPROTO_TCP)
		m.tcp_flags = pkt->tcp_flags; /* parse_l4's: CWR ECE URG ACK PSH RST SYN FIN */
	bpf_loop(EDGE_MAX_PAYLOAD_RULES, payload_rule_step, &m, 0);
	if (m.matched < 0)
		return 0;

	position = (__u32)m.matched;
	key = m.base + position;
	rule = bpf_map_lookup_elem(&edge_payload_rules, &key);
	hits = bpf_map_lookup_elem(&edge_payload_rule_stats, &position);
	if (!rule)
		return 0;
	if (hits) {
		hits->packets++; /* per-CPU value: no other writer */
		hits->bytes += pkt->frame_len;
	}
	if (rule->action == EDGE_RULE_DROP)
		return 1;
	if (rule->action == EDGE_RULE_LIMIT && !allowed)
		return rule_limit_exceeded(rule, position, pkt, now);
	return 0;
}

#endif /* EDGE_PAYLOAD_RULES_H */
