/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* What a scanned call sends the agent: one record (struct phase2_call, then its moments), built
 * while the scan emits (fp_emit) and stamped when it is done.
 *
 * Records leave in per-CPU batches. One ring-buffer output costs about 100 ns here, as much as
 * finding a 2 KiB call's moments (BENCHMARKS.md), so each CPU builds its calls' records in
 * place, back to back, and outputs them together once BATCH_BYTES have gathered, when the
 * oldest is BATCH_AGE_NS old, or when the agent asks (flush_batch, on every CPU each time it
 * drains). A read is still stamped when its scan is done: only the delivery waits.
 *
 * A call scanned while an earlier one on its CPU is preempted mid-scan (fp_claim's slots 1 and
 * up) leaves the batch to that call and sends its own record (a nested record). */
#ifndef PHASE2_RECORDS_BPF_H
#define PHASE2_RECORDS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint.bpf.h"
#include "flows.bpf.h"
#include "phase2.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* A call's record: its header, then its moments. */
struct call_record {
	struct phase2_call h;
	struct phase2_moment m[PHASE2_MAX_MOMENTS];
};

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

/* A nested call's record goes out NESTED_MOMENTS moments at a time. Rare where programs are not
 * preempted; a record per call costs only the output. */
#define NESTED_MOMENTS 64

struct nested_record {
	struct phase2_call h;
	struct phase2_moment m[NESTED_MOMENTS];
};
_Static_assert((NESTED_MOMENTS & (NESTED_MOMENTS - 1)) == 0,
	       "fp_emit masks a nested record's moment index with NESTED_MOMENTS - 1");
_Static_assert(sizeof(struct nested_record) <= 32 * 1024,
	       "a per-CPU array's value is at most 32 KiB");

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

/* The scan's emitter (fingerprint.bpf.h): a moment joins the record of the call being scanned. */
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

/* Everything in a call's record header but its stamp and moment count. */
static __always_inline void describe_call(struct phase2_call *h, struct fp_scratch *s,
					  struct flow_state *f)
{
	h->flow_birth_ns = f->birth_ns;
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

#endif /* PHASE2_RECORDS_BPF_H */
