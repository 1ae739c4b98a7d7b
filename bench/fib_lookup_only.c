// SPDX-License-Identifier: MIT
/*
 * One bpf_fib_lookup of the forward's route (rule 8 takes the next hop from the FIB, not from a
 * MAC swap), and nothing else: what that helper costs above the floor, which is what xdp_edge
 * saves by keeping the FIB's answer per CPU for 100 ms (backend_next_hop) instead of asking for
 * every packet.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "map_def.h"

#define AF_INET 2
#define IPPROTO_IPIP 4

struct fib_target {
	__be32 saddr; /* the POP's tunnel address */
	__be32 daddr; /* a backend */
};

/* Written by bench/programs.py before the run (one entry); read here for each packet. */
DEFINE_MAP(fib_targets, BPF_MAP_TYPE_ARRAY, 1, __u32, struct fib_target);

SEC("xdp")
int fib_lookup_only(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	struct fib_target *target;

	target = one_slot(&fib_targets);
	if (!target)
		return XDP_ABORTED;
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_IPIP;
	fib.tot_len = 48;
	fib.ifindex = ctx->ingress_ifindex;
	fib.ipv4_src = target->saddr;
	fib.ipv4_dst = target->daddr;
	/* DROP only when the lookup answered as the real forward's does: the bench checks that. */
	return bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_SUCCESS ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
