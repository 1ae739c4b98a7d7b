// SPDX-License-Identifier: MIT
/*
 * xdp_edge: the POP's data plane, attached to the uplink NIC.
 *
 * Inbound (internet -> anycast service), in this order:
 *   parse (up to two VLAN tags) -> deny list -> allow list (both one lookup: source_lists_of) ->
 *   the POP's own address as source? (dropped) -> to the tunnel address: the return path, or
 *   dropped when it is tunnel traffic the return path does not take -> nothing of the destination's
 *   /24 ours (edge_dst_pass: one array lookup)? passed to the kernel -> service lookup (a miss:
 *   anycast prefix? else the kernel's) -> the source's one entry in edge_sources (only for
 *   traffic to a service or an anycast prefix): temporary ban, then counted -> fragment / IP
 *   options / no service (dropped) -> ICMP other than echo (dropped) -> admission: verified for
 *   the service (allow list, a live slot, or echoing its game server's challenge or an edge
 *   cookie), else, under attack, handshake-shaped and within the budget (dropped:
 *   drop_unverified); unverified TCP while
 *   SYN authentication is on, on no live punch: answered or dropped by syn_auth() -> payload rules
 *   (payload_rules.h: drop, or a per-source limit) -> a minecraft service's first data segment of a
 *   flow (the one holding byte ISN + 1; a later one is not judged, unless SYNs with two ISNs came
 *   and no SYN-ACK was seen here) must be its handshake
 *   (mc_proto.h; else drop_handshake, the source's verification
 *   revoked, only when the segment acknowledges the backend's SYN-ACK: other data
 *   drop_handshake_unacked, nobody revoked; where the SYN-ACK left by another POP, a handshake
 *   still passes) -> an accepted source without an entry gets one -> port punch -> rate limit (and ban), in the same entry -> A2S challenge/cache (a valid
 *   cookie verifies) -> IPIP to the backend, next hop from the FIB (its answer cached per CPU for
 *   100 ms: backend_next_hop); or, for a backend whose pair is WireGuard (edge_wireguard_pairs),
 *   XDP_PASS marked with the pair's device, for the uplink's TC to redirect (forward_to_wireguard,
 *   tc_wireguard_redirect.c). A frame that arrived with that mark is never passed (finish).
 * Return path (IPIP to the POP's tunnel address, unfragmented, on a device that carries IPIP):
 *   known backend? -> inner source is that backend's service? -> next hop from the FIB -> TTL ->
 *   decapsulate -> player; only then, for a reply that leaves, store the snooped A2S reply
 *   (info, players or rules) and the game server's challenge to the player, and, when the reply
 *   is of an established session, learn the port punch and verify the player by punch; a
 *   minecraft service's SYN-ACK teaches its flow's edge_mc_flows entry the player's ACK.
 *
 * Decisions (tests/bpf pins each one):
 *   - Fragments and IPv4 options to an anycast address are dropped (reasons "fragment",
 *     "ip_options"): game traffic uses neither, a non-first fragment has no ports to look up, and
 *     options are a classic way to slip past filters that assume 20-byte headers. Fragments and
 *     options to anything else go to the kernel untouched.
 *   - A packet to a service's (protocol, address, port) is the service's: the anycast prefixes are
 *     asked only when no service matches (inventory validation keeps services inside them).
 *   - IPv6 and non-IP go to the kernel, except IPv6 to an anycast prefix (no IPv6 services yet):
 *     dropped as "no_service".
 *   - A denied source is dropped whatever its destination (the POP's own addresses included);
 *     the allow list exempts from bans and rate limits, never from the deny list.
 *   - Bans and rate limits apply only to traffic to a service or an anycast prefix, never to the
 *     POP's own traffic: a source banned by spoofed floods in its name (a BGP neighbour) still
 *     reaches the POP (BGP, BFD). A ban is only ever created by traffic to a service.
 *   - Frames the program forwards are untagged; the FIB picks the egress device. The A2S answers
 *     go back the way their request came (XDP_TX, Ethernet addresses swapped, VLAN tags kept).
 *   - The return path trusts the path, nothing else (docs/data-plane.md, "Trust model"): IPIP is
 *     taken only on the devices user space flags as carrying it (edge_tunnel_ifaces: the
 *     underlay devices, else the uplink), only whole, only from a known backend. Other IPIP,
 *     GRE, 6in4 and every fragment to the tunnel address are dropped (drop_bad_tunnel): passed
 *     on, the kernel's ipip device would reassemble and forward them past every filter.
 *   - A packet whose source is one of the POP's own addresses (the tunnel address, the
 *     addresses on its interfaces: edge_own_addrs) is dropped on every device the program runs
 *     on: nothing the POP sends comes back in through it, and the kernel's accept_local (needed
 *     for the encapsulated packets the program hands it) must not let spoofed ones in.
 *   - Two VLAN tags (802.1ad + 802.1Q) are parsed and the packet filtered like any other; the
 *     A2S answers keep both tags. A third tag is malformed (dropped), never passed around the
 *     filters to a VLAN device of the kernel.
 *   - An ICMP service forwards echo requests only; no ICMP error is ever answered with one.
 *   - The A2S challenge is issued only while the cache holds a fresh reply; otherwise the request
 *     goes to the game server, which runs its own challenge. A request carrying a challenge is
 *     answered from the cache only if the challenge is the fleet's cookie; a wrong one is dropped
 *     while the cache is fresh (it cannot be ours), forwarded while it is not (it is the game
 *     server's own). A2S_INFO, A2S_PLAYER and A2S_RULES each have their own cache entry and the
 *     same cookie; what is not exactly one of those requests (other lengths included) goes to
 *     the game server. Split (FE FF FF FF) replies are never cached.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "icmp_hdr.h"
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "edge_abi.h"
#include "edge_maps.h"
#include "parsing.h"
#include "csum.h"
#include "encap.h"
#include "a2s.h"
#include "game_proto.h"
#include "mc_proto.h"
#include "udp_reply.h"
#include "payload_rules.h"
#include "syn_auth.h"
#include "attack_mode.h"

#define NSEC_PER_SEC 1000000000ULL
#define NSEC_PER_MSEC 1000000ULL
#define DEFAULT_COOKIE_EPOCH_NS (30 * NSEC_PER_SEC)
#define DEFAULT_VERIFIED_IDLE_NS (600 * NSEC_PER_SEC) /* edge_config.verified_idle_ns 0: 10 minutes */
/* An admission rate above this (per second) is read as this: credit * 1e9 must fit in a u64. */
#define ADMISSION_MAX_RATE 18000000000ULL

/* Outcome of a pipeline stage that may end the packet's journey. */
struct verdict {
	int action;   /* XDP_* */
	__u32 reason; /* enum edge_reason */
};

static __always_inline struct verdict make_verdict(int action, __u32 reason)
{
	struct verdict v = { .action = action, .reason = reason };
	return v;
}

/* Does the frame, as it arrived, carry the WireGuard handoff's destination address (struct
 * edge_wireguard_handoff)? Asked only of frames about to be passed to the kernel. */
static __always_inline int wireguard_handoff_forged(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return is_wireguard_handoff_dest(eth->h_dest);
}

static __always_inline int finish(struct xdp_md *ctx, const struct packet *pkt, struct verdict v)
{
	__u32 reason;
	struct edge_counter *counter;

	/* Only the forward to a WireGuard pair hands a frame to the uplink's TC with the handoff's
	 * address: whatever else would be passed with it came from the wire. */
	if (v.action == XDP_PASS && v.reason != EDGE_REASON_TX_FORWARD_WIREGUARD && wireguard_handoff_forged(ctx))
		v = make_verdict(XDP_DROP, EDGE_REASON_DROP_FORGED_HANDOFF);
	reason = v.reason;
	counter = bpf_map_lookup_elem(&edge_reason_stats, &reason);

	if (counter) {
		counter->packets++; /* per-CPU value: no other writer */
		counter->bytes += pkt->frame_len;
	}
	return v.action;
}

static __always_inline int lpm_v4_match(void *map, __be32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(map, &key) != NULL;
}

/* Is addr (host byte order) among the hosts of its /24 in a list? Asked only when the /24's "some"
 * bit is set. */
static __always_inline int src_host_listed(__u32 addr, __u32 list)
{
	struct src_hosts_key key = { .net24 = addr >> 8, .list = list };
	struct src_hosts_value *hosts = bpf_map_lookup_elem(&edge_src_hosts, &key);
	__u32 host = addr & 0xff;

	if (!hosts)
		return 0;
	return (hosts->bits[(host >> 6) & 3] >> (host & 63)) & 1;
}

/* Where the source stands in the deny and allow lists: one array lookup, plus one hash lookup
 * when its /24 is only partly listed. The cost does not depend on how many prefixes are loaded. */
struct source_lists {
	int denied;
	int allowed;
};

static __always_inline struct source_lists source_lists_of(__be32 saddr)
{
	struct source_lists lists = {};
	__u32 addr = bpf_ntohl(saddr);
	__u32 index = addr >> 14; /* (addr >> 8) / EDGE_SRC_NETS_PER_ENTRY */
	__u64 bit = 1ULL << ((addr >> 8) & (EDGE_SRC_NETS_PER_ENTRY - 1));
	struct src_filter_entry *entry = bpf_map_lookup_elem(&edge_src_filter, &index);

	if (!entry) {
		/* Not for any address (the index is < 2^18), but the verifier wants the case: the exact
		 * prefixes answer the same, slower. It also binds the records to the program, so that
		 * they are pinned, reused and checked with it like every other map. */
		lists.denied = lpm_v4_match(&edge_deny_v4, saddr);
		lists.allowed = !lists.denied && lpm_v4_match(&edge_allow_v4, saddr);
		return lists;
	}
	if ((entry->deny_all & bit) || ((entry->deny_some & bit) && src_host_listed(addr, EDGE_SRC_LIST_DENY))) {
		lists.denied = 1;
		return lists; /* deny beats allow: no need to look further */
	}
	lists.allowed = (entry->allow_all & bit) ||
			((entry->allow_some & bit) && src_host_listed(addr, EDGE_SRC_LIST_ALLOW));
	return lists;
}

