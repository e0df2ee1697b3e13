/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The C side of the moment definition (shared/src/lib.rs is the reference; conformance tests
 * compare the two byte for byte). Every phase's .bpf.c includes this header; phases differ in
 * hooks and per-flow state, not in the scan.
 *
 * A user buffer is scanned (fp_scan_user) in chunks of FP_CHUNK bytes copied into a per-CPU
 * scratch area behind the last window-1 bytes of what came before (the carry: earlier chunks,
 * earlier iovecs, or — restored by the caller from per-flow state — earlier calls), each chunk
 * in three passes:
 *   1. SWAR over 8-byte words: which 64-byte groups may hold an anchor (a marker-class byte
 *      whose byte two before passes the pre-gate: one marker in 8 of speech);
 *   2. per marked group: exact anchor bytes, then the 8-byte sampling gate;
 *   3. per gated candidate: loudness and smoothness (SWAR on 16-bit lanes), periodicity,
 *      xxh64, emit.
 *
 * Verification cost (docs/kernels.md). Each stage that runs in a loop is a global function
 * (fp_scan_user, fp_scan_chunk, fp_mark_groups, fp_find_moments, fp_group_anchors, fp_examine,
 * fp_repeats_at): the verifier checks it once, against its arguments' types, however many
 * times and from wherever it is called, so a loop over it costs the verifier a few instructions
 * per iteration. Nothing here relies on the verifier pruning the paths of a loop body, or on
 * how it treats bpf_loop callbacks: those change between kernels, stable ones included. Global
 * functions take scalars only: the slot of the scratch area their call claimed (fp_claim),
 * where they find its state.
 *
 * The includer defines `fp_emit(const struct fp_meta *, __u64 signature, __u64 end)`. */
#ifndef FINGERPRINT_BPF_H
#define FINGERPRINT_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fingerprint_consts.h"

#define FP_CHUNK 2048
/* Bytes per group of pass 1: a group is listed when it may hold an anchor. Larger groups list
 * less often; on speech one group in ten holds an anchor. */
#define FP_GROUP 64
#define FP_GROUPS (FP_CHUNK / FP_GROUP)
/* Bytes scanned of one call (callers count the rest as truncated). */
#define FP_MAX_CALL_BYTES (64 * 1024)
/* Candidates kept per chunk; at keep 128/256 speech has ~2 per 2 KiB, random bytes ~1. */
#define FP_MAX_CANDIDATES 64
/* The chunk starts here in the scratch buffer; the carry sits just before it. */
#define FP_DATA FP_WINDOW_MAX
/* Slack past the chunk so that every load the verifier cannot relate to `len` stays inside. */
#define FP_BUF_SIZE (FP_DATA + FP_CHUNK + FP_WINDOW_MAX + 8)

/* Indices into arrays of these sizes are masked with size - 1 as well as tested, because older
 * verifiers lose a test's bounds: the mask bounds them only if the size is a power of two. */
_Static_assert((FP_GROUPS & (FP_GROUPS - 1)) == 0, "FP_GROUPS must be a power of two");
_Static_assert((FP_MAX_CANDIDATES & (FP_MAX_CANDIDATES - 1)) == 0,
	       "FP_MAX_CANDIDATES must be a power of two");
_Static_assert((FP_WINDOW_MAX & (FP_WINDOW_MAX - 1)) == 0, "FP_WINDOW_MAX must be a power of two");

/* Cluster-wide settings (FingerprintConfig), set by the agent at load time. */
volatile const __u32 fp_window = FP_DEFAULT_WINDOW;
volatile const __u32 fp_keep_per_256 = FP_DEFAULT_KEEP_PER_256;
volatile const __u32 fp_quiet_threshold = FP_DEFAULT_QUIET_THRESHOLD;
volatile const __u32 fp_max_step = FP_DEFAULT_MAX_STEP;
/* Benchmarks only: how far a call's bytes go, so that the floor (the copy) and each pass are
 * measured side by side (agent::loader::ScanMode). */
