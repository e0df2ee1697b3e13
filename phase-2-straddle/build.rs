use shared::bpf_build::{compile, layout, Mirrored};

fn main() {
    compile("bpf/phase2.bpf.c", "phase2.bpf.o");
    layout(
        "bpf/phase2.h",
        &[
            Mirrored {
                name: "phase2_call",
                fields: &[
                    "t_ns",
                    "flow_birth_ns",
                    "cgroup_id",
                    "tgid",
                    "tid",
                    "fd",
                    "dir",
                    "n",
                    "tls",
                    "comm",
                ],
            },
            Mirrored {
                name: "phase2_moment",
                fields: &["signature", "end"],
            },
            Mirrored {
                name: "go_tls_layout",
                fields: &[
                    "tcp_conn_itab",
                    "unix_conn_itab",
                    "conn",
                    "conn_fd",
                    "sysfd",
                ],
            },
        ],
        &[
            ("PHASE2_COMM_LEN", "usize"),
            ("PHASE2_DIR_READ", "u32"),
            ("PHASE2_DIR_WRITE", "u32"),
            ("PHASE2_TLS_OPAQUE", "u8"),
            ("P2_C_NR", "usize"),
        ],
    );
}
