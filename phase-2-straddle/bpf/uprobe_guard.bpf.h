/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* One run of each uprobe program per CPU at a time. The kernel runs uprobe programs
 * preemptible and without the recursion guard it gives syscall tracepoints, and from 6.13 it gives them a per-CPU private
 * stack, assuming a kprobe-type program cannot be preempted: a run starting on a CPU where
 * another is preempted would overwrite that one's stack (seen on 6.18: one relay's Go call
 * counted in another relay's flow). Each program has a stack of its own, so each claims its
 * CPU for itself before its body touches the stack, in memory that is not the stack (a
 * global), and a run that finds the CPU claimed returns at once: not seen, like a run the
 * kernel's own guard skips, and counted (`uprobe_runs_skipped`) by the claimant when it lets
 * go, as the skipped run cannot count.
 *
 * Every guarded program is a wrapper: UPROBE_GUARDED(section, name, program, call) defines
 * program name, which claims, makes the call (inlined: a frame more would pass the verifier's limit of
 * 8 on Go's path) and lets go. The claim is a full barrier the compiler moves no stack access
 * above; a test reads the object to make sure (src/tracer.rs). */
#ifndef PHASE2_UPROBE_GUARD_BPF_H
#define PHASE2_UPROBE_GUARD_BPF_H

#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include "counters.bpf.h"
#include "phase2.h"

/* CPU ids beyond this share claims: more skips there, never a shared stack. */
#define UPROBE_GUARD_CPUS 1024
_Static_assert((UPROBE_GUARD_CPUS & (UPROBE_GUARD_CPUS - 1)) == 0,
	       "the guard masks CPU ids with UPROBE_GUARD_CPUS - 1");

/* The guarded programs, each its own claims. */
enum uprobe_program {
	UPROBE_TLS_WRITE_ENTER,
	UPROBE_TLS_WRITE_EX_ENTER,
	UPROBE_TLS_READ_ENTER,
	UPROBE_TLS_READ_EX_ENTER,
	UPROBE_TLS_LEAVE,
	UPROBE_GO_TLS_WRITE_ENTER,
	UPROBE_GO_TLS_READ_ENTER,
	UPROBE_GO_TLS_LEAVE,
	UPROBE_PROGRAMS,
};

struct uprobe_guard {
	__u32 busy[UPROBE_PROGRAMS][UPROBE_GUARD_CPUS];    /* a run holds the CPU */
	__u32 skipped[UPROBE_PROGRAMS][UPROBE_GUARD_CPUS]; /* runs that found it held, not counted */
};

struct uprobe_guard uprobe_guard = {};

/* Counts the runs skipped while this one held the CPU, then lets go. Migration is disabled
 * for a uprobe program, so the CPU is the one claimed. */
static __noinline void uprobe_let_go(__u32 program)
{
	if (program >= UPROBE_PROGRAMS)
		return;
	__u32 cpu = bpf_get_smp_processor_id() & (UPROBE_GUARD_CPUS - 1);
	__u32 skipped = __sync_lock_test_and_set(&uprobe_guard.skipped[program][cpu], 0);
	if (skipped)
		p2_add(P2_C_UPROBE_RUNS_SKIPPED, skipped);
	asm volatile("" ::: "memory");
	*(volatile __u32 *)&uprobe_guard.busy[program][cpu] = 0;
}

#define UPROBE_GUARDED(sec, name, program, call)                                          \
	SEC(sec)                                                                          \
	int name(struct pt_regs *ctx)                                                     \
	{                                                                                 \
		__u32 cpu = bpf_get_smp_processor_id() & (UPROBE_GUARD_CPUS - 1);         \
		if (__sync_val_compare_and_swap(&uprobe_guard.busy[program][cpu], 0, 1)) { \
			__sync_fetch_and_add(&uprobe_guard.skipped[program][cpu], 1);     \
			return 0;                                                         \
		}                                                                         \
		call;                                                                     \
		uprobe_let_go(program);                                                   \
		return 0;                                                                 \
	}

#endif /* PHASE2_UPROBE_GUARD_BPF_H */
