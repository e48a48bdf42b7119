//! The protocol core: sans-IO sender and receiver state machines (see docs/PROTOCOL.md, "What
//! each side does"), and the simulated network that tests them.
//!
//! As in quinn-proto, nothing here touches a socket, a file or a clock. The I/O layer feeds each
//! core the packets it receives ([`Sender::handle_packet`], [`Receiver::handle_packet`]) and the
//! current time, asks it for packets to send (`poll_transmit`) and for the next instant it wants
//! to be woken (`poll_timeout`, then `handle_timeout`). File access goes through two traits:
//! [`ChunkSource`] (the sender reads chunks) and [`Storage`] (the receiver writes, verifies and
//! commits). Because of that split, [`sim`] can run whole transfers through lossy, reordering,
//! corrupting links in virtual time, in milliseconds.
//!
//! - [`sender`]: one outgoing file: offer, windowed and paced data, selective acks, RTO, the end.
//! - [`receiver`]: every incoming transfer of one receiver: offers, data, acks, completion.
//! - [`storage`]: the receiver's file interface, and [`MemStorage`] for tests.
//! - [`peer`]: who a packet came from (an address of either family, a UDP port or none).
//! - [`chunkset`]: the sparse set of chunk indices both sides keep (acked / received).
//! - [`cc`] and [`rtt`]: the sender's congestion controller and RTT estimator.
//! - [`sim`]: the deterministic simulated network, and the figures it measures.

pub mod cc;
pub mod chunkset;
pub mod peer;
pub mod receiver;
pub mod rtt;
pub mod sender;
pub mod sim;
pub mod storage;

#[cfg(test)]
mod tests;

pub use cc::{PathEstimate, ResumeOutcome};
pub use chunkset::ChunkSet;
pub use peer::Peer;
pub use receiver::{Event, Receiver, ReceiverConfig, ReceiverStats, Transmit, validate_name};
pub use sender::{ChunkSource, FileMeta, SendError, Sender, SenderConfig, SenderStats};
pub use storage::{HashCheck, MemStorage, OfferInfo, Opened, Refusal, Storage};

/// The wire's rules the cores use everywhere (defined with the format, in chunk-common).
pub use chunk_common::wire::{NO_ECHO, chunk_len};

/// The chunk size chunk uses unless told otherwise: a 1500-byte MTU minus the IPv4 header (20),
/// the chunk header (20) and headroom for IP options and tunnels (60).
pub const DEFAULT_CHUNK_SIZE: u32 = 1400;
