// Compiles the wire format with protox (a pure-Rust protobuf compiler), so that a
// fresh machine needs no `protoc` to build espan.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/espan/v1/espan.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
