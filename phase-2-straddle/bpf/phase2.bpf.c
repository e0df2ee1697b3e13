// SPDX-License-Identifier: GPL-2.0
/* Phase 2: moments in every byte target processes read or write through write/writev/sendto/
 * sendmsg and read/readv/recvfrom/recvmsg, with scan state carried per flow (tgid, fd,
 * direction) so that a moment split over calls is found as if it had arrived whole; on TLS
 * links, in the plaintext OpenSSL's SSL_write/SSL_read(_ex) move, attributed to their socket.
 *
 * Entry saves the call's arguments and time; exit scans exactly the bytes the call moved (a
 * partial write is not scanned twice). Writes are stamped at entry, reads at exit. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "fingerprint.bpf.h"
#include "targets.bpf.h"
#include <asm/unistd.h>
#include "phase2.h"

/* Iovecs scanned per call (and bytes: FP_MAX_CALL_BYTES); more is counted, and the flow's carry
 * restarts. */
#define PHASE2_MAX_IOV 64
#define MSG_PEEK 2

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

struct flow_key {
	__u32 tgid;
	__s32 fd;
	__u32 dir;
	__u32 pad;
};

struct flow_state {
	__u64 pos;      /* bytes seen on the flow */
	__u64 birth_ns;
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_state);
} flow_init SEC(".maps");

enum call_kind { CALL_BUF, CALL_IOV, CALL_MSG };

/* A syscall on a TLS socket moves ciphertext: never scanned (its plaintext is, at the library). */
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pending);
} pending SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tls_session);
	__type(value, __s32);
} tls_sessions SEC(".maps");

/* Sockets that carry TLS, (tgid << 32 | fd): their syscalls move ciphertext, never scanned. */
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, P2_C_NR);
	__type(key, __u32);
	__type(value, __u64);
} phase2_counters SEC(".maps");

static __always_inline void p2_count(__u32 counter)
{
	__u64 *v = bpf_map_lookup_elem(&phase2_counters, &counter);
	if (v)
		*v += 1;
}

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

/* A call's record: its header, then its moments. */
struct call_record {
	struct phase2_call h;
	struct phase2_moment m[PHASE2_MAX_MOMENTS];
};

/* Calls' records leave in batches. One ring-buffer output costs about 100 ns here, as much as
 * finding a 2 KiB call's moments (BENCHMARKS.md), so each CPU builds its calls' records in
 * place, back to back, and outputs them together once BATCH_BYTES have gathered, when the
 * oldest is BATCH_AGE_NS old, or when the agent asks (flush_batch, on every CPU each time it
 * drains). A read is still stamped when its scan is done: only the delivery waits. */
#define BATCH_BYTES 4096
#define BATCH_AGE_NS (50 * 1000 * 1000ULL)

struct batch {
	__u64 first_ns; /* when the oldest record in buf was made */
	__u32 used;     /* bytes of whole call records in buf */
	__u32 moments;  /* the moments they hold */
	__u32 busy;     /* a call on this CPU is building its record: the agent's flush waits */
	__u32 pad;
	/* One call's record may run past BATCH_BYTES: it is built behind the ones before it. */
	__u8 buf[BATCH_BYTES + sizeof(struct call_record)];
};

/* Indexed by CPU: a per-CPU array's value cannot exceed 32 KiB. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* the number of possible CPUs, set at load */
	__type(key, __u32);
	__type(value, struct batch);
} batches SEC(".maps");

static __always_inline struct batch *this_cpu_batch(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&batches, &cpu);
}

/* The record of the call being scanned on this CPU, behind the batch's whole records. */
static __always_inline struct call_record *open_record(struct batch *b)
{
	__u32 used = b->used;
	if (used > BATCH_BYTES)
		return NULL;
	return (struct call_record *)(b->buf + used);
}

