/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* TLS: on an encrypted link the syscalls move ciphertext, in which no moment can be found, so
 * the plaintext is read where OpenSSL (libssl.so*) moves it instead: uprobes on SSL_write,
 * SSL_write_ex, SSL_read and SSL_read_ex, scanned as the flow of the call's socket.
 *
 * Which socket: the first read/write syscall a thread makes inside an SSL call names it and marks
 * it TLS (`tls_sockets`: its syscalls are not scanned from then on), and the SSL object is
 * remembered with it (`tls_sessions`) for reads OpenSSL serves from its buffer without a
 * syscall. A flow that opens with a TLS record (a handshake, or application data when the
 * handshake came before tracing) is marked at once, probed or not, so no ciphertext byte can pass
 * for a moment; until a probe names it, its plaintext is seen nowhere (an opaque socket). A
 * syscall outside any SSL call that carries application data is counted, the sign of a TLS stack
 * this tracer does not see.
 *
 * The includer defines scan_call (phase2.bpf.c), which scans the plaintext. */
#ifndef PHASE2_TLS_BPF_H
#define PHASE2_TLS_BPF_H

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "targets.bpf.h"
#include "counters.bpf.h"
#include "calls.bpf.h"
#include "flows.bpf.h"
#include "uprobe_guard.bpf.h"
#include "phase2.h"

/* An SSL_read/SSL_write(_ex) in progress on a thread. */
struct tls_call {
	__u64 t_enter;
	__u64 ssl;
	__u64 buf;
	__u64 moved_at; /* _ex variants: where the library stores the bytes moved; 0 otherwise */
	__s32 fd;       /* the socket, once a syscall inside the call shows it; else -1 */
	__u32 dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* The socket of each SSL object: a read served from OpenSSL's buffer makes no syscall. */
struct tls_session {
	__u32 tgid;
	__u32 pad;
	__u64 ssl;
};
/* A hash key is compared byte for byte: padding the compiler adds could hold anything. */
_Static_assert(sizeof(struct tls_session) == 16, "struct tls_session has implicit padding");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tls_session);
	__type(value, __s32);
} tls_sessions SEC(".maps");

/* Sockets that carry TLS, (tgid << 32 | fd) → PHASE2_TLS_* (phase2.h): their syscalls move
 * ciphertext, never scanned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} tls_sockets SEC(".maps");

static __always_inline __u64 socket_key(__u32 tgid, __s32 fd)
{
	return (__u64)tgid << 32 | (__u32)fd;
}

/* A socket just seen to carry TLS (`how`: PHASE2_TLS_*): from now on its flows are plaintext,
 * from 0. A socket already known keeps its flows; a probe that names it upgrades its mark. */
static __always_inline void mark_tls_socket(__u32 tgid, __s32 fd, __u8 how)
{
	__u64 key = socket_key(tgid, fd);
	__u8 *known = bpf_map_lookup_elem(&tls_sockets, &key);
	if (known) {
		if (*known < how)
			*known = how;
		return;
	}
	bpf_map_update_elem(&tls_sockets, &key, &how, BPF_ANY);
	p2_count(P2_C_TLS_SOCKETS);
	/* Handshake bytes seen before are not part of the plaintext flow. */
	forget_flows(tgid, fd);
}

static __always_inline void forget_tls_socket(__u32 tgid, __s32 fd)
{
	__u64 sk = socket_key(tgid, fd);
	bpf_map_delete_elem(&tls_sockets, &sk);
}

/* Whether a syscall entering now moves ciphertext: inside an SSL call its bytes are TLS records,
 * and the first such syscall names the call's socket; outside one, a socket marked TLS (one Go
 * is probed on counts as inside: Go's calls are keyed by goroutine, not by thread). */
