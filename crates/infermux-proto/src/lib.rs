//! The `infermux.v1` protobuf messages and gRPC client/server stubs, generated at
//! build time from `proto/infermux/v1/infermux.proto` (see `build.rs`).

/// Generated code for package `infermux.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
    tonic::include_proto!("infermux.v1");
}

/// The encoded `FileDescriptorSet` of the proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/infermux_descriptor.bin"));

/// The fully qualified service name.
pub const SERVICE_NAME: &str = "infermux.v1.InferMuxService";
