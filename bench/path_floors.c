// SPDX-License-Identifier: MIT
/*
 * The floors of the paths the issues set targets for: the least a program can do, by the rules,
 * to forward a player's packet (forward_floor), to answer an A2S_INFO request from the cache or
 * drop one with a bad cookie (a2s_floor), and to drop or pass what the POP drops or passes
 * (drop_floor), with the state of those rules merged into as few lookups as they allow. They exist
 * only to be timed next to xdp_edge (bench/README.md, "The floors"); the bench checks that each
 * one's verdict and reason are xdp_edge's on the same frame, and the output byte for byte where
 * the frame is rewritten.
 *
 * forward_floor and a2s_floor do, for every packet (admit()):
 *   rule 1  parse the frame: parsing.h, every bounds check, exactly as xdp_edge
 *   rule 2  the source's deny/allow bits: one lookup in an array laid out as edge_src_filter
 *   rules 3, 6  ONE entry per source holding its ban, its rate-limit window and its counters
 *           (the per-player statistics too): one hash lookup, atomic adds, the clock read once
 *   rule 4  the service: one hash lookup (edge_services' key and value)
 * then forward_floor (rule 8): TTL decrement, IPIP encapsulation (encap.h), the next hop kept in
 * an array, XDP_TX; a2s_floor (rule 7): the request's bytes, the cache entry (one hash lookup),
 * its cookie (one SipHash, a2s.h), the reply built in place (udp_reply.h), XDP_TX, or a drop when
 * the cookie is not the POP's (a second SipHash: the previous epoch's cookie is valid too). Every verdict is counted under its reason (enum edge_reason) in a
 * per-CPU array, as every packet must be.
 *
 * What they leave out that xdp_edge does: a port punch lookup (rule 5; a per-source "has punches"
 * flag could skip it for most sources), per-service counters, the admission checks.
 *
 * drop_floor is the inbound pipeline up to its first drop, or to the pass of a packet that is not
 * the POP's to filter, in the order of xdp_edge's reasons (the same frame must get the same one):
 *   parse; the source's deny/allow bits (one array lookup: drop_deny); the source is the POP's
 *   tunnel address (drop_own_source); to the tunnel address, a fragment or a tunnel protocol
 *   (drop_bad_tunnel); the destination is no anycast address: pass_not_ours, after ONE array
 *   lookup (a bit per /24 of the anycast prefixes, laid out as edge_src_filter: BGP carries no
 *   prefix longer than /24, so an announced prefix is always whole /24s). Then, only for what is
 *   ours: the source's one entry (hash lookup) and, only when it has one (its ban, verification
 *   and window expire), the clock, once (drop_banned); the service (hash lookup: drop_no_service); unverified (no live slot for the service, not allowed) while the
 *   service is under attack (its mode, or for "auto" the attack state: one array lookup), counted
 *   per service and CPU for the attack detection, and dropped without a budget (drop_unverified);
 *   the rate window in the source's entry (two atomic adds: drop_rate_limit).
 * What it leaves out that xdp_edge does: the POP's other own addresses (a bit in the source's list
 * entry would spare every other /24 a look), the partly listed /24s' host bitmaps (a second
 * lookup only for such a /24), per-service and per-source total counters (the rate window counts
 * the source's packets), the admission budget and handshake check (a service with a budget reads
 * the payload and a per-CPU bucket first), ICMP types, payload rules (none loaded: one array read
 * in xdp_edge) and the port punch (a punched flow is never rate limited: one more hash lookup).
 * So no implementation of the rules makes these drops for less; a packet not ours costs the parse
 * and two array lookups.
 *
 * tcp_floor is SYN authentication's paths (issue 14, syn_auth.h) for a segment to a TCP service
 * with SYN authentication on, from a source not verified for it: parse; the source's deny/allow
 * bits (one array lookup); the POP's tunnel address as source or destination (compares); the
 * service (hash lookup: a service's address is ours, no anycast lookup); the source's one entry
 * (hash lookup; the clock only when it has one: its ban and its verification expire); SYN
 * authentication on (its mode; for "auto" the attack state, one array lookup); the segment
 * counted per service and CPU (what attack detection reads: an ACK flood must put an "auto"
 * service under attack); the flow's port punch (hash lookup: "verified sources and punched flows
 * pass", issue 14; no clock when there is none); then the TCP flags: anything but a SYN or a RST
 * is dropped (drop_tcp_unverified); a RST's sequence number against every cookie the rule
 * accepts (the UTC clock, the epoch, a SipHash for this epoch and one for the previous:
 * drop_tcp_unverified when none matches); a SYN gets the cookie SYN-ACK built in place (the
 * epoch, one SipHash, syn_auth.h's syn_ack_send, XDP_TX: tx_syn_auth).
 * What it leaves out that xdp_edge does: the POP's other own addresses, the partly listed /24s'
 * host bitmaps, per-service and per-source total counters, the previous key generation's two
 * cookies (the bench POP has none: xdp_edge does not compute them either), the A2S and game
 * echoes admission asks of UDP only, payload rules.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "edge_abi.h"
#include "map_def.h"
#include "parsing.h"
#include "game_proto.h"
#include "csum.h"
#include "encap.h"
#include "a2s.h"
#include "udp_reply.h"
#include "syn_auth.h"
#include "attack_mode.h"

/* Everything one source needs: ban, rate window, counters (written with atomic adds), the one
 * service it is verified for. forward_floor and a2s_floor count every packet in packets/bytes
 * (never reset: they time no window); drop_floor counts them per one-second window. */
