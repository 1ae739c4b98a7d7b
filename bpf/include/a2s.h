/* SPDX-License-Identifier: MIT */
/*
 * A2S (Valve server query) recognition and the stateless challenge cookie.
 *
 *   A2S_INFO request          FF FF FF FF 54 "Source Engine Query\0"       25 bytes
 *   request+cookie            the same followed by 4 challenge bytes         29 bytes
 *   A2S_PLAYER / A2S_RULES    FF FF FF FF 55|56 <4-byte challenge field>      9 bytes
 *                             (the field FF FF FF FF, or 0 from old clients, asks for a challenge)
 *   challenge reply           FF FF FF FF 41 <4 bytes>                        9 bytes
 *   replies (cached)          FF FF FF FF 49 (info) | 44 (players) | 45 (rules) ...
 *   split reply (not cached)  FE FF FF FF ...  (header -2, little endian: A2S_HEADER_SPLIT)
 *
 * (Valve Developer Community, "Server queries".) The challenge the POP issues is the same
 * cookie for the three queries: it proves the client owns its address, whatever it asks next.
 * The challenge reply is 9 bytes, never more than the request it answers (25 or 9).
 *
 * The cookie is SipHash-2-4, keyed by edge_config.cookie_key, of the client's 4-tuple and the
 * current epoch (UTC / cookie_epoch_ns); the low 32 bits go on the wire, little endian.
 * A cookie of this epoch or the previous one is accepted, so a client that got its challenge just
 * before an epoch boundary is not refused. Nothing is stored per client: a flood of spoofed
 * requests costs the POP no memory, and gets back 9 bytes per 25 sent (amplification < 1).
 *
 * The epoch is wall-clock time, not the POP's monotonic clock: every NTP-synced POP of the fleet
 * counts the same epochs, so with the fleet's one key a challenge issued by one POP is accepted
 * by any other (a player's route may move between the challenge and the request). The key has
 * generations: the current one issues, the previous one (cookie_key_previous) is still accepted,
 * so rotating the key refuses no challenge in flight (docs/data-plane.md, "Edge cookies").
 */
#ifndef EDGE_A2S_H
#define EDGE_A2S_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "edge_abi.h"

#define A2S_REQUEST_LEN         25
#define A2S_REQUEST_COOKIE_LEN  29
#define A2S_CHALLENGE_LEN       9
#define A2S_HEADER_SIMPLE       0xffffffffU
#define A2S_HEADER_SPLIT        0xfffffffeU /* -2: one part of a reply split over several datagrams */
#define A2S_INFO_REPLY_TYPE     0x49
#define A2S_PLAYER_REPLY_TYPE   0x44
#define A2S_RULES_REPLY_TYPE    0x45
#define A2S_PLAYER_REQUEST_TYPE 0x55
#define A2S_RULES_REQUEST_TYPE  0x56
#define A2S_FIELD_REQUEST_LEN   9          /* A2S_PLAYER / A2S_RULES: header, type, challenge field */
#define A2S_FIELD_ASK           0xffffffffU /* "send me a challenge" (Valve's -1) */
#define A2S_FIELD_ASK_OLD       0U          /* the same, as some older clients send it */

/* "\xff\xff\xff\xffTSource Engine Query\0" as three little-endian words and a final NUL. */
#define A2S_REQUEST_W0 0x756f5354ffffffffULL
#define A2S_REQUEST_W1 0x69676e4520656372ULL
#define A2S_REQUEST_W2 0x797265755120656eULL

struct a2s_request {
	__u64 w[3];
	__u8 nul;
	__u8 cookie[4];
} __attribute__((packed));

static __always_inline int a2s_is_info_request(const struct a2s_request *req)
{
	return req->w[0] == A2S_REQUEST_W0 && req->w[1] == A2S_REQUEST_W1 &&
	       req->w[2] == A2S_REQUEST_W2 && req->nul == 0;
}

/* A2S_PLAYER / A2S_RULES request: the challenge field is part of every request. */
struct a2s_field_request {
	__u32 header;   /* FF FF FF FF */
	__u8 type;      /* 'U' or 'V' */
	__u8 field[4];  /* the challenge, little endian */
} __attribute__((packed));

