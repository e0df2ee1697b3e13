// SPDX-License-Identifier: GPL-2.0
/* Phase 2: moments in every byte target processes read or write through write/writev/sendto/
 * sendmsg and read/readv/recvfrom/recvmsg, with scan state carried per flow (tgid, fd,
 * direction) so that a moment split over calls is found as if it had arrived whole; on TLS
 * links, in the plaintext OpenSSL's SSL_write/SSL_read(_ex) or Go's crypto/tls (*Conn).Write/Read
 * move, attributed to their socket.
 *
 * This file is the hooks and how a call goes through them: entry saves the call's arguments and
 * time; exit scans exactly the bytes the call moved (a partial write is not scanned twice), as
 * the continuation of its flow. Writes are stamped at entry, reads at exit. A call seen at one
 * end only (its other run skipped) is a gap in its flow, never a junction. Each concern has its
 * header:
 *   calls.bpf.h    a call between entry and exit, and where its bytes are;
 *   flows.bpf.h    per-flow state: position, carry, who made the calls;
 *   records.bpf.h  what a call sends: its record, in per-CPU batches;
 *   tls.bpf.h      the OpenSSL uprobes and which sockets carry TLS;
 *   go_tls.bpf.h   the uprobes on Go's crypto/tls;
 *   uprobe_guard.bpf.h  one uprobe run per CPU at a time: from 6.13 their stack is per CPU;
 *   counters.bpf.h the data path's counters. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <asm/unistd.h>
#include "fingerprint.bpf.h"
#include "targets.bpf.h"
#include "phase2.h"
#include "counters.bpf.h"
#include "calls.bpf.h"
#include "flows.bpf.h"
#include "records.bpf.h"
#include "tls.bpf.h"
#include "go_tls.bpf.h"

#define MSG_PEEK 2

char LICENSE[] SEC("license") = "GPL";

static __always_inline int enter(__s32 fd, __u64 ptr, __u64 count, __u32 dir, __u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	/* Processes that are not traced stop at an inlined bitmap lookup; a target is stamped
	 * next, before the map work below (microseconds on a CPU just out of idle). */
	if (!is_target(tgid))
		return 0;
	__u64 t_enter = bpf_ktime_get_ns();
	struct pending p = {
		.t_enter = t_enter, .ptr = ptr, .count = count, .fd = fd, .dir = dir, .kind = kind,
		.cipher = cipher_of(id, tgid, fd),
	};
	if (bpf_map_update_elem(&pending, &id, &p, BPF_NOEXIST) == 0)
		return 0;
	/* The thread's previous call is still pending: its exit was not seen (on a preemptible
	 * kernel the guard skips a syscall program's run while another is preempted on the CPU).
	 * How many bytes it moved is unknown: its flow's carry restarts, so no moment joins the
	 * bytes before the gap with those after it. */
	struct pending *stale = bpf_map_lookup_elem(&pending, &id);
	if (stale) {
		p2_count(P2_C_UNSEEN_EXITS);
		if (stale->cipher == CIPHER_NONE)
			break_flow(tgid, stale->fd, stale->dir, 0);
	}
	bpf_map_update_elem(&pending, &id, &p, BPF_ANY);
	return 0;
}

/* Describes the call to the scan (s->meta): who, where in its flow, when. */
static __always_inline void start_scan(struct fp_scratch *s, const struct flow_state *f,
				       const struct pending *call, __u64 id)
{
	s->meta.t_ns = call->t_enter;
	s->meta.base = f->pos;
	s->meta.tgid = (__u32)(id >> 32);
	s->meta.tid = (__u32)id;
	s->meta.fd = call->fd;
	s->meta.dir = call->dir;
}

/* Scans the `ret` bytes a call moved, from the flow's position and carry, in the scratch area
 * the call claimed, and sends the moments found. */
static __always_inline void scan_flow(struct fp_scratch *s, struct flow_state *f,
				      const struct pending *call, __u64 id, long ret)
{
	struct batch *b = this_cpu_batch();
	if (!b)
		return;
	__u64 total = fp_call_bytes(ret);
	start_scan(s, f, call, id);
	if (!restore_carry(s, f))
		return;
	if (!begin_record(b, s, f, call->tls))
		return;
	__u64 unreached = scan_call_bytes(s, call, total);
	f->pos += ret;
	close_record(b, s, f);
	if (unreached || total < (__u64)ret) {
		break_carry(f);
		return;
	}
	save_carry(s, f);
}

/* A call's bytes on its flow: the flow found or created, unless a TLS handshake opens it; a
 * scratch area claimed; the flow scanned. A global function: verified once per program on its
 * own, not once per caller's path. */