struct floor_source {
	__u64 banned_until_ns;
	__u32 window;
	__u32 pad;
	__u64 packets;
	__u64 bytes;
	__u32 verified_service_id;
	__u32 pad2;
	__u64 verified_active_ns;
};

/* A bit per /24 of the anycast prefixes, indexed as edge_src_filter (drop_floor). */
struct floor_dst_entry {
	__u64 anycast_all;
};

struct floor_config {
	__be32 tunnel_addr;
	__u32 pad;
	__u8 smac[ETH_ALEN];    /* the next hop to the backend */
	__u8 dmac[ETH_ALEN];
	__u64 cookie_key[2];    /* as edge_config's */
	__u64 cookie_epoch_ns;
	__s64 cookie_tai_offset_ns; /* as edge_config's: the cookie epoch counts UTC */
	struct edge_rate_limit limits[EDGE_CLASS_COUNT]; /* as edge_config's */
	__u64 verified_idle_ns;
};

/* Written by bench/programs.py (every source bit 0: none listed); read per packet. */
DEFINE_MAP(floor_src_filter, BPF_MAP_TYPE_ARRAY, EDGE_SRC_FILTER_ENTRIES, __u32, struct src_filter_entry);

/* Written by bench/programs.py (the forwarded client's entry); read and counted per packet. */
DEFINE_MAP(floor_sources, BPF_MAP_TYPE_HASH, 65536, __be32, struct floor_source);

/* Written by bench/programs.py (the forwarded service); read per packet. */
DEFINE_MAP(floor_services, BPF_MAP_TYPE_HASH, EDGE_MAX_SERVICES, struct service_key, struct service_value);

/* Written by bench/programs.py (tunnel address, next hop, cookie key and epoch); read per packet. */
DEFINE_MAP(floor_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct floor_config);

/* Written by bench/programs.py (the A2S service's reply); read by a2s_floor per packet. */
DEFINE_MAP(floor_a2s_cache, BPF_MAP_TYPE_HASH, EDGE_MAX_SERVICES, __u32, struct a2s_cache_entry);

/* Written by bench/programs.py (the anycast prefix's /24s); read by drop_floor per packet. */
DEFINE_MAP(floor_dst_filter, BPF_MAP_TYPE_ARRAY, EDGE_SRC_FILTER_ENTRIES, __u32, struct floor_dst_entry);

