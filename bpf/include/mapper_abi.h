/* SPDX-License-Identifier: MIT */
/*
 * The ABI between the game-server host's TC mapper (bpf/tc_mapper.c) and user space: map keys,
 * map values, counter reasons, and the maps themselves (each says who writes and who reads it).
 *
 * This file is the one definition of every layout. plugins/module_utils/_mapper_abi.py packs these
 * structs, and tests/bpf/test_mapper_abi.py checks its packing against the compiled object's BTF.
 *
 * Conventions (the same as edge_abi.h):
 *   - addresses (__be32) and ports (__be16) in network byte order, as they sit in the packet;
 *   - times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns(); Python's time.monotonic_ns());
 *   - every struct is padded explicitly.
 *
 * Names: "tc_mapper" is the Ansible role (with the module that converges inventory into the maps);
 * "ingress" and "egress" are the two programs of bpf/tc_mapper.c on the host's uplink NIC.
 */
#ifndef MAPPER_ABI_H
#define MAPPER_ABI_H

#include <linux/types.h>

#define MAPPER_MAX_POPS      256
#define MAPPER_MAX_SERVICES  1024
#define MAPPER_MAX_FLOWS     262144   /* players x flows; LRU: the least recently used go first */

/* A mapping not refreshed by ingress for this long is ignored when mapper_config.idle_ns is 0. */
#define MAPPER_DEFAULT_IDLE_NS (120ULL * 1000000000ULL)

/*
 * Why a packet got its treatment. Each program counts every packet it sees under exactly one
 * reason (mapper_stats). Names after MAPPER_REASON_ are what the exporter and the tests call them.
 */
enum mapper_reason {
	MAPPER_REASON_INGRESS_PASS = 0,     /* not IPIP to this host's tunnel address: not the mapper's business */
	MAPPER_REASON_INGRESS_LEARNED,      /* IPIP from a known POP on its device: flow -> POP learned or refreshed */
	MAPPER_REASON_INGRESS_UNKNOWN_POP,  /* IPIP to this host's tunnel address from a source not in mapper_pops: dropped */
	MAPPER_REASON_INGRESS_FRAGMENT,     /* inner or outer fragment from a POP on its device: no ports, nothing learned */
	MAPPER_REASON_INGRESS_MALFORMED,    /* truncated or inconsistent headers: nothing learned, kernel decides */
	MAPPER_REASON_EGRESS_PASS,          /* not IPIP from this host's tunnel address: untouched */
	MAPPER_REASON_EGRESS_MAPPED,        /* outer destination = the POP the flow came in through */
	MAPPER_REASON_EGRESS_DEFAULTED,     /* no live mapping: outer destination = the default POP */
	MAPPER_REASON_EGRESS_UNMAPPED,      /* no live mapping and no default POP: left as the kernel routed it */
	MAPPER_REASON_EGRESS_DSR,           /* direct server return: encapsulation stripped, sent to the gateway */
	MAPPER_REASON_EGRESS_MALFORMED,     /* our IPIP with a truncated or inconsistent inner packet: dropped */
	MAPPER_REASON_EGRESS_ERROR,         /* a helper failed mid-rewrite: dropped, never sent half-built */
	MAPPER_REASON_INGRESS_WRONG_DEVICE, /* IPIP in a known POP's name on a device other than the one the
					     * host routes that POP through (spoofed): dropped, nothing learned */
	MAPPER_REASON_COUNT,
};

/* mapper_stats value (per CPU): user space sums the CPUs. */
struct mapper_counter {
	__u64 packets;
	__u64 bytes;   /* skb->len as the program saw it (Ethernet header included) */
};

