//! One transfer as the receiver keeps it: what was offered, where answers go, and its state —
//! open (its file, the chunks it holds, the acks it owes) or finished (the verdict it repeats).

use std::net::IpAddr;
use std::time::Instant;

use chunk_common::wire::{CompleteRepr, HASH_LEN};

use super::acks::AckState;
use crate::proto::{chunkset::ChunkSet, storage::OfferInfo};

/// An open transfer: storage's handle on its part file, the chunks it holds, the acks it owes.
#[derive(Debug)]
pub(super) struct Open<H> {
    pub handle: H,
    pub received: ChunkSet,
    pub ack: AckState,
    /// The sender's whole-file hash, once its hash message has arrived: the verdict needs it
    /// and every chunk.
    pub expected: Option<[u8; HASH_LEN]>,
}

#[derive(Debug)]
pub(super) enum State<H> {
    Open(Open<H>),
    /// Verified or not, the verdict is kept `until` and repeated to late packets (at most once
    /// per repeat interval since `last_sent`).
    Finished {
        verdict: CompleteRepr,
        until: Instant,
        last_sent: Option<Instant>,
    },
}

/// One transfer, open or finished, and its figures for the `Finished` event.
#[derive(Debug)]
pub(super) struct Transfer<H> {
    pub info: OfferInfo,
    /// The local address the sender sends to: answers leave from it.
    pub local: Option<IpAddr>,
    pub started: Instant,
    /// The last valid packet from its sender (the idle timer and supersede start here).
    pub last_activity: Instant,
    pub state: State<H>,
    pub chunks_received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub resumed: u64,
    /// A stream whose end is not known yet: what is known of it.
    pub stream_end: Option<super::stream::StreamEnd>,
}
