//! Generates the prost/tonic code for every `.proto` under `proto/` with the
//! vendored protoc, so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/metapb.proto",
        "proto/errorpb.proto",
        "proto/kvrpcpb.proto",
        "proto/raft_serverpb.proto",
        "proto/raft_cmdpb.proto",
        "proto/pdpb.proto",
        "proto/routerpb.proto",
        "proto/pd_raftpb.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
