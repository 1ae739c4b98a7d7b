/* SPDX-License-Identifier: MIT */
/*
 * The maps of the POP program. Each says who writes it and who reads it.
 * "edge_rules" is the Ansible module that converges inventory into maps; "the agent" is the POP's
 * user-space service (cache refresh, stats export). The xdp_program module pins every map by
 * name under /sys/fs/bpf/anycast_edge/<iface>/ and hands the pins to the next version of the
 * program when the layout is unchanged, so an upgrade keeps sources (bans), punches and the cache.
 * (Pinning is done by the loader, not with LIBBPF_PIN_BY_NAME, so that tests and benchmarks can
 * load the object without a bpffs and the loader decides per map whether to reuse.)
 */
#ifndef EDGE_MAPS_H
#define EDGE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edge_abi.h"
#include "map_def.h"
#include "wireguard_maps.h"

/* Written by edge_rules (tunnel address, limits, ban time, punch idle time, cookie epoch, the
 * current and previous edge cookie keys, the POP's TAI offset for the cookie epoch).
 * Read by XDP on every packet. */
DEFINE_MAP(edge_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct edge_config);

/* Written by edge_rules (services from inventory). Read by XDP: inbound lookup by
 * (proto, address, port), and on the return path to check the inner source is a service. */
DEFINE_MAP(edge_services, BPF_MAP_TYPE_HASH, EDGE_MAX_SERVICES, struct service_key, struct service_value);

/* Written by edge_rules (the anycast prefixes). Read by XDP: "is this destination ours?". */
DEFINE_MAP_FLAGS(edge_anycast_v4, BPF_MAP_TYPE_LPM_TRIE, EDGE_MAX_ANYCAST, struct lpm_v4_key, __u32, BPF_F_NO_PREALLOC);

/* Written by edge_rules (IPv6 anycast prefixes). Read by XDP: IPv6 to these is dropped until
 * IPv6 services exist; all other IPv6 goes to the kernel. */
DEFINE_MAP_FLAGS(edge_anycast_v6, BPF_MAP_TYPE_LPM_TRIE, EDGE_MAX_ANYCAST, struct lpm_v6_key, __u32, BPF_F_NO_PREALLOC);

/* Written by edge_rules (the backends' tunnel addresses). Read by XDP on the return path:
 * IPIP is accepted only from these. */
DEFINE_MAP(edge_backends, BPF_MAP_TYPE_HASH, EDGE_MAX_BACKENDS, __be32, struct backend_value);

/* edge_wireguard_pairs: in wireguard_maps.h (included above), which tc_wireguard_redirect.c shares. */

/* Written by xdp_program (its tunnel_devices option: the underlay devices when there are any,
 * else the uplink; roles/xdp_edge sets it), indexed by ifindex. Read by XDP on the return path
 * only: IPIP to the tunnel address is accepted only from a device flagged EDGE_IFACE_F_IPIP, so a
 * reply spoofed in a backend's name from the internet (the uplink of a POP with an underlay)
 * is dropped. One array lookup, and only for IPIP to the tunnel address. */
DEFINE_MAP_FLAGS(edge_tunnel_ifaces, BPF_MAP_TYPE_ARRAY, EDGE_MAX_IFINDEX, __u32, struct iface_value, BPF_F_MMAPABLE);

/* Written by xdp_program (the IPv4 addresses on the POP's interfaces, read from the kernel at
 * each run; the tunnel address is also compared from edge_config), one entry written whole.
 * Read by XDP on every IPv4 packet: a packet arriving with one of these as its source is spoofed
 * and dropped, so the kernel's accept_local (which the fallback path needs) never lets one in. */
DEFINE_MAP(edge_own_addrs, BPF_MAP_TYPE_ARRAY, 1, __u32, struct own_addrs);

/* Written by edge_rules (allow CIDRs, exactly as inventory gives them: the operator's allow list
 * and the control-plane sources derived from inventory; the value says which, enum
 * edge_allow_origin). Read by edge_rules only: the record the derived edge_src_filter/
 * edge_src_hosts are rebuilt from. XDP does not read it. */
DEFINE_MAP_FLAGS(edge_allow_v4, BPF_MAP_TYPE_LPM_TRIE, EDGE_MAX_PREFIXES, struct lpm_v4_key, __u32, BPF_F_NO_PREALLOC);

/* Written by edge_rules (deny CIDRs, exactly as inventory gives them). Read by edge_rules (the
 * record the derived edge_src_filter/edge_src_hosts are rebuilt from) and by the agent's fleet
 * sync (an entry another POP learned for a denied address is not imported). XDP does not read it. */