static __always_inline void flush(struct batch *b)
{
	__u64 used = b->used;
	asm volatile("" : "+r"(used));
	if (used == 0 || used > sizeof(b->buf))
		return;
	/* No wake-up: the agent drains on a timer. */
	if (bpf_ringbuf_output(&events, b->buf, used, BPF_RB_NO_WAKEUP))
		fp_count(FP_C_DROPS, b->moments);
	else
		fp_count(FP_C_MOMENTS, b->moments);
	b->used = 0;
	b->moments = 0;
}

/* The agent's flush (BPF_PROG_TEST_RUN on each CPU in turn, from an IPI when the CPU is not
 * the agent's): returns 1, and leaves the batch, when it interrupted a call building its
 * record; that call or the agent's next drain sends it. */
SEC("raw_tp")
int flush_batch(void *ctx)
{
	struct batch *b = this_cpu_batch();
	if (!b)
		return 0;
	if (*(volatile __u32 *)&b->busy)
		return 1;
	flush(b);
	return 0;
}

/* A call scanned while an earlier call on its CPU is preempted mid-scan (fp_claim's slots 1 and
 * up) leaves the CPU's batch to that call: it sends its own record, NESTED_MOMENTS moments at a
 * time. Rare where programs are not preempted; a record per call costs only the output. */
#define NESTED_MOMENTS 64

struct nested_record {
	struct phase2_call h;
	struct phase2_moment m[NESTED_MOMENTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_SLOTS);
	__type(key, __u32);
	__type(value, struct nested_record);
} nested_records SEC(".maps");

static __always_inline struct nested_record *nested_record(const struct fp_meta *meta)
{
	__u32 slot = meta->slot;
	return bpf_map_lookup_elem(&nested_records, &slot);
}

/* Writes are stamped at entry, reads when their scan is done. */
static __always_inline __u64 stamp(const struct fp_meta *meta)
{
	return meta->dir == PHASE2_DIR_READ ? bpf_ktime_get_ns() : meta->t_ns;
}

static __always_inline void send_nested(struct nested_record *r, const struct fp_meta *meta)
{
	__u64 n = r->h.n;
	asm volatile("" : "+r"(n));
	if (n == 0 || n > NESTED_MOMENTS)
		return;
	r->h.t_ns = stamp(meta);
	if (bpf_ringbuf_output(&events, r, sizeof(r->h) + n * sizeof(r->m[0]), BPF_RB_NO_WAKEUP))
		fp_count(FP_C_DROPS, n);
	else
		fp_count(FP_C_MOMENTS, n);
	r->h.n = 0;
}

static __always_inline void fp_emit(const struct fp_meta *meta, __u64 signature, __u64 end)
{
	if (meta->slot) {
		struct nested_record *r = nested_record(meta);
		if (!r)
			return;
		if (r->h.n >= NESTED_MOMENTS)
			send_nested(r, meta);
		__u32 n = r->h.n;
		r->m[n & (NESTED_MOMENTS - 1)].signature = signature;
		r->m[n & (NESTED_MOMENTS - 1)].end = end;
		r->h.n = n + 1;
		return;
	}
	struct batch *b = this_cpu_batch();
	if (!b)
		return;
	struct call_record *c = open_record(b);
	if (!c)
		return;
	__u32 n = c->h.n;
	if (n >= PHASE2_MAX_MOMENTS) {
		fp_count(FP_C_DROPS, 1);
		return;
	}
	c->m[n].signature = signature;
	c->m[n].end = end;
	c->h.n = n + 1;
}

/* The cgroup id and command name a call's record carries: the flow's, looked up again when
 * they are a second old. The two helpers cost about 80 ns a call here (BENCHMARKS.md); a
 * process moved to another cgroup, or a thread renamed, shows its old one for up to a second. */
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

/* Everything in a call's record header but its stamp and moment count. */
static __always_inline void describe_call(struct phase2_call *h, struct fp_scratch *s,
					  struct flow_state *f)
{
	h->flow_birth_ns = s->meta.flow_birth_ns;
	who_made_it(f, s->meta.t_ns, h);
	h->tgid = s->meta.tgid;
	h->tid = s->meta.tid;
	h->fd = s->meta.fd;
	h->dir = s->meta.dir;
}

