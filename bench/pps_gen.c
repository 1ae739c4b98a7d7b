// SPDX-License-Identifier: MIT
/*
 * The packet generator of bench/pps.py: run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES,
 * ingress device = the generator's veth; every repetition returns XDP_TX, which the live-frame
 * mode turns into a redirect out of that device (kernel/bpf/test_run.c), so each one becomes a
 * real frame arriving on the peer veth in the POP's namespace.
 *
 * Why the frame is written on every repetition: the live-frame mode recycles its pages and resets
 * a recycled frame's boundaries, not its bytes. The receiver works in place on those pages (the
 * forward pushes the IPIP header over the Ethernet header, an A2S answer is written over the
 * request), so a page that comes back would otherwise carry the last answer, not the request.
 *
 * Why the length is set on every repetition, and the test run's input is one byte longer than the
 * frame: the kernel notices a recycled frame was changed by its start (and flags) only, so an answer
 * that shrank the frame's tail in place (the A2S challenge) comes back with its own, shorter length
 * in the frame the kernel sends next. Changing the length here, always, makes the kernel take the
 * frame's length from this program's context (test_run.c: ctx_was_changed).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "map_def.h"
#include "pps_frame.h"

/* Written by bench/pps.py before each run (the case's frame); read by pps_gen. */
DEFINE_MAP(pps_frame, BPF_MAP_TYPE_ARRAY, 1, __u32, struct pps_frame);

SEC("xdp")
int pps_gen(struct xdp_md *ctx)
{
	struct pps_frame *frame = one_slot(&pps_frame);
	__u32 len;
	int delta;

	if (!frame)
		return XDP_ABORTED;
	len = frame->len;
	if (len < 14 || len > PPS_FRAME_MAX)
		return XDP_ABORTED;
	delta = (int)len - (int)(ctx->data_end - ctx->data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, frame->bytes, len))
		return XDP_ABORTED;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
