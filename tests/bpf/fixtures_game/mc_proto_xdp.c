// SPDX-License-Identifier: MIT
/*
 * Test fixture for bpf/include/mc_proto.h (tests/bpf/test_mc_proto.py).
 *
 * Runs mc_handshake_valid() on the frame it is given and writes what it answered (and the fields
 * of a well-formed handshake) into mc_answers[0], so that a test compares them with
 * tests/bpf/mc_model.py. The frame is parsed with parse_frame() (bpf/include/parsing.h) as
 * xdp_edge.c parses it.
 *
 * Always XDP_PASS: the answers are in the map, not in the verdict.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "map_def.h"
#include "parsing.h"
#include "mc_proto.h"

struct mc_answers {
	__u32 runs;          /* frames seen: a test knows its frame was the one answered */
	__s32 parse_result;  /* enum parse_result of the frame */
	__u32 valid;         /* mc_handshake_valid() */
	__u32 pad;
	struct mc_handshake handshake; /* what it read; all zero when not valid */
};

DEFINE_MAP(mc_answers, BPF_MAP_TYPE_ARRAY, 1, __u32, struct mc_answers);

SEC("xdp")
int xdp_mc_proto(struct xdp_md *ctx)
{
	struct mc_handshake handshake = {};
	struct packet pkt = {};
	struct mc_answers *out;
	int parsed;

	out = one_slot(&mc_answers);
	if (!out)
		return XDP_ABORTED;
	parsed = parse_frame(ctx, &pkt);
	out->runs++;
	out->parse_result = parsed;
	out->valid = 0;
	__builtin_memset(&out->handshake, 0, sizeof(out->handshake));
	if (parsed != PARSE_IPV4)
		return XDP_PASS;
	if (mc_handshake_valid(ctx, &pkt, &handshake)) {
		out->valid = 1;
		out->handshake = handshake;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