static __always_inline __u32 cipher_of(__u64 id, __u32 tgid, __s32 fd)
{
	struct tls_call *tls = bpf_map_lookup_elem(&tls_calls, &id);
	__u64 sk = socket_key(tgid, fd);
	if (tls) {
		if (tls->fd < 0) {
			tls->fd = fd;
			mark_tls_socket(tgid, fd, PHASE2_TLS_OPENSSL);
		}
		return CIPHER_IN_SSL_CALL;
	}
	__u8 *marked = bpf_map_lookup_elem(&tls_sockets, &sk);
	if (marked)
		return *marked == PHASE2_TLS_GO ? CIPHER_IN_SSL_CALL : CIPHER_OUTSIDE_SSL_CALL;
	return CIPHER_NONE;
}

#define TLS_HANDSHAKE 22
#define TLS_APPLICATION_DATA 23

/* The content type of the TLS record a syscall's bytes begin with, or 0 if they do not look
 * like one: version 3.1-3.4, length at most 2^14 + 2048. OpenSSL reads a record's 5-byte
 * header on its own, so 5 bytes are all there is to go by; with iovecs (rustls writes its
 * records with writev), the first iovec's, when `iovecs` asks: only where the answer decides
 * something (a new flow, ciphertext), as a plaintext flow's every writev would pay two more
 * reads of user memory for it. */
static __always_inline __u8 tls_record_type(const struct pending *call, __u64 total, int iovecs)
{
	__u8 h[5];
	__u64 at = call->ptr;
	if (call->tls || total < sizeof(h) || (call->kind != CALL_BUF && !iovecs))
		return 0;
	if (call->kind != CALL_BUF) {
		struct iovec_user first;
		__u64 iov = call->ptr, iovcnt = call->count;
		if (call->kind == CALL_MSG) {
			struct msghdr_iov m;
			if (bpf_probe_read_user(&m, sizeof(m), (const void *)(call->ptr + MSGHDR_IOV_OFFSET)))
				return 0;
			iov = (__u64)m.msg_iov;
			iovcnt = m.msg_iovlen;
		}
		if (iovcnt == 0 || bpf_probe_read_user(&first, sizeof(first), (const void *)iov) ||
		    first.len < sizeof(h))
			return 0;
		at = (__u64)first.base;
	}
	if (bpf_probe_read_user(h, sizeof(h), (const void *)at))
		return 0;
	if (h[1] != 3 || h[2] < 1 || h[2] > 4 || h[3] > 0x48)
		return 0;
	return h[0];
}

/* A syscall that moved ciphertext, not scanned: counted, and, outside any SSL call, counted as
 * unprobed when it carries application data. */
static __always_inline void skip_ciphertext(const struct pending *call, long ret)
{
	p2_count(P2_C_CIPHERTEXT_SKIPPED);
	if (call->cipher == CIPHER_OUTSIDE_SSL_CALL &&
	    tls_record_type(call, ret, 1) == TLS_APPLICATION_DATA)
		p2_count(P2_C_TLS_UNPROBED);
}

/* A flow that opens with a TLS record is TLS from its first byte: not one byte of it is scanned,
 * so a handshake cannot pass for a moment before an SSL call names the socket (or when no SSL
 * call ever will). A flow first seen past its handshake (in flight when tracing began) opens
 * with application data. */
static __always_inline void skip_tls_flow(__u32 tgid, __s32 fd, __u8 record)
{
	mark_tls_socket(tgid, fd, PHASE2_TLS_OPAQUE);
	if (record == TLS_HANDSHAKE)
		p2_count(P2_C_TLS_HANDSHAKES);
	p2_count(P2_C_CIPHERTEXT_SKIPPED);
}

__noinline int scan_call(__u64 id, const struct pending *p, long ret);

/* OpenSSL (libssl.so.3): SSL_write(ssl, buf, num), SSL_write_ex(ssl, buf, num, &written),
 * SSL_read(ssl, buf, num), SSL_read_ex(ssl, buf, num, &readbytes). Entry keeps the buffer;
 * return scans the plaintext the call moved, as the flow of its socket. */