/* Written by bench/programs.py (none under attack); read by drop_floor for an "auto" service. */
DEFINE_MAP(floor_attack_state, BPF_MAP_TYPE_ARRAY, EDGE_MAX_SERVICES, __u32, struct attack_state);

/* Written by bench/programs.py (none: the bench's spoofed flows have no punch); read by tcp_floor. */
DEFINE_MAP(floor_punches, BPF_MAP_TYPE_LRU_HASH, EDGE_MAX_PUNCHES, struct punch_key, struct punch_value);

/* Written by drop_floor and tcp_floor (unverified packets per service, per CPU: what attack
 * detection reads). */
DEFINE_MAP(floor_unverified, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_MAX_SERVICES, __u32, __u64);

/* Written here (one counter per enum edge_reason); read by bench/programs.py to check the path. */
DEFINE_MAP(floor_verdicts, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_REASON_COUNT, __u32, __u64);

#define FLOOR_PACKETS_PER_SEC 1000000000ULL
#define FLOOR_NSEC_PER_SEC 1000000000ULL

static __always_inline int counted(int action, __u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&floor_verdicts, &reason);

	if (count)
		(*count)++;
	return action;
}

/* Rules 1-4 and 6 for one packet: the service it is for, or NULL with *action set. */
static __always_inline struct service_value *admit(struct xdp_md *ctx, struct packet *pkt, __u64 *now, int *action,
						   __u32 *reason)
{
	struct service_key skey = {};
	struct src_filter_entry *lists;
	struct floor_source *source;
	struct service_value *svc;
	__u32 addr, index;
	__u64 bit;

	*action = XDP_DROP;
	*reason = EDGE_REASON_DROP_DENY;
	if (parse_frame(ctx, pkt) != PARSE_IPV4) {
		*action = XDP_PASS;
		*reason = EDGE_REASON_PASS_NON_IP;
		return NULL;
	}
	addr = bpf_ntohl(pkt->saddr);
	index = addr >> 14;
	bit = 1ULL << ((addr >> 8) & 63);
	lists = bpf_map_lookup_elem(&floor_src_filter, &index);
	if (!lists || (lists->deny_all & bit))
		return NULL;

	*now = bpf_ktime_get_ns();
	source = bpf_map_lookup_elem(&floor_sources, &pkt->saddr);
	*reason = EDGE_REASON_DROP_BANNED;
	if (!source || source->banned_until_ns > *now)
		return NULL;
	*reason = EDGE_REASON_DROP_RATE_LIMIT;
	if (__sync_fetch_and_add(&source->packets, 1) >= FLOOR_PACKETS_PER_SEC)
		return NULL;
	__sync_fetch_and_add(&source->bytes, pkt->ip_tot_len);

	skey.addr = pkt->daddr;
	skey.port = pkt->dport;
	skey.proto = pkt->proto;
	svc = bpf_map_lookup_elem(&floor_services, &skey);
	*reason = EDGE_REASON_DROP_NO_SERVICE;
	return svc;
}

SEC("xdp")
int forward_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct service_value *svc;
	struct floor_config *cfg;
	struct ethhdr *eth;
	__u64 now = 0;
	__u32 reason;
	int action;

	svc = admit(ctx, &pkt, &now, &action, &reason);
	if (!svc)
		return counted(action, reason);
	cfg = one_slot(&floor_config);
	if (!cfg || pkt.ttl <= 1)
		return counted(XDP_DROP, EDGE_REASON_DROP_TTL);
	if (ipv4_decrement_ttl(ctx, pkt.l3_off) || ipip_encap(ctx, &pkt, cfg->tunnel_addr, svc->backend_addr))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);
	return counted(XDP_TX, EDGE_REASON_TX_FORWARD);
}