/* Is no address of the destination's /24 ours (edge_dst_pass: no anycast prefix, no service)?
 * One array lookup, where the service's hash lookup and the anycast prefixes' trie would miss. */
static __always_inline int dest_not_ours(__be32 daddr)
{
	__u32 addr = bpf_ntohl(daddr);
	__u32 index = addr >> 14; /* (addr >> 8) / EDGE_SRC_NETS_PER_ENTRY, as source_lists_of */
	__u64 *word = bpf_map_lookup_elem(&edge_dst_pass, &index);

	return word && ((*word >> ((addr >> 8) & (EDGE_SRC_NETS_PER_ENTRY - 1))) & 1);
}

static __always_inline __u8 proto_class(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return EDGE_CLASS_TCP;
	if (proto == IPPROTO_UDP)
		return EDGE_CLASS_UDP;
	if (proto == IPPROTO_ICMP)
		return EDGE_CLASS_ICMP;
	return EDGE_CLASS_OTHER;
}

/* The source's one entry in edge_sources (ban, rate window, counters), or NULL: the one lookup a
 * packet to our services and prefixes costs. */
static __always_inline struct source_state *source_lookup(__be32 saddr)
{
	return bpf_map_lookup_elem(&edge_sources, &saddr);
}

/* Count a packet in its source's entry (top talkers). The counters are atomic: two CPUs
 * receiving the same source never lose a count; last_seen_ns is an aligned 64-bit store (atomic;
 * the last writer wins). */
static __always_inline void source_count(struct source_state *src, __u32 bytes, __u64 now)
{
	__sync_fetch_and_add(&src->packets, 1);
	__sync_fetch_and_add(&src->bytes, bytes);
	src->last_seen_ns = now;
}

/*
 * The entry of a source whose first packet the POP accepted, made with that packet counted.
 * Only accepted packets make one (docs/data-plane.md, "Per-source state"): a spoofed flood from
 * millions of addresses that is dropped gets none, so it cannot push the players out of the LRU.
 * Returns the entry, NULL only when the map refused one (never an LRU in practice).
 */
static __always_inline struct source_state *source_create(__be32 saddr, __u32 bytes, __u64 now)
{
	struct source_state fresh = { .packets = 1, .bytes = bytes, .last_seen_ns = now };
	struct source_state *src;

	if (bpf_map_update_elem(&edge_sources, &saddr, &fresh, BPF_NOEXIST) == 0)
		return source_lookup(saddr);
	/* Another CPU created it first: add to it. */
	src = source_lookup(saddr);
	if (src)
		source_count(src, bytes, now);
	return src;
}

static __always_inline __u64 verified_idle_ns(const struct edge_config *cfg)
{
	return cfg->verified_idle_ns ? cfg->verified_idle_ns : DEFAULT_VERIFIED_IDLE_NS;
}

/* Was `then` less than idle_ns before now? A time another CPU stored after this packet read the
 * clock is newer than now: recent, not billions of years old (the u64 difference would wrap). */
static __always_inline int recent(__u64 then, __u64 now, __u64 idle_ns)
{
	return then >= now || now - then < idle_ns;
}

/*
 * The clock, read once per packet and only when a decision needs it: bpf_ktime_get_ns() costs
 * more than the rest of a drop (about 24 ns on the bench's VM, bench/README.md "The floors"), and
 * a packet that is not ours, or an unverified new source's packet dropped under attack, decides
 * without it. A packet's `now` is 0 until read. A read sets its lowest bit (1 ns of precision):
 * never 0, and the verifier knows it, so it follows one path past a clock_now() of a packet that
 * has read the clock instead of two (without it, it walked 24% more instructions).
 */
static __always_inline __u64 clock_read(void)
{
	return bpf_ktime_get_ns() | 1;
}

static __always_inline __u64 clock_now(__u64 *now)
{
	if (!*now)
		*now = clock_read();
	return *now;
}

/*
 * Is the source verified for the service: a slot of its entry names the service and was active
 * within the idle time? Then the slot's activity is refreshed: a player stays verified while it
 * plays. (Two CPUs may refresh at once: aligned 64-bit stores, the last writer wins.)
 */
static __always_inline int source_verified(const struct edge_config *cfg, struct source_state *src,
					   __u32 service_id, __u64 now)
{
	__u64 idle_ns = verified_idle_ns(cfg);

	if (!src)
		return 0;
	for (__u32 i = 0; i < EDGE_VERIFIED_SLOTS; i++) {
		struct source_verification *slot = &src->verified[i];

		if (slot->service_id != service_id)
			continue;
		if (!recent(slot->active_ns, now, idle_ns))
			return 0;
		slot->active_ns = now;
		return 1;
	}
	return 0;
}

/*
 * The source proved it owns its address for a service (enum edge_verify_proof): the service's
 * slot is (re)written, else a free or expired slot, else the least recently active one. Counted
 * in edge_verify_stats when the source was not verified for the service already (a proof that
 * renews a live slot refreshes it and is not counted again).
 */
static __always_inline void source_verify(const struct edge_config *cfg, struct source_state *src,
					  __u32 service_id, __u32 proof, __u64 now)
{
	__u64 idle_ns = verified_idle_ns(cfg);
	struct source_verification *slot = NULL;
	__u64 oldest = ~0ULL;
	__u64 *proofs;
	int fresh = 1;

	if (!src || !service_id)
		return;
	for (__u32 i = 0; i < EDGE_VERIFIED_SLOTS; i++) {
		struct source_verification *candidate = &src->verified[i];

		if (candidate->service_id == service_id) {
			slot = candidate;
			fresh = !recent(candidate->active_ns, now, idle_ns);
			break;
		}
		if (!candidate->service_id || !recent(candidate->active_ns, now, idle_ns)) {
			if (oldest) {
				slot = candidate; /* free or expired: the first such slot */
				oldest = 0;
			}
		} else if (candidate->active_ns < oldest) {
			slot = candidate;
			oldest = candidate->active_ns;
		}
	}
	if (!slot)
		return;
	slot->service_id = service_id;
	slot->proof = proof;
	slot->active_ns = now;
	if (!fresh)
		return;
	proofs = bpf_map_lookup_elem(&edge_verify_stats, &proof);
	if (proofs)
		*proofs += 1; /* per-CPU value: no other writer */
}

/* The source's verification for the service is revoked (its slot freed): it sent what no client of
 * the service sends (a refused handshake, mc_proto.h). Verified by the allow list: nothing stored,
 * nothing to revoke. Its next packets are unverified until it proves its address again. */
static __always_inline void source_unverify(struct source_state *src, __u32 service_id)
{
	if (!src || !service_id)
		return;
	for (__u32 i = 0; i < EDGE_VERIFIED_SLOTS; i++) {
		struct source_verification *slot = &src->verified[i];

		if (slot->service_id != service_id)
			continue;
		slot->service_id = 0;
		slot->proof = EDGE_PROOF_NONE;
		slot->active_ns = 0;
	}
}

/*
 * Take one packet of len bytes from this CPU's admission bucket of the service. Each CPU's bucket
 * fills at budget / nr_cpus per second and holds at most one second of it, so the POP as a whole
 * never admits more than the budget per second (plus one second's worth at the start), with no
 * atomic: the bucket is this CPU's alone (edge_admission is a per-CPU array).
 *
 * Credit is kept in units of 1 / (nr_cpus * 1e9) of a packet (and of a byte): a nanosecond adds
 * `rate` units, a packet costs nr_cpus * 1e9 of them. No division, and no fraction of a token is
 * ever lost to rounding however often the bucket is refilled (a flood refills it every few ns).
 */
static __always_inline __u64 admission_refill(__u64 credit, __u64 rate, __u64 elapsed_ns)
{
	__u64 capacity;

	if (rate > ADMISSION_MAX_RATE)
		rate = ADMISSION_MAX_RATE;
	capacity = rate * NSEC_PER_SEC; /* one second of budget */
	if (elapsed_ns >= NSEC_PER_SEC)
		return capacity;
	credit += elapsed_ns * rate;
	return credit < capacity ? credit : capacity;
}

static __always_inline int admission_take(const struct edge_config *cfg, struct admission_bucket *bucket,
					  const struct service_value *svc, __u32 len, __u64 now)
{
	__u64 pps = svc->admission.packets_per_sec, bps = svc->admission.bytes_per_sec;
	__u64 unit = (__u64)(cfg->nr_cpus ? cfg->nr_cpus : 1) * NSEC_PER_SEC; /* one packet, one byte */
	__u64 elapsed = now > bucket->refilled_ns ? now - bucket->refilled_ns : 0;
	__u64 packet_credit, byte_credit;

	if (!pps && !bps)
		return 0; /* no budget: nothing unverified passes */
	packet_credit = admission_refill(bucket->packet_tokens, pps, elapsed);
	byte_credit = admission_refill(bucket->byte_tokens, bps, elapsed);
	bucket->refilled_ns = now > bucket->refilled_ns ? now : bucket->refilled_ns;
	bucket->packet_tokens = packet_credit;
	bucket->byte_tokens = byte_credit;
	if ((pps && packet_credit < unit) || (bps && byte_credit < unit * len))
		return 0;
	if (pps)
		bucket->packet_tokens = packet_credit - unit;
	if (bps)
		bucket->byte_tokens = byte_credit - unit * len;
	return 1;
}

/*
 * Under attack, may an unverified packet ask to be admitted? Only what the service's game sends
 * before it is verified: its connectionless handshake and the A2S queries (game_proto.h).
 */
static __always_inline int handshake_shaped(struct xdp_md *ctx, const struct packet *pkt,
					    const struct service_value *svc)
{
	return pkt->proto == IPPROTO_UDP && game_handshake_shaped(ctx, pkt, svc->game_protocol);
}

/*
 * Does this inbound packet echo the challenge the service's game server sent this source (stage
 * C: the connect carrying the server challenge that learn_from_reply stored)? Asked only of a
 * source with a challenge of this service in flight, younger than the verified idle time.
 */
static __always_inline int echoes_server_challenge(struct xdp_md *ctx, const struct edge_config *cfg,
						   const struct packet *pkt, const struct service_value *svc,
						   const struct source_state *src, __u64 now)
{
	__u32 echo = 0;

	if (!src || src->challenge_service_id != svc->id || pkt->proto != IPPROTO_UDP)
		return 0;
	if (!recent(src->challenge_ns, now, verified_idle_ns(cfg)))
		return 0;
	return game_client_echo(ctx, pkt, svc->game_protocol, &echo) && echo == src->server_challenge;
}

