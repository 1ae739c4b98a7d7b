// SPDX-License-Identifier: MIT
/*
 * tc_mapper: the game-server host's "IP mapper", so replies leave through the POP the player came
 * in on. Two clsact programs on the host's uplink NIC (the device the IPIP packets cross):
 *
 *   tc_mapper_ingress  IPIP from a known POP to this host's tunnel address, on the device the host
 *                      routes that POP through: remember the inner flow (protocol, player
 *                      address/port, service address/port) -> POP (the outer source) with the
 *                      time, and hand it on (TC_ACT_OK: the kernel's ipip device decapsulates as
 *                      usual). IPIP to the tunnel address from anyone else, or in a POP's name on
 *                      another device, is spoofed: dropped, so it neither re-steers a player's
 *                      replies nor reaches a game server past the POPs' filters.
 *   tc_mapper_egress   IPIP from this host's tunnel address (a game server's reply, already
 *                      encapsulated by the kernel's ipip device): rewrite the outer destination to
 *                      the POP recorded for the reply's flow, or to the default POP when there is
 *                      no live mapping (a master-server heartbeat, a player idle for too long).
 *                      A service marked DSR instead loses its outer header and goes from the
 *                      anycast address straight to the gateway.
 *
 * Why rewrite the outer destination on the NIC rather than bpf_skb_set_tunnel_key on an
 * `external` ipip device:
 *   - it works with the tunnels the ipip_tunnels role already builds (one ordinary ipip device per
 *     POP): routing sends replies into the default POP's tunnel, the mapper re-addresses them;
 *     no second, collect-metadata tunnel whose routes and rp_filter must be kept in step;
 *   - its whole effect is in the packet bytes, so BPF_PROG_TEST_RUN proves it exactly (outer
 *     destination, checksum, inner untouched). A tunnel key set by bpf_skb_set_tunnel_key lives in
 *     a metadata dst that test_run neither takes nor returns: the decision could not be tested
 *     short of a VM;
 *   - the outer source stays the host's tunnel address, which the POP's return path checks.
 *   Cost: the frame keeps the next-hop MACs the kernel resolved for the POP its routing chose,
 *   which is right when every POP is reached through the same gateway (the normal case: across
 *   the internet via the default route); a host with POPs behind different next hops sets
 *   MAPPER_F_FIB_NEXT_HOP and the program asks the FIB for each steered reply.
 *
 * Decisions (tests/bpf/test_tc_mapper.py pins each one):
 *   - A mapping counts only while it is younger than the idle time and its POP is still listed in
 *     mapper_pops; otherwise the default POP is used (and the stale entry is left for the LRU or
 *     the next inbound packet to overwrite: deleting it here would race with ingress refreshing it).
 *   - The latest POP wins: a player whose BGP path moved to another POP gets replies through the
 *     new one from its next packet on.
 *   - Inner fragments have no ports: never learned, and on egress they go to the default POP
 *     (the POP drops fragmented replies anyway; game traffic does not fragment).
 *   - Egress drops our own IPIP whose inner packet is malformed (the POP would drop it too); it
 *     leaves anything that is not our IPIP untouched, malformed or not: not the mapper's to judge.
 *   - Ingress drops only IPIP (whole or fragment) addressed to this host's tunnel address that does
 *     not come from a known POP on that POP's device; everything else, malformed or not, is
 *     counted and handed to the kernel.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mapper_abi.h"
#include "skb_parsing.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Byte offsets inside an IPv4 header, for bpf_skb_store_bytes / bpf_l3_csum_replace. */
#define IP_DADDR_OFF  offsetof(struct iphdr, daddr)
#define IP_CSUM_OFF   offsetof(struct iphdr, check)

static __always_inline int count(struct __sk_buff *skb, __u32 reason, __u32 len, int action)
{
	struct mapper_counter *counter = bpf_map_lookup_elem(&mapper_stats, &reason);

	if (counter) {
		counter->packets++; /* per-CPU value: no other writer */
		counter->bytes += len;
	}
	return action;
}

