/* SPDX-License-Identifier: MIT */
/*
 * The map xdp_edge shares with tc_wireguard_redirect.c (the uplink's TC ingress): declared here,
 * once, and included by both edge_maps.h (so xdp_program creates and pins it with the others) and
 * the TC program (which anycast.edge.tc_program loads with the pinned one: share_maps).
 */
#ifndef EDGE_WIREGUARD_MAPS_H
#define EDGE_WIREGUARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edge_abi.h"
#include "map_def.h"

/* Written by edge_rules (its wireguard_pairs: the backends whose pair with this POP is WireGuard,
 * with the ifindex and MTU of the pair's device as the kernel reports them; none: every pair is
 * forwarded as IPIP). Read by XDP at the forwarding step, by the service's backend: present, the
 * packet goes to the kernel with the backend's address in its handoff (struct
 * edge_wireguard_handoff) instead of IPIP. Read by tc_wireguard_redirect, by the handoff's backend:
 * it redirects to the device of a listed pair only, so a frame posing as a handoff where xdp_edge
 * is not in front can reach no other device (the POP's loopback, its underlay, another tunnel). */
DEFINE_MAP(edge_wireguard_pairs, BPF_MAP_TYPE_HASH, EDGE_MAX_BACKENDS, __be32, struct wireguard_pair);

#endif /* EDGE_WIREGUARD_MAPS_H */