/* Is SYN authentication on for the service (syn_auth.h): a TCP service whose syn_auth is always, or
 * auto while the service is under attack? */
static __always_inline int syn_auth_active(const struct service_value *svc)
{
	if (svc->syn_auth == EDGE_SYN_AUTH_ALWAYS)
		return 1;
	return svc->syn_auth == EDGE_SYN_AUTH_AUTO && service_under_attack(svc, &edge_attack_state);
}

static __always_inline int echoes_edge_cookie(struct xdp_md *ctx, const struct edge_config *cfg,
					      const struct packet *pkt, const struct service_value *svc);

/* What admission decided about a packet to a service. */
enum admission {
	ADMIT_DROP = 0,     /* dropped as drop_unverified */
	ADMIT_PASS = 1,     /* goes on */
	ADMIT_SYN_AUTH = 2, /* unverified TCP while SYN authentication is on: syn_auth() decides (a punched flow goes on) */
};

/*
 * Admission of a packet to a service (issue 13): ADMIT_PASS when it may go on (*verified says
 * whether its source is verified: what the payload rules' "verified" matches), ADMIT_DROP when it
 * is dropped as drop_unverified. A source is verified for the service by the allow list (nothing
 * stored), a live slot of its entry, or this very packet echoing its game server's challenge or a
 * valid edge cookie (a2s_handle records the cookie's proof). Both echoes are checked before the
 * budget: a flood of spoofed queries that spent it must not refuse the one player who proves
 * itself. Verified packets are never charged to the budget. Unverified TCP to a service with SYN
 * authentication on is syn_auth()'s (ADMIT_SYN_AUTH), never charged to the budget either. Other
 * unverified packets pass freely while the service is not under attack; under attack only when
 * handshake-shaped and within the budget. Every packet is counted in this CPU's bucket of the
 * service (what the agent's attack mode watches): for TCP, every segment from a source that is
 * not verified for the service (SYNs, the handshake's ACK, and floods of any flags) counts as
 * unverified, so a SYN or ACK flood puts an auto service under attack, and keeps it there while
 * SYN authentication answers it.
 */
static __always_inline int admitted(struct xdp_md *ctx, const struct edge_config *cfg, const struct packet *pkt,
				    const struct service_value *svc, struct source_state *src, int allowed,
				    __u64 *now, int *verified_out)
{
	__u32 id = svc->id;
	struct admission_bucket *bucket = bpf_map_lookup_elem(&edge_admission, &id);
	int verified;

	/* A source with an entry has read the clock already (its ban); one without has no slot and
	 * no challenge in flight (both functions answer 0 without reading the time), so nothing
	 * here needs the clock before the budget does. */
	verified = allowed || source_verified(cfg, src, id, *now);
	if (!verified && echoes_server_challenge(ctx, cfg, pkt, svc, src, *now)) {
		source_verify(cfg, src, id, EDGE_PROOF_HANDSHAKE, *now);
		verified = 1;
	}
	if (!verified && echoes_edge_cookie(ctx, cfg, pkt, svc))
		verified = 1;
	*verified_out = verified;
	if (!bucket)
		return ADMIT_PASS; /* not for any service id (< EDGE_MAX_SERVICES); the verifier wants the case */
	if (verified) {
		bucket->verified_packets++; /* per-CPU value: no other writer */
		return ADMIT_PASS;
	}
	bucket->unverified_packets++;
	bucket->unverified_bytes += pkt->frame_len;
	if (pkt->proto == IPPROTO_TCP && syn_auth_active(svc))
		return ADMIT_SYN_AUTH;
	if (!service_under_attack(svc, &edge_attack_state))
		return ADMIT_PASS;
	/* No budget: nothing unverified passes, whatever its shape (no payload read). */
	if ((svc->admission.packets_per_sec || svc->admission.bytes_per_sec) && handshake_shaped(ctx, pkt, svc) &&
	    admission_take(cfg, bucket, svc, pkt->ip_tot_len, clock_now(now))) {
		bucket->admitted_packets++;
		return ADMIT_PASS;
	}
	bucket->dropped_packets++;
	return ADMIT_DROP;
}

static __always_inline void count_service(__u32 service_id, __u32 bytes, int outbound)
{
	struct service_counter *counter = bpf_map_lookup_elem(&edge_service_stats, &service_id);

	if (!counter)
		return;
	if (outbound) {
		counter->out_packets++;
		counter->out_bytes += bytes;
	} else {
		counter->in_packets++;
		counter->in_bytes += bytes;
	}
}

/* Is there a live port punch for this inbound packet? An idle one is deleted. */
static __always_inline int punch_is_live(const struct edge_config *cfg, const struct packet *pkt, __u64 *clock)
{
	struct punch_key key = {
		.service_addr = pkt->daddr,
		.remote_addr = pkt->saddr,
		.service_port = pkt->dport,
		.remote_port = pkt->sport,
		.proto = pkt->proto,
	};
	struct punch_value *punch;
	__u64 now;

	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return 0;
	punch = bpf_map_lookup_elem(&edge_punches, &key);
	if (!punch)
		return 0; /* no punch: no need for the time (an out-of-state flood's drop never reads it) */
	now = clock_now(clock);
	/* A punch refreshed by another CPU after this packet read the clock is newer than "now":
	 * live, not billions of years idle (the u64 difference would wrap). */
	if (punch->last_seen_ns >= now || now - punch->last_seen_ns < cfg->punch_idle_ns)
		return 1;
	bpf_map_delete_elem(&edge_punches, &key);
	return 0;
}

/*
 * Count this packet against its source's limit for the current one-second window. Returns 1 when
 * the source is over the limit (and bans it). The limit is the packet's own: its service's
 * override, else its protocol class's; the window is the source's, one per source whatever it
 * sends to (docs/data-plane.md, "Per-source state").
 *
 * The counts are atomic adds, so two CPUs receiving the same source never lose a count within a
 * second. A new second is opened by the one CPU whose compare-and-swap moves the window on; it
 * zeroes the counts, so a count another CPU adds in the few nanoseconds between the swap and the
 * reset is lost, and one that read the old window just before the swap lands in the new one:
 * off by a packet or two at a second boundary, never by a second's worth.
 */
static __always_inline int rate_limit_exceeded(const struct edge_config *cfg, const struct packet *pkt,
					       const struct service_value *svc, struct source_state *src, __u64 now)
{
	const struct edge_rate_limit *limit;
	__u64 packets, bytes;
	__u32 len = pkt->ip_tot_len, window, seen;

	if (svc->limit.packets_per_sec || svc->limit.bytes_per_sec) {
		limit = &svc->limit;
	} else {
		__u8 class = proto_class(pkt->proto);

		if (class >= EDGE_CLASS_COUNT)
			return 0;
		limit = &cfg->limits[class];
	}
	if (!limit->packets_per_sec && !limit->bytes_per_sec)
		return 0;
	if (!src)
		return 0; /* the map refused an entry (see source_count): nothing to count in */

	window = (__u32)(now / NSEC_PER_SEC);
	seen = *(volatile __u32 *)&src->window;
	if (seen != window && __sync_val_compare_and_swap(&src->window, seen, window) == seen) {
		src->window_packets = 0;
		src->window_bytes = 0;
	}
	packets = __sync_fetch_and_add(&src->window_packets, 1) + 1;
	bytes = __sync_fetch_and_add(&src->window_bytes, len) + len;
	if ((limit->packets_per_sec && packets > limit->packets_per_sec) ||
	    (limit->bytes_per_sec && bytes > limit->bytes_per_sec)) {
		if (cfg->ban_sec)
			src->ban_until_ns = now + (__u64)cfg->ban_sec * NSEC_PER_SEC;
		return 1;
	}
	return 0;
}

/* Write the FIB's next hop into the frame and pick the action; the frame starts with Ethernet. */
static __always_inline struct verdict emit(struct xdp_md *ctx, const struct next_hop *hop, __u32 tx_reason)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = hop->ifindex;
	int redirect = 0;

	if (hop->fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return make_verdict(XDP_PASS, EDGE_REASON_PASS_NO_NEIGH);
	if (hop->fib_rc != BPF_FIB_LKUP_RET_SUCCESS)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_NO_ROUTE);
	if (ifindex != ctx->ingress_ifindex) {
		/* Another device: only through the devmap the loader filled; else the kernel forwards. */
		if (!bpf_map_lookup_elem(&edge_tx_ports, &ifindex))
			return make_verdict(XDP_PASS, EDGE_REASON_PASS_NO_NEIGH);
		redirect = 1;
	}
	if ((void *)(eth + 1) > data_end)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	__builtin_memcpy(eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->smac, ETH_ALEN);
	if (redirect)
		return make_verdict(bpf_redirect_map(&edge_tx_ports, ifindex, 0), tx_reason);
	return make_verdict(XDP_TX, tx_reason);
}

/*
 * ICMP fragmentation-needed to the sender of a too-big packet with DF (RFC 1191), from the address
 * it was sent to. Carries the original IP header and 8 bytes of its payload: 70 bytes in all, so
 * the reply is always far smaller than what provoked it.
 */
#define ICMP_QUOTE_LEN (sizeof(struct iphdr) + 8)
#define ICMP_REPLY_IP_LEN (sizeof(struct iphdr) + sizeof(struct icmphdr) + ICMP_QUOTE_LEN)