/* Settings of this host, one entry (mapper_config[0]). All zero: the mapper touches nothing. */
struct mapper_config {
	__u64 idle_ns;          /* a flow not seen on ingress for this long goes to the default POP; 0: MAPPER_DEFAULT_IDLE_NS */
	__be32 tunnel_addr;     /* this host's tunnel address: outer destination from POPs, outer source of replies */
	__be32 default_pop;     /* outer destination without a live mapping; 0: keep what the kernel's routing chose */
	__u8 gateway_mac[6];    /* DSR next hop; all zero: ask the FIB (bpf_fib_lookup), else keep the frame's MACs */
	__u16 flags;            /* MAPPER_F_* */
};

/* Steered replies: ask the FIB for the next hop towards the new POP and set the frame's MACs (and
 * the device) from it. Off, the frame keeps the next hop the kernel resolved for the POP its
 * routing chose: right when every POP is reached through the same gateway, and cheaper. */
#define MAPPER_F_FIB_NEXT_HOP (1U << 0)

/*
 * The POPs whose IPIP this host accepts, keyed by the POP's tunnel address (__be32). A POP's IPIP
 * is accepted (and learned from) only on the device the host's routing sends that POP's traffic
 * through: a reverse-path check of our own, because the kernel's strict rp_filter cannot be had on
 * a host whose tunnels need loose filtering (the kernel takes the larger of `all` and the device).
 */
struct mapper_pop_value {
	__u32 ifindex; /* the device this POP's IPIP must arrive on; 0 matches no device */
};

/* Services on this host: (protocol, anycast address, port); ICMP uses port 0. */
struct mapper_service_key {
	__be32 addr;
	__be16 port;
	__u8 proto;    /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_ICMP */
	__u8 pad;
};

#define MAPPER_SERVICE_F_DSR (1U << 0) /* replies skip the POP: strip IPIP, send via the gateway */

struct mapper_service_value {
	__u32 flags;   /* MAPPER_SERVICE_F_* */
};

/*
 * One player's flow to one service, as the inner header of an inbound packet names it. Keyed by
 * the whole flow, not the player's address alone: two players behind one NAT share the address,
 * may arrive through different POPs, and each must get replies through their own.
 * Protocols without ports (ICMP, ...) use port 0.
 */
struct mapper_flow_key {
	__be32 player_addr;
	__be32 service_addr;
	__be16 player_port;
	__be16 service_port;
	__u8 proto;
	__u8 pad[3];
};

struct mapper_flow_value {
	__be32 pop_addr;       /* outer source of the flow's last inbound packet */
	__u32 pad;
	__u64 last_seen_ns;    /* when ingress last saw the flow */
};

#ifdef __bpf__
/* The maps, for the BPF program only (user space knows them by name from the object). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "map_def.h"

/* Written by tc_mapper (this host's settings). Read by ingress and egress on every packet. */
DEFINE_MAP(mapper_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct mapper_config);

/* Written by tc_mapper (every POP's tunnel address from inventory, with the device the host routes
 * it through). Read by ingress (accept and learn only these, only on their device) and by egress (a mapping to a POP no longer listed falls back to the default). */
DEFINE_MAP(mapper_pops, BPF_MAP_TYPE_HASH, MAPPER_MAX_POPS, __be32, struct mapper_pop_value);

/* Written by tc_mapper (this host's services and their DSR flag). Read by egress. */
DEFINE_MAP(mapper_services, BPF_MAP_TYPE_HASH, MAPPER_MAX_SERVICES, struct mapper_service_key, struct mapper_service_value);

/* Written by ingress (learned flows). Read by egress; user space may read it (which POP serves
 * whom) but never writes it: rule updates keep learned flows. Idle entries are ignored by egress
 * and age out by LRU. */
DEFINE_MAP(mapper_flows, BPF_MAP_TYPE_LRU_HASH, MAPPER_MAX_FLOWS, struct mapper_flow_key, struct mapper_flow_value);

/* Written by ingress and egress (every packet, by enum mapper_reason). Read by the stats exporter. */
DEFINE_MAP(mapper_stats, BPF_MAP_TYPE_PERCPU_ARRAY, MAPPER_REASON_COUNT, __u32, struct mapper_counter);
#endif /* __bpf__ */

#endif /* MAPPER_ABI_H */
