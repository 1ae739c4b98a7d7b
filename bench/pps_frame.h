/* SPDX-License-Identifier: MIT */
/*
 * A frame of the packets-per-second bench (bench/pps.py) in a one-entry array: the one pps_gen
 * sends (written by pps.py before each run) and the last one pps_count received (read by pps.py,
 * which checks what arrives). Its length, then its first PPS_FRAME_MAX bytes.
 */
#ifndef BENCH_PPS_FRAME_H
#define BENCH_PPS_FRAME_H

#include <linux/types.h>

#define PPS_FRAME_MAX 256

struct pps_frame {
	__u32 len;
	__u8 bytes[PPS_FRAME_MAX];
};

#endif /* BENCH_PPS_FRAME_H */