static __always_inline struct mapper_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mapper_config, &zero);
}

/* The flow an inbound packet belongs to (player -> service). */
static __always_inline void inbound_flow_key(const struct ipip_packet *pkt, struct mapper_flow_key *key)
{
	key->player_addr = pkt->inner_saddr;
	key->service_addr = pkt->inner_daddr;
	key->player_port = pkt->inner_sport;
	key->service_port = pkt->inner_dport;
	key->proto = pkt->inner_proto;
}

/* The same flow seen from a reply (service -> player). */
static __always_inline void reply_flow_key(const struct ipip_packet *pkt, struct mapper_flow_key *key)
{
	key->player_addr = pkt->inner_daddr;
	key->service_addr = pkt->inner_saddr;
	key->player_port = pkt->inner_dport;
	key->service_port = pkt->inner_sport;
	key->proto = pkt->inner_proto;
}

SEC("tc")
int tc_mapper_ingress(struct __sk_buff *skb)
{
	struct ipip_packet pkt = {};
	struct mapper_flow_key key = {};
	struct mapper_flow_value *flow;
	struct mapper_pop_value *pop;
	struct mapper_config *cfg;
	__u32 len = skb->len;
	__u64 now;
	int rc;

	cfg = config();
	if (!cfg || !cfg->tunnel_addr)
		return count(skb, MAPPER_REASON_INGRESS_PASS, len, TC_ACT_OK);
	rc = skb_parse_ipip(skb, &pkt);
	if (rc == SKB_PARSE_NOT_IPIP)
		return count(skb, MAPPER_REASON_INGRESS_PASS, len, TC_ACT_OK);
	if (rc == SKB_PARSE_MALFORMED)
		return count(skb, MAPPER_REASON_INGRESS_MALFORMED, len, TC_ACT_OK);
	if (pkt.outer_daddr != cfg->tunnel_addr)
		return count(skb, MAPPER_REASON_INGRESS_PASS, len, TC_ACT_OK);
	pop = bpf_map_lookup_elem(&mapper_pops, &pkt.outer_saddr);
	if (!pop)
		return count(skb, MAPPER_REASON_INGRESS_UNKNOWN_POP, len, TC_ACT_SHOT);
	/* Outer fragments too: the kernel would reassemble and decapsulate them. */
	if (pop->ifindex != skb->ifindex)
		return count(skb, MAPPER_REASON_INGRESS_WRONG_DEVICE, len, TC_ACT_SHOT);
	if (rc == SKB_PARSE_IPIP_FRAGMENT)
		return count(skb, MAPPER_REASON_INGRESS_FRAGMENT, len, TC_ACT_OK);
	if (rc == SKB_PARSE_BAD_INNER)
		return count(skb, MAPPER_REASON_INGRESS_MALFORMED, len, TC_ACT_OK);
	if (pkt.inner_is_fragment)
		return count(skb, MAPPER_REASON_INGRESS_FRAGMENT, len, TC_ACT_OK);

	inbound_flow_key(&pkt, &key);
	now = bpf_ktime_get_ns();
	flow = bpf_map_lookup_elem(&mapper_flows, &key);
	if (flow) {
		/* Two aligned stores, each atomic; a reader between them sees the new POP with the old
		 * time or the reverse, both of which steer to a POP this flow really used. */
		if (flow->pop_addr != pkt.outer_saddr)
			flow->pop_addr = pkt.outer_saddr;
		flow->last_seen_ns = now;
	} else {
		struct mapper_flow_value fresh = { .pop_addr = pkt.outer_saddr, .last_seen_ns = now };

		bpf_map_update_elem(&mapper_flows, &key, &fresh, BPF_ANY);
	}
	return count(skb, MAPPER_REASON_INGRESS_LEARNED, len, TC_ACT_OK);
}

