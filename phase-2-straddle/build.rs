fn main() {
    shared::bpf_build::compile("bpf/phase2.bpf.c", "phase2.bpf.o");
}