static __always_inline struct verdict send_icmp_too_big(struct xdp_md *ctx, const struct packet *pkt, __u16 mtu)
{
	void *data, *data_end;
	struct iphdr *ip;
	struct icmphdr *icmp;
	struct next_hop hop;
	int frame_len;

	if (reframe(ctx, pkt->l3_off, sizeof(struct iphdr) + sizeof(struct icmphdr)))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	frame_len = (int)(data_end - data);
	if (bpf_xdp_adjust_tail(ctx, (int)(sizeof(struct ethhdr) + ICMP_REPLY_IP_LEN) - frame_len))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip = data + sizeof(struct ethhdr);
	icmp = (void *)(ip + 1);
	if ((void *)icmp + sizeof(*icmp) + ICMP_QUOTE_LEN > data_end)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);
	icmp->checksum = ~csum_fold(csum_words(icmp, sizeof(*icmp) + ICMP_QUOTE_LEN));

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(ICMP_REPLY_IP_LEN);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = REPLY_TTL;
	ip->protocol = IPPROTO_ICMP;
	ip->saddr = pkt->daddr;
	ip->daddr = pkt->saddr;
	ipv4_set_csum(ip);

	fib_next_hop(ctx, pkt->daddr, pkt->saddr, 0, IPPROTO_ICMP, ICMP_REPLY_IP_LEN, &hop);
	return emit(ctx, &hop, EDGE_REASON_TX_ICMP_TOO_BIG);
}

static __always_inline struct verdict a2s_challenge_at(struct xdp_md *ctx, const __u32 l3_off, __u32 cookie,
						       __u32 service_id)
{
	__u8 payload[A2S_CHALLENGE_LEN + 1] = { 0xff, 0xff, 0xff, 0xff, 0x41 }; /* +1: even length for the sum */
	int off;

	payload[5] = cookie & 0xff;
	payload[6] = (cookie >> 8) & 0xff;
	payload[7] = (cookie >> 16) & 0xff;
	payload[8] = cookie >> 24;

	off = udp_reply_in_place(ctx, l3_off, A2S_CHALLENGE_LEN);
	if (off < 0 || bpf_xdp_store_bytes(ctx, off, payload, A2S_CHALLENGE_LEN))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	if (udp_reply_set_csum(ctx, l3_off, csum_words(payload, sizeof(payload))))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	count_service(service_id, off + A2S_CHALLENGE_LEN, 1);
	return make_verdict(XDP_TX, EDGE_REASON_TX_A2S_CHALLENGE);
}

static __always_inline struct verdict a2s_send_challenge(struct xdp_md *ctx, const struct packet *pkt,
							 __u32 cookie, __u32 service_id)
{
	/* A constant offset per case: what the verifier wants for the reply's header pointers. */
	if (pkt->vlan_tags == 2)
		return a2s_challenge_at(ctx, sizeof(struct ethhdr) + 2 * sizeof(struct vlan_tag), cookie, service_id);
	if (pkt->vlan_tags == 1)
		return a2s_challenge_at(ctx, sizeof(struct ethhdr) + sizeof(struct vlan_tag), cookie, service_id);
	return a2s_challenge_at(ctx, sizeof(struct ethhdr), cookie, service_id);
}

static __always_inline struct verdict a2s_cached_at(struct xdp_md *ctx, const __u32 l3_off,
						    const struct a2s_cache_entry *entry, __u64 len, __u32 service_id)
{
	int off = udp_reply_in_place(ctx, l3_off, len);

	if (off < 0 || payload_copy(ctx, off, (__u8 *)entry->payload, len, 1))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	if (udp_reply_set_csum(ctx, l3_off, entry->payload_csum))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	count_service(service_id, off + len, 1);
	return make_verdict(XDP_TX, EDGE_REASON_TX_A2S_CACHED);
}

static __always_inline struct verdict a2s_send_cached(struct xdp_md *ctx, const struct packet *pkt,
						      const struct a2s_cache_entry *entry, __u32 service_id)
{
	__u64 len = entry->len;

	if (len < 5 || len > A2S_CACHE_MAX_PAYLOAD)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	if (pkt->vlan_tags == 2)
		return a2s_cached_at(ctx, sizeof(struct ethhdr) + 2 * sizeof(struct vlan_tag), entry, len, service_id);
	if (pkt->vlan_tags == 1)
		return a2s_cached_at(ctx, sizeof(struct ethhdr) + sizeof(struct vlan_tag), entry, len, service_id);
	return a2s_cached_at(ctx, sizeof(struct ethhdr), entry, len, service_id);
}

/*
 * What an A2S request asks: its kind (enum a2s_kind), and the challenge it echoes. has_cookie is
 * 0 for a request that asks for a challenge: an A2S_INFO without one, an A2S_PLAYER / A2S_RULES
 * whose field is FF FF FF FF (or 0). Returns 0 when the payload is no A2S request the cache answers
 * (another length, another query, a lookalike): it goes on to the game server.
 */
struct a2s_query {
	__u32 kind;
	__u32 cookie;
	int has_cookie;
};

static __always_inline int a2s_parse_request(struct xdp_md *ctx, const struct packet *pkt, struct a2s_query *query)
{
	if (pkt->payload_len == A2S_REQUEST_LEN || pkt->payload_len == A2S_REQUEST_COOKIE_LEN) {
		struct a2s_request req = {};

		if (bpf_xdp_load_bytes(ctx, pkt->payload_off, &req,
				       pkt->payload_len == A2S_REQUEST_LEN ? A2S_REQUEST_LEN : A2S_REQUEST_COOKIE_LEN))
			return 0;
		if (!a2s_is_info_request(&req))
			return 0;
		query->kind = A2S_KIND_INFO;
		query->has_cookie = pkt->payload_len == A2S_REQUEST_COOKIE_LEN;
		query->cookie = (__u32)req.cookie[0] | ((__u32)req.cookie[1] << 8) | ((__u32)req.cookie[2] << 16) |
				((__u32)req.cookie[3] << 24);
		return 1;
	}
	if (pkt->payload_len == A2S_FIELD_REQUEST_LEN) {
		struct a2s_field_request req;
		int kind;

		if (bpf_xdp_load_bytes(ctx, pkt->payload_off, &req, sizeof(req)))
			return 0;
		kind = a2s_field_request_kind(&req);
		if (kind < 0)
			return 0;
		query->kind = kind;
		query->cookie = (__u32)req.field[0] | ((__u32)req.field[1] << 8) | ((__u32)req.field[2] << 16) |
				((__u32)req.field[3] << 24);
		/* Asking comes first: a field that asks is never taken as an echo, so a spoofed
		 * FF FF FF FF gets 9 bytes, never the cached reply (a fleet cookie that happens to be
		 * one of these two values - 2 in 2^32 - is simply issued again until the epoch turns). */
		query->has_cookie = query->cookie != A2S_FIELD_ASK && query->cookie != A2S_FIELD_ASK_OLD;
		return 1;
	}
	return 0;
}

/* The edge cookie's epoch now (UTC: the same on every POP, a2s.h). */
static __always_inline __u64 edge_cookie_epoch_now(const struct edge_config *cfg)
{
	return edge_cookie_epoch(cfg->cookie_epoch_ns ? cfg->cookie_epoch_ns : DEFAULT_COOKIE_EPOCH_NS,
				 cfg->cookie_tai_offset_ns);
}

/* Does this packet echo a valid edge cookie: an A2S request the cache answers, to a service with
 * the cache on, carrying a cookie this fleet issued to its 4-tuple? The address is proven. */
static __always_inline int echoes_edge_cookie(struct xdp_md *ctx, const struct edge_config *cfg,
					      const struct packet *pkt, const struct service_value *svc)
{
	struct a2s_query query = {};

	if (pkt->proto != IPPROTO_UDP || !(svc->flags & SERVICE_F_A2S_CACHE))
		return 0;
	if (!a2s_parse_request(ctx, pkt, &query) || !query.has_cookie)
		return 0;
	return a2s_cookie_valid(cfg->cookie_key, cfg->cookie_key_previous, query.cookie, pkt->saddr, pkt->daddr,
				pkt->sport, pkt->dport, edge_cookie_epoch_now(cfg));
}

/* Count an A2S answer (or bad-cookie drop) under its kind: edge_a2s_stats, per CPU. */
static __always_inline void count_a2s(__u32 kind, __u32 reason)
{
	struct a2s_counter *counter = bpf_map_lookup_elem(&edge_a2s_stats, &kind);

	if (!counter)
		return;
	if (reason == EDGE_REASON_TX_A2S_CHALLENGE)
		counter->challenges++; /* per-CPU value: no other writer */
	else if (reason == EDGE_REASON_TX_A2S_CACHED)
		counter->cached++;
	else if (reason == EDGE_REASON_DROP_BAD_COOKIE)
		counter->bad_cookie++;
}

/*
 * A2S_INFO / A2S_PLAYER / A2S_RULES on a service with the cache on. Returns 1 with *v set when the
 * packet is answered or dropped here, 0 when it goes on to the game server. *cookie_proven is set
 * to 1 exactly when the request echoed a valid fleet cookie: the client owns its address.
 */
static __always_inline int a2s_handle(struct xdp_md *ctx, const struct edge_config *cfg, const struct packet *pkt,
				      const struct service_value *svc, __u64 now, struct verdict *v,
				      int *cookie_proven)
{
	struct a2s_query query = {};
	struct a2s_cache_entry *entry;
	__u64 epoch, max_age_ns;
	__u32 cookie, key, service_id = svc->id;

	if (!a2s_parse_request(ctx, pkt, &query))
		return 0;

	key = a2s_cache_key(service_id, query.kind);
	entry = bpf_map_lookup_elem(&edge_a2s_cache, &key);
	max_age_ns = (__u64)svc->a2s_max_age_ms * NSEC_PER_MSEC;
	if (!entry || entry->updated_ns > now || now - entry->updated_ns >= max_age_ns)
		return 0; /* nothing fresh to serve: the game server answers (and challenges) itself */

	epoch = edge_cookie_epoch_now(cfg);
	if (!query.has_cookie) {
		/* 9 bytes back for 25 (INFO) or 9 (PLAYER, RULES): never more than the request. */
		cookie = a2s_cookie(cfg->cookie_key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, epoch);
		*v = a2s_send_challenge(ctx, pkt, cookie, service_id);
		count_a2s(query.kind, v->reason);
		return 1;
	}
	if (a2s_cookie_valid(cfg->cookie_key, cfg->cookie_key_previous, query.cookie, pkt->saddr, pkt->daddr,
			     pkt->sport, pkt->dport, epoch)) {
		*cookie_proven = 1;
		*v = a2s_send_cached(ctx, pkt, entry, service_id);
		count_a2s(query.kind, v->reason);
		return 1;
	}
	*v = make_verdict(XDP_DROP, EDGE_REASON_DROP_BAD_COOKIE);
	count_a2s(query.kind, v->reason);
	return 1;
}

