//! Generates the ops.v1 gRPC code at build time with a protoc taken from a pinned crate,
//! so that a fresh clone builds with `cargo build` alone.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Edition 2021: set_var is safe; the build script is single-threaded here.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=ops/v1/agent.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["ops/v1/agent.proto"], &["."])?;
    Ok(())
}
