/* SPDX-License-Identifier: MIT */
/*
 * The ABI between the POP's XDP program and user space: map keys, map values, verdict reasons.
 *
 * This file is the one definition of every layout. Python never keeps a second hand-written copy:
 * plugins/module_utils/_edge_abi.py reads these structs from the compiled object's BTF, and a test
 * checks that the packing it uses matches. Change a struct here and the Python side follows.
 *
 * Conventions:
 *   - addresses (__be32) and ports (__be16) are kept in network byte order, exactly as they sit in the
 *     packet, so a key can be copied from a header without a swap (and LPM keys match bit by bit:
 *     Kilimanjaro masked network-order addresses with host-order masks and never matched a /24);
 *   - times are CLOCK_MONOTONIC nanoseconds (what bpf_ktime_get_ns() returns; Python's
 *     time.monotonic_ns()), except the cookie epoch, which is UTC (bpf_ktime_get_tai_ns() minus
 *     edge_config.cookie_tai_offset_ns) so that every POP of the fleet counts the same epochs (a2s.h);
 *   - every struct is padded explicitly so that C and Python agree without compiler guesses.
 */
#ifndef EDGE_ABI_H
#define EDGE_ABI_H

#include <linux/types.h>

#define EDGE_MAX_SERVICES      1024    /* service ids are 1..EDGE_MAX_SERVICES-1; 0 means "none" */
#define EDGE_MAX_BACKENDS      1024
#define EDGE_MAX_PREFIXES      1100000 /* allow/deny: room for a million prefixes */
#define EDGE_MAX_ANYCAST       256
#define EDGE_MAX_PUNCHES       262144
#define EDGE_MAX_TX_PORTS      64
#define EDGE_MAX_IFINDEX       65536   /* edge_tunnel_ifaces is indexed by ifindex (per network namespace, small) */
#define EDGE_MAX_OWN_ADDRS     64      /* the POP's own IPv4 addresses (edge_own_addrs) */
#define EDGE_MAX_SOURCES       524288  /* per-source state (edge_sources): ban, rate window, verification, counters */
#define EDGE_VERIFIED_SLOTS    2       /* services a source can be verified for at once (struct source_state) */
#define EDGE_MAX_PAYLOAD_RULES 256     /* anycast_edge_filters.rules (edge_payload_rules) */

/* Largest A2S reply payload (UDP payload, from the FF FF FF FF 49/44/45 header on) that is cached.
 * Replies are a few hundred bytes in practice; a larger or split (FE FF FF FF) reply is not cached. */
#define A2S_CACHE_MAX_PAYLOAD  1400

/* The queries the POP answers from its cache, one edge_a2s_cache entry per service and kind
 * (A2S_KINDS in _edge_abi.py, in this order). */
enum a2s_kind {
	A2S_KIND_INFO = 0,   /* A2S_INFO   request 'T' (0x54) -> reply 'I' (0x49) */
	A2S_KIND_PLAYER = 1, /* A2S_PLAYER request 'U' (0x55) -> reply 'D' (0x44) */
	A2S_KIND_RULES = 2,  /* A2S_RULES  request 'V' (0x56) -> reply 'E' (0x45) */
	A2S_KIND_COUNT = 3,
};

/* The edge_a2s_cache key of a service's cached reply of one kind: the service id (< 2^16) in the
 * low bits, the kind above. An A2S_INFO entry's key is the service id itself, as it was before
 * kinds existed. The one definition: Python packs it with _edge_abi.pack_a2s_cache_key, and
 * tests/bpf/test_abi.py checks the shift and the capacity against this header. */
#define A2S_CACHE_KEY_KIND_SHIFT 16
#define A2S_CACHE_MAX_ENTRIES  (EDGE_MAX_SERVICES * A2S_KIND_COUNT)

static inline __u32 a2s_cache_key(__u32 service_id, __u32 kind)
{
	return service_id | (kind << A2S_CACHE_KEY_KIND_SHIFT);
}