/*
 * The next hop to a service's backend for an IPIP packet of ip_tot_len bytes: this CPU's cached
 * answer while it is fresh and was given for the same question and at least this length, else
 * the FIB's (cached when it names a neighbour). See struct next_hop_cache_entry.
 */
static __always_inline void backend_next_hop(struct xdp_md *ctx, __u32 service_id, __be32 saddr, __be32 daddr,
					     __u8 tos, __u32 ip_tot_len, __u64 now, struct next_hop *hop)
{
	struct next_hop_cache_entry *cached = bpf_map_lookup_elem(&edge_next_hops, &service_id);
	int same_question = cached && cached->expires_ns > now && cached->saddr == saddr &&
			    cached->daddr == daddr && cached->ingress_ifindex == ctx->ingress_ifindex &&
			    cached->tos == tos;

	if (same_question && ip_tot_len <= cached->fits_len) {
		hop->fib_rc = BPF_FIB_LKUP_RET_SUCCESS;
		hop->ifindex = cached->ifindex;
		hop->mtu = 0;
		__builtin_memcpy(hop->smac, cached->smac, ETH_ALEN);
		__builtin_memcpy(hop->dmac, cached->dmac, ETH_ALEN);
		return;
	}
	fib_next_hop(ctx, saddr, daddr, tos, IPPROTO_IPIP, ip_tot_len, hop);
	if (!cached || hop->fib_rc != BPF_FIB_LKUP_RET_SUCCESS)
		return;
	if (same_question) {
		cached->fits_len = ip_tot_len; /* larger than before, and the FIB let it through */
		return;
	}
	cached->saddr = saddr;
	cached->daddr = daddr;
	cached->ingress_ifindex = ctx->ingress_ifindex;
	cached->tos = tos;
	cached->ifindex = hop->ifindex;
	__builtin_memcpy(cached->smac, hop->smac, ETH_ALEN);
	__builtin_memcpy(cached->dmac, hop->dmac, ETH_ALEN);
	cached->fits_len = ip_tot_len;
	cached->expires_ns = now + EDGE_NEXT_HOP_CACHE_NS; /* per-CPU entry: no other writer */
}

/*
 * To a backend whose pair with this POP is WireGuard: XDP cannot encrypt, the kernel does. The
 * packet (TTL decremented, VLAN tags removed, no IPIP header) goes to the kernel marked with the
 * pair's backend (struct edge_wireguard_handoff in its Ethernet addresses); the uplink's TC ingress
 * (tc_wireguard_redirect.c) redirects it to that pair's device, whose transmit encrypts it. Everything
 * before (filters, verification, limits) ran here once; TC checks and counts nothing. A DF
 * packet larger than the device's MTU gets fragmentation-needed with that MTU (the player's path
 * MTU through us); one without DF goes as it is (WireGuard sends it, its outer UDP fragmented on
 * the way).
 */
static __always_inline struct verdict forward_to_wireguard(struct xdp_md *ctx, const struct packet *pkt,
							   __be32 backend_addr, const struct wireguard_pair *pair)
{
	const __u8 dest[ETH_ALEN] = EDGE_WG_HANDOFF_DEST;
	struct edge_wireguard_handoff *handoff;
	void *data, *data_end;

	if (pkt->ip_tot_len > pair->mtu && pkt->dont_fragment &&
	    !(pkt->proto == IPPROTO_ICMP && pkt->icmp_type != ICMP_ECHO))
		return send_icmp_too_big(ctx, pkt, (__u16)pair->mtu);
	if (ipv4_decrement_ttl(ctx, pkt->l3_off) || reframe(ctx, pkt->l3_off, 0))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	handoff = data;
	if ((void *)(handoff + 1) > data_end)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	__builtin_memcpy(handoff->dest, dest, ETH_ALEN);
	handoff->pad[0] = 0;
	handoff->pad[1] = 0;
	handoff->backend_addr = backend_addr;
	return make_verdict(XDP_PASS, EDGE_REASON_TX_FORWARD_WIREGUARD);
}

/* Encapsulate to the service's backend and send it on its way (or, for a WireGuard pair, hand it
 * to the kernel for that pair's device: forward_to_wireguard). */
static __always_inline struct verdict forward_to_backend(struct xdp_md *ctx, const struct edge_config *cfg,
							 const struct packet *pkt, const struct service_value *svc,
							 __u32 tx_reason, __u64 now)
{
	struct wireguard_pair *pair;
	struct next_hop hop;

	if (pkt->ttl <= 1)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TTL);
	pair = bpf_map_lookup_elem(&edge_wireguard_pairs, &svc->backend_addr);
	if (pair)
		return forward_to_wireguard(ctx, pkt, svc->backend_addr, pair);
	backend_next_hop(ctx, svc->id, cfg->tunnel_addr, svc->backend_addr, pkt->tos, pkt->ip_tot_len + IPIP_HDR_LEN,
			 now, &hop);
	if (hop.fib_rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/* No ICMP error about an ICMP error (RFC 1122 3.2.2): only an echo request may be
		 * answered. (Services forward no other ICMP; this keeps the rule where the answer is
		 * made.) The kernel, given the packet, does not answer it either. */
		if (!pkt->dont_fragment || (pkt->proto == IPPROTO_ICMP && pkt->icmp_type != ICMP_ECHO))
			return make_verdict(XDP_PASS, EDGE_REASON_PASS_TOO_BIG);
		/* The player's path MTU through us is the tunnel's: the egress MTU minus our header. */
		return send_icmp_too_big(ctx, pkt, hop.mtu - IPIP_HDR_LEN);
	}
	if (hop.fib_rc != BPF_FIB_LKUP_RET_SUCCESS && hop.fib_rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_NO_ROUTE);

	if (ipv4_decrement_ttl(ctx, pkt->l3_off) || ipip_encap(ctx, pkt, cfg->tunnel_addr, svc->backend_addr))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	return emit(ctx, &hop, tx_reason);
}

/* Copy a backend's single-packet A2S reply (info 0x49, players 0x44, rules 0x45; never a split
 * FE one) into per-CPU scratch. Returns 1 + its enum a2s_kind when the scratch holds one, to be
 * inserted whole by learn_from_reply() once the reply is known to be forwarded; 0 otherwise. */
static __always_inline int a2s_snoop_prepare(struct xdp_md *ctx, const struct packet *inner, __u64 now)
{
	struct a2s_cache_entry *scratch;
	__u64 len = inner->payload_len, padded, tail_word;
	__u32 zero = 0;
	__u8 header[5];
	__u64 sum = 0;
	int kind;

	if (len < 5 || len > A2S_CACHE_MAX_PAYLOAD)
		return 0;
	if (bpf_xdp_load_bytes(ctx, inner->payload_off, header, sizeof(header)))
		return 0;
	kind = a2s_reply_kind(header);
	if (kind < 0)
		return 0;
	scratch = bpf_map_lookup_elem(&edge_a2s_scratch, &zero);
	if (!scratch)
		return 0;

	/* Zero the last (partial) word first, so the padding after the payload sums to nothing. */
	padded = (len + 3) & ~3U;
	tail_word = len & ~3U;
	if (tail_word <= A2S_CACHE_MAX_PAYLOAD - 4)
		*(__u32 *)&scratch->payload[tail_word] = 0;
	if (payload_copy(ctx, inner->payload_off, scratch->payload, len, 0))
		return 0;

	/* Sum the padded payload word by word: a bounded loop every verifier follows (a snooped
	 * reply is rare: once per refresh, not per packet). */
	for (__u32 word = 0; word < A2S_CACHE_MAX_PAYLOAD / 4; word++) {
		if (word * 4 >= padded)
			break;
		sum += *(__u16 *)&scratch->payload[word * 4];
		sum += *(__u16 *)&scratch->payload[word * 4 + 2];
	}
	scratch->payload_csum = csum_fold(sum);
	scratch->len = len;
	scratch->updated_ns = now;
	return 1 + kind;
}

/*
 * What a forwarded reply teaches the POP: the port punch of its flow when the reply proves the
 * flow (reply_proves_flow: an established session's packet, never a reply anyone can provoke,
 * which would let the asker's flood past the rate limit) and, when it is an A2S reply
 * prepared in scratch (snooped: 1 + its kind), the cache entry of that kind. Called only once the reply passed every check and
 * leaves the program towards a player (or the kernel's delivery): a reply dropped late (TTL, no
 * route, an error) must not open a punch or fill the cache in a spoofer's name.
 */
/* What a backend's reply may teach, read before it is decapsulated (learn_from_reply records it
 * only once the reply is forwarded). */
struct reply_lesson {
	int snooped;        /* a2s_snoop_prepare's answer: an A2S reply of that kind + 1 in scratch */
	int proves_flow;    /* the player it goes to owns its address (see reply_proves_flow) */
	int has_challenge;  /* it hands the player the game server's challenge (game_proto.h) */
	__u32 challenge;
	int mc_syn_ack;     /* a minecraft service's SYN-ACK: the flow's entry learns client_ack, isn */
	__u32 client_ack;   /* its sequence number + 1: the ACK the player's first data carries */
	__u32 isn;          /* its ACK - 1: the player's SYN the backend accepted */
};

/*
 * Does the game server's reply prove the player owns its address (proof PUNCH)? Only a reply on a
 * flow the player took part in: a game server's packet of an established session (UDP that is not
 * connectionless) or TCP past the handshake. A connectionless reply (FF FF FF FF: A2S answers,
 * challenges, connect refusals; or one part of a split answer, FE FF FF FF) and a SYN-ACK or RST
 * answer whoever asked, a spoofed address as readily as a player's: they prove nothing.
 */
static __always_inline int reply_proves_flow(struct xdp_md *ctx, const struct packet *inner)
{
	__u32 header = 0;

	if (inner->proto == IPPROTO_UDP) {
		if (inner->payload_len < 4)
			return 1;
		if (bpf_xdp_load_bytes(ctx, inner->payload_off, &header, sizeof(header)))
			return 0;
		return header != A2S_HEADER_SIMPLE && header != A2S_HEADER_SPLIT;
	}
	if (inner->proto == IPPROTO_TCP)
		return !(inner->tcp_flags & (0x02 | 0x04)); /* neither SYN nor RST */
	return 0;
}

