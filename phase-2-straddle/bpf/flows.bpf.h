/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Flows: the bytes one process moves through one fd in one direction, as one stream. A moment
 * may straddle calls (a relay that re-chunks, an envelope header in front, iovecs), so each flow
 * keeps its position and the last window-1 bytes it moved (the carry): restored in front of a
 * call's first chunk and saved after its last, they make the calls one stream to the scan. A
 * flow also keeps who made its calls, which every record of it carries. */
#ifndef PHASE2_FLOWS_BPF_H
#define PHASE2_FLOWS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint.bpf.h"
#include "counters.bpf.h"
#include "phase2.h"

struct flow_key {
	__u32 tgid;
	__s32 fd;
	__u32 dir;
	__u32 pad;
};
/* A hash key is compared byte for byte: padding the compiler adds could hold anything. */
_Static_assert(sizeof(struct flow_key) == 16, "struct flow_key has implicit padding");

struct flow_state {
	__u64 pos;      /* bytes seen on the flow */
	__u64 birth_ns; /* (tgid, fd, birth) names the flow to the agent */
	__u32 carry;    /* valid bytes in tail */
	__u32 pad;
	/* Who made the flow's calls, looked up at most once a second (see who_made_it). */
	__u64 who_ns;
	__u64 cgroup_id;
	char comm[PHASE2_COMM_LEN];
	__u8 tail[FP_WINDOW_MAX];
};

/* How long a flow's cgroup id and command name are reused. */
#define WHO_REFRESH_NS 1000000000ULL

/* Bounded: least recently used flows are evicted (evictions = created - closed - live). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
} flows SEC(".maps");

/* A new flow's value is built here, not on the 512-byte stack: it is too large for it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_state);
} flow_init SEC(".maps");

/* The state of a flow seen for the first time, born at `t_ns`; NULL when it cannot be stored. */
static __always_inline struct flow_state *new_flow(const struct flow_key *key, __u64 t_ns)
{
	__u32 zero = 0;
	struct flow_state *fresh = bpf_map_lookup_elem(&flow_init, &zero);
	if (!fresh)
		return NULL;
	fresh->pos = 0;
	fresh->carry = 0;
	fresh->birth_ns = t_ns;
	fresh->who_ns = 0;
	bpf_map_update_elem(&flows, key, fresh, BPF_NOEXIST);
	p2_count(P2_C_FLOWS_CREATED);
	return bpf_map_lookup_elem(&flows, key);
}

/* A closed or replaced fd: both its flows end, and the fd's next bytes start new ones. */
static __always_inline void forget_flows(__u32 tgid, __s32 fd)
{
	struct flow_key key = { .tgid = tgid, .fd = fd };
	for (__u32 dir = 0; dir < 2; dir++) {
		key.dir = dir;
		if (bpf_map_delete_elem(&flows, &key) == 0)
			p2_count(P2_C_FLOWS_CLOSED);
	}
}

/* Bytes of the flow went unscanned: what is carried no longer precedes the next call's bytes. */
static __always_inline void break_carry(struct flow_state *f)
{
	p2_count(P2_C_BROKEN_FLOWS);
	f->carry = 0;
}

/* A call of flow (tgid, fd, dir) went unscanned, `moved` of its bytes known (0: unknown): the
 * flow, if it has one, advances by those and its carry restarts. */
static __always_inline void break_flow(__u32 tgid, __s32 fd, __u32 dir, __u64 moved)
{
	struct flow_key key = { .tgid = tgid, .fd = fd, .dir = dir };
	struct flow_state *f = bpf_map_lookup_elem(&flows, &key);
	if (!f)
		return;
	f->pos += moved;
	break_carry(f);
}

/* Puts the flow's carry in front of the scratch area's first chunk; 0 when it cannot. Each
 * bound is pinned, then tested on the register the helper gets (clang would test a copy). */
static __always_inline int restore_carry(struct fp_scratch *s, const struct flow_state *f)
{
	__u64 carry = f->carry;
	if (carry > FP_WINDOW_MAX - 1)
		carry = 0;
	asm volatile("" : "+r"(carry));
	if (carry > FP_WINDOW_MAX - 1)
		return 0;
	__u64 to = FP_DATA - carry;
	asm volatile("" : "+r"(to));
	if (to > FP_DATA)
		return 0;
	if (carry)
		bpf_probe_read_kernel(&s->buf[to], carry, f->tail);
	s->carry = carry;
	return 1;
}

/* Keeps what the scan carried out of the call's last chunk for the flow's next call. */
static __always_inline void save_carry(const struct fp_scratch *s, struct flow_state *f)
{
	__u64 carry = s->carry;
	asm volatile("" : "+r"(carry));
	if (carry > FP_WINDOW_MAX - 1)
		return;
	__u64 from = FP_DATA - carry;
	asm volatile("" : "+r"(from));
	if (from > FP_DATA)
		return;
	bpf_probe_read_kernel(f->tail, carry, &s->buf[from]);
	f->carry = carry;
}

/* The cgroup id and command name a call's record carries: the flow's, looked up again when
 * they are a second old. Phase 4 attributes calls to pods by cgroup id. The two helpers cost
 * about 80 ns a call here (BENCHMARKS.md); a process moved to another cgroup, or a thread
 * renamed, shows its old one for up to a second. */
static __always_inline void who_made_it(struct flow_state *f, __u64 t_ns, struct phase2_call *h)
{
	if (t_ns - f->who_ns >= WHO_REFRESH_NS) {
		f->cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(f->comm, sizeof(f->comm));
		f->who_ns = t_ns;
	}
	h->cgroup_id = f->cgroup_id;
	__builtin_memcpy(h->comm, f->comm, sizeof(h->comm));
}

#endif /* PHASE2_FLOWS_BPF_H */