enum fp_stage {
	FP_STAGE_SCAN, /* the tracer */
	FP_STAGE_COPY, /* copied from user memory, not scanned */
	FP_STAGE_MARK, /* copied, and pass 1 only (plus the carry) */
};
volatile const __u32 fp_stage = FP_STAGE_SCAN;

/* What the emitter needs to know about the call being scanned. */
struct fp_meta {
	__u64 t_ns;
	__u64 base;  /* position of the chunk's first byte in the flow (or call) */
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u32 dir;
	__u32 slot;  /* the scratch area the call claimed */
	__u32 pad;
};

struct fp_scratch {
	__u32 busy; /* claimed by a call (fp_claim) */
	__u32 pad;
	struct fp_meta meta;
	__u8 buf[FP_BUF_SIZE];
	__u8 win[2 * FP_WINDOW_MAX + 8];
	__u16 cand[FP_MAX_CANDIDATES];
	__u32 ncand;
	__u32 carry; /* valid bytes just before FP_DATA */
	__u32 len;   /* valid bytes from FP_DATA */
	__u8 marked[FP_GROUPS];      /* groups that may hold a marker byte, in order */
	__u32 nmarked;
};

/* A CPU's scratch areas. A program may be preempted mid-scan (on PREEMPT_FULL, lazy or RT
 * kernels: Debian's 7.x boots lazy whatever preempt= says), and another program sharing this
 * scratch (phase 2's syscall exit and its OpenSSL uprobe) may then run on that CPU: each call
 * claims an area of its own for its whole scan. Slot 0 is the common case; FP_SLOTS calls
 * preempted at once on one CPU leave the next one unscanned, and counted. */
#define FP_SLOTS 4
_Static_assert((FP_SLOTS & (FP_SLOTS - 1)) == 0, "fp_scratch masks its slot with FP_SLOTS - 1");
_Static_assert(sizeof(struct fp_scratch) <= 32 * 1024, "a per-CPU array's value is at most 32 KiB");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_SLOTS);
	__type(key, __u32);
	__type(value, struct fp_scratch);
} fp_scratch_map SEC(".maps");

static __always_inline struct fp_scratch *fp_scratch(__u64 slot)
{
	__u32 key = slot & (FP_SLOTS - 1);
	return bpf_map_lookup_elem(&fp_scratch_map, &key);
}

/* Counters, per CPU, summed by the agent. */
enum fp_counter {
	FP_C_CALLS,       /* traced syscalls */
	FP_C_BYTES,       /* bytes scanned */
	FP_C_CANDIDATES,  /* anchors that passed the gate */
	FP_C_MOMENTS,     /* moments emitted */
	FP_C_DROPS,       /* moments lost: ring buffer full */
	FP_C_TRUNCATED,   /* bytes beyond the per-call limit, not scanned */
	FP_C_CANDIDATE_OVERFLOW, /* gated anchors beyond FP_MAX_CANDIDATES in a chunk, not examined */
	FP_C_READ_ERRORS, /* user buffers that could not be copied */
	FP_C_NESTED_SCANS, /* calls scanned while an earlier one on their CPU was preempted mid-scan */
	FP_C_UNSCANNED_NESTED, /* calls not scanned: FP_SLOTS calls on their CPU were mid-scan */
	FP_C_NR,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_C_NR);
	__type(key, __u32);
	__type(value, __u64);
} fp_counters SEC(".maps");

static __always_inline void fp_count(__u32 counter, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&fp_counters, &counter);
	if (v)
		*v += n;
}

/* Counts a call that moved `moved` bytes; returns how many of them are scanned: at most
 * FP_MAX_CALL_BYTES, the rest counted as truncated. */