/* Protocol classes for the global rate limits (edge_config.limits[]). */
enum edge_proto_class {
	EDGE_CLASS_TCP = 0,
	EDGE_CLASS_UDP = 1,
	EDGE_CLASS_ICMP = 2,
	EDGE_CLASS_OTHER = 3,
	EDGE_CLASS_COUNT = 4,
};

/*
 * Why a packet got its verdict. Every packet is counted under exactly one reason
 * (edge_reason_stats). The names after EDGE_REASON_ are what the exporter and the tests call them.
 */
enum edge_reason {
	EDGE_REASON_PASS_NON_IP = 0,       /* not IPv4/IPv6 (ARP, LLDP, ...): the kernel's business */
	EDGE_REASON_PASS_NOT_OURS,         /* IP, but not to an anycast prefix (BGP, SSH, the POP itself) */
	EDGE_REASON_PASS_TOO_BIG,          /* would exceed the egress MTU once encapsulated, no DF: kernel fragments */
	EDGE_REASON_PASS_NO_NEIGH,         /* encapsulated, next hop's MAC unknown: kernel forwards and resolves */
	EDGE_REASON_DROP_MALFORMED,        /* truncated or inconsistent headers */
	EDGE_REASON_DROP_DENY,             /* source in the deny list */
	EDGE_REASON_DROP_BANNED,           /* source temporarily banned */
	EDGE_REASON_DROP_NO_SERVICE,       /* to an anycast address, but no such (protocol, address, port) */
	EDGE_REASON_DROP_FRAGMENT,         /* IP fragment to an anycast address */
	EDGE_REASON_DROP_IP_OPTIONS,       /* IPv4 options on a packet to an anycast address */
	EDGE_REASON_DROP_RATE_LIMIT,       /* over the packets/s or bytes/s limit (and banned) */
	EDGE_REASON_DROP_BAD_COOKIE,       /* A2S request with a challenge this POP did not issue */
	EDGE_REASON_DROP_BAD_RETURN,       /* IPIP to the POP not from a known backend / not from its service */
	EDGE_REASON_DROP_TTL,              /* TTL would reach zero on forwarding */
	EDGE_REASON_DROP_NO_ROUTE,         /* no usable route to the backend or the player */
	EDGE_REASON_DROP_ERROR,            /* a helper failed (adjust_head ...): never forward half-built packets */
	EDGE_REASON_TX_FORWARD,            /* encapsulated to a backend */
	EDGE_REASON_TX_PUNCHED,            /* encapsulated to a backend on a port punch (no rate limit) */
	EDGE_REASON_TX_RETURN,             /* decapsulated reply from a backend, on its way to the player */
	EDGE_REASON_TX_A2S_CHALLENGE,      /* answered an A2S_INFO request with this POP's challenge */
	EDGE_REASON_TX_A2S_CACHED,         /* answered an A2S_INFO request from the cache */
	EDGE_REASON_TX_ICMP_TOO_BIG,       /* answered ICMP fragmentation-needed (DF set, too big) */
	EDGE_REASON_PASS_LOCAL,            /* a backend's reply to the POP itself (the agent's probes): the kernel's tunnel takes it */
	EDGE_REASON_DROP_BAD_TUNNEL,       /* to the tunnel address: IPIP on a device that does not carry it, a fragment, GRE, 6in4 */
	EDGE_REASON_DROP_OWN_SOURCE,       /* arrived with one of the POP's own addresses as its source (spoofed) */
	EDGE_REASON_DROP_ICMP_TYPE,        /* ICMP to a service that is not an echo request */
	EDGE_REASON_DROP_UNVERIFIED,       /* service under attack: unverified and not handshake-shaped, or over the admission budget */
	EDGE_REASON_DROP_RULE,             /* a payload rule (anycast_edge_filters.rules) dropped it, or its per-source limit did */
	EDGE_REASON_TX_SYN_AUTH,           /* SYN authentication: answered an unverified source's SYN with the cookie SYN-ACK (syn_auth.h) */
	EDGE_REASON_DROP_SYN_AUTH_VERIFIED, /* SYN authentication: the client's RST echoed a valid cookie; the source is verified, the RST consumed */
	EDGE_REASON_DROP_TCP_UNVERIFIED,   /* SYN authentication active: a TCP segment from an unverified source that is not a SYN, or a RST without a valid cookie */
	EDGE_REASON_DROP_HANDSHAKE,        /* the first data segment of a TCP flow to a minecraft service is no well-formed handshake (mc_proto.h) */
	EDGE_REASON_DROP_HANDSHAKE_UNACKED, /* data to a minecraft service that is not the player's own: it does not acknowledge the backend's SYN-ACK, or rides a SYN; or no handshake on a flow whose SYN-ACK the POP did not see */
	EDGE_REASON_TX_FORWARD_WIREGUARD,  /* to a backend whose pair is WireGuard (punched or not): passed to the kernel marked with the pair's device (struct edge_wireguard_handoff), for the uplink's TC ingress to redirect */
	EDGE_REASON_DROP_FORGED_HANDOFF,   /* arrived carrying the WireGuard handoff's Ethernet destination, and not forwarded by this program: never let TC redirect it */
	EDGE_REASON_COUNT,
};