/* The POP a reply should go to, or 0 for "no live mapping". */
static __always_inline __be32 mapped_pop(const struct mapper_config *cfg, const struct ipip_packet *pkt)
{
	struct mapper_flow_key key = {};
	struct mapper_flow_value *flow;
	__u64 idle_ns = cfg->idle_ns ? cfg->idle_ns : MAPPER_DEFAULT_IDLE_NS;
	__u64 now, last_seen;
	__be32 pop;

	if (pkt->inner_is_fragment)
		return 0;
	reply_flow_key(pkt, &key);
	flow = bpf_map_lookup_elem(&mapper_flows, &key);
	if (!flow)
		return 0;
	pop = flow->pop_addr;
	last_seen = flow->last_seen_ns;
	now = bpf_ktime_get_ns();
	/* last_seen may be a hair ahead of now when ingress on another CPU just refreshed it. */
	if (last_seen < now && now - last_seen >= idle_ns)
		return 0;
	if (!bpf_map_lookup_elem(&mapper_pops, &pop))
		return 0; /* the POP left the inventory: do not keep sending to it */
	return pop;
}

/* Set the outer destination, with the IPv4 header checksum updated to match. */
static __always_inline int set_outer_daddr(struct __sk_buff *skb, const struct ipip_packet *pkt, __be32 daddr)
{
	if (daddr == pkt->outer_daddr)
		return 0;
	if (bpf_l3_csum_replace(skb, pkt->l3_off + IP_CSUM_OFF, pkt->outer_daddr, daddr, sizeof(daddr)))
		return -1;
	return bpf_skb_store_bytes(skb, pkt->l3_off + IP_DADDR_OFF, &daddr, sizeof(daddr), 0);
}

static __always_inline int mac_is_set(const __u8 *mac)
{
	return (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) != 0;
}

/*
 * MAPPER_F_FIB_NEXT_HOP: the next hop towards the POP the reply now goes to. Returns the action:
 * TC_ACT_OK with the frame's MACs set (or left as they were when the FIB has no answer yet, e.g.
 * no neighbour entry: the kernel's next hop is the best guess), a redirect when the route leaves
 * through another device, or -1 when the frame could not be written.
 */