static __always_inline __u64 fp_call_bytes(__u64 moved)
{
	fp_count(FP_C_CALLS, 1);
	__u64 total = moved;
	if (total > FP_MAX_CALL_BYTES) {
		fp_count(FP_C_TRUNCATED, total - FP_MAX_CALL_BYTES);
		total = FP_MAX_CALL_BYTES;
	}
	fp_count(FP_C_BYTES, total);
	return total;
}

/* Claims a scratch area for a call: its slot, or -1 (counted) when every slot is held. An atomic
 * exchange, because the program itself may be preempted between a test and a store. */
static __always_inline int fp_claim(void)
{
#pragma unroll
	for (__u32 slot = 0; slot < FP_SLOTS; slot++) {
		struct fp_scratch *s = fp_scratch(slot);
		if (!s)
			return -1;
		if (__sync_val_compare_and_swap(&s->busy, 0, 1) == 0) {
			if (slot)
				fp_count(FP_C_NESTED_SCANS, 1);
			s->meta.slot = slot;
			return slot;
		}
	}
	fp_count(FP_C_UNSCANNED_NESTED, 1);
	return -1;
}

static __always_inline void fp_release(struct fp_scratch *s)
{
	asm volatile("" ::: "memory");
	s->busy = 0;
}

static __always_inline __u64 fp_load64(const __u8 *p)
{
	return *(const __u64 *)p;
}

/* A word copy that clang cannot merge into a memcpy loop: it would lower that to byte stores. */
static __always_inline void fp_copy64(__u8 *to, const __u8 *from)
{
	__u64 v = fp_load64(from);
	asm volatile("" : "+r"(v));
	*(__u64 *)to = v;
}