static __always_inline int tls_enter(struct pt_regs *ctx, __u32 dir, int ex)
{
	__u64 t_enter = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_target(id >> 32))
		return 0;
	struct tls_call c = {
		.t_enter = t_enter,
		.ssl = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.moved_at = ex ? PT_REGS_PARM4(ctx) : 0,
		.fd = -1,
		.dir = dir,
	};
	if (bpf_map_update_elem(&tls_calls, &id, &c, BPF_NOEXIST) == 0)
		return 0;
	/* The thread's previous SSL call never had its return run (skipped): a gap in the flow of
	 * its socket, if that is known. */
	struct tls_call *stale = bpf_map_lookup_elem(&tls_calls, &id);
	if (stale) {
		p2_count(P2_C_UNSEEN_EXITS);
		struct tls_session session = { .tgid = id >> 32, .ssl = stale->ssl };
		__s32 *known = bpf_map_lookup_elem(&tls_sessions, &session);
		__s32 fd = stale->fd >= 0 ? stale->fd : known ? *known : -1;
		if (fd >= 0)
			break_flow(id >> 32, fd, stale->dir, 0);
	}
	bpf_map_update_elem(&tls_calls, &id, &c, BPF_ANY);
	return 0;
}

UPROBE_GUARDED("uprobe", tls_write_enter, UPROBE_TLS_WRITE_ENTER, tls_enter(ctx, PHASE2_DIR_WRITE, 0))
UPROBE_GUARDED("uprobe", tls_write_ex_enter, UPROBE_TLS_WRITE_EX_ENTER, tls_enter(ctx, PHASE2_DIR_WRITE, 1))
UPROBE_GUARDED("uprobe", tls_read_enter, UPROBE_TLS_READ_ENTER, tls_enter(ctx, PHASE2_DIR_READ, 0))
UPROBE_GUARDED("uprobe", tls_read_ex_enter, UPROBE_TLS_READ_EX_ENTER, tls_enter(ctx, PHASE2_DIR_READ, 1))

/* The bytes an SSL call moved: its return value, or, for the _ex variants, what the library
 * stored at moved_at when it returned 1. */
static __always_inline __u64 tls_bytes_moved(struct pt_regs *ctx, __u64 moved_at)
{
	int rc = (int)PT_REGS_RC(ctx);
	__u64 moved = 0;
	if (moved_at) {
		if (rc != 1 || bpf_probe_read_user(&moved, sizeof(moved), (const void *)moved_at))
			return 0;
	} else if (rc > 0) {
		moved = rc;
	}
	return moved;
}

/* Names the socket of an SSL call (call->fd): the one a syscall inside it named, remembered for
 * its SSL object; else the one remembered. 0 when none is known. */
static __always_inline int tls_name_socket(struct pending *call, __u32 tgid, __u64 ssl)
{
	struct tls_session session = { .tgid = tgid, .ssl = ssl };
	__s32 *known = bpf_map_lookup_elem(&tls_sessions, &session);
	if (call->fd >= 0) {
		if (!known || *known != call->fd)
			bpf_map_update_elem(&tls_sessions, &session, &call->fd, BPF_ANY);
		return 1;
	}
	if (!known)
		return 0;
	call->fd = *known;
	return 1;
}

static __always_inline int tls_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return 0;
	struct tls_call *p = bpf_map_lookup_elem(&tls_calls, &id);
	if (!p)
		return 0;
	/* The call as scan_call takes it, built straight from the map: no second copy on the
	 * stack (6.1 counts 512 bytes over the deepest chain of calls). */
	struct pending call = {
		.t_enter = p->t_enter, .ptr = p->buf, .fd = p->fd, .dir = p->dir,
		.kind = CALL_BUF, .tls = 1,
	};
	__u64 ssl = p->ssl, moved_at = p->moved_at;
	bpf_map_delete_elem(&tls_calls, &id);
	__u64 moved = tls_bytes_moved(ctx, moved_at);
	if (moved == 0)
		return 0;
	if (!tls_name_socket(&call, tgid, ssl)) {
		p2_count(P2_C_TLS_UNATTRIBUTED);
		return 0;
	}
	p2_count(P2_C_TLS_CALLS);
	call.count = moved;
	return scan_call(id, &call, moved);
}

UPROBE_GUARDED("uretprobe", tls_leave, UPROBE_TLS_LEAVE, tls_return(ctx))

#endif /* PHASE2_TLS_BPF_H */
