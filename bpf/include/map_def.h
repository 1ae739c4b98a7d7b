/* SPDX-License-Identifier: MIT */
/*
 * One line per BPF map: DEFINE_MAP(name, type, max_entries, key type, value type) is libbpf's
 * BTF-defined map (a struct of __uint/__type fields in the ".maps" section), written once here,
 * so that a file of maps reads as a table: each map's line says what it is, its comment above it
 * who writes and who reads it. DEFINE_MAP_FLAGS adds map_flags (BPF_F_NO_PREALLOC,
 * BPF_F_MMAPABLE, ...). The fields keep libbpf's usual order (type, max_entries, key, value,
 * map_flags), so the object's BTF is what the struct written out by hand would give.
 * Used by the shipped programs (bpf/), the bench's programs and the test fixtures alike.
 *
 * one_slot(&map) is the entry of a one-entry array (a program's settings, its answers to a test).
 */
#ifndef EDGE_MAP_DEF_H
#define EDGE_MAP_DEF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define DEFINE_MAP(name, map_type, entries, key_type, value_type) \
	struct {                                                      \
		__uint(type, map_type);                               \
		__uint(max_entries, entries);                         \
		__type(key, key_type);                                \
		__type(value, value_type);                            \
	} name SEC(".maps")

#define DEFINE_MAP_FLAGS(name, map_type, entries, key_type, value_type, flags) \
	struct {                                                                  \
		__uint(type, map_type);                                           \
		__uint(max_entries, entries);                                     \
		__type(key, key_type);                                            \
		__type(value, value_type);                                        \
		__uint(map_flags, flags);                                         \
	} name SEC(".maps")

/* The one entry of a one-entry array map (index 0), or NULL. */
static __always_inline void *one_slot(void *map)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(map, &zero);
}

#endif /* EDGE_MAP_DEF_H */
