/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Phase 1's event, shared by phase1.bpf.c and its Rust mirror (src/event.rs), which build.rs
 * checks against this header's layout at compile time. */
#ifndef PHASE1_H
#define PHASE1_H

#define PHASE1_COMM_LEN 16
#define PHASE1_DIR_WRITE 1

struct phase1_event {
	__u64 signature;
	__u64 t_ns;   /* bpf_ktime_get_ns() at write() entry */
	__u64 end;    /* offset just past the moment's window, from the write's first byte */
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u32 dir;
	char comm[PHASE1_COMM_LEN];
};

#endif /* PHASE1_H */
