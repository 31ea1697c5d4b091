//! Compiles the KMS plugin protos (v2 and v1beta1) with protox (pure Rust, no `protoc`) and
//! generates tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/v2/api.proto", "proto/v1beta1/api.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
