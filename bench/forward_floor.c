// SPDX-License-Identifier: MIT
/*
 * forward_floor: the least a program can do to forward a player's packet by the rules,
 * with the state of those rules merged into as few lookups as they allow. It exists only to be
 * timed next to xdp_edge's forward (bench/README.md, "the forward floor"):
 *
 *   rule 1  parse the frame: parsing.h, every bounds check, exactly as xdp_edge
 *   rule 2  the source's deny/allow bits: one lookup in an array laid out as edge_src_filter
 *   rules 3, 6  ONE entry per source holding its ban, its rate-limit window and its counters
 *           (the per-player statistics too): one hash lookup, atomic adds, the clock read once
 *   rule 4  the service: one hash lookup (edge_services' key and value)
 *   rule 8  TTL decrement, IPIP encapsulation (encap.h), a next hop kept in an array, XDP_TX
 *   and the verdict counted in a per-CPU array, as every packet must be.
 *
 * What it leaves out that xdp_edge does for every forward: a port punch lookup (rule 5; a per-source
 * "has punches" flag could skip it for most sources), per-service counters, separate maps for
 * bans, rate windows and player statistics (xdp_edge keeps three: who reads them differs). So
 * no implementation of the rules forwards for less than this; whether one can forward for as
 * little is another question.
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

/* Everything one source needs: ban, rate window, counters (written with atomic adds). */
struct floor_source {
	__u64 banned_until_ns;
	__u64 window;
	__u64 packets;
	__u64 bytes;
};

struct floor_hop {
	__be32 tunnel_addr;
	__u32 pad;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
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

/* Written by bench/programs.py (the tunnel address and the next hop's MACs); read per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct floor_hop);
} floor_next_hop SEC(".maps");

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

SEC("xdp")
int forward_floor(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct service_key skey = {};
	struct src_filter_entry *lists;
	struct floor_source *source;
	struct service_value *svc;
	struct floor_hop *hop;
	struct ethhdr *eth;
	__u32 addr, index, zero = 0;
	__u64 bit, now;

	if (parse_frame(ctx, &pkt) != PARSE_IPV4)
		return counted(XDP_PASS);
	addr = bpf_ntohl(pkt.saddr);
	index = addr >> 14;
	bit = 1ULL << ((addr >> 8) & 63);
	lists = bpf_map_lookup_elem(&floor_src_filter, &index);
	if (!lists || (lists->deny_all & bit))
		return counted(XDP_DROP);

	now = bpf_ktime_get_ns();
	source = bpf_map_lookup_elem(&floor_sources, &pkt.saddr);
	if (!source || source->banned_until_ns > now)
		return counted(XDP_DROP);
	if (__sync_fetch_and_add(&source->packets, 1) >= FLOOR_PACKETS_PER_SEC)
		return counted(XDP_DROP);
	__sync_fetch_and_add(&source->bytes, pkt.ip_tot_len);

	skey.addr = pkt.daddr;
	skey.port = pkt.dport;
	skey.proto = pkt.proto;
	svc = bpf_map_lookup_elem(&floor_services, &skey);
	hop = bpf_map_lookup_elem(&floor_next_hop, &zero);
	if (!svc || !hop || pkt.ttl <= 1)
		return counted(XDP_DROP);
	if (ipv4_decrement_ttl(ctx, pkt.l3_off) || ipip_encap(ctx, &pkt, hop->tunnel_addr, svc->backend_addr))
		return counted(XDP_ABORTED);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return counted(XDP_ABORTED);
	__builtin_memcpy(eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->smac, ETH_ALEN);
	return counted(XDP_TX);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
