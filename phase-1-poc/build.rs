fn main() {
    shared::bpf_build::compile("bpf/phase1.bpf.c", "phase1.bpf.o");
}
