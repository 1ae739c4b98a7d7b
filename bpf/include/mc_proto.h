/* SPDX-License-Identifier: MIT */
/*
 * Minecraft: Java Edition's handshake validator: is the first data segment of a TCP connection
 * a well-formed Handshake packet (the "Intention" packet, id 0x00 of the Handshaking state)?
 *
 * docs/game-protocols.md ("Minecraft: Java Edition") has the layout, its public description and
 * every decision below with its reason. In short, the segment's payload must start with:
 *
 *   length           VarInt  of what follows it (id .. next state), exactly their sum
 *   packet id        VarInt  0x00
 *   protocol version VarInt  any 32-bit value (-1 is what pingers send; snapshots set bit 30)
 *   server address   String(255): VarInt byte length 0..765, then that many bytes (not read)
 *   server port      Unsigned Short, big endian (any value)
 *   next state       VarInt  1 status, 2 login, 3 transfer (1.20.5+)
 *
 * A VarInt is 1..5 bytes, 7 bits each, least significant group first, the top bit of a byte set
 * when another byte follows. Only the canonical (shortest) encoding is accepted, which every
 * encoder writes (the game's own, the proxies', the libraries'): no trailing 0x00 group, and a
 * fifth byte of at most 0x0f (32 bits). So the id is the one byte 0x00 and the next state the one
 * byte 1, 2 or 3, and the lengths have at most 2 bytes (the longest handshake is 776 bytes).
 *
 * Bytes after the handshake are allowed (a client writes its next packet, Status Request or Login
 * Start, in the same segment); a handshake that does not end inside this segment is not (see
 * docs: a real client's handshake fits any segment; a split one is refused, and that is safe).
 * The legacy server list ping (FE 01 FA ..., clients before 1.7) is not a handshake.
 *
 * Reads: the first MC_HEAD_WINDOW payload bytes (fewer when the payload is shorter) once, with
 * bpf_xdp_load_bytes() into a zeroed stack buffer, decoded by one loop over constant positions
 * (unrolled: no variable offset into the stack); then the 3 bytes after the address (port, next
 * state), with a second load, only when the declared length says they are inside the payload. A
 * byte is only looked at when the payload length says it is in the payload: Ethernet padding,
 * the zeroed rest of the buffer or a truncated segment never complete a handshake.
 *
 * tests/bpf/mc_model.py is the same validator in Python, written from the public description;
 * tests/bpf/test_mc_proto.py holds them to the same answers through the fixture program
 * tests/bpf/fixtures_game/mc_proto_xdp.c.
 */
#ifndef EDGE_MC_PROTO_H
#define EDGE_MC_PROTO_H

#include <linux/types.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "parsing.h"

#define MC_VARINT_MAX_BYTES   5     /* a 32-bit VarInt */
#define MC_VARINT_LAST_MAX    0x0f  /* the fifth byte holds bits 28..31 only */
/* String(255): at most 255 UTF-16 code units, each at most 3 UTF-8 bytes; the server checks both
 * limits, the POP the byte limit (the code units would need the bytes decoded). */
#define MC_ADDRESS_MAX_BYTES  (255 * 3)
#define MC_HANDSHAKE_ID       0x00
#define MC_NEXT_STATUS        1
#define MC_NEXT_LOGIN         2
#define MC_NEXT_TRANSFER      3     /* since 1.20.5 (protocol 766): login after a server's Transfer */
/* What follows the address: the port (2 bytes) and the next state (one canonical VarInt byte). */
#define MC_TAIL_LEN           3
/* The longest handshake's packet length: id, a 5-byte protocol version, a 2-byte address length,
 * the longest address and the tail. Its canonical VarInt has 2 bytes, as has the address length's. */
#define MC_LENGTH_MAX         (1 + MC_VARINT_MAX_BYTES + MC_ADDRESS_LEN_MAX_BYTES + MC_ADDRESS_MAX_BYTES + MC_TAIL_LEN)
#define MC_LENGTH_MAX_BYTES   2
#define MC_ADDRESS_LEN_MAX_BYTES 2
_Static_assert(MC_LENGTH_MAX < (1 << (7 * MC_LENGTH_MAX_BYTES)), "a handshake's length needs at most 2 VarInt bytes");
_Static_assert(MC_ADDRESS_MAX_BYTES < (1 << (7 * MC_ADDRESS_LEN_MAX_BYTES)), "an address length needs at most 2 VarInt bytes");
/* The fields before the address end within this many bytes (2 + 1 + 5 + 2). */
#define MC_HEAD_MAX           (MC_LENGTH_MAX_BYTES + 1 + MC_VARINT_MAX_BYTES + MC_ADDRESS_LEN_MAX_BYTES)
#define MC_HEAD_WINDOW        16    /* a power of two >= MC_HEAD_MAX: the load size is masked with it */
/* The shortest handshake: length, id, protocol version, an empty address, the tail. */
#define MC_HANDSHAKE_MIN_LEN  (1 + 1 + 1 + 1 + MC_TAIL_LEN)

enum mc_head_field {
	MC_FIELD_LENGTH = 0,
	MC_FIELD_ID = 1,
	MC_FIELD_PROTOCOL = 2,
	MC_FIELD_ADDRESS_LEN = 3,
	MC_HEAD_FIELDS = 4,
};

