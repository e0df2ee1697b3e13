/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Which processes are traced: tgids the agent puts in `targets`, and processes whose command
 * name starts with `target_comm` (also ones started later). Shared by every phase. */
#ifndef TARGETS_BPF_H
#define TARGETS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TARGET_COMM_LEN 16

volatile const char target_comm[TARGET_COMM_LEN] = {};
volatile const __u32 target_comm_len = 0;

/* A bit per possible tgid (PID_MAX_LIMIT on 64-bit, 512 KiB): an array lookup the verifier
 * inlines, because every hooked syscall of every process on the node pays it. */
#define TARGETS_PID_LIMIT (4 * 1024 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TARGETS_PID_LIMIT / 64);
	__type(key, __u32);
	__type(value, __u64);
} targets SEC(".maps");

static __always_inline int is_target(__u32 tgid)
{
	__u32 word = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(&targets, &word);
	if (bits && (*bits >> (tgid % 64)) & 1)
		return 1;
	if (target_comm_len == 0)
		return 0;
	char comm[TARGET_COMM_LEN];
	bpf_get_current_comm(comm, sizeof(comm));
	for (int i = 0; i < TARGET_COMM_LEN; i++) {
		if (i >= target_comm_len)
			break;
		if (comm[i] != target_comm[i])
			return 0;
	}
	return 1;
}

#endif /* TARGETS_BPF_H */
