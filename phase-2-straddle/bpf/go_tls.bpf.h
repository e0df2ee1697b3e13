/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Go's crypto/tls: a Go program links its own TLS, so its plaintext is read at
 * crypto/tls.(*Conn).Write and (*Conn).Read in the executable (src/go_tls.rs attaches these
 * programs per target process: at each function's entry and at each of its RET instructions, as
 * uretprobes break Go, which moves goroutine stacks).
 *
 * Go ≥ 1.17 on amd64 passes arguments in registers: the receiver (*Conn) in RAX, the []byte in
 * RBX (pointer) and RCX (length); results: n in RAX. R14 holds the goroutine (g), which may move
 * to another thread while Read blocks: a call is kept by (tgid, g) from its entry to its return.
 * Its socket is read from the Conn at entry (struct go_tls_layout, per process: only a Conn over
 * a *net.TCPConn or *net.UnixConn, told by its interface's itab) and marked TLS:
 * its syscalls move ciphertext. Both directions are scanned at the return, with the bytes the
 * call moved (a write stamped at its entry, a read when its scan is done): a function whose stack
 * must grow is entered twice, so scanning a write at entry would scan it twice. */
#ifndef PHASE2_GO_TLS_BPF_H
#define PHASE2_GO_TLS_BPF_H

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include "targets.bpf.h"
#include "counters.bpf.h"
#include "calls.bpf.h"
#include "tls.bpf.h"
#include "uprobe_guard.bpf.h"
#include "phase2.h"

/* Filled by the agent for each target process whose Go version it can place. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct go_tls_layout);
} go_tls_layouts SEC(".maps");

struct goroutine {
	__u32 tgid;
	__u32 pad;
	__u64 g;
};
_Static_assert(sizeof(struct goroutine) == 16, "struct goroutine has implicit padding");

/* A (*Conn).Read/Write in progress on a goroutine. */
struct go_tls_call {
	__u64 t_enter;
	__u64 buf;
	__u64 len;
	__s32 fd;
	__u32 dir;
};

/* LRU: a goroutine that never returns (a Read blocked until exit) leaves its entry behind. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine);
	__type(value, struct go_tls_call);
} go_tls_calls SEC(".maps");

/* A Go interface value: its type's itab, and the data word. */
struct go_iface {
	__u64 itab;
	__u64 data;
};

/* The descriptor behind a *tls.Conn over a TCP or unix socket: Conn.conn's data word →
 * net.conn.fd → netFD.pfd.Sysfd; -1 for any other net.Conn (a wrapper: its data is not laid out
 * so), when a pointer cannot be read, or when the number is no descriptor. */
static __always_inline __s32 go_conn_fd(const struct go_tls_layout *l, __u64 conn)
{
	struct go_iface c;
	__u64 net_fd;
	__s64 sysfd;
	if (bpf_probe_read_user(&c, sizeof(c), (const void *)(conn + l->conn)))
		return -1;
	if (c.itab == 0 || (c.itab != l->tcp_conn_itab && c.itab != l->unix_conn_itab))
		return -1;
	if (bpf_probe_read_user(&net_fd, sizeof(net_fd), (const void *)(c.data + l->conn_fd)) ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (const void *)(net_fd + l->sysfd)))
		return -1;
	if (sysfd < 0 || sysfd > 0x7fffffff)
		return -1;
	return (__s32)sysfd;
}

static __always_inline int go_tls_enter(struct pt_regs *ctx, __u32 dir)
{
	__u64 t_enter = bpf_ktime_get_ns();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	struct go_tls_layout *l = bpf_map_lookup_elem(&go_tls_layouts, &tgid);
	if (!l)
		return 0;
	struct goroutine key = { .tgid = tgid, .g = ctx->r14 };
	__s32 fd = go_conn_fd(l, ctx->rax);
	if (fd < 0) {
		p2_count(P2_C_GO_TLS_UNATTRIBUTED);
		bpf_map_delete_elem(&go_tls_calls, &key);
		return 0;
	}
	struct go_tls_call c = {
		.t_enter = t_enter, .buf = ctx->rbx, .len = ctx->rcx, .fd = fd, .dir = dir,
	};
	if (bpf_map_update_elem(&go_tls_calls, &key, &c, BPF_NOEXIST)) {
		struct go_tls_call *stale = bpf_map_lookup_elem(&go_tls_calls, &key);
		/* The same call again: Go restarts a function from its first instruction once its
		 * stack has grown (morestack). Its first stamp is kept. */
		if (stale && stale->buf == c.buf && stale->len == c.len && stale->fd == fd &&
		    stale->dir == dir)
			return 0;
		/* Else the goroutine's previous call never had a return run (skipped): a gap in
		 * its flow. */
		if (stale) {
			p2_count(P2_C_UNSEEN_EXITS);
			break_flow(tgid, stale->fd, stale->dir, 0);
		}
		bpf_map_update_elem(&go_tls_calls, &key, &c, BPF_ANY);
	}
	mark_tls_socket(tgid, fd, PHASE2_TLS_GO);
	return 0;
}

UPROBE_GUARDED("uprobe", go_tls_write_enter, UPROBE_GO_TLS_WRITE_ENTER, go_tls_enter(ctx, PHASE2_DIR_WRITE))
UPROBE_GUARDED("uprobe", go_tls_read_enter, UPROBE_GO_TLS_READ_ENTER, go_tls_enter(ctx, PHASE2_DIR_READ))

/* At every RET of (*Conn).Read and (*Conn).Write: scans the n bytes the call moved. */
static __always_inline int go_tls_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return 0;
	struct goroutine key = { .tgid = tgid, .g = ctx->r14 };
	struct go_tls_call *p = bpf_map_lookup_elem(&go_tls_calls, &key);
	if (!p)
		return 0;
	struct pending call = {
		.t_enter = p->t_enter, .ptr = p->buf, .fd = p->fd, .dir = p->dir,
		.kind = CALL_BUF, .tls = 1,
	};
	__u64 len = p->len;
	bpf_map_delete_elem(&go_tls_calls, &key);
	__s64 n = ctx->rax;
	if (n <= 0 || (__u64)n > len)
		return 0;
	p2_count(P2_C_GO_TLS_CALLS);
	call.count = n;
	return scan_call(id, &call, n);
}

UPROBE_GUARDED("uprobe", go_tls_leave, UPROBE_GO_TLS_LEAVE, go_tls_return(ctx))

#endif /* PHASE2_GO_TLS_BPF_H */