static __always_inline __u64 fp_rotl(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static __always_inline __u64 fp_xxh_round(__u64 acc, __u64 input)
{
	acc += input * FP_XXH_PRIME64_2;
	acc = fp_rotl(acc, 31);
	return acc * FP_XXH_PRIME64_1;
}

static __always_inline __u64 fp_xxh_merge(__u64 acc, __u64 v)
{
	acc ^= fp_xxh_round(0, v);
	return acc * FP_XXH_PRIME64_1 + FP_XXH_PRIME64_4;
}

/* xxh64 of win[0..len), len a multiple of 8 in FP_WINDOW_MIN..FP_WINDOW_MAX. */
static __always_inline __u64 fp_xxh64(const __u8 *win, __u32 len)
{
	__u64 h;
	__u32 i = 0;

	if (len >= 32) {
		__u64 v1 = FP_SEED + FP_XXH_PRIME64_1 + FP_XXH_PRIME64_2;
		__u64 v2 = FP_SEED + FP_XXH_PRIME64_2;
		__u64 v3 = FP_SEED;
		__u64 v4 = FP_SEED - FP_XXH_PRIME64_1;
		for (int s = 0; s < FP_WINDOW_MAX / 32; s++) {
			if (i + 32 > len)
				break;
			v1 = fp_xxh_round(v1, fp_load64(win + i));
			v2 = fp_xxh_round(v2, fp_load64(win + i + 8));
			v3 = fp_xxh_round(v3, fp_load64(win + i + 16));
			v4 = fp_xxh_round(v4, fp_load64(win + i + 24));
			i += 32;
		}
		h = fp_rotl(v1, 1) + fp_rotl(v2, 7) + fp_rotl(v3, 12) + fp_rotl(v4, 18);
		h = fp_xxh_merge(h, v1);
		h = fp_xxh_merge(h, v2);
		h = fp_xxh_merge(h, v3);
		h = fp_xxh_merge(h, v4);
	} else {
		h = FP_SEED + FP_XXH_PRIME64_5;
	}
	h += len;
	for (int k = 0; k < 3; k++) {
		if (i + 8 > len)
			break;
		h ^= fp_xxh_round(0, fp_load64(win + i));
		h = fp_rotl(h, 27) * FP_XXH_PRIME64_1 + FP_XXH_PRIME64_4;
		i += 8;
	}
	h ^= h >> 33;
	h *= FP_XXH_PRIME64_2;
	h ^= h >> 29;
	h *= FP_XXH_PRIME64_3;
	h ^= h >> 32;
	return h;
}

#define FP_L16_ONES 0x0001000100010001ULL
#define FP_L16_TOPS 0x8000800080008000ULL
#define FP_L32_ONES 0x0000000100000001ULL
#define FP_L32_LOW16 0x0000ffff0000ffffULL

/* Bit 15 of each 16-bit lane (a signed sample) set where |sample| >= the threshold that
 * `quiet_bias` encodes, (0x8000 - threshold) in every lane. |sample| <= 0x8000 and the
 * threshold is 1..32767, so no lane carries into the next. */
static __always_inline __u64 fp_loud_lanes(__u64 x, __u64 quiet_bias)
{
	__u64 sign = (x >> 15) & FP_L16_ONES;
	__u64 mag = (x ^ (sign * 0xffff)) + sign;
	return (mag + quiet_bias) & FP_L16_TOPS;
}

/* For unsigned 16-bit a and b held in 32-bit lanes: bit 18 or 19 of a lane set where
 * |b - a| > max_step. q = b - a + max_step + 0x40000 lies in 0x30001..0x5fffe (no borrow
 * between lanes); the step is smooth when 0x40000 <= q (bit 18) and q <= 0x40000 + 2 max_step
 * (bit 19 of q + 0x3ffff - 2 max_step clear). The biases come per lane from the caller. */
static __always_inline __u64 fp_rough_lanes(__u64 a, __u64 b, __u64 low_bias, __u64 high_bias)
{
	__u64 q = b + low_bias - a;
	return (~q & (0x40000 * FP_L32_ONES)) | ((q + high_bias) & (0x80000 * FP_L32_ONES));
}

/* shared::is_loud_audio: read as samples whose low byte is the anchor's (byte 1 on, len/2 - 1
 * samples), some sample reaches fp_quiet_threshold and no adjacent step exceeds fp_max_step.
 * Four samples a word: x holds samples 4j..4j+3, y (two bytes on) their successors. In the last
 * word, lane 3 is past the anchor and lanes 2 and 3 have no successor in the window. */
static __always_inline int fp_loud_audio(const __u8 *win, __u32 len)
{
	/* The settings are volatile: read once, not once per word. */
	__u64 quiet_bias = (0x8000 - (__u64)fp_quiet_threshold) * FP_L16_ONES;
	__u64 max_step = fp_max_step;
	__u64 low_bias = (0x40000 + max_step) * FP_L32_ONES;
	__u64 high_bias = (0x3ffff - 2 * max_step) * FP_L32_ONES;
	__u64 loud = 0, rough = 0;
	__u32 words = len / 8;

	for (__u32 j = 0; j < FP_WINDOW_MAX / 8; j++) {
		if (j >= words)
			break;
		__u64 x = fp_load64(win + 1 + 8 * j), y = fp_load64(win + 3 + 8 * j);
		int last = j + 1 == words;
		__u64 loud_lanes = last ? 0x0000800080008000ULL : FP_L16_TOPS;
		/* Steps from even samples in the low halves of 32-bit lanes, odd ones shifted down. */
		__u64 step_lanes = last ? 0x00000000000c0000ULL : 0x000c0000000c0000ULL;
		__u64 u = x ^ FP_L16_TOPS, v = y ^ FP_L16_TOPS; /* offset binary: unsigned order */
		loud |= fp_loud_lanes(x, quiet_bias) & loud_lanes;
		rough |= (fp_rough_lanes(u & FP_L32_LOW16, v & FP_L32_LOW16, low_bias, high_bias) |
			  fp_rough_lanes((u >> 16) & FP_L32_LOW16, (v >> 16) & FP_L32_LOW16, low_bias,
					 high_bias)) &
			 step_lanes;
	}
	return loud && !rough;
}

/* Whether the candidate's window, win[0..len), equals itself shifted by `lag` bytes: compared
 * word by word without early exits, and a last, overlapping word ending at len - lag. */
__noinline int fp_repeats_at(__u64 slot, __u64 len, __u64 lag)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s || len > FP_WINDOW_MAX || lag > FP_WINDOW_MAX / 2 || lag + 8 > len)
		return 0;
	__u64 n = len - lag; /* bytes compared, >= 8 */
	__u64 diff = 0;
	for (__u32 i = 0; i < FP_WINDOW_MAX / 8; i++) {
		__u64 at = i * 8;
		if (at >= n)
			break;
		if (at + 8 > n)
			at = n - 8;
		/* Masks the verifier keeps, whatever clang does with the tests above: lag + at + 8
		 * stays inside win. */
		at &= FP_WINDOW_MAX - 1;
		diff |= fp_load64(&s->win[(lag & (FP_WINDOW_MAX - 1)) + at]) ^ fp_load64(&s->win[at]);
	}
	return diff == 0;
}

