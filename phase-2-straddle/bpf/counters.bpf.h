/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Phase 2's counters of its data path (enum phase2_counter, phase2.h), per CPU and summed by the
 * agent beside the scan's own (fp_count). Every part of the kernel side counts into them: the
 * calls, their flows, and TLS. */
#ifndef PHASE2_COUNTERS_BPF_H
#define PHASE2_COUNTERS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "phase2.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, P2_C_NR);
	__type(key, __u32);
	__type(value, __u64);
} phase2_counters SEC(".maps");

static __always_inline void p2_add(__u32 counter, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&phase2_counters, &counter);
	if (v)
		*v += n;
}

static __always_inline void p2_count(__u32 counter)
{
	p2_add(counter, 1);
}

#endif /* PHASE2_COUNTERS_BPF_H */