SEC("xdp")
int a2s_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct a2s_request req = {};
	struct a2s_cache_entry *entry;
	struct service_value *svc;
	struct floor_config *cfg;
	__u32 cookie, id;
	__u64 now = 0, len, epoch;
	__u32 reason;
	int action, off;

	svc = admit(ctx, &pkt, &now, &action, &reason);
	if (!svc)
		return counted(action, reason);
	/* Not an A2S_INFO request with a cookie, or nothing fresh cached: no path the bench times. */
	cfg = one_slot(&floor_config);
	if (!cfg || !cfg->cookie_epoch_ns || pkt.payload_len != A2S_REQUEST_COOKIE_LEN ||
	    bpf_xdp_load_bytes(ctx, pkt.payload_off, &req, A2S_REQUEST_COOKIE_LEN) || !a2s_is_info_request(&req))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	id = svc->id;
	entry = bpf_map_lookup_elem(&floor_a2s_cache, &id);
	if (!entry || entry->updated_ns > now || now - entry->updated_ns >= (__u64)svc->a2s_max_age_ms * 1000000ULL)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	cookie = (__u32)req.cookie[0] | ((__u32)req.cookie[1] << 8) | ((__u32)req.cookie[2] << 16) |
		 ((__u32)req.cookie[3] << 24);
	/* Valid for this epoch and the previous one (the rule): the usual echo costs one SipHash,
	 * a bad cookie two. */
	epoch = edge_cookie_epoch(cfg->cookie_epoch_ns, cfg->cookie_tai_offset_ns);
	if (cookie != a2s_cookie(cfg->cookie_key, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, epoch) &&
	    cookie != a2s_cookie(cfg->cookie_key, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, epoch - 1))
		return counted(XDP_DROP, EDGE_REASON_DROP_BAD_COOKIE);
	len = entry->len;
	if (len < 5 || len > A2S_CACHE_MAX_PAYLOAD || pkt.vlan_tags)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	off = udp_reply_in_place(ctx, sizeof(struct ethhdr), len);
	if (off < 0 || payload_copy(ctx, off, (__u8 *)entry->payload, len, 1) ||
	    udp_reply_set_csum(ctx, sizeof(struct ethhdr), entry->payload_csum))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	return counted(XDP_TX, EDGE_REASON_TX_A2S_CACHED);
}

/* The first steps of every drop floor, in xdp_edge's order: parse; the source lists (a denied
 * source dropped, an allowed one remembered in *allowed); the POP's own tunnel address as a source,
 * and tunnel traffic to it (the return path is no drop floor). FLOOR_GO_ON to go on, else the
 * counted verdict. IPv6 is left out: no bench row. */
#define FLOOR_GO_ON (-1)
static __always_inline int floor_screen(struct xdp_md *ctx, struct packet *pkt, struct floor_config **cfg,
					int *allowed)
{
	struct src_filter_entry *lists;
	__u32 addr, index;
	int rc;

	rc = parse_frame(ctx, pkt);
	if (rc == PARSE_MALFORMED)
		return counted(XDP_DROP, EDGE_REASON_DROP_MALFORMED);
	if (rc != PARSE_IPV4)
		return counted(XDP_PASS, EDGE_REASON_PASS_NON_IP);

	addr = bpf_ntohl(pkt->saddr);
	index = addr >> 14;
	lists = bpf_map_lookup_elem(&floor_src_filter, &index);
	if (!lists)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	if (lists->deny_all & (1ULL << ((addr >> 8) & 63)))
		return counted(XDP_DROP, EDGE_REASON_DROP_DENY);
	*allowed = (lists->allow_all & (1ULL << ((addr >> 8) & 63))) != 0;

	*cfg = one_slot(&floor_config);
	if (!*cfg)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	if (pkt->saddr == (*cfg)->tunnel_addr)
		return counted(XDP_DROP, EDGE_REASON_DROP_OWN_SOURCE);
	if (pkt->daddr == (*cfg)->tunnel_addr &&
	    (pkt->is_fragment || pkt->proto == IPPROTO_IPIP || pkt->proto == IPPROTO_IPV6 || pkt->proto == IPPROTO_GRE))
		return counted(XDP_DROP, EDGE_REASON_DROP_BAD_TUNNEL);
	return FLOOR_GO_ON;
}

