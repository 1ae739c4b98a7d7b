// SPDX-License-Identifier: MIT
/*
 * The far side's counter of bench/pps.py: attached (native) to the veths that receive what the POP
 * sends out - the backend's side, where a forward arrives, and the generator's own veth, where an
 * answer (XDP_TX) comes back. Counts each frame per CPU and drops it. A veth delivers frames sent
 * by XDP (XDP_TX, redirect) only to a peer that runs XDP itself: this program is also what lets
 * them arrive. The last frame's first bytes are kept, so that the bench can check what arrives.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "map_def.h"
#include "pps_frame.h"

/* Written by XDP (pps_count), read by bench/pps.py: frames received on this device. */
DEFINE_MAP(pps_received, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, __u64);

/* Written by XDP (pps_count), read by bench/pps.py: the last frame received (racy across CPUs: any
 * recent frame will do, every frame of a case is the same). */
DEFINE_MAP(pps_last_frame, BPF_MAP_TYPE_ARRAY, 1, __u32, struct pps_frame);

SEC("xdp")
int pps_count(struct xdp_md *ctx)
{
	__u64 *received = one_slot(&pps_received);
	struct pps_frame *last = one_slot(&pps_last_frame);
	__u32 len = ctx->data_end - ctx->data;

	if (received)
		*received += 1;    /* per CPU: no other CPU writes this slot */
	if (last && len >= 14) {
		if (len > PPS_FRAME_MAX)
			len = PPS_FRAME_MAX;
		if (!bpf_xdp_load_bytes(ctx, 0, last->bytes, len))
			last->len = len;
	}
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
