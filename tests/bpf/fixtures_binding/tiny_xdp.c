// SPDX-License-Identifier: MIT
/*
 * Test fixture for plugins/module_utils/_bpf.py (tests/bpf/test_bpf_binding.py).
 *
 * Small on purpose: it exists to exercise the Python binding against the real
 * kernel, not to model the edge program.  It has one map of each kind the
 * binding treats differently (hash: batch ops, LPM trie: batch fallback,
 * per-CPU array: per-CPU values, pinned-by-name hash: pin_root_path reuse) and
 * a few programs whose verdicts and output bytes a test can predict:
 *
 *   xdp_filter    IPv4 source in `deny_v4` (LPM)        -> XDP_DROP
 *                 UDP destination port in `reflect_ports` -> swap MACs, XDP_TX
 *                 anything else                          -> XDP_PASS
 *                 every verdict is counted in `verdicts[verdict]` (per CPU).
 *   xdp_grow      appends 4 bytes (0xde 0xad 0xbe 0xef) with
 *                 bpf_xdp_adjust_tail, so test_run output is longer than input.
 *   xdp_pass_all  XDP_PASS, nothing else: the replacement in attach tests.
 *
 * `egress_ports` (a devmap) is not used by any program; the kernel has no
 * batch operations for devmaps, so it is where the binding's per-element
 * fallback is exercised (LPM tries have had batch ops since Linux 5.6).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "map_def.h"

/* LPM trie key: prefixlen first (host order), then the address bytes
 * in network order, as the kernel's LPM trie requires. */
struct lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct deny_value {
	__u32 rule_id;
	__u32 reserved;
};

struct reflect_key {
	__u16 port; /* network order */
	__u8 proto;
	__u8 pad;
};

struct reflect_value {
	__u64 hits;
	__u32 flags;
	__u32 pad;
};

DEFINE_MAP_FLAGS(deny_v4, BPF_MAP_TYPE_LPM_TRIE, 64, struct lpm_v4_key, struct deny_value, BPF_F_NO_PREALLOC);

DEFINE_MAP(reflect_ports, BPF_MAP_TYPE_HASH, 1024, struct reflect_key, struct reflect_value);

DEFINE_MAP(verdicts, BPF_MAP_TYPE_PERCPU_ARRAY, 8, __u32, __u64);

DEFINE_MAP(egress_ports, BPF_MAP_TYPE_DEVMAP, 4, __u32, __u32);

/* Pinned by name under the object's pin_root_path: a second load of this
 * object reuses the map (and its entries) instead of creating a new one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} learned_state SEC(".maps");

static __always_inline int count(int verdict)
{
	__u32 key = verdict;
	__u64 *counter = bpf_map_lookup_elem(&verdicts, &key);

	if (counter)
		*counter += 1; /* per-CPU slot: no atomics needed */
	return verdict;
}

SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct lpm_v4_key lpm_key = { .prefixlen = 32 };
	struct reflect_key reflect = {};
	struct reflect_value *hit;
	unsigned char mac[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return count(XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(XDP_PASS);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(XDP_PASS);

	__builtin_memcpy(lpm_key.addr, &ip->saddr, 4);
	if (bpf_map_lookup_elem(&deny_v4, &lpm_key))
		return count(XDP_DROP);

	if (ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return count(XDP_PASS);
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return count(XDP_PASS);

	reflect.port = udp->dest;
	reflect.proto = IPPROTO_UDP;
	hit = bpf_map_lookup_elem(&reflect_ports, &reflect);
	if (!hit)
		return count(XDP_PASS);
	__sync_fetch_and_add(&hit->hits, 1);

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return count(XDP_TX);
}

SEC("xdp")
int xdp_grow(struct xdp_md *ctx)
{
	void *data;
	void *data_end;
	unsigned char *tail;
	__u32 old_len = ctx->data_end - ctx->data;

	if (bpf_xdp_adjust_tail(ctx, 4))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (old_len > 2048)
		return XDP_ABORTED;
	tail = data + old_len;
	if ((void *)(tail + 4) > data_end)
		return XDP_ABORTED;
	tail[0] = 0xde;
	tail[1] = 0xad;
	tail[2] = 0xbe;
	tail[3] = 0xef;
	return XDP_PASS;
}

SEC("xdp")
int xdp_pass_all(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