static __always_inline int steer_next_hop(struct __sk_buff *skb, const struct ipip_packet *pkt, __be32 pop)
{
	struct bpf_fib_lookup fib = {};
	__u8 macs[2 * ETH_ALEN];

	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_IPIP;
	fib.tot_len = pkt->inner_tot_len + pkt->outer_hdr_len;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = pkt->outer_saddr;
	fib.ipv4_dst = pop;
	/*
	 * Not BPF_FIB_LOOKUP_OUTPUT: that makes skb->ifindex the output device, and the kernel then
	 * skips every route through another one (a host with a link per POP). Looked up as if the
	 * packet came in here, any device's route answers; the helper wants forwarding on this device.
	 */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	__builtin_memcpy(macs, fib.dmac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return -1;
	return fib.ifindex != skb->ifindex ? bpf_redirect(fib.ifindex, 0) : TC_ACT_OK;
}

/*
 * Direct server return: the inner packet already comes from the anycast address (the game server
 * is bound to it); strip the outer header and address the frame to the gateway. Returns the
 * action, with TC_ACT_SHOT only when the frame was left half-changed.
 */
static __always_inline int direct_return(struct __sk_buff *skb, const struct mapper_config *cfg,
					 const struct ipip_packet *pkt, __u32 len)
{
	struct bpf_fib_lookup fib = {};
	__u8 macs[2 * ETH_ALEN]; /* destination, source: the start of the Ethernet header */
	int fib_rc, redirect = 0;

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
		return count(skb, MAPPER_REASON_EGRESS_ERROR, len, TC_ACT_SHOT);
	if (mac_is_set(cfg->gateway_mac)) {
		__builtin_memcpy(macs, cfg->gateway_mac, ETH_ALEN);
	} else {
		/* As if the host had sent the inner packet itself; on failure (forwarding off, no
		 * neighbour yet) keep the kernel's next hop for the tunnel: usually the same gateway. */
		fib.family = AF_INET;
		fib.l4_protocol = pkt->inner_proto;
		fib.tot_len = pkt->inner_tot_len;
		fib.ifindex = skb->ifindex;
		fib.ipv4_src = pkt->inner_saddr;
		fib.ipv4_dst = pkt->inner_daddr;
		fib_rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
		if (fib_rc == BPF_FIB_LKUP_RET_SUCCESS) {
			__builtin_memcpy(macs, fib.dmac, ETH_ALEN);
			__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
			redirect = fib.ifindex != skb->ifindex;
		}
	}

	if (bpf_skb_adjust_room(skb, -(__s32)pkt->outer_hdr_len, BPF_ADJ_ROOM_MAC, 0))
		return count(skb, MAPPER_REASON_EGRESS_ERROR, len, TC_ACT_SHOT);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return count(skb, MAPPER_REASON_EGRESS_ERROR, len, TC_ACT_SHOT);
	if (redirect)
		return count(skb, MAPPER_REASON_EGRESS_DSR, len, bpf_redirect(fib.ifindex, 0));
	return count(skb, MAPPER_REASON_EGRESS_DSR, len, TC_ACT_OK);
}

static __always_inline int wants_dsr(const struct ipip_packet *pkt)
{
	struct mapper_service_key key = {};
	struct mapper_service_value *svc;

	/* bpf_skb_adjust_room(BPF_ADJ_ROOM_MAC) cuts right after the MAC header the kernel knows,
	 * which is not where an in-band VLAN tag ends: such frames are steered to a POP instead. */
	if (pkt->l3_off != sizeof(struct ethhdr))
		return 0;
	key.addr = pkt->inner_saddr;
	key.port = pkt->inner_sport;
	key.proto = pkt->inner_proto;
	svc = bpf_map_lookup_elem(&mapper_services, &key);
	return svc && (svc->flags & MAPPER_SERVICE_F_DSR);
}

SEC("tc")
int tc_mapper_egress(struct __sk_buff *skb)
{
	struct ipip_packet pkt = {};
	struct mapper_config *cfg;
	__u32 len = skb->len, reason;
	__be32 pop;
	int rc, action;

	cfg = config();
	if (!cfg || !cfg->tunnel_addr)
		return count(skb, MAPPER_REASON_EGRESS_PASS, len, TC_ACT_OK);
	rc = skb_parse_ipip(skb, &pkt);
	/* Whatever is not whole IPIP with a readable outer header is not known to be ours: untouched. */
	if (rc == SKB_PARSE_NOT_IPIP || rc == SKB_PARSE_MALFORMED || rc == SKB_PARSE_IPIP_FRAGMENT)
		return count(skb, MAPPER_REASON_EGRESS_PASS, len, TC_ACT_OK);
	if (pkt.outer_saddr != cfg->tunnel_addr)
		return count(skb, MAPPER_REASON_EGRESS_PASS, len, TC_ACT_OK);
	if (rc == SKB_PARSE_BAD_INNER)
		return count(skb, MAPPER_REASON_EGRESS_MALFORMED, len, TC_ACT_SHOT);

	if (wants_dsr(&pkt))
		return direct_return(skb, cfg, &pkt, len);

	pop = mapped_pop(cfg, &pkt);
	reason = MAPPER_REASON_EGRESS_MAPPED;
	if (!pop) {
		pop = cfg->default_pop;
		reason = MAPPER_REASON_EGRESS_DEFAULTED;
		if (!pop)
			return count(skb, MAPPER_REASON_EGRESS_UNMAPPED, len, TC_ACT_OK);
	}
	if (set_outer_daddr(skb, &pkt, pop))
		return count(skb, MAPPER_REASON_EGRESS_ERROR, len, TC_ACT_SHOT);
	action = TC_ACT_OK;
	if ((cfg->flags & MAPPER_F_FIB_NEXT_HOP) && pop != pkt.outer_daddr) {
		action = steer_next_hop(skb, &pkt, pop);
		if (action < 0)
			return count(skb, MAPPER_REASON_EGRESS_ERROR, len, TC_ACT_SHOT);
	}
	return count(skb, reason, len, action);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