/* edge_reason_stats value (per CPU): user space sums the CPUs. */
struct edge_counter {
	__u64 packets;
	__u64 bytes;
};

/* Global settings, one entry (edge_config[0]). */
struct edge_rate_limit {
	__u64 packets_per_sec; /* 0: no limit */
	__u64 bytes_per_sec;   /* 0: no limit */
};

struct edge_config {
	__be32 tunnel_addr;          /* the POP's own tunnel address: outer source of IPIP, outer destination of replies */
	__u32 ban_sec;               /* how long a source over its rate limit stays banned; 0: do not ban */
	__u64 punch_idle_ns;         /* a port punch not refreshed for this long is ignored and deleted */
	__u64 cookie_epoch_ns;       /* edge cookies are valid for this (UTC) epoch and the previous one */
	__u64 cookie_key[2];         /* SipHash-2-4 key of the edge cookies: the current generation, which issues */
	struct edge_rate_limit limits[EDGE_CLASS_COUNT]; /* per source address, by enum edge_proto_class */
	/* The previous key generation, still accepted (never issued) so that a rotation does not
	 * refuse the challenges already in flight; all zero: none. Last, so that adding it moved no
	 * other member. */
	__u64 cookie_key_previous[2];
	/* The POP's CLOCK_TAI - CLOCK_REALTIME in ns (whole seconds), as its time daemon set it:
	 * chrony with leapsectz sets 37 s, systemd-timesyncd leaves 0. The cookie epoch subtracts
	 * it, so every POP counts UTC epochs whatever its daemon (a2s.h). Last, like the member above. */
	__s64 cookie_tai_offset_ns;
	/* A verified source stays verified for a service while it sends within this idle time
	 * (anycast_edge_verified_idle; 0: the default, 10 minutes). */
	__u64 verified_idle_ns;
	/* The CPUs the admission budgets are shared among (libbpf's possible CPUs, written by
	 * edge_rules): each CPU's token bucket fills at budget / nr_cpus, so the POP as a whole never
	 * admits more than the budget without an atomic on the hot path. 0 is read as 1. */
	__u32 nr_cpus;
	__u32 pad;
};

/* Service lookup: (protocol, anycast address, port). ICMP services use port 0. */
struct service_key {
	__be32 addr;
	__be16 port;
	__u8 proto;   /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_ICMP */
	__u8 pad;
};

#define SERVICE_F_A2S_CACHE  (1U << 0) /* answer A2S_INFO from the cache (challenge first) */
#define SERVICE_F_A2S_SNOOP  (1U << 1) /* refresh the cache from the backend's own A2S_INFO replies */

/* The game protocol a service speaks: what is "handshake-shaped" for it while it is under attack,
 * and which validator watches the game server's challenge on the return path (docs/data-plane.md). */