/* The window (s->win) equals itself shifted by an even lag in (len/4, len/2]
 * (shared::is_periodic says why the shorter lags need no comparing). Audio almost never
 * repeats even its first word at one of those lags, so that is tested first. */
static __always_inline int fp_periodic(__u64 slot, const __u8 *win, __u32 len)
{
	__u32 first_lag = len / 4 + 2, lags = len / 8; /* len is a multiple of 8 */
	__u64 head = fp_load64(win), head_repeats = 0;

	for (__u32 k = 0; k < FP_WINDOW_MAX / 8; k++) {
		if (k >= lags)
			break;
		head_repeats |= fp_load64(win + first_lag + 2 * k) == head;
	}
	if (!head_repeats)
		return 0;
	for (__u32 k = 0; k < FP_WINDOW_MAX / 8; k++) {
		if (k >= lags)
			break;
		if (fp_repeats_at(slot, len, first_lag + 2 * k))
			return 1;
	}
	return 0;
}

/* One candidate anchor at chunk offset `off`: keep it if its window is available and it passes
 * the sampling gate. Returns 1 when the candidate list is full. */
static __always_inline int fp_consider(struct fp_scratch *s, __u32 off)
{
	if (off >= s->len || off >= FP_CHUNK)
		return 0;
	/* The window must lie in carried + current bytes. */
	if (off + s->carry + 1 < fp_window)
		return 0;
	__u32 q = FP_DATA + off;
	__u64 gate = (fp_load64(&s->buf[q - 7]) * FP_GATE_MULT) >> 56;
	if (gate >= fp_keep_per_256)
		return 0;
	__u32 n = s->ncand;
	if (n >= FP_MAX_CANDIDATES) {
		fp_count(FP_C_CANDIDATE_OVERFLOW, 1);
		return 1;
	}
	s->cand[n & (FP_MAX_CANDIDATES - 1)] = q; /* masked too: older verifiers lose the test */
	s->ncand = n + 1;
	return 0;
}

/* Per byte of the word at chunk offset `at`: zero where an anchor is. */
static __always_inline __u64 fp_anchor_bytes(struct fp_scratch *s, __u32 at)
{
	__u64 w = fp_load64(&s->buf[FP_DATA + at]);
	__u64 pre = fp_load64(&s->buf[FP_DATA + at - 2]) >> FP_PRE_GATE_SHIFT;
	return ((w & FP_MARKER_MASK_BCAST) | (pre & FP_PRE_GATE_BITS_BCAST)) ^ FP_ANCHOR_VALUE_BCAST;
}

/* Pass 2 for marked group number i: its exact anchor bytes, word by word, lowest first.
 * Returns 1 when the candidate list is full (or on a bad index). */
