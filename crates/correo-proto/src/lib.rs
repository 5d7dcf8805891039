//! # correo-proto — the contract between Correo's roles
//!
//! Generated from `proto/*.proto`; this crate is the only thing the roles
//! share about each other. Each service's proto comment says who serves it,
//! who calls it and what an OK promises.
//!
//! | module | service | served by | called by |
//! |---|---|---|---|
//! | [`queue`] | `Queue.Submit` | mta | msa |
//! | [`admin`] | `QueueAdmin` | mta | `mta queue …` |
//! | [`directory`] | `Directory` | mda | msa, mta |
//! | [`delivery`] | `Delivery.Deliver` | mda | mta |
//! | [`mailbox`] | `Mailbox` | mda | mua |
//! | [`journey`] | `Journey.Events` | msa, mta, mda | `correo journey …` |

/// `correo.queue.v1`: the MTA's intake.
pub mod queue {
    tonic::include_proto!("correo.queue.v1");
}

/// `correo.admin.v1`: queue inspection and control on an MTA.
pub mod admin {
    tonic::include_proto!("correo.admin.v1");
}

/// `correo.directory.v1`: accounts, aliases and domains.
pub mod directory {
    tonic::include_proto!("correo.directory.v1");
}

/// `correo.delivery.v1`: final delivery into Maildirs.
pub mod delivery {
    tonic::include_proto!("correo.delivery.v1");
}

/// `correo.mailbox.v1`: a user's mailbox for the MUA.
pub mod mailbox {
    tonic::include_proto!("correo.mailbox.v1");
}

/// `correo.journey.v1`: each role's record of the messages it handled.
pub mod journey {
    tonic::include_proto!("correo.journey.v1");
}

/// Encoded `FileDescriptorSet` of every Correo service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("correo_descriptor");

/// Metadata key that carries a message's journey id across gRPC hops.
pub const JOURNEY_METADATA_KEY: &str = "x-correo-journey";

/// Largest data chunk a role puts in one streamed message chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