DEFINE_MAP_FLAGS(edge_deny_v4, BPF_MAP_TYPE_LPM_TRIE, EDGE_MAX_PREFIXES, struct lpm_v4_key, __u32, BPF_F_NO_PREALLOC);

/* Written by edge_rules (derived from the deny and allow prefixes: edge_abi.h explains the layout;
 * mmapable so that user space reads and compares all 8 MiB at once). Read by XDP on every packet:
 * one array lookup says whether the source's /24 is wholly or partly denied or allowed. */
DEFINE_MAP_FLAGS(edge_src_filter, BPF_MAP_TYPE_ARRAY, EDGE_SRC_FILTER_ENTRIES, __u32, struct src_filter_entry, BPF_F_MMAPABLE);

/* Written by edge_rules (derived from the anycast prefixes and the services' addresses; the
 * geometry of edge_src_filter's words: bit (n % 64) of entry (n / 64) for the /24 number n;
 * mmapable so that user space reads and compares all 2 MiB at once). A set bit says that no
 * address of that /24 is ours: no anycast prefix and no service covers any of it. Read by XDP on
 * every IPv4 packet that is not denied, not from the POP's own address and not to its tunnel
 * address: a packet to such a /24 (the POP's own traffic: SSH, BGP, monitoring) is passed to the
 * kernel after one array lookup, without the service and anycast lookups. All zero (a program
 * just loaded, before edge_rules writes it) says nothing: every packet asks as without it. */
DEFINE_MAP_FLAGS(edge_dst_pass, BPF_MAP_TYPE_ARRAY, EDGE_SRC_FILTER_ENTRIES, __u32, __u64, BPF_F_MMAPABLE);

/* Written by edge_rules (the /24s that deny or allow prefixes longer than /24 cover in part).
 * Read by XDP when edge_src_filter says "some" for the source's /24. */
DEFINE_MAP_FLAGS(edge_src_hosts, BPF_MAP_TYPE_HASH, EDGE_MAX_PREFIXES, struct src_hosts_key, struct src_hosts_value, BPF_F_NO_PREALLOC);

/* Written by XDP on the return path (flows the game server spoke on); read by XDP inbound.
 * Idle punches are deleted by XDP when met; the agent may sweep the rest. */
DEFINE_MAP(edge_punches, BPF_MAP_TYPE_LRU_HASH, EDGE_MAX_PUNCHES, struct punch_key, struct punch_value);

/* Written by the agent (A2S refresher: INFO, PLAYER, RULES) and by XDP (snooped backend
 * replies, built in a2s_scratch and inserted whole, so a reader never sees a half-written entry);
 * entries deleted by edge_rules when their service changes owner.
 * Read by XDP to answer A2S_INFO/PLAYER/RULES, and by the agent's exporter (entries, age).
 * Keyed by a2s_cache_key(service id, enum a2s_kind). No prealloc: replaced entries are freed
 * after RCU. */
DEFINE_MAP_FLAGS(edge_a2s_cache, BPF_MAP_TYPE_HASH, A2S_CACHE_MAX_ENTRIES, __u32, struct a2s_cache_entry, BPF_F_NO_PREALLOC);

/* Written by XDP (each A2S request it answers or drops, by enum a2s_kind). Read by the agent's
 * exporter (anycast_edge_a2s_answers_total{kind, answer}). */
DEFINE_MAP(edge_a2s_stats, BPF_MAP_TYPE_PERCPU_ARRAY, A2S_KIND_COUNT, __u32, struct a2s_counter);

/* XDP's private scratch space for building a cache entry (too big for the stack). */
DEFINE_MAP(edge_a2s_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct a2s_cache_entry);

/* Written by XDP (every packet, by enum edge_reason). Read by edge_stats_info and the agent. */
DEFINE_MAP(edge_reason_stats, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_REASON_COUNT, __u32, struct edge_counter);

/* Written by XDP (per service id, in and out). Read by edge_stats_info and the agent. */
DEFINE_MAP(edge_service_stats, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_MAX_SERVICES, __u32, struct service_counter);

/* Written and read by XDP only (forward path): the FIB's answer per service's backend, per CPU,
 * for EDGE_NEXT_HOP_CACHE_NS. Nothing in user space needs it; an empty entry is a miss. */
DEFINE_MAP(edge_next_hops, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_MAX_SERVICES, __u32, struct next_hop_cache_entry);

/* Written by xdp_program (egress devices other than the uplink, keyed by ifindex).
 * Read by XDP: bpf_redirect_map() when the fib says the next hop is on another device. */
DEFINE_MAP(edge_tx_ports, BPF_MAP_TYPE_DEVMAP_HASH, EDGE_MAX_TX_PORTS, __u32, __u32);