SEC("xdp")
int drop_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct service_key skey = {};
	const struct edge_rate_limit *limit;
	struct floor_dst_entry *dst;
	struct service_value *svc;
	struct floor_config *cfg;
	struct floor_source *src;
	__u32 addr, index, id, window, seen, len;
	__u64 now, packets, bytes, *unverified;
	int rc, allowed, verified;

	rc = floor_screen(ctx, &pkt, &cfg, &allowed);
	if (rc != FLOOR_GO_ON)
		return rc;

	addr = bpf_ntohl(pkt.daddr);
	index = addr >> 14;
	dst = bpf_map_lookup_elem(&floor_dst_filter, &index);
	if (!dst || !(dst->anycast_all & (1ULL << ((addr >> 8) & 63))))
		return counted(XDP_PASS, EDGE_REASON_PASS_NOT_OURS);

	/* The clock only for a source with an entry (its ban, its verification and its window
	 * expire): a new source's packet is decided without it. */
	src = bpf_map_lookup_elem(&floor_sources, &pkt.saddr);
	now = src ? bpf_ktime_get_ns() : 0;
	if (!allowed && src && src->banned_until_ns > now)
		return counted(XDP_DROP, EDGE_REASON_DROP_BANNED);
	if (pkt.is_fragment)
		return counted(XDP_DROP, EDGE_REASON_DROP_FRAGMENT);
	if (pkt.ip_hdr_len != sizeof(struct iphdr))
		return counted(XDP_DROP, EDGE_REASON_DROP_IP_OPTIONS);
	skey.addr = pkt.daddr;
	skey.port = pkt.dport;
	skey.proto = pkt.proto;
	svc = bpf_map_lookup_elem(&floor_services, &skey);
	if (!svc)
		return counted(XDP_DROP, EDGE_REASON_DROP_NO_SERVICE);

	id = svc->id;
	verified = allowed || (src && src->verified_service_id == id &&
			       (src->verified_active_ns >= now || now - src->verified_active_ns < cfg->verified_idle_ns));
	if (!verified && service_under_attack(svc, &floor_attack_state)) {
		unverified = bpf_map_lookup_elem(&floor_unverified, &id);
		if (unverified)
			(*unverified)++; /* per-CPU value: no other writer */
		if (!svc->admission.packets_per_sec && !svc->admission.bytes_per_sec)
			return counted(XDP_DROP, EDGE_REASON_DROP_UNVERIFIED);
		if (!game_handshake_shaped(ctx, &pkt, svc->game_protocol))
			return counted(XDP_DROP, EDGE_REASON_DROP_UNVERIFIED);
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* the budget: left out */
	}
	if (!src || allowed)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* a new source, or not limited: no drop */

	if (svc->limit.packets_per_sec || svc->limit.bytes_per_sec)
		limit = &svc->limit;
	else if (pkt.proto == IPPROTO_UDP)
		limit = &cfg->limits[EDGE_CLASS_UDP];
	else if (pkt.proto == IPPROTO_TCP)
		limit = &cfg->limits[EDGE_CLASS_TCP];
	else
		limit = &cfg->limits[pkt.proto == IPPROTO_ICMP ? EDGE_CLASS_ICMP : EDGE_CLASS_OTHER];
	len = pkt.ip_tot_len;
	window = (__u32)(now / FLOOR_NSEC_PER_SEC);
	seen = *(volatile __u32 *)&src->window;
	if (seen != window && __sync_val_compare_and_swap(&src->window, seen, window) == seen) {
		src->packets = 0;
		src->bytes = 0;
	}
	packets = __sync_fetch_and_add(&src->packets, 1) + 1;
	bytes = __sync_fetch_and_add(&src->bytes, len) + len;
	if ((limit->packets_per_sec && packets > limit->packets_per_sec) ||
	    (limit->bytes_per_sec && bytes > limit->bytes_per_sec))
		return counted(XDP_DROP, EDGE_REASON_DROP_RATE_LIMIT);
	return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* within its limit: the forward's floor */
}

