//! Compiles the gRPC contract with protox (no external `protoc`) and generates its Rust
//! messages, client and server trait with tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/corral/v1/corral.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