enum edge_game_protocol {
	EDGE_GAME_NONE = 0,    /* no handshake known: under attack, only verified sources pass */
	EDGE_GAME_SOURCE = 1,  /* Source engine: A2S queries, getchallenge 'q' -> challenge 'A' -> connect 'k' */
	EDGE_GAME_GOLDSRC = 2, /* GoldSrc (Half-Life, CS 1.6): A2S queries, "getchallenge" -> "A00000000 <n>" -> "connect <p> <n>" */
	EDGE_GAME_MINECRAFT = 3, /* Minecraft Java Edition (TCP): a flow's first data segment must be its handshake (mc_proto.h) */
	EDGE_GAME_COUNT = 4,
};

/* Who decides whether a service is under attack (anycast_edge_services[].attack_mode). */
enum edge_attack_mode {
	EDGE_ATTACK_AUTO = 0,   /* the agent, from the unverified traffic counted in edge_admission */
	EDGE_ATTACK_ALWAYS = 1, /* the operator: always under attack (only verified and admitted traffic passes) */
	EDGE_ATTACK_NEVER = 2,  /* the operator: never (unverified traffic passes as before this issue) */
	EDGE_ATTACK_MODE_COUNT = 3,
};

/* When a TCP service authenticates unverified sources' SYNs at the POP (anycast_edge_services[].syn_auth;
 * syn_auth.h): while it is under attack (its attack_mode decides), always, or never. While active, an
 * unverified source's SYN is answered by the POP and its other segments are dropped. */
enum edge_syn_auth_mode {
	EDGE_SYN_AUTH_AUTO = 0,   /* while the service is under attack (service_under_attack) */
	EDGE_SYN_AUTH_ALWAYS = 1,
	EDGE_SYN_AUTH_NEVER = 2,  /* unverified TCP is admitted (or not) by issue 13's admission alone */
	EDGE_SYN_AUTH_MODE_COUNT = 3,
};

struct service_value {
	__u32 id;                    /* 1..EDGE_MAX_SERVICES-1: index of edge_service_stats and a2s_cache */
	__be32 backend_addr;         /* outer destination of the IPIP packets */
	__u32 flags;                 /* SERVICE_F_* */
	__u32 a2s_max_age_ms;        /* a cache entry older than this is not served */
	struct edge_rate_limit limit; /* per-service override; both 0: the global per-protocol limit applies */
	/* The budget for unverified traffic while the service is under attack, for the whole POP
	 * (each CPU's bucket gets edge_config.nr_cpus'th of it); both 0: nothing unverified passes. */
	struct edge_rate_limit admission;
	__u32 game_protocol;         /* enum edge_game_protocol */
	__u32 attack_mode;           /* enum edge_attack_mode */
	__u32 syn_auth;              /* enum edge_syn_auth_mode (TCP services; ignored for the others) */
	__u32 pad;
};

/* LPM keys (allow/deny/anycast). prefixlen counts bits from the first byte of addr. */
struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * The source lists (deny, allow) as the data plane reads them: two lookups at most, whatever the
 * number of prefixes. edge_rules derives them from the exact prefixes (kept in the LPM tries
 * edge_deny_v4/edge_allow_v4, which XDP does not read).
 *
 * Every /24 of the IPv4 space has a bit per list in edge_src_filter: "all" when a prefix of /24 or
 * shorter covers the whole /24, "some" when prefixes longer than /24 cover part of it; then
 * edge_src_hosts holds the /24's 256 addresses as a bitmap. A /24 is number (address >> 8), in
 * host byte order; entry (number / 64) of edge_src_filter holds bit (number % 64) of each word.
 * 2^24 / 64 = 262,144 entries of 32 bytes: 8 MiB, allocated once, whatever the lists hold.
 */
#define EDGE_SRC_FILTER_ENTRIES (1U << 18)
#define EDGE_SRC_NETS_PER_ENTRY 64

struct src_filter_entry {
	__u64 deny_all;
	__u64 deny_some;
	__u64 allow_all;
	__u64 allow_some;
};

/* The value of an edge_allow_v4 entry: why the source is exempt from bans and rate limits, as
 * bits (a prefix both lists name has both). XDP reads only the keys (through edge_src_filter);
 * the value keeps the operator's own allow list apart from the control-plane sources derived
 * from inventory (BGP neighbours, the other POPs, monitoring), so a diff says why. */