static __always_inline struct mc_flow_key mc_flow_of(const struct packet *pkt)
{
	struct mc_flow_key key = { .saddr = pkt->saddr, .daddr = pkt->daddr, .sport = pkt->sport, .dport = pkt->dport };

	return key;
}

/* Is the backend's reply a SYN-ACK (of a minecraft service: the caller asks)? Then *client_ack is
 * the ACK number the player's stack will send with its first data (the SYN-ACK's sequence + 1), and
 * *isn the player's initial sequence number the backend accepted (the SYN-ACK's ACK - 1). */
static __always_inline int mc_syn_ack_of(struct xdp_md *ctx, const struct packet *inner, __u32 *client_ack,
					 __u32 *isn)
{
	__be32 seq_ack[2];

	if (inner->proto != IPPROTO_TCP ||
	    (inner->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) != (TCP_FLAG_SYN | TCP_FLAG_ACK))
		return 0;
	if (bpf_xdp_load_bytes(ctx, inner->l4_off + 4, seq_ack, sizeof(seq_ack)))
		return 0;
	*client_ack = bpf_ntohl(seq_ack[0]) + 1;
	*isn = bpf_ntohl(seq_ack[1]) - 1;
	return 1;
}

/* The backend's SYN-ACK went to the player: its flow's entry (one the POP opened on the player's
 * SYN; the SYN-ACK opens none) now knows the ACK that proves the player's own first data, and the
 * sequence number that data starts at (the SYN the backend accepted, whatever SYNs came in: a SYN
 * spoofed into the flow moves it no more, mc_flow_start never writes isn). The latest SYN-ACK wins
 * (a new connection on the same four-tuple has a new one). isn is stored first: a reader on another
 * CPU that sees the new syn_acked with the old isn sees the number of the SYN that made the entry,
 * the same one unless SYNs with two ISNs came (that window is one packet wide, and on x86 stores
 * are seen in order). */
static __always_inline void mc_flow_syn_acked(const struct packet *reply, __u32 client_ack, __u32 isn)
{
	struct mc_flow_key key = { .saddr = reply->daddr, .daddr = reply->saddr, .sport = reply->dport,
				   .dport = reply->sport };
	struct mc_flow_value *flow = bpf_map_lookup_elem(&edge_mc_flows, &key);

	if (flow) {
		flow->isn = isn;
		flow->syn_acked = MC_FLOW_SYN_ACKED | client_ack; /* one aligned 64-bit store */
	}
}

static __always_inline void learn_from_reply(const struct edge_config *cfg, const struct packet *inner,
					     __u32 service_id, const struct reply_lesson *lesson, __u64 now)
{
	__u32 zero = 0;
	int snooped = lesson->snooped;

	/* Only a flow the player took part in is punched: a challenge, an A2S answer, a SYN-ACK or an
	 * RST go to whoever asked, and a punch would let the asker's flood (from a spoofed address,
	 * or its own) skip the rate limit and the ban. */
	if (lesson->proves_flow && (inner->proto == IPPROTO_TCP || inner->proto == IPPROTO_UDP)) {
		struct punch_key pkey = {
			.service_addr = inner->saddr,
			.remote_addr = inner->daddr,
			.service_port = inner->sport,
			.remote_port = inner->dport,
			.proto = inner->proto,
		};
		struct punch_value *punch = bpf_map_lookup_elem(&edge_punches, &pkey);

		if (punch) {
			punch->last_seen_ns = now; /* an aligned 64-bit store: atomic, and last writer wins */
		} else {
			struct punch_value fresh = { .last_seen_ns = now };

			bpf_map_update_elem(&edge_punches, &pkey, &fresh, BPF_ANY);
		}
	}
	if (snooped) {
		struct a2s_cache_entry *scratch = bpf_map_lookup_elem(&edge_a2s_scratch, &zero);
		__u32 key = a2s_cache_key(service_id, snooped - 1);

		if (scratch)
			bpf_map_update_elem(&edge_a2s_cache, &key, scratch, BPF_ANY);
	}
	if (lesson->mc_syn_ack)
		mc_flow_syn_acked(inner, lesson->client_ack, lesson->isn);
	if (lesson->proves_flow || lesson->has_challenge) {
		/* The player's entry; a player the POP has none for (evicted, or the server spoke
		 * first) gets one: the game server talks to it. */
		struct source_state *player = source_lookup(inner->daddr);

		if (!player) {
			struct source_state fresh = {};

			bpf_map_update_elem(&edge_sources, &inner->daddr, &fresh, BPF_NOEXIST);
			player = source_lookup(inner->daddr);
			if (!player)
				return;
		}
		if (lesson->has_challenge) {
			player->challenge_service_id = service_id;
			player->server_challenge = lesson->challenge;
			player->challenge_ns = now;
		}
		if (lesson->proves_flow)
			source_verify(cfg, player, service_id, EDGE_PROOF_PUNCH, now);
	}
}

/* IPIP addressed to the POP's tunnel address, unfragmented, on a device that carries IPIP: a
 * backend's reply on its way to a player. */
static __always_inline struct verdict return_path(struct xdp_md *ctx, const struct edge_config *cfg,
						  const struct packet *outer, __u64 now)
{
	struct reply_lesson lesson = {};
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet inner = {};
	struct service_key skey = {};
	struct service_value *svc;
	struct next_hop hop;
	struct verdict v;
	int rc;

	if (!bpf_map_lookup_elem(&edge_backends, &outer->saddr))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_BAD_RETURN);
	rc = parse_ipv4_at(data, data_end, outer->l4_off, &inner);
	/* The inner packet must end inside the outer one: bytes after it (padding, junk) must never
	 * become part of what the player receives. */
	if (rc == PARSE_IPV4 && inner.l3_off + inner.ip_tot_len > outer->l3_off + outer->ip_tot_len)
		rc = PARSE_MALFORMED;
	if (rc != PARSE_IPV4)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_MALFORMED);
	if (inner.is_fragment)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_FRAGMENT);

	skey.addr = inner.saddr;
	skey.port = inner.sport;
	skey.proto = inner.proto;
	svc = bpf_map_lookup_elem(&edge_services, &skey);
	if (!svc || svc->backend_addr != outer->saddr)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_BAD_RETURN);

	/* Read while the reply is still where it arrived; recorded only if it is forwarded. */
	if (inner.proto == IPPROTO_UDP && (svc->flags & SERVICE_F_A2S_SNOOP))
		lesson.snooped = a2s_snoop_prepare(ctx, &inner, now);
	lesson.proves_flow = reply_proves_flow(ctx, &inner);
	if (inner.proto == IPPROTO_UDP)
		lesson.has_challenge = game_server_challenge(ctx, &inner, svc->game_protocol, &lesson.challenge);
	if (svc->game_protocol == EDGE_GAME_MINECRAFT)
		lesson.mc_syn_ack = mc_syn_ack_of(ctx, &inner, &lesson.client_ack, &lesson.isn);

	fib_next_hop(ctx, inner.saddr, inner.daddr, inner.tos, inner.proto, inner.ip_tot_len, &hop);
	if (hop.fib_rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
		/* Addressed to the POP itself (the agent probing its game servers through the tunnel):
		 * left encapsulated for the kernel's ipip device to deliver. Its own address is no
		 * player's: nothing to verify, no flow to punch (its own address is dropped inbound). */
		lesson.proves_flow = lesson.has_challenge = lesson.mc_syn_ack = 0;
		learn_from_reply(cfg, &inner, svc->id, &lesson, now);
		return make_verdict(XDP_PASS, EDGE_REASON_PASS_LOCAL);
	}
	if (inner.ttl <= 1)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TTL);
	count_service(svc->id, sizeof(struct ethhdr) + inner.ip_tot_len, 1);
	if (hop.fib_rc != BPF_FIB_LKUP_RET_SUCCESS && hop.fib_rc != BPF_FIB_LKUP_RET_NO_NEIGH &&
	    hop.fib_rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_NO_ROUTE);

	if (ipip_decap(ctx, outer->l3_off, outer->ip_hdr_len) || ipv4_decrement_ttl(ctx, sizeof(struct ethhdr)))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
	if (hop.fib_rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/* The kernel fragments it (forwarded: learn) or, with DF, answers and drops it. */
		if (!inner.dont_fragment)
			learn_from_reply(cfg, &inner, svc->id, &lesson, now);
		return make_verdict(XDP_PASS, EDGE_REASON_PASS_TOO_BIG);
	}
	v = emit(ctx, &hop, EDGE_REASON_TX_RETURN);
	if (v.action != XDP_DROP)
		learn_from_reply(cfg, &inner, svc->id, &lesson, now); /* sent, or handed to the kernel to forward */
	return v;
}

/* Protocols the kernel could decapsulate if they reached it: IPIP, IPv6-in-IPv4, GRE. */
static __always_inline int is_tunnel_proto(__u8 proto)
{
	return proto == IPPROTO_IPIP || proto == IPPROTO_IPV6 || proto == IPPROTO_GRE;
}

/* Does the device the packet came in on carry IPIP to and from the backends? One array lookup. */
static __always_inline int carries_ipip(__u32 ifindex)
{
	struct iface_value *iface = bpf_map_lookup_elem(&edge_tunnel_ifaces, &ifindex);

	return iface && (iface->flags & EDGE_IFACE_F_IPIP);
}

/* Is the source one of the POP's own addresses (which no packet from outside may carry)? */
static __always_inline int is_own_source(const struct edge_config *cfg, __be32 saddr)
{
	__u32 zero = 0;
	struct own_addrs *own;

	/* 0.0.0.0 is nobody's (a DHCP client's), also before edge_rules wrote the tunnel address. */
	if (!saddr)
		return 0;
	if (saddr == cfg->tunnel_addr)
		return 1;
	own = bpf_map_lookup_elem(&edge_own_addrs, &zero);
	if (!own)
		return 0;
	for (__u32 i = 0; i < EDGE_MAX_OWN_ADDRS; i++) {
		if (i >= own->count)
			break;
		if (own->addrs[i] == saddr)
			return 1;
	}
	return 0;
}