/* What a well-formed handshake says (for the tests; xdp_edge.c needs only the verdict). */
struct mc_handshake {
	__u32 protocol_version; /* the VarInt's 32 bits (two's complement: -1 is 0xffffffff) */
	__u32 address_len;      /* bytes of the server address */
	__u32 port;             /* the server port the client wrote (host order) */
	__u32 next_state;       /* MC_NEXT_* */
	__u32 end;              /* payload bytes the handshake takes: its length VarInt and its length */
};

struct mc_window {
	__u8 b[MC_HEAD_WINDOW];
};

static __always_inline __u32 mc_field_max_bytes(__u32 field)
{
	if (field == MC_FIELD_LENGTH)
		return MC_LENGTH_MAX_BYTES;
	if (field == MC_FIELD_ID)
		return 1;
	if (field == MC_FIELD_PROTOCOL)
		return MC_VARINT_MAX_BYTES;
	return MC_ADDRESS_LEN_MAX_BYTES;
}

/*
 * The four VarInts before the address, from the first n bytes of the window: one pass over the
 * constant positions 0..MC_HEAD_MAX-1, a field ending at each byte without the continuation bit.
 * Sets *length, *length_bytes (the length VarInt's own bytes), hs->protocol_version,
 * hs->address_len and *head_len (the bytes the four take) and returns 1; 0 when one is not
 * canonical, too wide, out of range, or not complete in n bytes.
 */
static __always_inline int mc_parse_head(const struct mc_window *win, __u32 n, __u32 *length, __u32 *length_bytes,
					 __u32 *head_len, struct mc_handshake *hs)
{
	__u32 field = MC_FIELD_LENGTH, width = 0, value = 0;

#pragma unroll
	for (__u32 i = 0; i < MC_HEAD_MAX; i++) {
		__u8 c = win->b[i];

		value |= (__u32)(c & 0x7f) << (7 * width);
		width++;
		if (c & 0x80) {
			if (width >= mc_field_max_bytes(field))
				return 0; /* wider than the field can be */
		} else {
			if (width > 1 && c == 0)
				return 0; /* a trailing zero group: not the shortest encoding */
			if (width == MC_VARINT_MAX_BYTES && c > MC_VARINT_LAST_MAX)
				return 0; /* more than 32 bits */
			if (field == MC_FIELD_LENGTH) {
				*length = value;
				*length_bytes = i + 1;
			} else if (field == MC_FIELD_ID) {
				if (value != MC_HANDSHAKE_ID)
					return 0;
			} else if (field == MC_FIELD_PROTOCOL) {
				hs->protocol_version = value;
			} else {
				if (value > MC_ADDRESS_MAX_BYTES)
					return 0;
				hs->address_len = value;
				*head_len = i + 1;
				/* Past n the window is zero: fields read there are not the payload's. (A
				 * test of i against n inside the loop keeps clang from unrolling it.) */
				return i < n;
			}
			field++;
			width = 0;
			value = 0;
		}
	}
	return 0;
}

/*
 * Is the payload of this TCP segment a well-formed handshake (followed by anything)? 1 and *hs
 * filled, else 0. Not TCP, a fragment, or a payload shorter than the shortest handshake: 0.
 */
static __always_inline int mc_handshake_valid(struct xdp_md *ctx, const struct packet *pkt, struct mc_handshake *hs)
{
	struct mc_window win = {};
	__u8 tail[MC_TAIL_LEN] = {};
	__u32 n = pkt->payload_len, off = pkt->payload_off;
	__u32 length = 0, length_bytes = 0, head_len = 0, tail_off;

	if (pkt->proto != IPPROTO_TCP || pkt->is_fragment)
		return 0;
	if (n < MC_HANDSHAKE_MIN_LEN || off > EDGE_MAX_FRAME)
		return 0;
	if (n > MC_HEAD_WINDOW)
		n = MC_HEAD_WINDOW;
	/* A size the verifier can prove is 1..MC_HEAD_WINDOW (it is n, 7..16, here): Debian 12's
	 * kernel (6.1) refuses a helper size that may be zero, and clang's form of the checks above
	 * can lose the lower bound; the barrier keeps clang from folding the mask away (as in
	 * game_proto.h and payload_rules.h). */
	asm volatile("" : "+r"(n));
	n = ((n - 1) & (MC_HEAD_WINDOW - 1)) + 1;
	if (bpf_xdp_load_bytes(ctx, off, win.b, n))
		return 0;
	if (!mc_parse_head(&win, n, &length, &length_bytes, &head_len, hs))
		return 0;
	/* The declared length covers exactly the id, the protocol version, the address with its
	 * length and the tail: vanilla refuses a packet with bytes left over or missing. */
	if (length_bytes + length != head_len + hs->address_len + MC_TAIL_LEN)
		return 0;
	if (length_bytes + length > pkt->payload_len)
		return 0; /* the handshake does not end in this segment */
	tail_off = head_len + hs->address_len;
	/* tail_off < MC_HEAD_MAX + MC_ADDRESS_MAX_BYTES, off <= EDGE_MAX_FRAME: the helper checks the
	 * packet's bounds itself; the offset only has to be a scalar. */
	if (bpf_xdp_load_bytes(ctx, off + tail_off, tail, MC_TAIL_LEN))
		return 0;
	if (tail[2] < MC_NEXT_STATUS || tail[2] > MC_NEXT_TRANSFER)
		return 0;
	hs->port = ((__u32)tail[0] << 8) | tail[1];
	hs->next_state = tail[2];
	hs->end = length_bytes + length;
	return 1;
}

#endif /* EDGE_MC_PROTO_H */
