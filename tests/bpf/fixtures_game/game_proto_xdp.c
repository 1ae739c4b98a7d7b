// SPDX-License-Identifier: MIT
/*
 * Test fixture for bpf/include/game_proto.h (tests/bpf/test_game_proto.py).
 *
 * Runs the three validators on the frame it is given, for every game protocol value
 * (EDGE_GAME_NONE, SOURCE, GOLDSRC and one unknown value), and writes what they answered into
 * game_answers[0], so that a test compares them with tests/bpf/game_model.py. The frame is parsed
 * with parse_frame() (bpf/include/parsing.h) as xdp_edge.c parses it; game_server_challenge() is
 * given the frame's own packet, as xdp_edge.c gives it the decapsulated inner packet.
 *
 * Always XDP_PASS: the answers are in the map, not in the verdict.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "map_def.h"
#include "parsing.h"
#include "game_proto.h"

#define PROTOCOLS_TRIED (EDGE_GAME_COUNT + 1) /* and one value no protocol has */

struct game_answers {
	__u32 runs;                          /* frames seen: a test knows its frame was the one answered */
	__s32 parse_result;                  /* enum parse_result of the frame */
	__u32 shaped[PROTOCOLS_TRIED];       /* game_handshake_shaped() */
	__u32 server_found[PROTOCOLS_TRIED]; /* game_server_challenge() */
	__u32 server_challenge[PROTOCOLS_TRIED];
	__u32 echo_found[PROTOCOLS_TRIED];   /* game_client_echo() */
	__u32 echo_challenge[PROTOCOLS_TRIED];
};

DEFINE_MAP(game_answers, BPF_MAP_TYPE_ARRAY, 1, __u32, struct game_answers);

SEC("xdp")
int xdp_game_proto(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct game_answers *out;
	int parsed;

	out = one_slot(&game_answers);
	if (!out)
		return XDP_ABORTED;
	parsed = parse_frame(ctx, &pkt);
	out->runs++;
	out->parse_result = parsed;
#pragma unroll
	for (__u32 proto = 0; proto < PROTOCOLS_TRIED; proto++) {
		__u32 challenge = 0;

		out->shaped[proto] = 0;
		out->server_found[proto] = 0;
		out->server_challenge[proto] = 0;
		out->echo_found[proto] = 0;
		out->echo_challenge[proto] = 0;
		if (parsed != PARSE_IPV4)
			continue;
		out->shaped[proto] = game_handshake_shaped(ctx, &pkt, proto);
		if (game_server_challenge(ctx, &pkt, proto, &challenge)) {
			out->server_found[proto] = 1;
			out->server_challenge[proto] = challenge;
		}
		challenge = 0;
		if (game_client_echo(ctx, &pkt, proto, &challenge)) {
			out->echo_found[proto] = 1;
			out->echo_challenge[proto] = challenge;
		}
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