__noinline int scan_call(__u64 id, const struct pending *p, long ret)
{
	/* Read in place, not copied: the stack of the deepest chain of calls must stay within
	 * 512 bytes as 6.1 counts it. */
	const struct pending *call = p;
	if (!call)
		return 0;
	__u64 t_ns = call->t_enter;
	struct flow_key key = { .tgid = id >> 32, .fd = call->fd, .dir = call->dir };
	struct flow_state *f = bpf_map_lookup_elem(&flows, &key);
	__u8 record = tls_record_type(call, ret, !f);
	if (record == TLS_APPLICATION_DATA)
		p2_count(P2_C_TLS_UNPROBED);
	if (!f && (record == TLS_HANDSHAKE || record == TLS_APPLICATION_DATA)) {
		skip_tls_flow(key.tgid, call->fd, record);
		return 0;
	}
	if (!f) {
		f = new_flow(&key, t_ns);
		if (!f)
			return 0;
	}

	int slot = fp_claim();
	if (slot < 0) {
		/* Not scanned: the flow's positions stay true, its carry restarts. */
		f->pos += ret;
		break_carry(f);
		return 0;
	}
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 0;
	scan_flow(s, f, call, id, ret);
	fp_release(s);
	return 0;
}

/* A call whose entry was not seen moved `ret` bytes on fd: in flight when tracing began, or its
 * sys_enter run skipped by the kernel's guard. Its flow, if it has one, advances by them and
 * its carry restarts: the positions after it stay true, and no moment joins the bytes on
 * either side of the gap. Not for ciphertext: a TLS socket's flow counts plaintext. */
static __always_inline void unseen_entry(__u64 id, __s32 fd, __u32 dir, long ret)
{
	p2_count(P2_C_UNSEEN_CALLS);
	__u32 tgid = id >> 32;
	if (cipher_of(id, tgid, fd) == CIPHER_NONE)
		break_flow(tgid, fd, dir, ret);
}

static __always_inline int leave(struct pt_regs *regs, long ret, __u32 dir)
{
	__u64 id = bpf_get_current_pid_tgid();
	/* One lookup for the processes that are not traced, the common case. */
	if (!is_target(id >> 32))
		return 0;
	struct pending *p = bpf_map_lookup_elem(&pending, &id);
	if (!p) {
		if (ret > 0)
			unseen_entry(id, regs->rdi, dir, ret);
		return 0;
	}
	struct pending call = *p;
	bpf_map_delete_elem(&pending, &id);
	if (ret <= 0)
		return 0;
	if (call.cipher) {
		skip_ciphertext(&call, ret);
		return 0;
	}
	return scan_call(id, &call, ret);
}

/* A closed or replaced fd starts new flows, and is no longer known as a TLS socket. */
static __always_inline void forget_fd(__s32 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return;
	forget_flows(tgid, fd);
	forget_tls_socket(tgid, fd);
}

/* Two BTF raw tracepoints for every syscall instead of a tracepoint per syscall: a process
 * that is not traced pays a switch on the syscall number, not the perf tracepoint's record
 * (BENCHMARKS.md). Arguments come from the syscall's registers: di, si, dx, r10. */
SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	switch (id) {
	case __NR_write:
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_WRITE, CALL_BUF);
	case __NR_writev:
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_WRITE, CALL_IOV);
	case __NR_sendto:
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_WRITE, CALL_BUF);
	case __NR_sendmsg:
		return enter(regs->rdi, regs->rsi, 0, PHASE2_DIR_WRITE, CALL_MSG);
	case __NR_read:
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_READ, CALL_BUF);
	case __NR_readv:
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_READ, CALL_IOV);
	/* recvfrom(fd, buf, len, flags, ...) and recvmsg(fd, msg, flags): peeked bytes are read
	 * again later. */
	case __NR_recvfrom:
		if (regs->r10 & MSG_PEEK) {
			p2_count(P2_C_PEEKS_SKIPPED);
			return 0;
		}
		return enter(regs->rdi, regs->rsi, regs->rdx, PHASE2_DIR_READ, CALL_BUF);
	case __NR_recvmsg:
		if (regs->rdx & MSG_PEEK) {
			p2_count(P2_C_PEEKS_SKIPPED);
			return 0;
		}
		return enter(regs->rdi, regs->rsi, 0, PHASE2_DIR_READ, CALL_MSG);
	/* A closed or replaced fd starts a new flow. */
	case __NR_close:
		forget_fd(regs->rdi);
		return 0;
	case __NR_dup2:
	case __NR_dup3:
		forget_fd(regs->rsi);
		return 0;
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	/* The registers are the caller's still: a peek is told as at entry. */
	switch (regs->orig_rax) {
	case __NR_write:
	case __NR_writev:
	case __NR_sendto:
	case __NR_sendmsg:
		return leave(regs, ret, PHASE2_DIR_WRITE);
	case __NR_read:
	case __NR_readv:
		return leave(regs, ret, PHASE2_DIR_READ);
	case __NR_recvfrom:
		if (regs->r10 & MSG_PEEK)
			return 0;
		return leave(regs, ret, PHASE2_DIR_READ);
	case __NR_recvmsg:
		if (regs->rdx & MSG_PEEK)
			return 0;
		return leave(regs, ret, PHASE2_DIR_READ);
	}
	return 0;
}
