// SPDX-License-Identifier: MIT
/*
 * Test fixture: compiles, but the verifier must reject it (packet read without
 * a bounds check against data_end).  tests/bpf/test_bpf_binding.py checks that
 * BpfObject.load() puts the verifier's explanation into the exception text.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_unchecked_read(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[12] == 0x08 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
