// SPDX-License-Identifier: GPL-2.0
/* Phase 1: moments in the buffers target processes pass to write(). Each write is scanned on
 * its own (nothing carried between writes: a moment straddling two writes is lost — phase 2). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint.bpf.h"
#include "phase1.h"

/* Bytes scanned per write; the rest is counted as truncated. */
#define PHASE1_MAX_BYTES (64 * 1024)

char LICENSE[] SEC("license") = "GPL";

/* Targets by command-name prefix (in addition to the tgids in `targets`). */
volatile const char target_comm[PHASE1_COMM_LEN] = {};
volatile const __u32 target_comm_len = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* The format of syscalls/sys_enter_* (tracefs .../format). */
struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

static __always_inline int is_target(__u32 tgid)
{
	if (bpf_map_lookup_elem(&targets, &tgid))
		return 1;
	if (target_comm_len == 0)
		return 0;
	char comm[PHASE1_COMM_LEN];
	bpf_get_current_comm(comm, sizeof(comm));
	for (int i = 0; i < PHASE1_COMM_LEN; i++) {
		if (i >= target_comm_len)
			break;
		if (comm[i] != target_comm[i])
			return 0;
	}
	return 1;
}

static void fp_emit(const struct fp_meta *meta, __u64 signature, __u64 end)
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

struct write_ctx {
	const __u8 *ubuf;
	__u32 len;
};

static long chunk_cb(__u64 i, void *ctx)
{
	struct write_ctx *w = ctx;
	struct fp_scratch *s = fp_scratch();
	if (!s)
		return 1;
	__u64 off = i * FP_CHUNK;
	if (off >= w->len)
		return 1;
	__u64 n = w->len - off;
	if (n > FP_CHUNK)
		n = FP_CHUNK;
	/* Keep clang from folding the clamp away: the verifier must see n <= FP_CHUNK. */
	asm volatile("" : "+r"(n));
	if (n == 0 || n > FP_CHUNK)
		return 1;
	if (bpf_probe_read_user(&s->buf[FP_DATA], n, w->ubuf + off)) {
		fp_count(FP_C_READ_ERRORS, 1);
		return 1;
	}
	s->len = n;
	s->meta.base = off;
	fp_scan_chunk(s);
	/* Carry the last window-1 bytes in front of the next chunk of this write. */
	__u32 keep = fp_window - 1;
	if (off + n < w->len && n == FP_CHUNK && keep < FP_WINDOW_MAX) {
		bpf_probe_read_kernel(&s->buf[FP_DATA - keep], keep, &s->buf[FP_DATA + FP_CHUNK - keep]);
		s->carry = keep;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int phase1_write(struct sys_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return 0;
	__u64 t_ns = bpf_ktime_get_ns();
	struct fp_scratch *s = fp_scratch();
	if (!s)
		return 0;
	__u64 count = ctx->args[2];
	fp_count(FP_C_CALLS, 1);
	if (count > PHASE1_MAX_BYTES) {
		fp_count(FP_C_TRUNCATED, count - PHASE1_MAX_BYTES);
		count = PHASE1_MAX_BYTES;
	}
	fp_count(FP_C_BYTES, count);
	s->meta.t_ns = t_ns;
	s->meta.tgid = tgid;
	s->meta.tid = (__u32)id;
	s->meta.fd = (__s32)ctx->args[0];
	s->meta.dir = PHASE1_DIR_WRITE;
	s->carry = 0;
	struct write_ctx w = { .ubuf = (const __u8 *)ctx->args[1], .len = count };
	bpf_loop((count + FP_CHUNK - 1) / FP_CHUNK, chunk_cb, &w, 0);
	return 0;
}
