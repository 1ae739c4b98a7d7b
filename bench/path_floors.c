// SPDX-License-Identifier: MIT
/*
 * The floors of the two paths the issue sets targets for: the least a program can do to forward
 * a player's packet (forward_floor) or to answer an A2S_INFO request from the cache (a2s_floor)
 * by the rules, with the state of those rules merged into as few lookups as they allow.
 * They exist only to be timed next to xdp_edge (bench/README.md, "The floors"); the bench checks
 * that each one's output is xdp_edge's, byte for byte.
 *
 * Both do, for every packet (admit()):
 *   rule 1  parse the frame: parsing.h, every bounds check, exactly as xdp_edge
 *   rule 2  the source's deny/allow bits: one lookup in an array laid out as edge_src_filter
 *   rules 3, 6  ONE entry per source holding its ban, its rate-limit window and its counters
 *           (the per-player statistics too): one hash lookup, atomic adds, the clock read once
 *   rule 4  the service: one hash lookup (edge_services' key and value)
 * then forward_floor (rule 8): TTL decrement, IPIP encapsulation (encap.h), the next hop kept in
 * an array, XDP_TX; a2s_floor (rule 7): the request's bytes, its cookie (one SipHash, a2s.h), the
 * cache entry (one hash lookup), the reply built in place (udp_reply.h), XDP_TX. Every verdict is
 * counted in a per-CPU array, as every packet must be.
 *
 * What they leave out that xdp_edge does: a port punch lookup (rule 5; a per-source "has punches"
 * flag could skip it for most sources), per-service counters, separate maps for bans, rate windows
 * and player statistics (xdp_edge keeps three: who reads them differs). So no implementation of the
 * rules does either path for less; whether one can do it for as little is another question.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "edge_abi.h"
#include "parsing.h"
#include "csum.h"
#include "encap.h"
#include "a2s.h"
#include "udp_reply.h"

/* Everything one source needs: ban, rate window, counters (written with atomic adds). */
struct floor_source {
	__u64 banned_until_ns;
	__u64 window;
	__u64 packets;
	__u64 bytes;
};

struct floor_config {
	__be32 tunnel_addr;
	__u32 pad;
	__u8 smac[ETH_ALEN];    /* the next hop to the backend */
	__u8 dmac[ETH_ALEN];
	__u64 cookie_key[2];    /* as edge_config's */
	__u64 cookie_epoch_ns;
	__s64 cookie_tai_offset_ns; /* as edge_config's: the cookie epoch counts UTC */
};

/* Written by bench/programs.py (every source bit 0: none listed); read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EDGE_SRC_FILTER_ENTRIES);
	__type(key, __u32);
	__type(value, struct src_filter_entry);
} floor_src_filter SEC(".maps");

/* Written by bench/programs.py (the forwarded client's entry); read and counted per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct floor_source);
} floor_sources SEC(".maps");

/* Written by bench/programs.py (the forwarded service); read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EDGE_MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service_value);
} floor_services SEC(".maps");

/* Written by bench/programs.py (tunnel address, next hop, cookie key and epoch); read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct floor_config);
} floor_config SEC(".maps");

/* Written by bench/programs.py (the A2S service's reply); read by a2s_floor per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EDGE_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct a2s_cache_entry);
} floor_a2s_cache SEC(".maps");

/* Written here (one counter per XDP action); read by bench/programs.py to check the path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} floor_verdicts SEC(".maps");

#define FLOOR_PACKETS_PER_SEC 1000000000ULL

static __always_inline int counted(__u32 action)
{
	__u64 *count = bpf_map_lookup_elem(&floor_verdicts, &action);

	if (count)
		(*count)++;
	return action;
}

/* Rules 1-4 and 6 for one packet: the service it is for, or NULL with *action set. */
static __always_inline struct service_value *admit(struct xdp_md *ctx, struct packet *pkt, __u64 *now, int *action)
{
	struct service_key skey = {};
	struct src_filter_entry *lists;
	struct floor_source *source;
	struct service_value *svc;
	__u32 addr, index;
	__u64 bit;

	*action = XDP_DROP;
	if (parse_frame(ctx, pkt) != PARSE_IPV4) {
		*action = XDP_PASS;
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
	if (!source || source->banned_until_ns > *now)
		return NULL;
	if (__sync_fetch_and_add(&source->packets, 1) >= FLOOR_PACKETS_PER_SEC)
		return NULL;
	__sync_fetch_and_add(&source->bytes, pkt->ip_tot_len);

	skey.addr = pkt->daddr;
	skey.port = pkt->dport;
	skey.proto = pkt->proto;
	svc = bpf_map_lookup_elem(&floor_services, &skey);
	return svc;
}

SEC("xdp")
int forward_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct service_value *svc;
	struct floor_config *cfg;
	struct ethhdr *eth;
	__u32 zero = 0;
	__u64 now = 0;
	int action;

	svc = admit(ctx, &pkt, &now, &action);
	if (!svc)
		return counted(action);
	cfg = bpf_map_lookup_elem(&floor_config, &zero);
	if (!cfg || pkt.ttl <= 1)
		return counted(XDP_DROP);
	if (ipv4_decrement_ttl(ctx, pkt.l3_off) || ipip_encap(ctx, &pkt, cfg->tunnel_addr, svc->backend_addr))
		return counted(XDP_ABORTED);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return counted(XDP_ABORTED);
	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);
	return counted(XDP_TX);
}

SEC("xdp")
int a2s_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct a2s_request req = {};
	struct a2s_cache_entry *entry;
	struct service_value *svc;
	struct floor_config *cfg;
	__u32 zero = 0, cookie, id;
	__u64 now = 0, len;
	int action, off;

	svc = admit(ctx, &pkt, &now, &action);
	if (!svc)
		return counted(action);
	cfg = bpf_map_lookup_elem(&floor_config, &zero);
	if (!cfg || !cfg->cookie_epoch_ns || pkt.payload_len != A2S_REQUEST_COOKIE_LEN ||
	    bpf_xdp_load_bytes(ctx, pkt.payload_off, &req, A2S_REQUEST_COOKIE_LEN) || !a2s_is_info_request(&req))
		return counted(XDP_DROP);
	id = svc->id;
	entry = bpf_map_lookup_elem(&floor_a2s_cache, &id);
	if (!entry || entry->updated_ns > now || now - entry->updated_ns >= (__u64)svc->a2s_max_age_ms * 1000000ULL)
		return counted(XDP_DROP);
	cookie = (__u32)req.cookie[0] | ((__u32)req.cookie[1] << 8) | ((__u32)req.cookie[2] << 16) |
		 ((__u32)req.cookie[3] << 24);
	if (cookie != a2s_cookie(cfg->cookie_key, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport,
				 edge_cookie_epoch(cfg->cookie_epoch_ns, cfg->cookie_tai_offset_ns)))
		return counted(XDP_DROP);
	len = entry->len;
	if (len < 5 || len > A2S_CACHE_MAX_PAYLOAD || pkt.vlan_tags)
		return counted(XDP_DROP);
	off = udp_reply_in_place(ctx, sizeof(struct ethhdr), len);
	if (off < 0 || payload_copy(ctx, off, (__u8 *)entry->payload, len, 1) ||
	    udp_reply_set_csum(ctx, sizeof(struct ethhdr), entry->payload_csum))
		return counted(XDP_ABORTED);
	return counted(XDP_TX);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