SEC("xdp")
int tcp_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct service_key skey = {};
	struct punch_key pkey = {};
	struct service_value *svc;
	struct floor_config *cfg;
	struct floor_source *src;
	struct tcp_head head;
	__u32 id, cookie, seq;
	__u64 now = 0, key[2], epoch, *unverified;
	int rc, allowed, syn_auth_on;
	__u8 flags;

	rc = floor_screen(ctx, &pkt, &cfg, &allowed);
	if (rc != FLOOR_GO_ON)
		return rc;
	if (!cfg->cookie_epoch_ns)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
	if (pkt.proto != IPPROTO_TCP || pkt.is_fragment || pkt.ip_hdr_len != sizeof(struct iphdr))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* drop_floor's paths */
	skey.addr = pkt.daddr;
	skey.port = pkt.dport;
	skey.proto = pkt.proto;
	svc = bpf_map_lookup_elem(&floor_services, &skey);
	if (!svc)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* drop_floor's paths */

	src = bpf_map_lookup_elem(&floor_sources, &pkt.saddr);
	now = src ? bpf_ktime_get_ns() : 0;
	if (!allowed && src && src->banned_until_ns > now)
		return counted(XDP_DROP, EDGE_REASON_DROP_BANNED);
	id = svc->id;
	if (allowed || (src && src->verified_service_id == id &&
			(src->verified_active_ns >= now || now - src->verified_active_ns < cfg->verified_idle_ns)))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* verified: the forward's floor */
	syn_auth_on = svc->syn_auth == EDGE_SYN_AUTH_ALWAYS ||
		      (svc->syn_auth == EDGE_SYN_AUTH_AUTO && service_under_attack(svc, &floor_attack_state));
	if (!syn_auth_on)
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* SYN authentication off: drop_floor's paths */
	unverified = bpf_map_lookup_elem(&floor_unverified, &id);
	if (unverified)
		(*unverified)++; /* per-CPU value: no other writer */
	pkey.service_addr = pkt.daddr;
	pkey.remote_addr = pkt.saddr;
	pkey.service_port = pkt.dport;
	pkey.remote_port = pkt.sport;
	pkey.proto = pkt.proto;
	if (bpf_map_lookup_elem(&floor_punches, &pkey))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* a punched flow passes: no path timed here */

	flags = pkt.tcp_flags & TCP_FLAGS_HANDSHAKE; /* parse_frame's: no helper call */
	if (flags != TCP_FLAG_SYN && (flags & ~TCP_FLAG_ACK) != TCP_FLAG_RST)
		return counted(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	if (bpf_xdp_load_bytes(ctx, pkt.l4_off + 4, &head, sizeof(head)))
		return counted(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	key[0] = cfg->cookie_key[0] ^ SYN_AUTH_KEY_TWEAK;
	key[1] = cfg->cookie_key[1];
	epoch = edge_cookie_epoch(cfg->cookie_epoch_ns, cfg->cookie_tai_offset_ns);
	seq = bpf_ntohl(head.seq);
	cookie = a2s_cookie(key, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, epoch);
	if (flags == TCP_FLAG_SYN) {
		if (cookie == seq + 1 || pkt.ip_tot_len < SYN_AUTH_REPLY_IP_LEN)
			return counted(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
		if (syn_ack_send(ctx, pkt.vlan_tags, ~cookie, cookie) < 0)
			return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR);
		return counted(XDP_TX, EDGE_REASON_TX_SYN_AUTH);
	}
	if (seq == cookie || seq == a2s_cookie(key, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, epoch - 1))
		return counted(XDP_ABORTED, EDGE_REASON_DROP_ERROR); /* a valid RST verifies: no path timed here */
	return counted(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
