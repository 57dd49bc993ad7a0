//! avlm's wire protocol: the generated `avlm.v1` messages, the `Avlm` service
//! client and server, and the descriptor set for gRPC server reflection.

#![allow(clippy::large_enum_variant)]

pub mod codec;

/// Generated `avlm.v1` types.
pub mod v1 {
    tonic::include_proto!("avlm.v1");

    /// Encoded `FileDescriptorSet` of `avlm.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("avlm_descriptor");
}

pub use v1::*;