enum edge_allow_origin {
	EDGE_ALLOW_OPERATOR = 1 << 0,      /* anycast_edge_filters.allow */
	EDGE_ALLOW_CONTROL_PLANE = 1 << 1, /* derived by validate_inventory (edge_rules' control_plane) */
};

enum edge_src_list {
	EDGE_SRC_LIST_DENY = 0,
	EDGE_SRC_LIST_ALLOW = 1,
};

struct src_hosts_key {
	__u32 net24;   /* address >> 8, host byte order */
	__u32 list;    /* enum edge_src_list */
};

struct src_hosts_value {
	__u64 bits[4]; /* bit (h % 64) of bits[h / 64]: address (net24 << 8 | h) is in the list */
};

/* Backends: outer source address of return traffic -> flags (reserved, 0). */
struct backend_value {
	__u32 flags;
};

/* edge_wireguard_pairs value, keyed by the backend's tunnel address: the POP's WireGuard device of
 * the pair and its MTU (the largest player packet it carries: docs/transport.md, MTU). */
struct wireguard_pair {
	__u32 ifindex; /* the pair's WireGuard device (aw-...) on the POP */
	__u32 mtu;     /* that device's MTU */
};

/*
 * How xdp_edge hands a packet it forwards to a WireGuard pair to the uplink's TC ingress
 * (tc_wireguard_redirect.c): XDP_PASS with the frame's two Ethernet addresses replaced by this
 * record - as destination a fixed address that no device has (EDGE_WG_HANDOFF_DEST), as source
 * the backend's tunnel address, whose pair's device TC looks up in edge_wireguard_pairs (so a
 * handoff can name no device but a listed pair's). The pair's device is L3: the kernel drops the
 * Ethernet header when TC redirects to it, so the record goes no further. (XDP metadata, bpf_xdp_adjust_meta, would be
 * the natural carrier; the kernel the tests run on refuses that helper to XDP programs:
 * docs/transport.md.) Only the forward step writes one: xdp_edge drops every other frame it would
 * pass that arrived with that destination (drop_forged_handoff), so nothing from the wire can
 * make TC redirect a packet.
 */
#define EDGE_WG_HANDOFF_DEST { 0x02, 0xae, 0x77, 0x67, 0x00, 0x00 } /* locally administered, "ae" "wg" */

struct edge_wireguard_handoff {
	__u8 dest[6];  /* EDGE_WG_HANDOFF_DEST (Ethernet destination) */
	__u8 pad[2];   /* 0 (the first two bytes of the Ethernet source); TC refuses a handoff without */
	__be32 backend_addr; /* the pair's backend, a key of edge_wireguard_pairs (the rest of the source) */
};

/* Is this Ethernet destination (6 bytes the caller checked are there) the handoff's? */
static __always_inline int is_wireguard_handoff_dest(const __u8 *mac)
{
	const __u8 dest[6] = EDGE_WG_HANDOFF_DEST;

	return mac[0] == dest[0] && mac[1] == dest[1] && mac[2] == dest[2] && mac[3] == dest[3] &&
	       mac[4] == dest[4] && mac[5] == dest[5];
}

/* edge_tunnel_ifaces value, indexed by ifindex: what the device carries. */
#define EDGE_IFACE_F_IPIP (1U << 0) /* IPIP to and from the backends: the return path is accepted here */

struct iface_value {
	__u32 flags;  /* EDGE_IFACE_F_*; 0: an ordinary device (no IPIP accepted) */
	__u32 pad;    /* 8 bytes: the stride of a mmapable array, so user space reads it all at once */
};

/* edge_own_addrs[0]: the POP's own addresses, a short list in one array entry rather than a hash
 * map: every packet asks, and an inlined array lookup plus a few compares costs a few ns where a
 * hash lookup cost ~20 (measured with make bench on the pass-through path). */
