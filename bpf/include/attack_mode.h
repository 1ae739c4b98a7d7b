/* SPDX-License-Identifier: MIT */
/*
 * A service's attack mode (struct service_value's attack_mode, EDGE_ATTACK_*): under attack
 * always, never, or - auto - while the agent says so in an array of struct attack_state indexed
 * by service id: edge_attack_state in xdp_edge, a map of the same layout in the bench's floors.
 */
#ifndef EDGE_ATTACK_MODE_H
#define EDGE_ATTACK_MODE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edge_abi.h"

/* Is the service under attack: its operator says always, or (auto) the agent says so? */
static __always_inline int service_under_attack(const struct service_value *svc, void *attack_states)
{
	struct attack_state *state;
	__u32 id = svc->id;

	if (svc->attack_mode == EDGE_ATTACK_ALWAYS)
		return 1;
	if (svc->attack_mode != EDGE_ATTACK_AUTO)
		return 0;
	state = bpf_map_lookup_elem(attack_states, &id);
	return state && state->under_attack;
}

#endif /* EDGE_ATTACK_MODE_H */
