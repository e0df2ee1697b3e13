// SPDX-License-Identifier: GPL-2.0
/* Phase 1: moments in the buffers target processes pass to write(). Each write is scanned on
 * its own (nothing carried between writes: a moment straddling two writes is lost — phase 2). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint.bpf.h"
#include "targets.bpf.h"
#include "syscalls.bpf.h"
#include "phase1.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

static __always_inline void fp_emit(const struct fp_meta *meta, __u64 signature, __u64 end)
{
	struct phase1_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		fp_count(FP_C_DROPS, 1);
		return;
	}
	e->signature = signature;
	e->t_ns = meta->t_ns;
	e->end = end;
	e->tgid = meta->tgid;
	e->tid = meta->tid;
	e->fd = meta->fd;
	e->dir = meta->dir;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* No wake-up per event: the agent drains on a timer. */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	fp_count(FP_C_MOMENTS, 1);
}

SEC("tracepoint/syscalls/sys_enter_write")
int phase1_write(struct sys_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return 0;
	__u64 t_ns = bpf_ktime_get_ns();
	int slot = fp_claim();
	if (slot < 0)
		return 0;
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 0;
	__u64 count = fp_call_bytes(ctx->args[2]);
	s->meta.t_ns = t_ns;
	s->meta.tgid = tgid;
	s->meta.tid = (__u32)id;
	s->meta.fd = (__s32)ctx->args[0];
	s->meta.dir = PHASE1_DIR_WRITE;
	s->meta.base = 0;
	s->carry = 0; /* nothing carried from earlier writes */
	fp_scan_user(slot, ctx->args[1], count);
	fp_release(s);
	return 0;
}