struct own_addrs {
	__u32 count;                       /* addrs[0..count) are used */
	__u32 pad;
	__be32 addrs[EDGE_MAX_OWN_ADDRS];
};

/*
 * Everything the POP knows about one source address, in one entry (edge_sources), so that a packet
 * costs one lookup: its ban, its rate window, the services it proved it owns its address for, the
 * game-server challenge in flight to it, and its traffic (top talkers).
 *
 * Only a source whose packets the POP accepted gets an entry: while a service is under attack, an
 * unverified source over the admission budget is dropped without one, so a spoofed flood from
 * millions of addresses cannot churn the LRU and evict the players (docs/data-plane.md).
 */
enum edge_verify_proof {
	EDGE_PROOF_NONE = 0,
	EDGE_PROOF_COOKIE = 1,    /* echoed a valid edge cookie (A2S challenge) */
	EDGE_PROOF_HANDSHAKE = 2, /* echoed the game server's own challenge (validator on the return path) */
	EDGE_PROOF_PUNCH = 3,     /* the game server opened the flow (spoke first) */
	EDGE_PROOF_SYN_AUTH = 4,  /* answered the POP's cookie SYN-ACK with the RST a real TCP stack sends (syn_auth.h) */
	EDGE_PROOF_COUNT = 5,
};

struct source_verification {
	__u32 service_id;   /* 0: free slot */
	__u32 proof;        /* enum edge_verify_proof: how it was verified (the last proof) */
	__u64 active_ns;    /* last packet from the source to the service; idle past verified_idle_ns: expired */
};

struct source_state {
	__u64 ban_until_ns;      /* monotonic; the source is banned while now < ban_until_ns */
	__u64 last_seen_ns;      /* last packet to a service or anycast prefix */
	__u64 packets;           /* all packets to our services and prefixes (atomic adds): top talkers */
	__u64 bytes;
	__u32 window;            /* the one-second rate window (bpf_ktime_get_ns() / 1e9) the counts below are for */
	__u32 pad;
	__u64 window_packets;    /* atomic adds */
	__u64 window_bytes;
	struct source_verification verified[EDGE_VERIFIED_SLOTS];
	__u32 challenge_service_id; /* the service whose game server last challenged this source (0: none) */
	__u32 server_challenge;     /* that challenge, as the validator read it from the reply */
	__u64 challenge_ns;         /* when; a connect echoing it later than verified_idle_ns is not accepted */
};

/* Per service, per CPU: the admission token bucket and the unverified traffic it saw (edge_admission). */
struct admission_bucket {
	__u64 refilled_ns;        /* monotonic time of the last refill */
	__u64 packet_tokens;      /* tokens left, in packets */
	__u64 byte_tokens;        /* tokens left, in bytes */
	__u64 unverified_packets; /* unverified packets seen (under attack or not): what the agent's attack mode watches */
	__u64 unverified_bytes;
	__u64 admitted_packets;   /* unverified packets passed while under attack */
	__u64 dropped_packets;    /* unverified packets dropped while under attack (drop_unverified) */
	__u64 verified_packets;   /* packets from verified sources (never charged) */
};

/* Per service: whether it is under attack, as the agent decided (EDGE_ATTACK_AUTO services only). */
struct attack_state {
	__u32 under_attack;  /* 0 or 1 */
	__u32 pad;
	__u64 since_ns;      /* monotonic time of the last transition */
};

/*
 * Payload rules (anycast_edge_filters.rules): an ordered list, first match wins, read by
 * payload_rules.h. The list lives in two banks of EDGE_MAX_PAYLOAD_RULES entries (edge_payload_rules,
 * entry bank * EDGE_MAX_PAYLOAD_RULES + position); edge_payload_rule_bank[0] names the bank XDP reads.
 * edge_rules writes the bank XDP does not read, then switches banks with one aligned 4-byte store:
 * a packet sees the old list or the new one, whole, never a mix of the two (an array entry is
 * copied in place, so rewriting a list XDP reads would show it half-written rules and a list
 * in the middle of a reorder). A list ends at its first EDGE_RULE_END entry (all zero).
 *
 * Ranges are inclusive, in host byte order; "any" is the whole range (ports and lengths 0..65535,
 * TTL 0..255), so that 0 is a value a rule can match (spoofed floods use source port 0 and TTLs
 * no stack sends). proto, verified, tcp_flags_mask and payload_len are "any" when 0. Payload
 * bytes are raw.
 */
