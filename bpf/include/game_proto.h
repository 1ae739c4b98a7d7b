/* SPDX-License-Identifier: MIT */
/*
 * Game-protocol validators: which UDP payloads are a game's own connectionless handshake, which
 * backend replies hand a client a challenge, and which client packets echo it back.
 *
 * Used by xdp_edge.c in two places (docs/game-protocols.md has the byte layouts and their sources):
 *   - inbound, while a service is under attack: an unverified source may only send packets that
 *     game_handshake_shaped() accepts (and within the admission budget);
 *   - the return path: game_server_challenge() reads the challenge the game server sent a client,
 *     and a later inbound game_client_echo() carrying that value proves the client owns its
 *     address (a spoofer never sees the challenge).
 *
 * Every function reads at most GAME_WINDOW_LEN bytes of the payload, once, with
 * bpf_xdp_load_bytes() into a zeroed stack buffer, and only ever looks at bytes that are inside
 * both that window and the payload: a truncated, over-long or malformed packet never matches.
 * Only unfragmented UDP packets of GAME_MIN_LEN..GAME_MAX_LEN payload bytes are considered.
 *
 * tests/bpf/game_model.py is the same three functions in Python, as a function of the payload
 * bytes; tests/bpf/test_game_proto.py checks them against each other through the fixture
 * program tests/bpf/fixtures_game/game_proto_xdp.c.
 *
 * Source engine (SDK 2013 branch: TF2, CS:S, DoD:S, HL2:DM, Garry's Mod), all integers little
 * endian, every packet starts with the connectionless header FF FF FF FF:
 *   getchallenge  'q' <client challenge:4> "0000000000\0"                          20 bytes
 *   challenge     'A' <magic 0x5A4F4933:4> <server challenge:4> <client challenge:4>
 *                 <auth protocol:4> ...                                           >= 21 bytes
 *   connect       'k' <protocol:4> <auth protocol:4> <server challenge:4>
 *                 <client challenge:4> name\0 password\0 version\0 ...            >= 24 bytes
 * GoldSrc (Half-Life 1 engine, protocol 48: CS 1.6, CZ, DoD, TFC), text after the header:
 *   getchallenge  "getchallenge steam\n", with or without a trailing NUL          23/24 bytes
 *   challenge     "A00000000 <challenge> <auth protocol> ..." (decimal)
 *   connect       "connect 48 <challenge> \"<protinfo>\" \"<userinfo>\"\n" ...    (decimal, may be negative)
 * Both families also answer the A2S queries (Valve "Server queries"):
 *   A2S_INFO      'T' "Source Engine Query\0" [<challenge:4>]                       25/29 bytes
 *   A2S_PLAYER    'U' <challenge:4>   A2S_RULES  'V' <challenge:4>                  9 bytes
 */
#ifndef EDGE_GAME_PROTO_H
#define EDGE_GAME_PROTO_H

#include <linux/types.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "edge_abi.h"
#include "parsing.h"
#include "a2s.h"

/* The payload bytes a validator reads: every field it checks lies in the first 29 (a GoldSrc
 * connect's longest canonical challenge and the quote after it). */
#define GAME_WINDOW_LEN        32
/* Shortest packet of any shape below (an A2S_PLAYER/RULES query, 9 bytes), and the longest:
 * Steam's game servers and clients keep a datagram to 1400 bytes of payload (Valve, "Server
 * queries": "Steam uses a packet size of 1400 bytes + IP/UDP headers"), connect included. */
#define GAME_MIN_LEN           9
#define GAME_MAX_LEN           1400
/* The A2S queries' constants (and the connectionless header, A2S_HEADER_SIMPLE) are a2s.h's. */

#define SOURCE_GETCHALLENGE_TYPE 0x71 /* 'q', A2S_GETCHALLENGE */
#define SOURCE_GETCHALLENGE_LEN  20
#define SOURCE_CHALLENGE_TYPE    0x41 /* 'A', S2C_CHALLENGE */
#define SOURCE_CHALLENGE_MAGIC   0x5a4f4933U /* S2C_MAGICVERSION */
#define SOURCE_CHALLENGE_MIN_LEN 21   /* through the auth protocol */
#define SOURCE_CONNECT_TYPE      0x6b /* 'k', C2S_CONNECT */
#define SOURCE_CONNECT_MIN_LEN   24   /* four integers and three empty strings */
#define SOURCE_AUTH_MIN          1    /* PROTOCOL_AUTHCERTIFICATE */
#define SOURCE_AUTH_MAX          3    /* PROTOCOL_STEAM */