/* Is the source under a temporary ban (asked only for traffic to a service or an anycast prefix)? */
static __always_inline int is_banned(const struct source_state *src, __u64 now)
{
	return src && src->ban_until_ns > now;
}

/*
 * SYN authentication (syn_auth.h) of a TCP segment from a source not verified for the service, on
 * no live punch, while it is on: a SYN is answered with the cookie SYN-ACK (tx_syn_auth); a RST
 * whose sequence number is this tuple's cookie verifies the source (proof syn_auth) and is
 * consumed (drop_syn_auth_verified); everything else - ACK, data, FIN, RST floods, a RST with
 * another number, a SYN too short to answer - is dropped (drop_tcp_unverified). Only the valid
 * RST makes a source entry, and only it reads the monotonic clock: a spoofed flood makes none,
 * and its drops read no clock (the SYN-ACK reads the cookie's UTC clock).
 */
static __always_inline struct verdict syn_auth(struct xdp_md *ctx, const struct edge_config *cfg,
					       const struct packet *pkt, const struct service_value *svc,
					       struct source_state *src, __u64 *now)
{
	struct tcp_head head;
	__u64 key[2], previous[2], epoch_ns, epoch;
	__u32 cookie;
	__u8 flags;
	int len;

	flags = pkt->tcp_flags & TCP_FLAGS_HANDSHAKE;
	/* A RST with or without ACK (stacks differ); a SYN alone. Nothing else is asked, and an
	 * out-of-state flood's segment is dropped without reading more of it. */
	if (flags != TCP_FLAG_SYN && (flags & ~TCP_FLAG_ACK) != TCP_FLAG_RST)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	/* A source inside the fleet's own anycast prefixes is spoofed (nobody else holds them): its
	 * SYN-ACK would go back into the fleet, at one of its own services, whose game server's RST
	 * would then verify that address. Neither answered nor verified. */
	if (lpm_v4_match(&edge_anycast_v4, pkt->saddr))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	if (bpf_xdp_load_bytes(ctx, pkt->l4_off + 4, &head, sizeof(head)))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	epoch_ns = cfg->cookie_epoch_ns ? cfg->cookie_epoch_ns : DEFAULT_COOKIE_EPOCH_NS;
	epoch = edge_cookie_epoch(epoch_ns, cfg->cookie_tai_offset_ns); /* UTC: the same on every POP */
	syn_auth_keys(cfg, key, previous);
	if (flags == TCP_FLAG_SYN) {
		cookie = a2s_cookie(key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, epoch);
		/* The cookie must not be the ACK the client waits for (a chance of 2^-32): it would
		 * complete a handshake the game server never saw. Dropped: the retransmission of a
		 * later epoch gets another cookie. Never more bytes back than the SYN brought. */
		if (cookie == bpf_ntohl(head.seq) + 1 || pkt->ip_tot_len < SYN_AUTH_REPLY_IP_LEN)
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
		/* Our sequence number: the client never acknowledges it; derived from the cookie so
		 * the answer is the same for the same SYN. */
		len = syn_ack_send(ctx, pkt->vlan_tags, ~cookie, cookie);
		if (len < 0)
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_ERROR);
		count_service(svc->id, len, 1);
		return make_verdict(XDP_TX, EDGE_REASON_TX_SYN_AUTH);
	}
	if (!a2s_cookie_valid(key, previous, bpf_ntohl(head.seq), pkt->saddr, pkt->daddr, pkt->sport, pkt->dport,
			      epoch))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_TCP_UNVERIFIED);
	clock_now(now); /* only a proven source's entry needs the time */
	if (!src)
		src = source_create(pkt->saddr, pkt->frame_len, *now);
	source_verify(cfg, src, svc->id, EDGE_PROOF_SYN_AUTH, *now);
	return make_verdict(XDP_DROP, EDGE_REASON_DROP_SYN_AUTH_VERIFIED);
}

static __always_inline int tcp_is_syn(__u8 flags)
{
	return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_SYN;
}

/*
 * mc_handshake_valid() on a TCP segment's payload, as a global function: the verifier checks it
 * once, on its own, for any arguments, instead of once on every path of inbound_ipv4() that
 * reaches it (inlined, its unrolled VarInt loop multiplied those paths past the verifier's
 * 1,000,000 processed instructions on 6.18). Its caller knows only its answer, 0 or 1.
 */
__noinline int mc_payload_is_handshake(struct xdp_md *ctx, __u32 payload_off, __u32 payload_len)
{
	struct packet payload = { .proto = IPPROTO_TCP, .payload_off = payload_off, .payload_len = payload_len };
	struct mc_handshake handshake = {};

	return mc_handshake_valid(ctx, &payload, &handshake);
}

/* What mc_first_data() makes of a segment to a minecraft service. */
enum mc_verdict {
	MC_PASS,    /* not a flow's first data, a flow the POP does not check, or a well-formed handshake */
	MC_DROP,    /* not provably the player's own (drop_handshake_unacked): dropped, nobody revoked */
	MC_REVOKE,  /* the player's own first data, and no handshake: dropped, its source's verification revoked */
};

/*
 * Minecraft (game_protocol minecraft, TCP): the first data segment of a flow whose SYN the POP
 * forwarded (an edge_mc_flows entry) must start with a well-formed handshake (mc_proto.h). The
 * first segment is the one that carries the flow's first data byte, sequence number isn + 1 (the
 * entry's isn: the SYN's, or the one the backend's SYN-ACK acknowledges). Any other segment passes
 * unjudged whatever it carries and keeps the entry: a later one (the first went through another
 * POP, the route having moved, or comes here out of order) is not the place for a handshake, and
 * the backend's stack hands its bytes to the game only after the first segment's, which is judged
 * whenever it comes through here (docs/game-protocols.md: why that cannot be abused). That holds
 * only while isn is the ISN the backend accepted: once SYNs with two ISNs came through here and no
 * SYN-ACK (which names the one accepted) was seen here, the entry is ambiguous (isn_ambiguous) and
 * its first data segment is judged whatever its sequence number, at its start (a handshake passes
 * and ends the check, anything else is dropped as drop_handshake_unacked): else a second SYN,
 * which the backend answers with a challenge ACK and keeps the first ISN, would let the real
 * first segment pass here as "a later one". Data that
 * starts before isn + 1 and reaches past it (no client sends that: its first bytes would sit at an
 * offset) is refused like a first segment without a handshake. Anyone
 * who knows a player's address can send segments in its name, so a refusal revokes the player's
 * verification only when the segment is provably the player's own: its ACK number is the backend's
 * SYN-ACK's sequence number + 1 (recorded by the return path, mc_flow_syn_acked), which only the
 * stack the SYN-ACK reached knows. Data with another ACK once the SYN-ACK was seen (a spoofer's
 * guess, or an old connection's) or riding a SYN (TCP Fast Open, which no Minecraft client uses:
 * data with no entry to check it against) is dropped and revokes nobody.
 * Data on a flow whose SYN-ACK this POP did not see is checked all the same and never revokes:
 * with anycast the backend's SYN-ACK may have left through another POP (the mapper steered the
 * player's address there), so the player's real handshake arrives here with nothing to prove it
 * the player's; a handshake passes, anything else is dropped (drop_handshake_unacked). A live
 * punch waves such a flow's data through unchecked: the four-tuple's established connection, a
 * SYN spoofed into it having opened the entry (its backend answers such a SYN with an ACK, never a
 * SYN-ACK). A well-formed handshake ends the entry (the flow's later segments are not looked at);
 * a refused one keeps it, so the flow's retransmissions are refused too. Segments without data,
 * and RSTs, always pass; so does a flow without an entry (docs/game-protocols.md: why not fail
 * closed).
 */
static __always_inline enum mc_verdict mc_first_data(struct xdp_md *ctx, const struct edge_config *cfg,
						     const struct packet *pkt, __u64 *now)
{
	struct mc_flow_value *flow;
	struct mc_flow_key key;
	__u8 flags = pkt->tcp_flags;
	enum mc_verdict refusal = MC_DROP; /* no SYN-ACK seen here: nothing proves the segment the player's */
	__u64 syn_acked;
	__be32 seq_ack[2]; /* the segment's sequence and acknowledgement numbers */
	__u32 first_byte;  /* where in the segment's data the flow's first byte sits */

	if (!pkt->payload_len || (flags & TCP_FLAG_RST))
		return MC_PASS;
	if (flags & TCP_FLAG_SYN)
		return MC_DROP;
	key = mc_flow_of(pkt);
	flow = bpf_map_lookup_elem(&edge_mc_flows, &key);
	if (!flow)
		return MC_PASS;
	if (bpf_xdp_load_bytes(ctx, pkt->l4_off + 4, seq_ack, sizeof(seq_ack)))
		return MC_DROP; /* never: the parser checked the header is there */
	syn_acked = flow->syn_acked;
	first_byte = flow->isn + 1 - bpf_ntohl(seq_ack[0]); /* mod 2^32: the wrap included */
	if (!(syn_acked & MC_FLOW_SYN_ACKED) && flow->isn_ambiguous)
		first_byte = 0; /* SYNs with two ISNs, none acknowledged here: any data is the first */
	else if (first_byte >= pkt->payload_len)
		return MC_PASS; /* not the first segment */
	if (syn_acked & MC_FLOW_SYN_ACKED) {
		if (!(flags & TCP_FLAG_ACK) || bpf_ntohl(seq_ack[1]) != (__u32)syn_acked)
			return MC_DROP;
		refusal = MC_REVOKE; /* the player's own segment */
	} else if (punch_is_live(cfg, pkt, now)) {
		return MC_PASS;
	}
	if (first_byte || !mc_payload_is_handshake(ctx, pkt->payload_off, pkt->payload_len))
		return refusal;
	bpf_map_delete_elem(&edge_mc_flows, &key);
	return MC_PASS;
}

