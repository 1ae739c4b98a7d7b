// SPDX-License-Identifier: MIT
/*
 * frame_restore: lets BPF_PROG_TEST_RUN time a program that rewrites the packet.
 *
 * With repeat=N the kernel runs the program N times on the SAME buffer: what one run leaves in the
 * frame (an IPIP header pushed in front, a reply written over the request) is the next run's
 * input. xdp_edge's forward path would see its own encapsulated output from the second run on and
 * take a different path (measured: 1 tx_forward, then 999 pass_not_ours out of 1000).
 *
 * This program runs first on every repetition, puts the original frame back, and tail-calls the
 * program under test (slot 0 of bench_target), so every repetition sees the same packet. The
 * bench times it twice, once in front of the program under test and once in front of the empty
 * drop program, and takes the difference: what restoring costs cancels out (bench/README.md).
 *
 * It does the same helper calls whether or not the frame changed (a zero adjustment is still a
 * call), so the restore costs the same in front of either program.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "map_def.h"

#define BENCH_FRAME_MAX 256

struct bench_frame {
	__u32 len;         /* length of the original frame */
	__u32 head_growth; /* bytes the program under test pushes in front (IPIP: 20); any other
			      change of length is at the tail */
	__u8 bytes[BENCH_FRAME_MAX];
};

DEFINE_MAP(bench_frame, BPF_MAP_TYPE_ARRAY, 1, __u32, struct bench_frame);

DEFINE_MAP(bench_target, BPF_MAP_TYPE_PROG_ARRAY, 1, __u32, __u32);

SEC("xdp")
int frame_restore(struct xdp_md *ctx)
{
	struct bench_frame *frame;
	__u32 len;
	long current_len;
	int head;

	frame = one_slot(&bench_frame);
	if (!frame)
		return XDP_ABORTED;
	len = frame->len;
	if (len < 14 || len > BENCH_FRAME_MAX)
		return XDP_ABORTED;

	/* The first repetition sees the original length: nothing was pushed in front yet. */
	current_len = (long)ctx->data_end - (long)ctx->data;
	head = current_len != (long)len ? (int)frame->head_growth : 0;
	if (bpf_xdp_adjust_head(ctx, head))
		return XDP_ABORTED;
	current_len = (long)ctx->data_end - (long)ctx->data;
	/* Keep clang from folding this into 32-bit arithmetic on the pointers (the verifier refuses it). */
	asm volatile("" : "+r"(current_len));
	if (bpf_xdp_adjust_tail(ctx, (int)((long)len - current_len)))
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, frame->bytes, len))
		return XDP_ABORTED;

	bpf_tail_call(ctx, &bench_target, 0);
	return XDP_ABORTED; /* the slot was empty: the bench treats ABORTED as a broken setup */
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
