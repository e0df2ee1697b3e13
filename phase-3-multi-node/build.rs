fn main() {
    println!("cargo:rerun-if-changed=proto/collector.proto");
    tonic_build::compile_protos("proto/collector.proto").unwrap_or_else(|e| {
        panic!("compiling proto/collector.proto ({e}); protoc comes with `bash scripts/setup.sh`")
    });
}