#define GOLDSRC_GETCHALLENGE_LEN 23   /* header + "getchallenge steam\n" (+ 1 NUL some clients add) */
#define GOLDSRC_CHALLENGE_AT     14   /* header + "A00000000 " */
#define GOLDSRC_CONNECT_AT       15   /* header + "connect 48 " */
/* A decimal challenge: an optional '-', 1..10 digits, then what follows it (see game_decimal). */
#define GAME_DECIMAL_DIGITS      10
#define GAME_DECIMAL_SPAN        (1 + GAME_DECIMAL_DIGITS + 1)

enum game_decimal_follow {
	GAME_FOLLOW_AUTH = 0,  /* GoldSrc challenge: ' ', an auth protocol digit 1..3, then ' ' or '\n' */
	GAME_FOLLOW_QUOTE = 1, /* GoldSrc connect: ' ' then '"' (the quoted protinfo string) */
};

struct game_window {
	union {
		__u8 b[GAME_WINDOW_LEN];
		__u64 w[GAME_WINDOW_LEN / 8];
	};
};

/*
 * Load the window of an unfragmented UDP payload of GAME_MIN_LEN..GAME_MAX_LEN bytes that starts
 * with the connectionless header. Returns how many bytes it holds (min(payload_len,
 * GAME_WINDOW_LEN)), 0 when the packet is not a candidate or cannot be read. The rest of the
 * window stays zero and is never compared.
 *
 * The header is checked first, in the packet itself (direct access, ~1 ns), because that is
 * where a flood of random payloads ends: the helper call of the load costs about 5 ns more.
 */
static __always_inline __u32 game_load_window(struct xdp_md *ctx, const struct packet *pkt, struct game_window *win)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 n = pkt->payload_len, off = pkt->payload_off;
	__u8 *head;

	if (pkt->proto != IPPROTO_UDP || pkt->is_fragment)
		return 0;
	if (n < GAME_MIN_LEN || n > GAME_MAX_LEN || off > EDGE_MAX_FRAME)
		return 0;
	/* The offset the verifier of Debian 12's kernel (6.1) can bound: the check above may be made
	 * on one copy of off and the add below on another, refilled from a 32-bit stack slot, whose
	 * bound 6.1 forgets ("invalid access to packet ... R1 offset is outside of the packet" when
	 * learn_from_reply calls this; newer kernels keep it). The mask is a no-op after the check
	 * (EDGE_MAX_FRAME < 0x4000); the barrier keeps clang from dropping it as one. */
	asm volatile("" : "+r"(off));
	off &= 0x3fff;
	head = data + off;
	if ((void *)(head + 4) > data_end)
		return 0;
	if (head[0] != 0xff || head[1] != 0xff || head[2] != 0xff || head[3] != 0xff)
		return 0; /* not connectionless (A2S_HEADER_SIMPLE) */
	if (n > GAME_WINDOW_LEN)
		n = GAME_WINDOW_LEN;
	/* A size the verifier can prove is 1..GAME_WINDOW_LEN (the same n, as n is 9..32 here): the
	 * kernel of Debian 12 (6.1) refuses a helper size that may be zero ("invalid zero-sized
	 * read"), and the compiler's form of the checks above can lose the lower bound. The barrier
	 * keeps clang from folding the mask away. */
	asm volatile("" : "+r"(n));
	n = ((n - 1) & (GAME_WINDOW_LEN - 1)) + 1;
	if (bpf_xdp_load_bytes(ctx, off, win->b, n))
		return 0;
	return n;
}

static __always_inline __u32 game_le32(const struct game_window *win, __u32 off)
{
	return (__u32)win->b[off] | ((__u32)win->b[off + 1] << 8) | ((__u32)win->b[off + 2] << 16) |
	       ((__u32)win->b[off + 3] << 24);
}

/* Whether the window holds the string lit (without its NUL) at off. lit and off are constants:
 * the loop unrolls into byte compares against immediates. */
#define game_text_at(win, off, lit) game_bytes_at(win, off, lit, sizeof(lit) - 1)