/* Opens the record of the call about to be scanned: in slot 0 this CPU's, in the batch (the
 * agent's flush waits until close_record); in the slots after it, the call's own. */
static __always_inline int begin_record(struct batch *b, struct fp_scratch *s,
					struct flow_state *f, __u32 tls)
{
	if (s->meta.slot) {
		struct nested_record *r = nested_record(&s->meta);
		if (!r)
			return 0;
		describe_call(&r->h, s, f);
		r->h.n = 0;
		r->h.tls = tls;
		return 1;
	}
	struct call_record *c = open_record(b);
	if (!c)
		return 0;
	b->busy = 1;
	asm volatile("" ::: "memory");
	c->h.n = 0;
	c->h.tls = tls;
	return 1;
}

/* Stamps the call's record if it found moments and sends it: in slot 0 it joins the batch,
 * which is sent when full or old. */
static __always_inline void close_record(struct batch *b, struct fp_scratch *s,
					 struct flow_state *f)
{
	if (s->meta.slot) {
		struct nested_record *r = nested_record(&s->meta);
		if (r)
			send_nested(r, &s->meta);
		return;
	}
	struct call_record *c = open_record(b);
	if (!c)
		goto done;
	__u32 n = c->h.n;
	if (n == 0 || n > PHASE2_MAX_MOMENTS)
		goto done;
	c->h.t_ns = stamp(&s->meta);
	describe_call(&c->h, s, f);
	if (b->used == 0)
		b->first_ns = s->meta.t_ns;
	b->used += sizeof(struct phase2_call) + n * sizeof(struct phase2_moment);
	b->moments += n;
	if (b->used >= BATCH_BYTES || s->meta.t_ns - b->first_ns >= BATCH_AGE_NS)
		flush(b);
done:
	asm volatile("" ::: "memory");
	b->busy = 0;
}

static __always_inline void forget_flows(__u32 tgid, __s32 fd)
{
	struct flow_key key = { .tgid = tgid, .fd = fd };
	for (__u32 dir = 0; dir < 2; dir++) {
		key.dir = dir;
		if (bpf_map_delete_elem(&flows, &key) == 0)
			p2_count(P2_C_FLOWS_CLOSED);
	}
}

/* A socket just seen inside an SSL call: from now on its flows are plaintext, from 0. */
static __always_inline void mark_tls_socket(__u32 tgid, __s32 fd)
{
	__u64 key = socket_key(tgid, fd);
	if (bpf_map_lookup_elem(&tls_sockets, &key))
		return;
	__u8 one = 1;
	bpf_map_update_elem(&tls_sockets, &key, &one, BPF_ANY);
	p2_count(P2_C_TLS_SOCKETS);
	/* Handshake bytes seen before are not part of the plaintext flow. */
	forget_flows(tgid, fd);
}

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
	};
	/* Inside an SSL call the bytes are TLS records: this names the call's socket. */
	struct tls_call *tls = bpf_map_lookup_elem(&tls_calls, &id);
	__u64 sk = socket_key(tgid, fd);
	if (tls) {
		if (tls->fd < 0) {
			tls->fd = fd;
			mark_tls_socket(tgid, fd);
		}
		p.cipher = CIPHER_IN_SSL_CALL;
	} else if (bpf_map_lookup_elem(&tls_sockets, &sk)) {
		p.cipher = CIPHER_OUTSIDE_SSL_CALL;
	}
	bpf_map_update_elem(&pending, &id, &p, BPF_ANY);
	return 0;
}

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

#define TLS_HANDSHAKE 22
#define TLS_APPLICATION_DATA 23

/* The content type of the TLS record a syscall's bytes begin with, or 0 if they do not look
 * like one: version 3.1-3.4, length at most 2^14 + 2048. OpenSSL reads a record's 5-byte
 * header on its own, so 5 bytes are all there is to go by. */
