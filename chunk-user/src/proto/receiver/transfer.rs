//! One transfer as the receiver keeps it: while open, what was offered, where answers go, its
//! file, the chunks it holds and the acks it owes ([`Transfer`]); once finished, only what
//! repeating its verdict needs ([`Finished`]).

use std::net::IpAddr;
use std::time::Instant;

use chunk_common::wire::{CompleteRepr, HASH_LEN, OfferRepr};

use super::acks::AckState;
use crate::proto::{chunkset::ChunkSet, storage::OfferInfo};

/// An open transfer, and its figures for the `Finished` event.
#[derive(Debug)]
pub(super) struct Transfer<H> {
    pub info: OfferInfo,
    /// The local address the sender sends to: answers leave from it.
    pub local: Option<IpAddr>,
    pub started: Instant,
    /// The last valid packet from its sender (the idle timer and supersede start here).
    pub last_activity: Instant,
    /// Storage's handle on its part file.
    pub handle: H,
    pub received: ChunkSet,
    pub ack: AckState,
    /// The sender's whole-file hash, once its hash message has arrived: the verdict needs it
    /// and every chunk.
    pub expected: Option<[u8; HASH_LEN]>,
    pub chunks_received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub resumed: u64,
    /// A stream whose end is not known yet: what is known of it.
    pub stream_end: Option<super::stream::StreamEnd>,
    /// A bundle whose manifest storage has not read yet (it reads it once its chunks are all
    /// written, and fills in the members it already holds).
    pub manifest_pending: bool,
}

impl<H> Transfer<H> {
    /// Whether `offer` is this transfer's own offer again.
    pub fn is_offer(&self, offer: &OfferRepr<'_>) -> bool {
        let i = &self.info;
        same_offer((&i.name, i.size, i.chunk_size, &i.tag, i.stream), offer)
    }
}

/// A transfer whose chunks and hash are all in, while storage checks it and puts it in place
/// away from the receiver's loop ([`Storage::start_finish`](crate::proto::Storage)): what its
/// `Finished` event tells, and where its verdict goes. Its packets meanwhile are not answered:
/// the verdict is on its way.
#[derive(Debug)]
pub(super) struct Finishing {
    pub info: OfferInfo,
    pub local: Option<IpAddr>,
    pub started: Instant,
    pub chunks_received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub resumed: u64,
}

/// A finished transfer, verified or not: its verdict is kept `until` and repeated to late
/// packets (at most once per repeat interval since `last_sent`). Only what that needs is kept —
/// no file handle, hasher or buffers — since a tree of thousands of small files leaves
/// thousands of these behind within one linger time.
#[derive(Debug)]
pub(super) struct Finished {
    /// What a repeated offer must match (name, size, chunk size, tag).
    pub name: Box<str>,
    pub size: u64,
    pub chunk_size: u32,
    pub tag: [u8; HASH_LEN],
    pub chunk_count: u32,
    /// A stream (its offers say no size).
    pub stream: bool,
    /// The local address the sender sends to: answers leave from it.
    pub local: Option<IpAddr>,
    pub verdict: CompleteRepr,
    pub until: Instant,
    pub last_sent: Option<Instant>,
}

impl Finished {
    /// Whether `offer` is this transfer's own offer again.
    pub fn is_offer(&self, offer: &OfferRepr<'_>) -> bool {
        same_offer(
            (
                &self.name,
                self.size,
                self.chunk_size,
                &self.tag,
                self.stream,
            ),
            offer,
        )
    }
}

/// An offer repeated for a transfer id in use must be for the same file: same name, size,
/// chunk size and tag (a stream's offers say no size: a stream's again).
fn same_offer(
    (name, size, chunk_size, tag, stream): (&str, u64, u32, &[u8; HASH_LEN], bool),
    offer: &OfferRepr<'_>,
) -> bool {
    (if stream {
        offer.is_stream()
    } else {
        size == offer.file_size
    }) && chunk_size == offer.chunk_size
        && *tag == offer.tag
        && (if offer.name.is_empty() {
            // A bundle's: its name is made from its tag.
            name == super::bundle_name(&offer.tag)
        } else {
            name.as_bytes() == offer.name
        })
}