static __always_inline int game_bytes_at(const struct game_window *win, __u32 off, const char *lit, __u32 n)
{
#pragma unroll
	for (__u32 i = 0; i < GAME_WINDOW_LEN; i++) {
		if (i >= n)
			break;
		if (win->b[off + i] != (__u8)lit[i])
			return 0;
	}
	return 1;
}

/* A2S_INFO (25 bytes, 29 with the challenge), A2S_PLAYER or A2S_RULES (9 bytes); game_load_window()
 * checked the header. */
static __always_inline int game_a2s_query(const struct game_window *win, __u32 len)
{
	__u8 type = win->b[4];

	if (len == A2S_FIELD_REQUEST_LEN)
		return type == A2S_PLAYER_REQUEST_TYPE || type == A2S_RULES_REQUEST_TYPE;
	if (len == A2S_REQUEST_LEN || len == A2S_REQUEST_COOKIE_LEN)
		return win->w[0] == A2S_REQUEST_W0 && win->w[1] == A2S_REQUEST_W1 && win->w[2] == A2S_REQUEST_W2 &&
		       win->b[24] == 0;
	return 0;
}

/* ---- Source engine ------------------------------------------------------------------------- */

static __always_inline int source_getchallenge(const struct game_window *win, __u32 len)
{
	return len == SOURCE_GETCHALLENGE_LEN && win->b[4] == SOURCE_GETCHALLENGE_TYPE &&
	       game_text_at(win, 9, "0000000000") && win->b[19] == 0;
}

static __always_inline int source_auth_protocol(__u32 auth)
{
	return auth >= SOURCE_AUTH_MIN && auth <= SOURCE_AUTH_MAX;
}

static __always_inline int source_connect(const struct game_window *win, __u32 len, __u32 *challenge)
{
	if (len < SOURCE_CONNECT_MIN_LEN || win->b[4] != SOURCE_CONNECT_TYPE || !source_auth_protocol(game_le32(win, 9)))
		return 0;
	*challenge = game_le32(win, 13);
	return 1;
}

static __always_inline int source_server_challenge(const struct game_window *win, __u32 len, __u32 *challenge)
{
	if (len < SOURCE_CHALLENGE_MIN_LEN || win->b[4] != SOURCE_CHALLENGE_TYPE ||
	    game_le32(win, 5) != SOURCE_CHALLENGE_MAGIC || !source_auth_protocol(game_le32(win, 17)))
		return 0;
	*challenge = game_le32(win, 9);
	return 1;
}

/* ---- GoldSrc ------------------------------------------------------------------------------- */

/*
 * The decimal number at start (a constant), in the first n bytes of the window (n <= payload
 * length), and what must follow it (enum game_decimal_follow). Canonical only: 1..10 digits, no
 * leading zero, at most 4294967295; with allow_sign a '-' may lead (a client that read a challenge
 * above 2^31-1 with atoi() echoes it negative, "%i"), magnitude at most 2^31, the value taken
 * modulo 2^32 (two's complement: the same 32 bits). Returns 1 and sets *value, else 0.
 * The loop runs over constant positions (unrolled): no variable offset into the stack.
 */
static __always_inline int game_decimal(const struct game_window *win, __u32 n, __u32 start, int allow_sign,
					int follow, __u32 *value)
{
	__u64 magnitude = 0;
	__u32 digits = 0;
	int negative = 0, leading_zero = 0;

#pragma unroll
	for (__u32 i = 0; i < GAME_DECIMAL_SPAN; i++) {
		__u32 pos = start + i;
		__u8 c;

		if (pos >= n)
			return 0;
		c = win->b[pos];
		if (i == 0 && allow_sign && c == '-') {
			negative = 1;
			continue;
		}
		if (c >= '0' && c <= '9') {
			if (digits == GAME_DECIMAL_DIGITS || leading_zero)
				return 0;
			leading_zero = digits == 0 && c == '0';
			magnitude = magnitude * 10 + (c - '0');
			digits++;
			continue;
		}
		/* the first character after the number */
		if (digits == 0 || c != ' ')
			return 0;
		if (follow == GAME_FOLLOW_AUTH) {
			if (pos + 2 >= n || win->b[pos + 1] < '1' || win->b[pos + 1] > '3' ||
			    (win->b[pos + 2] != ' ' && win->b[pos + 2] != '\n'))
				return 0;
		} else {
			if (pos + 1 >= n || win->b[pos + 1] != '"')
				return 0;
		}
		if (negative) {
			if (magnitude == 0 || magnitude > 0x80000000ULL)
				return 0;
			*value = (__u32)(0 - magnitude);
		} else {
			if (magnitude > 0xffffffffULL)
				return 0;
			*value = (__u32)magnitude;
		}
		return 1;
	}
	return 0;
}