#define EDGE_PAYLOAD_RULE_BANKS 2
#define EDGE_RULE_PAYLOAD_MAX   16      /* bytes a rule compares, at most */
#define EDGE_MAX_RULE_LIMITS    65536   /* (source, rule) windows of the per-source limit action (edge_rule_limits) */
#define EDGE_MAX_MC_FLOWS       65536   /* TCP flows to minecraft services between their SYN and first data (edge_mc_flows) */

enum edge_rule_action {
	EDGE_RULE_END = 0,   /* no rule: the list ends here */
	EDGE_RULE_DROP = 1,  /* dropped (drop_rule) */
	EDGE_RULE_PASS = 2,  /* no later rule applies; the rest of the pipeline does (punch, rate limit, A2S ...) */
	EDGE_RULE_LIMIT = 3, /* per source and rule: over limit_pps / limit_bps in a second, dropped (drop_rule) */
};

enum edge_rule_verified {
	EDGE_RULE_SOURCE_ANY = 0,
	EDGE_RULE_SOURCE_VERIFIED = 1,   /* only sources verified for the service (allow list, or a proof: admitted()) */
	EDGE_RULE_SOURCE_UNVERIFIED = 2, /* only the others */
};

struct payload_rule {
	__u8 action;          /* enum edge_rule_action */
	__u8 proto;           /* IPPROTO_*; 0: any */
	__u8 verified;        /* enum edge_rule_verified */
	__u8 payload_len;     /* bytes compared (0..EDGE_RULE_PAYLOAD_MAX); 0: no payload match */
	__u8 ttl_min;         /* TTL range */
	__u8 ttl_max;
	__u8 tcp_flags_mask;  /* (flags & mask) == value; mask 0: any; a rule with a mask matches TCP only */
	__u8 tcp_flags_value;
	__u16 dport_min;      /* destination port range */
	__u16 dport_max;
	__u16 sport_min;      /* source port range */
	__u16 sport_max;
	__u16 len_min;        /* IP total length range (header included) */
	__u16 len_max;
	__u16 payload_offset; /* from the first byte after the TCP/UDP/ICMP header */
	__u16 pad;
	__u64 limit_pps;      /* EDGE_RULE_LIMIT: packets per second per source; 0: no packet limit */
	__u64 limit_bps;      /* EDGE_RULE_LIMIT: bytes (IP total length) per second per source; 0: none */
	__u8 payload_value[EDGE_RULE_PAYLOAD_MAX]; /* (payload & mask) == value; zero past payload_len */
	__u8 payload_mask[EDGE_RULE_PAYLOAD_MAX];
};

/* edge_payload_rule_bank[0]: the bank XDP reads (0 or 1). */
struct payload_rule_bank {
	__u32 bank;
	__u32 pad;
};

/* Per-source limit of an EDGE_RULE_LIMIT rule: one fixed one-second window per (source, rule
 * position). The window is in the key, so a new second starts a new entry with an atomic insert
 * instead of a racy reset of the old one. */
struct rule_limit_key {
	__be32 saddr;
	__u32 window;   /* bpf_ktime_get_ns() / 1e9, truncated */
	__u16 rule;     /* position in the list */
	__u16 pad;
};

/* Its counts, added with atomic adds: exact on every CPU. */
struct rule_limit_value {
	__u64 packets;
	__u64 bytes;
};

/* A TCP flow to a minecraft service whose SYN the POP forwarded and whose first data segment it has
 * not seen yet (edge_mc_flows): that segment (the one carrying sequence number isn + 1) must be the
 * client's handshake (mc_proto.h), and only a segment that acknowledges the backend's SYN-ACK is
 * the client's own (see syn_acked). */