__noinline int fp_group_anchors(__u64 slot, __u64 i)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s || i >= FP_GROUPS)
		return 1;
	/* Masked as well as tested: clang may test one copy of i and index with another. */
	__u32 g = s->marked[i & (FP_GROUPS - 1)];
	if (g >= FP_GROUPS)
		return 1;
#pragma unroll
	for (__u32 k = 0; k < FP_GROUP / 8; k++) {
		__u32 base = g * FP_GROUP + k * 8;
		__u64 t = fp_anchor_bytes(s, base);
		/* Exact: bit 7 of each byte of t that is zero. */
		__u64 z = ~(((t & ~FP_HIGHS_BCAST) + ~FP_HIGHS_BCAST) | t) & FP_HIGHS_BCAST;
		if (!z)
			continue;
		/* Byte by byte, not bit-walking z: a loop of fixed length is unrolled, so the
		 * verifier sees no loop here at all. */
#pragma unroll
		for (__u32 j = 0; j < 8; j++) {
			if ((z >> (8 * j + 7)) & 1 && fp_consider(s, base + j))
				return 1;
		}
	}
	return 0;
}

static __always_inline void fp_emit(const struct fp_meta *meta, __u64 signature, __u64 end);

/* Pass 3 for candidate number i: copy its window, classify it, emit its moment. */
__noinline int fp_examine(__u64 slot, __u64 i)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s || i >= FP_MAX_CANDIDATES)
		return 0;
	__u32 w = fp_window;
	__u32 q = s->cand[i & (FP_MAX_CANDIDATES - 1)];
	if (w < FP_WINDOW_MIN || w > FP_WINDOW_MAX || q < FP_DATA || q >= FP_DATA + FP_CHUNK)
		return 0;
	/* 64-bit and pinned: 6.1's verifier loses a 32-bit difference's bounds. */
	__u64 start = (__u64)q + 1 - w;
	asm volatile("" : "+r"(start));
	if (start > FP_DATA + FP_CHUNK)
		return 0;
	for (__u32 k = 0; k < FP_WINDOW_MAX / 8; k++) {
		if (k * 8 >= w)
			break;
		fp_copy64(&s->win[k * 8], &s->buf[start + k * 8]);
	}
	if (!fp_loud_audio(s->win, w))
		return 0;
	if (fp_periodic(slot, s->win, w))
		return 0;
	fp_emit(&s->meta, fp_xxh64(s->win, w), s->meta.base + (q - FP_DATA) + 1);
	return 0;
}

/* Passes 2 and 3 over the chunk pass 1 marked. */
__noinline int fp_find_moments(__u64 slot)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 0;
	__u32 marked = s->nmarked;
	s->ncand = 0;
	for (__u32 i = 0; i < FP_GROUPS; i++) {
		if (i >= marked || fp_group_anchors(slot, i))
			break;
	}
	__u32 found = s->ncand;
	if (found)
		fp_count(FP_C_CANDIDATES, found);
	for (__u32 i = 0; i < FP_MAX_CANDIDATES; i++) {
		if (i >= found)
			break;
		fp_examine(slot, i);
	}
	return 0;
}

/* Pass 1 over s->buf[FP_DATA .. FP_DATA + s->len): the groups that may hold an anchor. */
__noinline int fp_mark_groups(__u64 slot)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 0;
	__u32 len = s->len;

	s->nmarked = 0;
	for (__u32 g = 0; g < FP_GROUPS; g++) {
		if (g * FP_GROUP >= len)
			break;
		/* Bit 7 of a byte is set where fp_anchor_bytes may be zero; false positives (only
		 * above a true match) are dropped by the exact test per word. The carry (or, at a
		 * flow's start, stale bytes that fp_consider rejects) precedes the chunk's first word. */
		__u64 z = 0;
		for (__u32 k = 0; k < FP_GROUP / 8; k++) {
			__u32 at = g * FP_GROUP + k * 8;
			__u64 t = fp_anchor_bytes(s, at);
			/* Bit 7 of ~t is bit 7 of the word itself (the anchor value has bit 7 set):
			 * one operation less per word than the textbook (t - 1) & ~t. */
			z |= (t - FP_ONES_BCAST) & fp_load64(&s->buf[FP_DATA + at]);
		}
		z &= FP_HIGHS_BCAST;
		/* Branch-free: the group is listed, and counted only if marked. clang would turn a
		 * test back into a branch per group without the empty asm. */
		__u64 any = (z | -z) >> 63;
		asm volatile("" : "+r"(any));
		__u32 n = s->nmarked;
		s->marked[n & (FP_GROUPS - 1)] = g;
		s->nmarked = n + any;
	}
	return 0;
}