/* Written by XDP (inbound: bans, rate windows, counters, verification by cookie or by the game's
 * handshake; return path: the game server's challenge in flight, verification by punch); the
 * agent reads it (anycast-edge top, the exporter: top talkers, active bans, verified players),
 * as does edge_stats_info; an operator may add or lift a ban by hand (ban_until_ns). Never
 * touched by edge_rules: learned state survives rule updates. One entry per source, one lookup
 * per packet (it replaced edge_bans, edge_rate_counters and edge_client_stats). See struct
 * source_state. */
DEFINE_MAP(edge_sources, BPF_MAP_TYPE_LRU_HASH, EDGE_MAX_SOURCES, __be32, struct source_state);

/* Written by XDP (each CPU its own bucket and counters, indexed by service id: no atomics).
 * Read by the agent (attack mode: unverified traffic per second; the exporter). */
DEFINE_MAP(edge_admission, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_MAX_SERVICES, __u32, struct admission_bucket);

/* Written by the agent (attack mode of EDGE_ATTACK_AUTO services, with hysteresis), indexed by
 * service id. Read by XDP on every unverified packet to a service. */
DEFINE_MAP(edge_attack_state, BPF_MAP_TYPE_ARRAY, EDGE_MAX_SERVICES, __u32, struct attack_state);

/* Written by XDP (per proof, per CPU: sources verified). Read by the agent (exporter). */
DEFINE_MAP(edge_verify_stats, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_PROOF_COUNT, __u32, __u64);

/* Written by edge_rules (anycast_edge_filters.rules: the bank XDP does not read, then the other
 * after the switch; edge_abi.h, struct payload_rule). Read by XDP on every packet to a service
 * that passed the deny, own-source, ban and ICMP checks, up to the first matching rule. */
DEFINE_MAP(edge_payload_rules, BPF_MAP_TYPE_ARRAY, EDGE_PAYLOAD_RULE_BANKS * EDGE_MAX_PAYLOAD_RULES, __u32, struct payload_rule);

/* Written by edge_rules (the switch between the two banks of edge_payload_rules, one entry).
 * Read by XDP with the rules. */
DEFINE_MAP(edge_payload_rule_bank, BPF_MAP_TYPE_ARRAY, 1, __u32, struct payload_rule_bank);

/* Written by XDP (per rule position, per CPU: the packets and bytes each rule matched). Read by
 * the agent (exporter, anycast-edge top) and edge_stats_info. edge_rules zeroes a position whose
 * rule it replaces, so a count always belongs to the rule now at its position. */
DEFINE_MAP(edge_payload_rule_stats, BPF_MAP_TYPE_PERCPU_ARRAY, EDGE_MAX_PAYLOAD_RULES, __u32, struct edge_counter);

/* Written and read by XDP only (EDGE_RULE_LIMIT windows per source and rule). Its own small LRU,
 * not edge_sources: a limit rule is aimed at a flood, whose spoofed sources would otherwise
 * churn the per-source entries and evict the players' state; old windows fall out by LRU. */
DEFINE_MAP(edge_rule_limits, BPF_MAP_TYPE_LRU_HASH, EDGE_MAX_RULE_LIMITS, struct rule_limit_key, struct rule_limit_value);

/* Written and read by XDP only. Inbound: a TCP flow to a minecraft service gets an entry when its
 * SYN is forwarded, with the SYN's sequence number (isn; a later SYN renews syn_ns, and sets
 * isn_ambiguous when its sequence number is another: it never writes isn), and loses it when its
 * first data segment (the one carrying isn + 1, or any while isn_ambiguous and no SYN-ACK was
 * seen) proved to be a well-formed handshake (mc_proto.h); a flow whose first data was refused keeps it, so each
 * of its retransmissions is checked again; a later segment (the first went through another POP)
 * is not judged and keeps it. Return path: the backend's SYN-ACK on the way to the player writes
 * isn (its ACK - 1) and syn_acked (the ACK that proves a data segment the player's own, the only
 * one whose refusal revokes); it makes no entry. Its own small LRU: an
 * entry lives one round trip, and a flood of SYNs (forwarded only while SYN authentication lets
 * them) evicts other such entries, never a source's state. A flow without an entry (evicted, or
 * begun before the program) is not checked: failing closed would stall real players' flows
 * (docs/game-protocols.md). */
DEFINE_MAP(edge_mc_flows, BPF_MAP_TYPE_LRU_HASH, EDGE_MAX_MC_FLOWS, struct mc_flow_key, struct mc_flow_value);

#endif /* EDGE_MAPS_H */