struct mc_flow_key {
	__be32 saddr;   /* the player */
	__be32 daddr;   /* the service */
	__be16 sport;
	__be16 dport;
};

struct mc_flow_value {
	__u64 syn_ns;     /* when its (last) SYN was forwarded: for the operator's eyes */
	__u64 syn_acked;  /* 0 until the backend's SYN-ACK went back to the player; then
			   * MC_FLOW_SYN_ACKED | the ACK number the player's first data must carry
			   * (the SYN-ACK's sequence number + 1). One 64-bit word: one atomic store */
	__u32 isn;        /* the player's initial sequence number: its first data byte is isn + 1.
			   * The SYN's that made the entry until the backend's SYN-ACK, then that
			   * SYN-ACK's ACK - 1 (the SYN the backend accepted); no later SYN writes it */
	__u32 isn_ambiguous; /* 1: a SYN with another sequence number than isn was forwarded; until
			      * a SYN-ACK is seen here nothing tells which one the backend accepted,
			      * so the first data segment is judged whatever its sequence number.
			      * Set by SYNs only, cleared by nobody (the entry goes as a whole) */
};
#define MC_FLOW_SYN_ACKED (1ULL << 32)

/* Port punches: a flow the game server spoke on in an established session (return path; never a
 * reply anyone can provoke: connectionless, SYN-ACK, RST), so the player's packets of that flow
 * are forwarded without rate limits. */
struct punch_key {
	__be32 service_addr;
	__be32 remote_addr;
	__be16 service_port;
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

struct punch_value {
	__u64 last_seen_ns;
};

/* A2S cache, keyed by a2s_cache_key(service id, kind). payload is the whole UDP payload of the
 * reply (FF FF FF FF 49|44|45 ...), zero-padded to a multiple of 4; payload_csum is the 16-bit ones'-complement
 * sum of those padded bytes (folded), so the XDP program can checksum a reply without reading it. */
struct a2s_cache_entry {
	__u64 updated_ns;
	__u32 len;
	__u32 payload_csum;
	__u8 payload[A2S_CACHE_MAX_PAYLOAD];
};

/* Per A2S kind (per CPU), indexed by enum a2s_kind: how the POP answered that kind's requests
 * (edge_a2s_stats). user space sums the CPUs. */
struct a2s_counter {
	__u64 challenges;  /* answered with the POP's challenge (tx_a2s_challenge) */
	__u64 cached;      /* answered from the cache (tx_a2s_cached) */
	__u64 bad_cookie;  /* dropped: a challenge the POP did not issue, while the entry was fresh */
};

/* Per-service traffic (per CPU), indexed by service id. */
struct service_counter {
	__u64 in_packets;
	__u64 in_bytes;
	__u64 out_packets;
	__u64 out_bytes;
};

/*
 * The next hop to a service's backend as bpf_fib_lookup() answered it, kept per CPU for
 * EDGE_NEXT_HOP_CACHE_NS: asking the FIB costs more than all the rest of a forward (measured:
 * ~100 ns of ~300), and its answer for one backend changes only when a route or a neighbour does.
 * Only successful answers are kept; a route or neighbour change reaches every CPU within the
 * cache time. Keyed by service id; the entry also holds the question (addresses, ingress device,
 * TOS), so a service whose backend changes never uses the old backend's answer.
 */
#define EDGE_NEXT_HOP_CACHE_NS (100ULL * 1000 * 1000)

struct next_hop_cache_entry {
	__u64 expires_ns;      /* monotonic; 0: empty */
	__be32 saddr;          /* the question: outer source (tunnel address) ... */
	__be32 daddr;          /* ... and destination (the backend) */
	__u32 ingress_ifindex; /* ... the device the packets came in on */
	__u32 ifindex;         /* the answer: egress device, */
	__u8 smac[6];          /* its address */
	__u8 dmac[6];          /* and the next hop's */
	__u16 fits_len;        /* the largest IP length the FIB's MTU check accepted; a larger packet asks again */
	__u8 tos;              /* ... and the TOS (part of the question) */
	__u8 pad;
};

#endif /* EDGE_ABI_H */