/* A SYN to a minecraft service left the program towards its backend (or the kernel's forwarding):
 * the flow's segment carrying byte isn + 1 is its first, to be checked. The SYN that makes the
 * entry writes isn; a later SYN renews the time and never writes isn: a retransmission (the same
 * sequence number) changes nothing else, one with another number marks the entry isn_ambiguous
 * (mc_first_data: before a SYN-ACK is seen here, its first data is then judged whatever its
 * sequence number; once one is, isn is the SYN-ACK's and the mark means nothing).
 * Why SYNs never write isn, and the mark is a word of its own: the return path
 * (mc_flow_syn_acked) writes isn then syn_acked on another CPU at any time; a SYN that read
 * "no SYN-ACK yet" and then wrote isn could land after both and leave a spoofed ISN with
 * syn_acked set, which nothing would correct. With isn written only by the entry's maker and by
 * the SYN-ACK, and the mark only ever set to 1 by SYNs (read only while no SYN-ACK was seen), no
 * interleaving leaves a wrong isn, and none needs a lock or an atomic. Two SYNs of the flow
 * making the entry at once on two CPUs: the loser's BPF_NOEXIST fails, it looks the entry up and
 * compares like any later SYN. */
static __always_inline void mc_flow_start(const struct packet *pkt, __u32 isn, __u64 now)
{
	struct mc_flow_key key = mc_flow_of(pkt);
	struct mc_flow_value value = { .syn_ns = now, .isn = isn };
	struct mc_flow_value *flow = bpf_map_lookup_elem(&edge_mc_flows, &key);

	if (!flow) {
		if (!bpf_map_update_elem(&edge_mc_flows, &key, &value, BPF_NOEXIST))
			return;
		flow = bpf_map_lookup_elem(&edge_mc_flows, &key); /* made meanwhile by another CPU */
		if (!flow)
			return;
	}
	flow->syn_ns = now;
	if (flow->isn != isn)
		flow->isn_ambiguous = 1;
}

/* forward_to_backend, and for a SYN to a minecraft service that is not dropped on its way, the
 * flow's entry (mc_flow_start; the SYN's sequence number read before the encapsulation moves it). */
static __always_inline struct verdict forward_segment(struct xdp_md *ctx, const struct edge_config *cfg,
						      const struct packet *pkt, const struct service_value *svc,
						      __u32 tx_reason, int mc_syn, __u64 now)
{
	struct verdict v;
	__be32 isn = 0;

	if (mc_syn && bpf_xdp_load_bytes(ctx, pkt->l4_off + 4, &isn, sizeof(isn)))
		mc_syn = 0; /* never: the parser checked the header is there */
	v = forward_to_backend(ctx, cfg, pkt, svc, tx_reason, now);
	if (mc_syn && v.action != XDP_DROP)
		mc_flow_start(pkt, bpf_ntohl(isn), now);
	return v;
}

/* Inbound IPv4, after parsing. */
static __always_inline struct verdict inbound_ipv4(struct xdp_md *ctx, const struct edge_config *cfg,
						   const struct packet *pkt)
{
	struct service_key skey = {};
	struct service_value *svc;
	struct source_state *src;
	struct source_lists lists = source_lists_of(pkt->saddr);
	struct verdict v;
	__u64 now = 0; /* clock_now(): read only once a decision needs it */
	int allowed = lists.allowed, punched, verified = 0, admission, mc_syn = 0;
	int cookie_proven = 0; /* set by a2s_handle: the source echoed a valid fleet cookie */

	/* The deny list comes first, even before the return path: a denied source is never
	 * forwarded. (validate_inventory refuses a deny prefix that covers a backend.) */
	if (lists.denied)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_DENY);
	/* Our own address as the source: spoofed (what the POP sends never comes back in here).
	 * Dropped before the kernel could accept it (accept_local is on for the fallback path). */
	if (is_own_source(cfg, pkt->saddr))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_OWN_SOURCE);
	/* The tunnel address takes IPIP from the backends, on the devices that carry it, whole.
	 * Everything else the kernel's tunnels could decapsulate or reassemble there (IPIP from
	 * the wrong side, GRE, 6in4, any fragment) would reach players past every filter: dropped. */
	if (pkt->daddr == cfg->tunnel_addr) {
		if (pkt->proto == IPPROTO_IPIP && !pkt->is_fragment && carries_ipip(ctx->ingress_ifindex))
			return return_path(ctx, cfg, pkt, bpf_ktime_get_ns());
		if (pkt->is_fragment || is_tunnel_proto(pkt->proto))
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_BAD_TUNNEL);
	}
	/* Nothing of its /24 is ours: the POP's own traffic, to the kernel after one array lookup
	 * (what the service and anycast lookups below would also say, for more). */
	if (dest_not_ours(pkt->daddr))
		return make_verdict(XDP_PASS, EDGE_REASON_PASS_NOT_OURS);
	/* The service first: a packet to one is ours without asking the anycast prefixes. Fragments
	 * (a later one has no ports) and IP options are never a service's. Without a service, the
	 * prefixes tell "ours, but dropped" from "not ours" (the kernel's). Bans apply only to what
	 * is ours: a source banned for flooding a service (maybe spoofed in a BGP neighbour's name)
	 * still reaches the POP itself (BGP, BFD, SSH). */
	svc = NULL;
	if (!pkt->is_fragment && pkt->ip_hdr_len == sizeof(struct iphdr)) {
		skey.addr = pkt->daddr;
		skey.port = pkt->dport;
		skey.proto = pkt->proto;
		svc = bpf_map_lookup_elem(&edge_services, &skey);
	}
	if (!svc) {
		if (!lpm_v4_match(&edge_anycast_v4, pkt->daddr))
			return make_verdict(XDP_PASS, EDGE_REASON_PASS_NOT_OURS);
		src = source_lookup(pkt->saddr);
		if (src)
			now = clock_read(); /* its ban and its counters need the time; a new source's drop does not */
		if (!allowed && is_banned(src, now))
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_BANNED);
		/* Counted in the entry of a source the POP knows; dropped, so it makes none. */
		if (src)
			source_count(src, pkt->frame_len, now);
		if (pkt->is_fragment)
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_FRAGMENT);
		if (pkt->ip_hdr_len != sizeof(struct iphdr))
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_IP_OPTIONS);
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_NO_SERVICE);
	}
	src = source_lookup(pkt->saddr);
	if (src)
		now = clock_read(); /* the first read: its ban, verification and window expire */
	if (!allowed && is_banned(src, now))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_BANNED);
	if (src)
		source_count(src, pkt->frame_len, now);
	count_service(svc->id, pkt->frame_len, 0);
	/* An ICMP service is for ping: echo requests only. Errors, redirects, timestamps ... to an
	 * anycast address are nothing a game server needs, and an error must never be answered. */
	if (pkt->proto == IPPROTO_ICMP && pkt->icmp_type != ICMP_ECHO)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_ICMP_TYPE);
	admission = admitted(ctx, cfg, pkt, svc, src, allowed, &now, &verified);
	if (admission == ADMIT_SYN_AUTH && !punch_is_live(cfg, pkt, &now))
		return syn_auth(ctx, cfg, pkt, svc, src, &now);
	if (admission == ADMIT_DROP)
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_UNVERIFIED);
	clock_now(&now); /* from here on every path needs it */
	/* The operator's payload rules (payload_rules.h): "verified" as admission found it. */
	if (payload_rules_drop(ctx, pkt, verified, allowed, now))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_RULE);
	/* Minecraft: a flow's first data segment is the client's handshake, or the source is no client
	 * (mc_proto.h); whatever the punch once the flow's SYN-ACK was seen (a live one of a reused
	 * four-tuple does not spare the new connection). Only the player's own segment revokes. */
	if (svc->game_protocol == EDGE_GAME_MINECRAFT && pkt->proto == IPPROTO_TCP) {
		enum mc_verdict mc = mc_first_data(ctx, cfg, pkt, &now);

		if (mc == MC_DROP)
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_HANDSHAKE_UNACKED);
		if (mc == MC_REVOKE) {
			source_unverify(src, svc->id);
			return make_verdict(XDP_DROP, EDGE_REASON_DROP_HANDSHAKE);
		}
		mc_syn = tcp_is_syn(pkt->tcp_flags);
	}
	/* Accepted: the source's first accepted packet makes its entry. */
	if (!src)
		src = source_create(pkt->saddr, pkt->frame_len, now);

	punched = punch_is_live(cfg, pkt, &now);
	if (punched)
		return forward_segment(ctx, cfg, pkt, svc, EDGE_REASON_TX_PUNCHED, mc_syn, now);
	if (!allowed && rate_limit_exceeded(cfg, pkt, svc, src, now))
		return make_verdict(XDP_DROP, EDGE_REASON_DROP_RATE_LIMIT);
	if (pkt->proto == IPPROTO_UDP && (svc->flags & SERVICE_F_A2S_CACHE) &&
	    a2s_handle(ctx, cfg, pkt, svc, now, &v, &cookie_proven)) {
		/* A valid fleet cookie proves the address (allow-listed sources need no proof). */
		if (cookie_proven && !allowed)
			source_verify(cfg, src, svc->id, EDGE_PROOF_COOKIE, now);
		return v;
	}
	return forward_segment(ctx, cfg, pkt, svc, EDGE_REASON_TX_FORWARD, mc_syn, now);
}

SEC("xdp")
int xdp_edge(struct xdp_md *ctx)
{
	struct packet pkt = {};
	__u32 zero = 0;
	struct edge_config *cfg;
	int rc;

	rc = parse_frame(ctx, &pkt);
	if (rc == PARSE_MALFORMED)
		return finish(ctx, &pkt, make_verdict(XDP_DROP, EDGE_REASON_DROP_MALFORMED));
	if (rc == PARSE_NOT_IP)
		return finish(ctx, &pkt, make_verdict(XDP_PASS, EDGE_REASON_PASS_NON_IP));
	if (rc == PARSE_IPV6) {
		struct lpm_v6_key key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, pkt.v6_daddr, sizeof(key.addr));
		if (bpf_map_lookup_elem(&edge_anycast_v6, &key))
			return finish(ctx, &pkt, make_verdict(XDP_DROP, EDGE_REASON_DROP_NO_SERVICE));
		return finish(ctx, &pkt, make_verdict(XDP_PASS, EDGE_REASON_PASS_NOT_OURS));
	}

	cfg = bpf_map_lookup_elem(&edge_config, &zero);
	if (!cfg)
		return finish(ctx, &pkt, make_verdict(XDP_PASS, EDGE_REASON_PASS_NOT_OURS));
	return finish(ctx, &pkt, inbound_ipv4(ctx, cfg, &pkt));
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
