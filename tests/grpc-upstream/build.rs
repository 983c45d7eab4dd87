fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so the fixture builds without a system protobuf compiler. prost-build
    // reads PROTOC; build scripts run single-threaded, so setting it here is sound.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&["proto/greet.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/greet.proto");
    Ok(())
}