/* After a chunk: keep the last window-1 bytes of carry + chunk in front of FP_DATA. Moved as the
 * `fp_window` bytes (whole words) that end the chunk, one byte more than kept: word copies cost
 * a fraction of two helper calls. Through `win` because source and destination overlap when the
 * chunk is shorter than the window. */
static __always_inline void fp_shift_carry(struct fp_scratch *s, __u64 len)
{
	__u64 keep = fp_window - 1;
	__u64 have = (__u64)s->carry + len;
	if (have < keep)
		keep = have;
	__u32 words = fp_window / 8;
	__u64 from = FP_DATA + len - fp_window, to = FP_DATA - fp_window;
	for (__u32 k = 0; k < FP_WINDOW_MAX / 8; k++) {
		if (k >= words)
			break;
		fp_copy64(&s->win[k * 8], &s->buf[from + k * 8]);
	}
	for (__u32 k = 0; k < FP_WINDOW_MAX / 8; k++) {
		if (k >= words)
			break;
		fp_copy64(&s->buf[to + k * 8], &s->win[k * 8]);
	}
	s->carry = keep;
}

/* One chunk: the next min(left, FP_CHUNK) bytes at user address `ubuf`, continuing s->meta's
 * flow at s->meta.base with s->carry bytes carried; advances both. Returns 1 when the bytes
 * could not be read (the carry restarts). */
__noinline int fp_scan_chunk(__u64 slot, __u64 ubuf, __u64 left)
{
	struct fp_scratch *s = fp_scratch(slot);
	if (!s)
		return 1;
	__u64 n = left < FP_CHUNK ? left : FP_CHUNK;
	/* Keep clang from folding the clamp away: the verifier must see 0 < n <= FP_CHUNK. */
	asm volatile("" : "+r"(n));
	if (n == 0 || n > FP_CHUNK)
		return 1;
	if (bpf_probe_read_user(&s->buf[FP_DATA], n, (const void *)ubuf)) {
		fp_count(FP_C_READ_ERRORS, 1);
		s->carry = 0;
		return 1;
	}
	s->len = n;
	if (fp_stage != FP_STAGE_COPY) {
		fp_mark_groups(slot);
		if (fp_stage == FP_STAGE_SCAN)
			fp_find_moments(slot);
		fp_shift_carry(s, n);
	}
	s->meta.base += n;
	return 0;
}

/* Scans `len` bytes (at most FP_MAX_CALL_BYTES) at user address `ubuf` as the continuation of
 * s->meta's flow, from flow position s->meta.base with s->carry bytes carried; advances both.
 * Global too: its loop's exits end here, instead of each leading the verifier through the
 * caller's rest. */
__noinline int fp_scan_user(__u64 slot, __u64 ubuf, __u64 len)
{
	for (__u32 i = 0; i < FP_MAX_CALL_BYTES / FP_CHUNK; i++) {
		__u64 off = (__u64)i * FP_CHUNK;
		if (off >= len || fp_scan_chunk(slot, ubuf + off, len - off))
			break;
	}
	return 0;
}

#endif /* FINGERPRINT_BPF_H */