/* The kind (enum a2s_kind) of a PLAYER or RULES request, or -1 for anything else. */
static __always_inline int a2s_field_request_kind(const struct a2s_field_request *req)
{
	if (req->header != A2S_HEADER_SIMPLE)
		return -1;
	if (req->type == A2S_PLAYER_REQUEST_TYPE)
		return A2S_KIND_PLAYER;
	if (req->type == A2S_RULES_REQUEST_TYPE)
		return A2S_KIND_RULES;
	return -1;
}

/* The kind of a reply worth caching, from its 5-byte header, or -1 (challenge, split, other). */
static __always_inline int a2s_reply_kind(const __u8 header[5])
{
	if (header[0] != 0xff || header[1] != 0xff || header[2] != 0xff || header[3] != 0xff)
		return -1;
	if (header[4] == A2S_INFO_REPLY_TYPE)
		return A2S_KIND_INFO;
	if (header[4] == A2S_PLAYER_REPLY_TYPE)
		return A2S_KIND_PLAYER;
	if (header[4] == A2S_RULES_REPLY_TYPE)
		return A2S_KIND_RULES;
	return -1;
}

#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIP_ROUND(v0, v1, v2, v3)                                              \
	do {                                                                   \
		v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32); \
		v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                     \
		v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                     \
		v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32); \
	} while (0)

/* SipHash-2-4 of a 16-byte message given as two little-endian words. */
static __always_inline __u64 siphash_2_4_16(const __u64 key[2], __u64 m0, __u64 m1)
{
	__u64 v0 = key[0] ^ 0x736f6d6570736575ULL;
	__u64 v1 = key[1] ^ 0x646f72616e646f6dULL;
	__u64 v2 = key[0] ^ 0x6c7967656e657261ULL;
	__u64 v3 = key[1] ^ 0x7465646279746573ULL;
	__u64 last = 16ULL << 56; /* message length in the top byte, no tail bytes */

	v3 ^= m0; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= m0;
	v3 ^= m1; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= m1;
	v3 ^= last; SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3); v0 ^= last;
	v2 ^= 0xff;
	SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3); SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/*
 * The cookie of a client for one epoch. The message is the 4-tuple as it sits in the packet
 * (addresses and ports in network order, read as little-endian integers) and the epoch:
 *   m0 = saddr | daddr << 32,   m1 = sport | dport << 16 | (epoch & 0xffffffff) << 32
 */
static __always_inline __u32 a2s_cookie(const __u64 key[2], __be32 saddr, __be32 daddr,
					__be16 sport, __be16 dport, __u64 epoch)
{
	__u64 m0 = (__u64)saddr | ((__u64)daddr << 32);
	__u64 m1 = (__u64)sport | ((__u64)dport << 16) | ((epoch & 0xffffffffULL) << 32);

	return (__u32)siphash_2_4_16(key, m0, m1);
}

/*
 * The epoch a cookie is issued in: UTC, the same on every POP. The only wall clock a program can
 * read is CLOCK_TAI, which is UTC plus the TAI offset the POP's time daemon set (37 s or 0,
 * depending on the daemon); edge_rules writes that offset into the config (tai_offset_ns) so
 * that it can be taken off here.
 */
static __always_inline __u64 edge_cookie_epoch(__u64 epoch_ns, __s64 tai_offset_ns)
{
	return (bpf_ktime_get_tai_ns() - (__u64)tai_offset_ns) / epoch_ns;
}

static __always_inline int edge_cookie_key_set(const __u64 key[2])
{
	return key[0] || key[1];
}

/*
 * Whether a client's cookie is one this fleet issued: under the current or the previous key
 * generation, in this epoch or the previous one. Cheapest first: the usual echo is the current
 * key's cookie of this epoch.
 */
static __always_inline int a2s_cookie_valid(const __u64 key[2], const __u64 key_previous[2], __u32 cookie,
					    __be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u64 epoch)
{
	if (cookie == a2s_cookie(key, saddr, daddr, sport, dport, epoch) ||
	    cookie == a2s_cookie(key, saddr, daddr, sport, dport, epoch - 1))
		return 1;
	if (!edge_cookie_key_set(key_previous))
		return 0;
	return cookie == a2s_cookie(key_previous, saddr, daddr, sport, dport, epoch) ||
	       cookie == a2s_cookie(key_previous, saddr, daddr, sport, dport, epoch - 1);
}

#endif /* EDGE_A2S_H */
