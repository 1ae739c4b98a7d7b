// SPDX-License-Identifier: MIT
/*
 * The floor of the benchmark: an XDP program that does nothing but drop. Whatever a real program
 * costs above this is its own work; this is what BPF_PROG_TEST_RUN's loop, the JIT prologue and
 * the verdict cost on this machine.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int empty_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