static __always_inline __u8 tls_record_type(const struct pending *call, __u64 total)
{
	__u8 h[5];
	if (call->kind != CALL_BUF || call->tls || total < sizeof(h) ||
	    bpf_probe_read_user(h, sizeof(h), (const void *)call->ptr))
		return 0;
	if (h[1] != 3 || h[2] < 1 || h[2] > 4 || h[3] > 0x48)
		return 0;
	return h[0];
}

/* Scans the `ret` bytes a call moved, from the flow's position and carry, in the scratch area
 * the call claimed, and sends the moments found. */
static __always_inline void scan_flow(struct fp_scratch *s, struct flow_state *f,
				      const struct pending *call, __u64 id, long ret)
{
	struct batch *b = this_cpu_batch();
	if (!b)
		return;
	fp_count(FP_C_CALLS, 1);
	__u64 total = ret;
	if (total > FP_MAX_CALL_BYTES) {
		fp_count(FP_C_TRUNCATED, total - FP_MAX_CALL_BYTES);
		total = FP_MAX_CALL_BYTES;
	}
	fp_count(FP_C_BYTES, total);
	s->meta.t_ns = call->t_enter;
	s->meta.base = f->pos;
	s->meta.flow_birth_ns = f->birth_ns;
	s->meta.tgid = (__u32)(id >> 32);
	s->meta.tid = (__u32)id;
	s->meta.fd = call->fd;
	s->meta.dir = call->dir;
	__u64 carry = f->carry;
	if (carry > FP_WINDOW_MAX - 1)
		carry = 0;
	/* Pinned, then tested on the register the helper gets (clang would test a copy). */
	asm volatile("" : "+r"(carry));
	if (carry > FP_WINDOW_MAX - 1)
		return;
	__u64 to = FP_DATA - carry;
	asm volatile("" : "+r"(to));
	if (to > FP_DATA)
		return;
	if (carry)
		bpf_probe_read_kernel(&s->buf[to], carry, f->tail);
	s->carry = carry;

	if (!begin_record(b, s, f, call->tls))
		return;
	__u64 unreached = 0;
	if (call->kind == CALL_BUF) {
		fp_scan_user(s->meta.slot, call->ptr, total);
	} else if (call->kind == CALL_IOV) {
		unreached = scan_iov(s->meta.slot, call->ptr, call->count, total);
	} else {
		struct msghdr_iov m;
		if (bpf_probe_read_user(&m, sizeof(m), (const __u8 *)call->ptr + MSGHDR_IOV_OFFSET))
			unreached = total;
		else
			unreached = scan_iov(s->meta.slot, (__u64)m.msg_iov, m.msg_iovlen, total);
	}

	f->pos += ret;
	close_record(b, s, f);
	if (unreached || total < (__u64)ret) {
		/* Bytes went unscanned: what is carried no longer precedes the next call's bytes. */
		p2_count(P2_C_BROKEN_FLOWS);
		f->carry = 0;
		return;
	}
	carry = s->carry;
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

/* A call's bytes on its flow. A global function: verified once per program on its own, not
 * once per caller's path. */
__noinline int scan_call(__u64 id, const struct pending *p, long ret)
{
	/* Read in place, not copied: the stack of the deepest chain of calls must stay within
	 * 512 bytes as 6.1 counts it. */
	const struct pending *call = p;
	if (!call)
		return 0;
	/* Writes are stamped at entry; reads when their scan is done (stamp). */
	__u64 t_ns = call->t_enter;
	struct flow_key key = { .tgid = id >> 32, .fd = call->fd, .dir = call->dir };
	struct flow_state *f = bpf_map_lookup_elem(&flows, &key);
	__u8 record = tls_record_type(call, ret);
	if (record == TLS_APPLICATION_DATA)
		p2_count(P2_C_TLS_UNPROBED);
	if (!f && record == TLS_HANDSHAKE) {
		/* A flow that opens with a handshake is TLS from its first byte: not one byte of it
		 * is scanned, so a handshake cannot pass for a moment before an SSL call names the
		 * socket (or when no SSL call ever will). */
		mark_tls_socket(key.tgid, call->fd);
		p2_count(P2_C_TLS_HANDSHAKES);
		p2_count(P2_C_CIPHERTEXT_SKIPPED);
		return 0;
	}
	if (!f) {
		/* A 312-byte value: built in a per-CPU map, not on the 512-byte stack. */
		__u32 zero = 0;
		struct flow_state *fresh = bpf_map_lookup_elem(&flow_init, &zero);
		if (!fresh)
			return 0;
		fresh->pos = 0;
		fresh->carry = 0;
		fresh->birth_ns = t_ns;
		fresh->who_ns = 0;
		bpf_map_update_elem(&flows, &key, fresh, BPF_NOEXIST);
		p2_count(P2_C_FLOWS_CREATED);
		f = bpf_map_lookup_elem(&flows, &key);
		if (!f)
			return 0;
	}

	int slot = fp_claim();
	if (slot < 0) {
		/* Not scanned: the flow's positions stay true, its carry restarts. */
		f->pos += ret;
		f->carry = 0;
		p2_count(P2_C_BROKEN_FLOWS);
		return 0;
	}
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 0;
	scan_flow(s, f, call, id, ret);
	fp_release(s);
	return 0;
}

static __always_inline int leave(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	/* One lookup for the processes that are not traced, the common case. */
	if (!is_target(id >> 32))
		return 0;
	struct pending *p = bpf_map_lookup_elem(&pending, &id);
	if (!p) {
		if (ret > 0)
			p2_count(P2_C_UNSEEN_CALLS);
		return 0;
	}
	struct pending call = *p;
	bpf_map_delete_elem(&pending, &id);
	if (ret <= 0)
		return 0;
	if (call.cipher) {
		p2_count(P2_C_CIPHERTEXT_SKIPPED);
		if (call.cipher == CIPHER_OUTSIDE_SSL_CALL &&
		    tls_record_type(&call, ret) == TLS_APPLICATION_DATA)
			p2_count(P2_C_TLS_UNPROBED);
		return 0;
	}
	return scan_call(id, &call, ret);
}

static __always_inline void forget_fd(__s32 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_target(tgid))
		return;
	forget_flows(tgid, fd);
	__u64 sk = socket_key(tgid, fd);
	bpf_map_delete_elem(&tls_sockets, &sk);
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
	switch (regs->orig_rax) {
	case __NR_write:
	case __NR_writev:
	case __NR_sendto:
	case __NR_sendmsg:
	case __NR_read:
	case __NR_readv:
	case __NR_recvfrom:
	case __NR_recvmsg:
		return leave(ret);
	}
	return 0;
}

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
	bpf_map_update_elem(&tls_calls, &id, &c, BPF_ANY);
	return 0;
}

