/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Phase 2's event and counters, shared by phase2.bpf.c and its Rust mirror (src/event.rs),
 * which build.rs checks against this header's layout at compile time. */
#ifndef PHASE2_H
#define PHASE2_H

#define PHASE2_COMM_LEN 16
#define PHASE2_DIR_READ 0
#define PHASE2_DIR_WRITE 1

/* One record per call that found moments: a header, then `n` moments. A ring-buffer record is
 * a batch of such records back to back, from one CPU. */
struct phase2_moment {
	__u64 signature;
	__u64 end;           /* flow position just past the moment's window */
};

struct phase2_call {
	__u64 t_ns;          /* writes: syscall entry; reads: when the call's scan is done */
	__u64 flow_birth_ns; /* when this flow's state was created: (tgid, fd, birth) names a flow */
	__u64 cgroup_id;     /* the caller's, like comm: looked up per flow at most once a second */
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u32 dir;
	__u32 n;
	__u32 tls;           /* 1: bytes taken at the TLS library (plaintext), 0: at the syscall */
	char comm[PHASE2_COMM_LEN];
	/* followed by n struct phase2_moment (at most PHASE2_MAX_MOMENTS) */
};

/* Records lie back to back in a batch: each must leave the next one's __u64s aligned. */
_Static_assert(sizeof(struct phase2_call) % 8 == 0 && sizeof(struct phase2_moment) % 8 == 0,
	       "a record must be a multiple of 8 bytes");

/* Moments one call's record holds; more are counted as drops. Nearly every moment a 64 KiB call
 * can yield (FP_MAX_CANDIDATES per 2 KiB chunk: 2048); the figure dates from when a record was
 * built in a per-CPU value, 32 KiB at most. */
#define PHASE2_MAX_MOMENTS 2040

/* Where a Go executable keeps a crypto/tls.Conn's socket, per target process (src/go_tls.rs
 * places it from the binary's Go version and symbols): tls.Conn.conn is a net.Conn interface
 * (itab word, data word); when its itab is that of *net.TCPConn or *net.UnixConn, the data word
 * points to one, whose embedded net.conn.fd is a *netFD, whose pfd.Sysfd is the descriptor. */
struct go_tls_layout {
	__u64 tcp_conn_itab;  /* where the process has the itab of *net.TCPConn as a net.Conn */
	__u64 unix_conn_itab; /* ... of *net.UnixConn; 0: none */
	__u64 conn;           /* offset in tls.Conn of conn */
	__u64 conn_fd;        /* offset in net.TCPConn (and UnixConn) of conn.fd */
	__u64 sysfd;          /* offset in net.netFD of pfd.Sysfd */
};

/* How a socket in the map tls_sockets, (tgid << 32 | fd) → mark, is known to carry TLS. The
 * agent reads the map for the sockets whose plaintext no probe sees: the links an opaque
 * stretch can cross. */
#define PHASE2_TLS_OPAQUE 1  /* its flow opened with a TLS record, and no probe has named it */
#define PHASE2_TLS_OPENSSL 2 /* a syscall inside an OpenSSL call named it: read there */
#define PHASE2_TLS_GO 3      /* Go's crypto/tls is probed on it: read there, and none of its
			      * syscalls is a sign of an unprobed stack (go_tls.bpf.h) */

/* Per-CPU counters of the data path, beside the scan's (enum fp_counter). */
enum phase2_counter {
	P2_C_FLOWS_CREATED,  /* per-flow scan states created */
	P2_C_FLOWS_CLOSED,   /* ... deleted by close/dup2/dup3 (the rest are live or were evicted) */
	P2_C_PEEKS_SKIPPED,  /* recv with MSG_PEEK: the bytes are read again later */
	P2_C_IOV_TRUNCATED,  /* calls with more iovecs than scanned */
	P2_C_BROKEN_FLOWS,   /* calls whose bytes were not all scanned: the carry restarts */
	P2_C_UNSEEN_CALLS,   /* calls whose entry was not seen (in flight when tracing began, or
	                      * skipped by the kernel's guard): not scanned; a flow they continue
	                      * advances by their bytes, its carry restarts */
	P2_C_TLS_CALLS,      /* SSL_read/SSL_write(_ex) calls whose plaintext was scanned */
	P2_C_TLS_SOCKETS,    /* sockets found to carry TLS (their ciphertext is not scanned) */
	P2_C_TLS_HANDSHAKES, /* flows that opened with a TLS handshake record: how the first of
	                      * those sockets were found, probed or not */
	P2_C_CIPHERTEXT_SKIPPED, /* syscalls on TLS sockets, not scanned: their plaintext is */
	P2_C_TLS_UNATTRIBUTED,   /* SSL calls made before their socket was seen: not scanned */
	P2_C_TLS_UNPROBED,   /* syscalls outside any SSL call whose bytes begin with a TLS
	                      * application-data record: one per record on an encrypted link whose
	                      * plaintext this tracer does not see (TLS library not probed: static,
	                      * Go of a version not placed, JDK, rustls); a probed TLS 1.3 link's session tickets and
	                      * close_notify count too */
	P2_C_GO_TLS_CALLS,   /* Go crypto/tls (*Conn).Read/Write calls whose plaintext was scanned */
	P2_C_GO_TLS_UNATTRIBUTED, /* ... whose Conn is not over a TCP or unix socket (a wrapper)
	                           * or could not be read: not scanned */
	P2_C_UPROBE_RUNS_SKIPPED, /* uprobe runs that found another holding their CPU (preempted
	                           * mid-run): not run at all, their call unseen (uprobe_guard.bpf.h) */
	P2_C_UNSEEN_EXITS,   /* syscalls, SSL and Go calls whose exit or return was not seen (its
	                      * run skipped): not scanned; their flow's carry restarts, its later
	                      * positions shift */
	P2_C_NR,
};

#endif /* PHASE2_H */
