use shared::bpf_build::{compile, layout, Mirrored};

fn main() {
    compile("bpf/phase1.bpf.c", "phase1.bpf.o");
    layout(
        "bpf/phase1.h",
        &[Mirrored {
            name: "phase1_event",
            fields: &[
                "signature",
                "t_ns",
                "end",
                "tgid",
                "tid",
                "fd",
                "dir",
                "comm",
            ],
        }],
        &[("PHASE1_COMM_LEN", "usize"), ("PHASE1_DIR_WRITE", "u32")],
    );
}