SEC("uprobe")
int tls_write_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, PHASE2_DIR_WRITE, 0);
}

SEC("uprobe")
int tls_write_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, PHASE2_DIR_WRITE, 1);
}

SEC("uprobe")
int tls_read_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, PHASE2_DIR_READ, 0);
}

SEC("uprobe")
int tls_read_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(ctx, PHASE2_DIR_READ, 1);
}

SEC("uretprobe")
int tls_leave(struct pt_regs *ctx)
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
	int rc = (int)PT_REGS_RC(ctx);
	__u64 moved = 0;
	if (moved_at) {
		if (rc != 1 || bpf_probe_read_user(&moved, sizeof(moved), (const void *)moved_at))
			return 0;
	} else if (rc > 0) {
		moved = rc;
	}
	if (moved == 0)
		return 0;
	struct tls_session session = { .tgid = tgid, .ssl = ssl };
	__s32 *known = bpf_map_lookup_elem(&tls_sessions, &session);
	if (call.fd >= 0) {
		if (!known || *known != call.fd)
			bpf_map_update_elem(&tls_sessions, &session, &call.fd, BPF_ANY);
	} else if (known) {
		call.fd = *known;
	} else {
		p2_count(P2_C_TLS_UNATTRIBUTED);
		return 0;
	}
	p2_count(P2_C_TLS_CALLS);
	call.count = moved;
	return scan_call(id, &call, moved);
}
