/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The contexts of syscalls/sys_enter_* and sys_exit_* tracepoints (tracefs .../format), shared
 * by every phase's programs. */
#ifndef SYSCALLS_BPF_H
#define SYSCALLS_BPF_H

struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

#endif /* SYSCALLS_BPF_H */