static __always_inline int goldsrc_getchallenge(const struct game_window *win, __u32 len)
{
	if (len != GOLDSRC_GETCHALLENGE_LEN && len != GOLDSRC_GETCHALLENGE_LEN + 1)
		return 0;
	if (!game_text_at(win, 4, "getchallenge steam\n"))
		return 0;
	return len == GOLDSRC_GETCHALLENGE_LEN || win->b[GOLDSRC_GETCHALLENGE_LEN] == 0;
}

static __always_inline int goldsrc_connect(const struct game_window *win, __u32 n, __u32 *challenge)
{
	if (!game_text_at(win, 4, "connect 48 "))
		return 0;
	return game_decimal(win, n, GOLDSRC_CONNECT_AT, 1, GAME_FOLLOW_QUOTE, challenge);
}

static __always_inline int goldsrc_server_challenge(const struct game_window *win, __u32 n, __u32 *challenge)
{
	if (!game_text_at(win, 4, "A00000000 "))
		return 0;
	return game_decimal(win, n, GOLDSRC_CHALLENGE_AT, 0, GAME_FOLLOW_AUTH, challenge);
}

/* ---- the interface xdp_edge.c calls --------------------------------------------------------- */

/*
 * Under attack, may an unverified source send this UDP packet to a service speaking
 * game_protocol? A2S queries (A2S_INFO/PLAYER/RULES, challenge requests) and the protocol's own
 * connectionless handshake packets (Source getchallenge 'q' and connect 'k'; GoldSrc
 * "getchallenge steam" and "connect 48 <n> \""), nothing else; exact lengths and magic checked,
 * so a flood of random payloads is not handshake-shaped. EDGE_GAME_NONE (and anything unknown):
 * nothing is.
 */
static __always_inline int game_handshake_shaped(struct xdp_md *ctx, const struct packet *pkt, __u32 game_protocol)
{
	struct game_window win = {};
	__u32 len = pkt->payload_len, n, challenge;

	if (game_protocol != EDGE_GAME_SOURCE && game_protocol != EDGE_GAME_GOLDSRC)
		return 0;
	n = game_load_window(ctx, pkt, &win);
	if (!n)
		return 0;
	if (game_a2s_query(&win, len))
		return 1;
	if (game_protocol == EDGE_GAME_SOURCE)
		return source_getchallenge(&win, len) || source_connect(&win, len, &challenge);
	return goldsrc_getchallenge(&win, len) || goldsrc_connect(&win, n, &challenge);
}

/* Return path: does this reply from the game server (inner packet) hand its client a challenge?
 * 1 and *challenge set, else 0. (An A2S challenge reply, 9 bytes, is not: the POP's own cookie
 * answers A2S, and the echo that counts is the connect.) */
static __always_inline int game_server_challenge(struct xdp_md *ctx, const struct packet *inner, __u32 game_protocol,
						 __u32 *challenge)
{
	struct game_window win = {};
	__u32 n;

	if (game_protocol != EDGE_GAME_SOURCE && game_protocol != EDGE_GAME_GOLDSRC)
		return 0;
	n = game_load_window(ctx, inner, &win);
	if (!n)
		return 0;
	if (game_protocol == EDGE_GAME_SOURCE)
		return source_server_challenge(&win, inner->payload_len, challenge);
	return goldsrc_server_challenge(&win, n, challenge);
}

/* Inbound: does this client packet echo a server challenge (the connect)? 1 and *challenge set. */
static __always_inline int game_client_echo(struct xdp_md *ctx, const struct packet *pkt, __u32 game_protocol,
					    __u32 *challenge)
{
	struct game_window win = {};
	__u32 n;

	if (game_protocol != EDGE_GAME_SOURCE && game_protocol != EDGE_GAME_GOLDSRC)
		return 0;
	n = game_load_window(ctx, pkt, &win);
	if (!n)
		return 0;
	if (game_protocol == EDGE_GAME_SOURCE)
		return source_connect(&win, pkt->payload_len, challenge);
	return goldsrc_connect(&win, n, challenge);
}

#endif /* EDGE_GAME_PROTO_H */
