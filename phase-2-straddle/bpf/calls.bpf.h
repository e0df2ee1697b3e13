/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* A call between its entry and its exit, and where its bytes are. Entry can only say where the
 * bytes will be (a buffer, an iovec array, a msghdr) and how many at most; exit knows how many
 * moved, so the call is kept per thread (`pending`) until then. TLS's return uprobe builds one
 * too, for the plaintext an SSL call moved. */
#ifndef PHASE2_CALLS_BPF_H
#define PHASE2_CALLS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint.bpf.h"
#include "counters.bpf.h"

/* Iovecs scanned per call (and bytes: FP_MAX_CALL_BYTES); more is counted, and the flow's carry
 * restarts. */
#define PHASE2_MAX_IOV 64

enum call_kind { CALL_BUF, CALL_IOV, CALL_MSG };

/* A syscall on a TLS socket moves ciphertext: never scanned (its plaintext is, at the library).
 * "In an SSL call": made inside a probed TLS call (OpenSSL's, or on a socket Go's is probed on). */
enum cipher { CIPHER_NONE, CIPHER_IN_SSL_CALL, CIPHER_OUTSIDE_SSL_CALL };

struct pending {
	__u64 t_enter;
	__u64 ptr;   /* buffer, iovec array, or msghdr */
	__u64 count; /* bytes or iovecs */
	__s32 fd;
	__u32 dir;
	__u32 kind;
	__u32 tls;   /* 1: the plaintext an SSL call moved */
	__u32 cipher;
	__u32 pad;
};

/* Keyed by thread (pid_tgid): a thread has one syscall in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pending);
} pending SEC(".maps");

/* The parts of struct user_msghdr and struct iovec read here. */
struct msghdr_iov {
	void *msg_iov;
	__u64 msg_iovlen;
};
#define MSGHDR_IOV_OFFSET 16

struct iovec_user {
	const void *base;
	__u64 len;
};

/* Scans `total` bytes spread over `iovcnt` iovecs; returns the bytes it could not reach. A
 * global function, like the scan's stages (fingerprint.bpf.h): verified once, its loop's exits
 * end here. */
__noinline __u64 scan_iov(__u64 slot, __u64 iov, __u64 iovcnt, __u64 total)
{
	__u64 left = total;
	/* Counted, not clamped: the loop's bound is the limit, and one path through it is cheaper
	 * to verify than two. */
	if (iovcnt > PHASE2_MAX_IOV)
		p2_count(P2_C_IOV_TRUNCATED);
	for (__u32 i = 0; i < PHASE2_MAX_IOV; i++) {
		struct iovec_user v;
		if (i >= iovcnt || left == 0)
			break;
		if (bpf_probe_read_user(&v, sizeof(v), (const void *)(iov + i * sizeof(v)))) {
			fp_count(FP_C_READ_ERRORS, 1);
			break;
		}
		if (v.len >= left) {
			fp_scan_user(slot, (__u64)v.base, left);
			return 0;
		}
		fp_scan_user(slot, (__u64)v.base, v.len);
		left -= v.len;
	}
	return left;
}

/* Scans the first `total` bytes the call moved, wherever its kind keeps them, in the scratch
 * area the call claimed; returns the bytes it could not reach. */
static __always_inline __u64 scan_call_bytes(const struct fp_scratch *s,
					     const struct pending *call, __u64 total)
{
	if (call->kind == CALL_BUF) {
		fp_scan_user(s->meta.slot, call->ptr, total);
		return 0;
	}
	if (call->kind == CALL_IOV)
		return scan_iov(s->meta.slot, call->ptr, call->count, total);
	struct msghdr_iov m;
	if (bpf_probe_read_user(&m, sizeof(m), (const __u8 *)call->ptr + MSGHDR_IOV_OFFSET))
		return total;
	return scan_iov(s->meta.slot, (__u64)m.msg_iov, m.msg_iovlen, total);
}

#endif /* PHASE2_CALLS_BPF_H */
