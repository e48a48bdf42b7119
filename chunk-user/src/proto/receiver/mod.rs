//! The receiver's state machine: every transfer arriving at one receiver (docs/PROTOCOL.md,
//! "Receiver").
//!
//! A transfer is keyed by (sender address, transfer id). An offer is checked (name, size, chunk
//! size, open transfers, then storage: space, existing file, partial copy) and refused with an
//! abort or accepted with an ack. Data is written through [`Storage`] at its offset as it arrives
//! (the core keeps no file data, only the set of received chunks), and acknowledged: every
//! `ack_every` chunks or `ack_delay` after the first unacknowledged one, and at once when a chunk
//! arrives out of order, is a duplicate, carries `ACK_NOW`, or is the last one missing. When every
//! chunk is in, storage verifies and commits the file and the verdict goes back as a complete
//! message, repeated to any later packet for `verdict_linger`.
//!
//! Cost per packet and per timer must not grow with the files received: a tree of thousands of
//! small files leaves thousands of finished transfers within one linger time. So open transfers
//! (at most `max_transfers`: the only ones the timers look at) and finished ones (a compact
//! verdict each, forgotten oldest first from a queue ordered by expiry) are kept apart, and the
//! open transfers of each source address are indexed for the per-source limit and supersede.
//!
//! How acks are kept and written is [`acks`].

mod acks;
mod stream;
mod transfer;

use std::collections::{HashMap, VecDeque, hash_map::Entry};
use std::io;
use std::net::IpAddr;

use super::Peer;
use std::time::{Duration, Instant};

use chunk_common::wire::{
    AbortReason, AbortRepr, AckRepr, CompleteRepr, CompleteStatus, HashAlg, HashRepr, Message,
    OfferRepr, Repr, flags,
};

use acks::AckState;
use stream::{StreamEnd, StreamError};
use transfer::{Finished, Finishing, Transfer};

use super::chunkset::{self, ChunkSet};
use super::storage::{HashCheck, OfferInfo, Storage};
use super::{NO_ECHO, chunk_len};

/// The longest abort message the receiver sends, in bytes (docs/PROTOCOL.md, Abort).
const MAX_ABORT_MESSAGE: usize = 512;
/// A finished transfer repeats its verdict at most this often, however many late packets come.
const VERDICT_REPEAT_INTERVAL: Duration = Duration::from_millis(10);

/// Receiver limits and timers; [`Default`] follows the protocol's defaults.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Largest file accepted (`too large` above).
    pub max_size: u64,
    /// Transfers open at once (`too many transfers` beyond).
    pub max_transfers: usize,
    /// Transfers open at once from one source address, so that one host cannot take every slot.
    pub max_per_source: usize,
    /// Largest chunk size accepted (`unsupported` above): what the receive buffers hold.
    pub max_chunk_size: u32,
    /// Acknowledge at least every this many chunks...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// A transfer silent this long is closed, its partial data kept for a resume.
    pub idle_timeout: Duration,
    /// How long a finished transfer's verdict is kept to repeat to late packets.
    pub verdict_linger: Duration,
    /// Aborts per second answering data for unknown transfers (a flood must not become one).
    pub unknown_aborts_per_sec: u32,
    /// Memory one transfer's bookkeeping of received chunks may take, in bytes. A sender that
    /// keeps to its window needs a few KiB; one that scatters chunks over a huge file to make
    /// the receiver allocate has its chunks dropped (`state_limited`) once this is reached, and
    /// resends them when the holes before them are filled.
    pub max_transfer_state: usize,
    /// An open transfer silent this long is replaced by an offer for the same name, but another
    /// file, from the same address under another transfer id: that sender crashed and its user
    /// runs it again with a corrected file. A transfer of another file that still hears its
    /// sender is never replaced. (An offer for the same file replaces it at once: that is the
    /// same sender restarted, and the new transfer resumes from the old one's data.)
    pub supersede_after: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            max_size: 1 << 40,
            max_transfers: 64,
            max_per_source: 16,
            max_chunk_size: 65_535 - chunk_common::wire::HEADER_LEN as u32,
            ack_every: 16,
            ack_delay: Duration::from_millis(5),
            idle_timeout: Duration::from_secs(60),
            verdict_linger: Duration::from_secs(60),
            unknown_aborts_per_sec: 20,
            max_transfer_state: 4 << 20,
            supersede_after: Duration::from_secs(1),
        }
    }
}

/// Something the I/O layer may want to log or show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An offer was accepted.
    Started {
        src: Peer,
        transfer_id: u32,
        name: String,
        size: u64,
        chunk_count: u32,
        /// Chunks storage already had (resume).
        resumed_chunks: u64,
        /// A stream: `size` and `chunk_count` are not known yet (0 and `UNKNOWN_COUNT`).
        stream: bool,
    },
    /// Every chunk arrived and storage checked the file.
    Finished {
        src: Peer,
        transfer_id: u32,
        name: String,
        size: u64,
        /// From the offer's acceptance to the verdict.
        duration: Duration,
        verified: bool,
        /// Chunks written in this session (resumed ones not counted).
        chunks_received: u64,
        /// Chunks that arrived again after they were written (retransmissions the sender made
        /// because an ack was late or lost, or network duplicates).
        duplicates: u64,
        /// Chunks that arrived out of index order (mostly retransmissions filling holes).
        out_of_order: u64,
        resumed_chunks: u64,
        /// The bundle it came in (its transfer's figures are told with its first file).
        bundle: Option<String>,
    },
    /// An offer was refused.
    Refused {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: AbortReason,
        message: String,
    },
    /// The receiver ended a transfer on a local error (an abort went to the sender).
    Failed {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: AbortReason,
        message: String,
    },
    /// The sender aborted the transfer.
    Cancelled {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: AbortReason,
        message: String,
    },
    /// An offer from the same sender for the same file (name, size, hash) under a new transfer
    /// id replaced an open transfer: the sender restarted. The old one was closed, its data kept
    /// for the new one to resume from.
    Superseded {
        src: Peer,
        old_transfer_id: u32,
        transfer_id: u32,
        name: String,
    },
    /// Nothing was heard for the idle time; the transfer was closed, its partial data kept.
    Idle {
        src: Peer,
        transfer_id: u32,
        name: String,
        chunks_have: u64,
        chunk_count: u32,
    },
}

/// A packet [`Receiver::poll_transmit`] wrote: where it goes, and from which local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: Peer,
    /// The address the peer sent its packets to (`None`: the receive path did not say; let
    /// the route choose).
    pub src: Option<IpAddr>,
    pub len: usize,
}

/// Counters over the receiver's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiverStats {
    pub offers_accepted: u64,
    pub offers_refused: u64,
    pub data_packets: u64,
    pub chunks_written: u64,
    pub duplicates: u64,
    /// Packets that parsed but make no sense (index past the end, wrong length, wrong direction).
    pub malformed: u64,
    /// Data for transfers the receiver does not know.
    pub unknown_transfer: u64,
    /// Unknown-transfer aborts not sent because of the rate limit.
    pub aborts_suppressed: u64,
    pub acks_sent: u64,
    pub completes_sent: u64,
    pub aborts_sent: u64,
    pub transfers_finished: u64,
    /// Files verified and in place: one per file, a bundle's members each.
    pub files_finished: u64,
    pub transfers_idle: u64,
    /// Data chunks dropped because their transfer reached `max_transfer_state`.
    pub state_limited: u64,
}

/// A transfer is named by its sender's address and its transfer id.
type TransferKey = (Peer, u32);

/// A message that is not an ack, waiting for `poll_transmit`.
#[derive(Debug)]
enum Outgoing {
    Abort {
        transfer_id: u32,
        reason: AbortReason,
        message: String,
    },
    Complete {
        transfer_id: u32,
        chunk_count: u32,
        verdict: CompleteRepr,
    },
    /// An ack of every chunk: the answer to an offer whose file is already all here (an empty
    /// file, or a resume that had it all), sent before the complete message, so that a sender
    /// waiting for an ack to its offer hears one.
    AckAll { transfer_id: u32, chunk_count: u32 },
}

/// The receiving side: all transfers to one receiver.
pub struct Receiver<S: Storage> {
    cfg: ReceiverConfig,
    /// Open transfers (at most `max_transfers`).
    transfers: HashMap<TransferKey, Transfer<S::Handle>>,
    /// The open transfers of each source address (by address: a host's UDP ports share its
    /// per-source limit). No entry for a source with none open.
    by_source: HashMap<IpAddr, Vec<TransferKey>>,
    /// Finished transfers, repeating their verdicts until they expire...
    finished: HashMap<TransferKey, Finished>,
    /// ...in the order they expire (every verdict lingers as long, and time only goes
    /// forward): the front is the next to forget.
    expiry: VecDeque<(Instant, TransferKey)>,
    /// Transfers storage is putting in place (see [`Storage::start_finish`]), and the ticket
    /// each goes by there.
    finishing: HashMap<TransferKey, Finishing>,
    tickets: HashMap<u64, TransferKey>,
    next_ticket: u64,
    /// Transfers with an ack to send now.
    ready: VecDeque<TransferKey>,
    out: VecDeque<(Transmit, Outgoing)>,
    /// The local address of the packet being handled: where answers to it come from.
    answering_local: Option<IpAddr>,
    events: VecDeque<Event>,
    /// Token bucket for unknown-transfer aborts.
    abort_tokens: f64,
    abort_tokens_at: Option<Instant>,
    stats: ReceiverStats,
}

impl<S: Storage> Receiver<S> {
    pub fn new(cfg: ReceiverConfig) -> Self {
        Self {
            cfg,
            transfers: HashMap::new(),
            by_source: HashMap::new(),
            finished: HashMap::new(),
            expiry: VecDeque::new(),
            finishing: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            ready: VecDeque::new(),
            out: VecDeque::new(),
            answering_local: None,
            events: VecDeque::new(),
            abort_tokens: 0.0,
            abort_tokens_at: None,
            stats: ReceiverStats::default(),
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats.clone()
    }

    /// Transfers receiving now.
    pub fn open_transfers(&self) -> usize {
        self.transfers.len()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Feeds one packet from `src`, sent to the local address `local` when the receive path
    /// knows it (already checksum-checked and parsed), handled as it arrives. Answers leave from
    /// `local`.
    pub fn handle_packet(
        &mut self,
        src: Peer,
        local: Option<IpAddr>,
        repr: &Repr<'_>,
        now: Instant,
        storage: &mut S,
    ) {
        self.handle_arrived(src, local, repr, now, now, storage)
    }

    /// [`handle_packet`](Self::handle_packet) for a packet that reached the host at `arrived`,
    /// before `now`, when it is handled (it waited while the receiver did something else:
    /// opened a file, slept): an ack's delay counts from the arrival of the packet it echoes
    /// (docs/PROTOCOL.md, "Ack"), so that the sender's round-trip samples and its reading of
    /// the first round's spacing are the path's, not this receiver's pauses.
    pub fn handle_arrived(
        &mut self,
        src: Peer,
        local: Option<IpAddr>,
        repr: &Repr<'_>,
        arrived: Instant,
        now: Instant,
        storage: &mut S,
    ) {
        let arrived = arrived.min(now);
        let key = (src, repr.transfer_id);
        self.answering_local = local;
        // The sender's latest choice of our address is where it listens for us.
        if let Some(t) = self.transfers.get_mut(&key) {
            t.local = local;
        } else if let Some(f) = self.finished.get_mut(&key) {
            f.local = local;
        } else if let Some(f) = self.finishing.get_mut(&key) {
            // Its verdict is on its way: nothing else to say (late data is a duplicate).
            f.local = local;
            if matches!(repr.message, Message::Data { .. }) {
                self.stats.data_packets += 1;
                self.stats.duplicates += 1;
                f.duplicates += 1;
            }
            return;
        }
        match repr.message {
            Message::Offer(offer) => {
                use chunk_common::wire::flags;
                let directory = repr.flags & flags::DIRECTORY != 0;
                let symlink = repr.flags & flags::SYMLINK != 0;
                let stream = repr.flags & flags::STREAM != 0;
                let bundle = repr.flags & flags::BUNDLE != 0;
                // A directory holds no bytes, a link 1 to 4095 (its target), a stream says
                // neither size nor count (and only a stream may), a bundle has no name and at
                // least its manifest's header: any other offer so flagged is malformed.
                if (directory && (symlink || offer.file_size != 0))
                    || (symlink && !(1..=flags::MAX_LINK_TARGET).contains(&offer.file_size))
                    || stream != offer.is_stream()
                    || (stream && (directory || symlink))
                    || (bundle
                        && (directory
                            || symlink
                            || stream
                            || !offer.name.is_empty()
                            || offer.file_size < chunk_common::bundle::HEADER_LEN as u64))
                {
                    self.stats.malformed += 1;
                    return;
                }
                let kind = (directory, symlink, stream, bundle);
                self.on_offer(key, &offer, kind, now, storage)
            }
            Message::Data { payload } => {
                let packet = (repr.seq, repr.flags, arrived);
                self.on_data(key, packet, payload, now, storage)
            }
            Message::Abort(abort) => self.on_abort(key, &abort, storage),
            Message::Hash(hash) => self.on_hash(key, repr.seq, &hash, now, storage),
            Message::Ack(_) | Message::Complete(_) => self.stats.malformed += 1,
        }
    }

    /// The next packet to send, written into `buf` (at least `HEADER_LEN + 12 + 1024` bytes, the
    /// largest ack): where it goes, the local address it must leave from, and its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((mut t, out)) = self.out.pop_front() {
            t.len = self.emit_outgoing(out, buf);
            return Some(t);
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(t) = self.transfers.get_mut(&key) else {
                continue;
            };
            let len = t.ack.emit(
                key,
                t.info.chunk_count,
                &t.received,
                now,
                buf,
                &mut self.ready,
            );
            self.stats.acks_sent += 1;
            return Some(Transmit {
                dst: key.0,
                src: t.local,
                len,
            });
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run: the earliest of the open
    /// transfers' delayed acks and idle timers (at most `max_transfers` of them), and the next
    /// verdict to forget (the front of its queue), however many transfers have finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let open = self.transfers.values().map(|t| {
            let idle = t.last_activity + self.cfg.idle_timeout;
            t.ack.due().map_or(idle, |d| d.min(idle))
        });
        let forget = self.expiry.front().map(|&(at, _)| at);
        open.chain(forget).min()
    }

    /// Delayed acks, idle transfers, expired verdicts.
    pub fn handle_timeout(&mut self, now: Instant, storage: &mut S) {
        let mut idle = Vec::new();
        for (&key, t) in &mut self.transfers {
            if now >= t.last_activity + self.cfg.idle_timeout {
                idle.push(key);
            } else {
                t.ack.on_timer(now, key, &mut self.ready);
            }
        }
        while let Some(&(at, key)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            // Each finished transfer has one entry here; the check only guards its removal
            // against a caller whose clock went back.
            if self.finished.get(&key).is_some_and(|f| f.until <= now) {
                self.finished.remove(&key);
            }
        }
        for key in idle {
            let Some((info, chunks_have)) = self.close(key, storage) else {
                continue;
            };
            self.stats.transfers_idle += 1;
            self.events.push_back(Event::Idle {
                src: key.0,
                transfer_id: key.1,
                name: info.name,
                chunks_have,
                chunk_count: info.chunk_count,
            });
        }
    }

    /// A new open transfer: it takes a slot, and one of its source's.
    fn insert_open(&mut self, key: TransferKey, t: Transfer<S::Handle>) {
        self.by_source.entry(key.0.addr()).or_default().push(key);
        self.transfers.insert(key, t);
    }

    /// Takes open transfer `key` out, freeing its slot and its source's.
    fn remove_open(&mut self, key: TransferKey) -> Option<Transfer<S::Handle>> {
        let t = self.transfers.remove(&key)?;
        if let Entry::Occupied(mut e) = self.by_source.entry(key.0.addr()) {
            e.get_mut().retain(|&k| k != key);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Some(t)
    }

    /// Closes open transfer `key` and hands its file back to storage, partial data kept for a
    /// resume. Returns its offer and the chunks it held (`None` if it was not open).
    fn close(&mut self, key: TransferKey, storage: &mut S) -> Option<(OfferInfo, u64)> {
        let t = self.remove_open(key)?;
        let have = t.received.len();
        storage.abandon(t.handle, true);
        Some((t.info, have))
    }

    /// Closes every open transfer, keeping partial data, and forgets the finished ones (for a
    /// clean shutdown).
    pub fn close_all(&mut self, now: Instant, storage: &mut S) {
        // What storage is putting in place ends first: told, as it would have been.
        for (ticket, result) in storage.wait_finished() {
            self.finished_later(ticket, result, now);
        }
        for (_, t) in self.transfers.drain() {
            storage.abandon(t.handle, true);
        }
        self.by_source.clear();
        self.finished.clear();
        self.expiry.clear();
        self.ready.clear();
    }

    fn on_offer(
        &mut self,
        key: TransferKey,
        offer: &OfferRepr<'_>,
        (directory, symlink, stream, bundle): (bool, bool, bool, bool),
        now: Instant,
        storage: &mut S,
    ) {
        const ID_IN_USE: &str = "transfer id already in use for another file";
        if let Some(t) = self.transfers.get_mut(&key) {
            if !t.is_offer(offer) {
                let name = t.info.name.clone();
                self.refuse(key, name, AbortReason::Unsupported, ID_IN_USE.into());
                return;
            }
            t.last_activity = now;
            // The sender has not heard our ack: a fresh one.
            t.ack.on_repeated_offer(key, &mut self.ready);
            return;
        }
        if let Some(f) = self.finished.get(&key) {
            if !f.is_offer(offer) {
                let name = f.name.to_string();
                self.refuse(key, name, AbortReason::Unsupported, ID_IN_USE.into());
                return;
            }
            // The sender may not have heard our first answer: say "all acknowledged" again,
            // then the verdict.
            let chunk_count = f.chunk_count;
            self.push_out(
                key,
                Outgoing::AckAll {
                    transfer_id: key.1,
                    chunk_count,
                },
            );
            self.repeat_verdict(key, now, true);
            return;
        }

        let name = match validate_name(offer.name) {
            _ if bundle => bundle_name(&offer.tag),
            Ok(name) => name.to_owned(),
            Err(why) => {
                let shown = String::from_utf8_lossy(offer.name).into_owned();
                self.refuse(key, shown, AbortReason::BadName, why.into());
                return;
            }
        };
        // What the offer itself gets wrong is refused before anything else is touched; then an
        // older transfer of this name may give way (it frees a slot); then the slots.
        let check = if let HashAlg::Other(code) = offer.hash_alg {
            Err((
                AbortReason::Unsupported,
                format!("hash algorithm {code} (this receiver knows 1, BLAKE3)"),
            ))
        } else if offer.chunk_size > self.cfg.max_chunk_size {
            Err((
                AbortReason::Unsupported,
                format!("chunk size above {}", self.cfg.max_chunk_size),
            ))
        } else if offer.file_size > self.cfg.max_size {
            Err((
                AbortReason::TooLarge,
                format!("limit is {} bytes", self.cfg.max_size),
            ))
        } else if bundle && offer.file_size > MAX_BUNDLE {
            Err((
                AbortReason::TooLarge,
                format!("a bundle of {MAX_BUNDLE} bytes at most"),
            ))
        } else {
            Ok(())
        };
        if let Err((reason, message)) = check {
            self.refuse(key, name, reason, message);
            return;
        }
        self.supersede(key, &name, offer, now, storage);
        let check = if self.transfers.len() >= self.cfg.max_transfers {
            Err((
                AbortReason::TooManyTransfers,
                format!("{} open", self.transfers.len()),
            ))
        } else if self.open_from(key.0.addr()) >= self.cfg.max_per_source
            && !self.reclaim_silent(key, now, storage)
        {
            Err((
                AbortReason::TooManyTransfers,
                format!("{} open from {}", self.cfg.max_per_source, key.0),
            ))
        } else {
            Ok(())
        };
        if let Err((reason, message)) = check {
            self.refuse(key, name, reason, message);
            return;
        }
        let info = OfferInfo {
            src: key.0,
            transfer_id: key.1,
            name,
            size: offer.file_size,
            chunk_size: offer.chunk_size,
            chunk_count: offer.chunk_count,
            mode: offer.mode,
            mtime: offer.mtime,
            tag: offer.tag,
            directory,
            symlink,
            stream,
            bundle,
        };
        let opened = match storage.open(&info) {
            Ok(opened) => opened,
            Err(refusal) => {
                self.refuse(key, info.name, refusal.reason, refusal.message);
                return;
            }
        };
        let mut received = opened.already_have.unwrap_or_default();
        if received.last().is_some_and(|l| l >= info.chunk_count) {
            // Storage's record does not fit this file: receive everything again.
            received = ChunkSet::new();
        }
        if stream {
            // A stream is never resumed: its sender cannot send its beginning again.
            received = ChunkSet::new();
        }
        let resumed = received.len();
        self.stats.offers_accepted += 1;
        self.events.push_back(Event::Started {
            src: key.0,
            transfer_id: key.1,
            name: info.name.clone(),
            size: info.size,
            chunk_count: info.chunk_count,
            resumed_chunks: resumed,
            stream,
        });
        let complete = !stream && resumed == info.chunk_count as u64;
        let info_count = info.chunk_count;
        let mut ack = AckState::new(now);
        if !complete {
            ack.queue(key, &mut self.ready);
        }
        self.insert_open(
            key,
            Transfer {
                info,
                local: self.answering_local,
                started: now,
                last_activity: now,
                handle: opened.handle,
                received,
                ack,
                expected: None,
                chunks_received: 0,
                duplicates: 0,
                out_of_order: 0,
                resumed,
                stream_end: stream.then(StreamEnd::default),
                manifest_pending: bundle,
            },
        );
        if complete {
            // Nothing to receive (an empty file, or a resume that had it all): an ack of
            // everything answers the offer; the verdict follows the sender's hash.
            self.push_out(
                key,
                Outgoing::AckAll {
                    transfer_id: key.1,
                    chunk_count: info_count,
                },
            );
        }
    }

    /// Closes an open transfer for the same name from the same sender under another id, so the
    /// new offer can go ahead: at once when it is the same file (the sender restarted and lost
    /// the id; the new transfer resumes from the old one's data), and for another file once
    /// the old transfer has been silent for `supersede_after` (its sender died, and the user
    /// sends a corrected file). A live transfer for another file keeps its name.
    fn supersede(
        &mut self,
        key: TransferKey,
        name: &str,
        offer: &OfferRepr<'_>,
        now: Instant,
        storage: &mut S,
    ) {
        let after = self.cfg.supersede_after;
        // By address: a restarted sender in UDP comes from a new port.
        let from_source = self.by_source.get(&key.0.addr()).into_iter().flatten();
        let old = from_source.copied().find(|k| {
            let Some(t) = self.transfers.get(k) else {
                return false;
            };
            let same_file = t.info.size == offer.file_size && t.info.tag == offer.tag;
            let silent = now.saturating_duration_since(t.last_activity) >= after;
            t.info.name == name && (same_file || silent)
        });
        let Some((info, _)) = old.and_then(|old| self.close(old, storage)) else {
            return;
        };
        self.events.push_back(Event::Superseded {
            src: key.0,
            old_transfer_id: info.transfer_id,
            transfer_id: key.1,
            name: info.name,
        });
    }

    /// The sender at `key`'s address has its share of open transfers: the one of them silent
    /// the longest, if silent for `supersede_after`, gives way (its sender died or restarted;
    /// its data is kept). Whether one did.
    fn reclaim_silent(&mut self, key: TransferKey, now: Instant, storage: &mut S) -> bool {
        let after = self.cfg.supersede_after;
        let from_source = self.by_source.get(&key.0.addr()).into_iter().flatten();
        let old = from_source
            .filter_map(|k| self.transfers.get(k).map(|t| (*k, t.last_activity)))
            .filter(|(_, heard)| now.saturating_duration_since(*heard) >= after)
            .min_by_key(|(_, heard)| *heard)
            .map(|(k, _)| k);
        let Some((info, _)) = old.and_then(|old| self.close(old, storage)) else {
            return false;
        };
        self.events.push_back(Event::Superseded {
            src: key.0,
            old_transfer_id: info.transfer_id,
            transfer_id: key.1,
            name: info.name,
        });
        true
    }

    /// A data packet for chunk `index`, with its flags, that reached the host at `arrived`.
    fn on_data(
        &mut self,
        key: TransferKey,
        (index, packet_flags, arrived): (u32, u16, Instant),
        payload: &[u8],
        now: Instant,
        storage: &mut S,
    ) {
        self.stats.data_packets += 1;
        let Some(t) = self.transfers.get_mut(&key) else {
            self.not_open(key, now, false);
            return;
        };
        if let Some(end) = &mut t.stream_end {
            let more = packet_flags & flags::MORE_CHUNKS != 0;
            let max = self.cfg.max_size;
            let got = (index, more, payload.len());
            match end.on_chunk(t.info.chunk_size, got, t.received.last(), max) {
                Ok(()) => {}
                Err(StreamError::Malformed) => {
                    self.stats.malformed += 1;
                    return;
                }
                Err(StreamError::TooLarge) => {
                    let message = format!("the stream passed the limit of {max} bytes");
                    self.fail(key, AbortReason::TooLarge, message, storage);
                    return;
                }
            }
            if !self.learn_stream_end(key, storage) {
                return;
            }
        }
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        let info = &t.info;
        // A stream before its end is known: `StreamEnd` checked the length.
        let fits = t.stream_end.is_some()
            || (index < info.chunk_count
                && payload.len() == chunk_len(info.size, info.chunk_size, index));
        if !fits {
            // Not a sign of life: a malformed packet does not keep a transfer open.
            self.stats.malformed += 1;
            return;
        }
        t.last_activity = now;
        let ack_now = packet_flags & flags::ACK_NOW != 0;
        if t.received.contains(index) {
            // The sender resent it, so it has not seen our ack: answer at once.
            t.duplicates += 1;
            self.stats.duplicates += 1;
            t.ack.on_arrival(index, arrived);
            t.ack.queue(key, &mut self.ready);
            return;
        }
        if t.received.would_grow(index)
            && (t.received.pages() + 1) * chunkset::PAGE_COST > self.cfg.max_transfer_state
        {
            self.stats.state_limited += 1;
            return;
        }
        let offset = index as u64 * info.chunk_size as u64;
        if let Err(e) = storage.write(&mut t.handle, index, offset, payload) {
            // A stream has no room set aside: the disk may fill up under it.
            let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
                AbortReason::NoSpace
            } else {
                AbortReason::Io
            };
            self.fail(key, reason, format!("writing chunk {index}: {e}"), storage);
            return;
        }
        self.stats.chunks_written += 1;
        t.chunks_received += 1;
        // In order: right after the highest chunk so far. Anything else opens or fills a hole,
        // which the sender should hear about at once.
        let next = t.received.last().map_or(0, |l| l as u64 + 1);
        let in_order = index as u64 == next;
        t.received.insert(index);
        if !in_order {
            t.out_of_order += 1;
        }
        t.ack.on_arrival(index, arrived);
        let mut ack_now = ack_now;
        if t.manifest_pending {
            match storage.read_manifest(&mut t.handle) {
                Ok(None) => {}
                Ok(Some(had)) => {
                    t.manifest_pending = false;
                    for i in had {
                        if i < t.info.chunk_count && !t.received.contains(i) {
                            t.received.insert(i);
                            t.resumed += 1;
                        }
                    }
                    // Its sender waits for this answer before the members' chunks.
                    ack_now = true;
                }
                Err(e) => {
                    let (reason, message) = abort_for(&e, "reading the bundle's manifest");
                    self.fail(key, reason, message, storage);
                    return;
                }
            }
        }
        if t.received.len() == t.info.chunk_count as u64 {
            if t.expected.is_some() {
                self.finish(key, now, storage);
            } else {
                // Everything is here but the sender's hash: say so at once.
                t.ack.queue(key, &mut self.ready);
            }
            return;
        }
        let enough = t.ack.count_in_order(self.cfg.ack_every);
        if !in_order || ack_now || enough {
            t.ack.queue(key, &mut self.ready);
        } else {
            t.ack.arm(now + self.cfg.ack_delay);
        }
    }

    /// The sender's whole-file hash: kept (the first one; the sender's hash of its file cannot
    /// change), and the verdict follows as soon as every chunk is in too. A finished transfer
    /// repeats its verdict; a hash for a transfer we do not know gets the same answer as data.
    fn on_hash(
        &mut self,
        key: TransferKey,
        seq: u32,
        hash: &HashRepr,
        now: Instant,
        storage: &mut S,
    ) {
        let Some(t) = self.transfers.get_mut(&key) else {
            // A hash message is its sender asking for the verdict (a closing probe): answered
            // at once, as a repeated offer is; late data only as often as the rate limit lets.
            self.not_open(key, now, true);
            return;
        };
        if let Some(end) = &mut t.stream_end {
            let cs = t.info.chunk_size;
            if hash.alg != HashAlg::Blake3 || end.on_hash(seq, t.received.last(), cs).is_err() {
                self.stats.malformed += 1;
                return;
            }
            if !self.learn_stream_end(key, storage) {
                return;
            }
            // A stream's hash is kept even while its size waits for the last chunk (a sender
            // sends its hash as soon as it has it, ahead of chunks not yet sent).
        } else if seq != t.info.chunk_count || hash.alg != HashAlg::Blake3 {
            self.stats.malformed += 1;
            return;
        }
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        t.last_activity = now;
        t.expected.get_or_insert(hash.hash);
        if t.received.len() == t.info.chunk_count as u64 {
            self.finish(key, now, storage);
        }
    }

    /// Once a stream's count and size are both known, it is a file of that size: its offer's
    /// record and storage's say so, and the ordinary checks and verdict apply from then on.
    /// Whether the transfer goes on (storage refusing the end fails it).
    fn learn_stream_end(&mut self, key: TransferKey, storage: &mut S) -> bool {
        let Some(t) = self.transfers.get_mut(&key) else {
            return false;
        };
        let Some((count, size)) = t.stream_end.and_then(|e| e.known()) else {
            return true;
        };
        if let Err(e) = storage.end_stream(&mut t.handle, size, count) {
            let message = format!("ending the stream: {e}");
            self.fail(key, AbortReason::Io, message, storage);
            return false;
        }
        t.info.size = size;
        t.info.chunk_count = count;
        t.stream_end = None;
        true
    }

    fn on_abort(&mut self, key: TransferKey, abort: &AbortRepr<'_>, storage: &mut S) {
        // A finished transfer keeps its verdict for late packets; only an open one is closed.
        let Some((info, _)) = self.close(key, storage) else {
            return;
        };
        self.events.push_back(Event::Cancelled {
            src: key.0,
            transfer_id: key.1,
            name: info.name,
            reason: abort.reason,
            message: String::from_utf8_lossy(abort.message).into_owned(),
        });
    }

    /// Every chunk is in: storage checks and commits (at once, or later: see
    /// [`poll_storage`](Self::poll_storage)), and the verdict goes to the sender.
    fn finish(&mut self, key: TransferKey, now: Instant, storage: &mut S) {
        let Some(t) = self.remove_open(key) else {
            return;
        };
        let expected = t
            .expected
            .expect("finish runs once the sender's hash is known");
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let f = Finishing {
            info: t.info,
            local: t.local,
            started: t.started,
            chunks_received: t.chunks_received,
            duplicates: t.duplicates,
            out_of_order: t.out_of_order,
            resumed: t.resumed,
        };
        match storage.start_finish(t.handle, &expected, ticket) {
            Some(result) => self.complete(key, f, result, now),
            None => {
                self.tickets.insert(ticket, key);
                self.finishing.insert(key, f);
            }
        }
    }

    /// Takes in the finishes storage has ended since (see [`Storage::start_finish`]): their
    /// events, and their verdicts to send. The driver calls it when storage says one ended.
    pub fn poll_storage(&mut self, now: Instant, storage: &mut S) {
        while let Some((ticket, result)) = storage.poll_finished() {
            self.finished_later(ticket, result, now);
        }
    }

    /// Transfers storage is checking and putting in place now.
    pub fn finishing(&self) -> usize {
        self.finishing.len()
    }

    fn finished_later(&mut self, ticket: u64, result: io::Result<HashCheck>, now: Instant) {
        let Some(key) = self.tickets.remove(&ticket) else {
            return;
        };
        if let Some(f) = self.finishing.remove(&key) {
            self.complete(key, f, result, now);
        }
    }

    /// Storage's verdict on transfer `key`: told as an event, kept to repeat, and sent.
    fn complete(
        &mut self,
        key: TransferKey,
        t: Finishing,
        result: io::Result<HashCheck>,
        now: Instant,
    ) {
        let verdict = match result {
            Ok(v) => v,
            Err(e) => {
                let (reason, message) = abort_for(&e, "finishing the file");
                self.events.push_back(Event::Failed {
                    src: key.0,
                    transfer_id: key.1,
                    name: t.info.name,
                    reason,
                    message: message.clone(),
                });
                self.send_abort_from(key, t.local, reason, message);
                return;
            }
        };
        let complete = CompleteRepr {
            status: if verdict.verified {
                CompleteStatus::Verified
            } else {
                CompleteStatus::HashMismatch
            },
            hash: verdict.hash,
        };
        let until = now + self.cfg.verdict_linger;
        self.finished.insert(
            key,
            Finished {
                name: t.info.name.as_str().into(),
                size: t.info.size,
                chunk_size: t.info.chunk_size,
                tag: t.info.tag,
                chunk_count: t.info.chunk_count,
                stream: t.info.stream,
                local: t.local,
                verdict: complete,
                until,
                last_sent: Some(now),
            },
        );
        self.expiry.push_back((until, key));
        self.stats.transfers_finished += 1;
        let duration = now.saturating_duration_since(t.started);
        if verdict.members.is_empty() || !verdict.verified {
            if verdict.verified {
                self.stats.files_finished += 1;
            }
            self.events.push_back(Event::Finished {
                src: key.0,
                transfer_id: key.1,
                name: t.info.name,
                size: t.info.size,
                duration,
                verified: verdict.verified,
                chunks_received: t.chunks_received,
                duplicates: t.duplicates,
                out_of_order: t.out_of_order,
                resumed_chunks: t.resumed,
                bundle: None,
            });
        } else {
            // A bundle: each of its files, as a file of its own would be told (the transfer's
            // figures with the first).
            self.stats.files_finished += verdict.members.len() as u64;
            let mut figures = Some((t.chunks_received, t.duplicates, t.out_of_order, t.resumed));
            for (name, size) in verdict.members {
                let (chunks_received, duplicates, out_of_order, resumed_chunks) =
                    figures.take().unwrap_or_default();
                self.events.push_back(Event::Finished {
                    src: key.0,
                    transfer_id: key.1,
                    name,
                    size,
                    duration,
                    verified: true,
                    chunks_received,
                    duplicates,
                    out_of_order,
                    resumed_chunks,
                    bundle: Some(t.info.name.clone()),
                });
            }
        }
        let chunk_count = t.info.chunk_count;
        self.push_out(
            key,
            Outgoing::Complete {
                transfer_id: key.1,
                chunk_count,
                verdict: complete,
            },
        );
    }

    /// Sends a finished transfer's verdict again (rate-limited unless `force`).
    fn repeat_verdict(&mut self, key: TransferKey, now: Instant, force: bool) {
        let Some(f) = self.finished.get_mut(&key) else {
            return;
        };
        let recent = f
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < VERDICT_REPEAT_INTERVAL);
        if recent && !force {
            return;
        }
        f.last_sent = Some(now);
        let (chunk_count, verdict) = (f.chunk_count, f.verdict);
        self.push_out(
            key,
            Outgoing::Complete {
                transfer_id: key.1,
                chunk_count,
                verdict,
            },
        );
    }

    /// Data or a hash for a transfer that is not open: a finished one repeats its verdict (at
    /// once if `at_once`, else rate-limited), an unknown one is told so.
    fn not_open(&mut self, key: TransferKey, now: Instant, at_once: bool) {
        if self.finished.contains_key(&key) {
            self.repeat_verdict(key, now, at_once);
        } else {
            self.stats.unknown_transfer += 1;
            self.unknown_transfer(key, now);
        }
    }

    /// Data for a transfer we do not know: an abort, if the rate limit allows.
    fn unknown_transfer(&mut self, key: TransferKey, now: Instant) {
        let rate = self.cfg.unknown_aborts_per_sec.max(1) as f64;
        let elapsed = self.abort_tokens_at.map_or(rate, |t| {
            now.saturating_duration_since(t).as_secs_f64() * rate
        });
        self.abort_tokens = (self.abort_tokens + elapsed).min(rate);
        self.abort_tokens_at = Some(now);
        if self.abort_tokens < 1.0 {
            self.stats.aborts_suppressed += 1;
            return;
        }
        self.abort_tokens -= 1.0;
        self.send_abort(key, AbortReason::UnknownTransfer, String::new());
    }

    /// Open transfers from the host `src`: by address, so that a host's UDP ports do not each
    /// get the per-source limit.
    fn open_from(&self, src: IpAddr) -> usize {
        self.by_source.get(&src).map_or(0, Vec::len)
    }

    fn refuse(&mut self, key: TransferKey, name: String, reason: AbortReason, message: String) {
        self.stats.offers_refused += 1;
        self.events.push_back(Event::Refused {
            src: key.0,
            transfer_id: key.1,
            name,
            reason,
            message: message.clone(),
        });
        self.send_abort(key, reason, message);
    }

    /// Ends an open transfer on a local error, keeping its partial data.
    fn fail(&mut self, key: TransferKey, reason: AbortReason, message: String, storage: &mut S) {
        let Some((info, _)) = self.close(key, storage) else {
            return;
        };
        self.events.push_back(Event::Failed {
            src: key.0,
            transfer_id: key.1,
            name: info.name,
            reason,
            message: message.clone(),
        });
        self.send_abort(key, reason, message);
    }

    fn send_abort(&mut self, key: TransferKey, reason: AbortReason, message: String) {
        self.push_out(
            key,
            Outgoing::Abort {
                transfer_id: key.1,
                reason,
                message,
            },
        );
    }

    /// An abort for a transfer no longer open, answered from `local`, the address its sender
    /// last sent to (`None`: the address of the packet being handled).
    fn send_abort_from(
        &mut self,
        key: TransferKey,
        local: Option<IpAddr>,
        reason: AbortReason,
        message: String,
    ) {
        self.out.push_back((
            Transmit {
                dst: key.0,
                src: local.or(self.answering_local),
                len: 0,
            },
            Outgoing::Abort {
                transfer_id: key.1,
                reason,
                message,
            },
        ));
    }

    fn emit_outgoing(&mut self, out: Outgoing, buf: &mut [u8]) -> usize {
        let repr = match &out {
            Outgoing::Abort {
                transfer_id,
                reason,
                message,
            } => {
                self.stats.aborts_sent += 1;
                // Keep the message within one packet whatever storage wrote in it, cut
                // between characters.
                let mut end = message.len().min(MAX_ABORT_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                let text = &message.as_bytes()[..end];
                Repr {
                    transfer_id: *transfer_id,
                    seq: 0,
                    flags: 0,
                    message: Message::Abort(AbortRepr {
                        reason: *reason,
                        message: text,
                    }),
                }
            }
            Outgoing::AckAll {
                transfer_id,
                chunk_count,
            } => {
                self.stats.acks_sent += 1;
                Repr {
                    transfer_id: *transfer_id,
                    seq: *chunk_count,
                    flags: 0,
                    message: Message::Ack(AckRepr {
                        cumulative: *chunk_count,
                        echo: NO_ECHO,
                        delay_us: 0,
                        base: *chunk_count,
                        bitmap: &[],
                    }),
                }
            }
            Outgoing::Complete {
                transfer_id,
                chunk_count,
                verdict,
            } => {
                self.stats.completes_sent += 1;
                Repr {
                    transfer_id: *transfer_id,
                    seq: *chunk_count,
                    flags: 0,
                    message: Message::Complete(*verdict),
                }
            }
        };
        repr.emit(buf)
            .expect("receiver buffer holds any control packet")
    }

    /// Queues a control packet for the peer of `key`, from the local address its transfer (or
    /// else the packet being answered) was sent to.
    fn push_out(&mut self, key: TransferKey, out: Outgoing) {
        let src = match (self.transfers.get(&key), self.finished.get(&key)) {
            (Some(t), _) => t.local,
            (None, Some(f)) => f.local,
            (None, None) => self.answering_local,
        };
        self.out.push_back((
            Transmit {
                dst: key.0,
                src,
                len: 0,
            },
            out,
        ));
    }
}

/// The largest bundle a receiver takes (docs/PROTOCOL.md, "Bundles"): it is read whole into
/// memory at its verdict. chunk's sender makes bundles of 1 MiB at most.
pub const MAX_BUNDLE: u64 = 16 << 20;

/// The abort for a storage error: a file already there under the name, with other contents,
/// is `exists`; a name (a link's target, a bundle member's) that would leave the receiver's
/// directory `bad name`; a bundle whose manifest is not one `unsupported`; the rest `I/O error`,
/// said with what was being done.
fn abort_for(e: &std::io::Error, doing: &str) -> (AbortReason, String) {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists => (AbortReason::Exists, e.to_string()),
        std::io::ErrorKind::InvalidInput => (AbortReason::BadName, e.to_string()),
        std::io::ErrorKind::InvalidData => (AbortReason::Unsupported, e.to_string()),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            (AbortReason::NoSpace, format!("{doing}: {e}"))
        }
        _ => (AbortReason::Io, format!("{doing}: {e}")),
    }
}

/// The name a bundle's transfer goes by (its offer has none): made from its tag, so that the
/// same bundle offered again is recognised as a file offered again is. Nothing is ever kept
/// under it; storage names its work file after it where it cannot leave it unnamed.
pub fn bundle_name(tag: &[u8; chunk_common::wire::HASH_LEN]) -> String {
    let mut s = String::with_capacity(13 + 32);
    s.push_str("chunk-bundle-");
    for b in &tag[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks an offered name: UTF-8, relative, `/`-separated, no empty, `.` or `..` component, no
/// NUL. Returns it as text, or why not.
pub fn validate_name(name: &[u8]) -> Result<&str, &'static str> {
    let name = std::str::from_utf8(name).map_err(|_| "name is not UTF-8")?;
    if name.is_empty() {
        return Err("name is empty");
    }
    if name.contains('\0') {
        return Err("name contains NUL");
    }
    if name.starts_with('/') {
        return Err("name is absolute");
    }
    for component in name.split('/') {
        match component {
            "" => return Err("name has an empty component"),
            "." | ".." => return Err("name has a . or .. component"),
            _ => {}
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::storage::MemStorage;
    use chunk_common::wire::{HASH_LEN, HashAlg, MessageType};

    use std::net::Ipv4Addr;

    const SRC: Peer = Peer::ipv4(Ipv4Addr::new(198, 18, 0, 1));
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    const CHUNK: u32 = 10;

    /// A receiver with the default configuration, empty storage, and the time it starts at.
    fn fresh() -> (Receiver<MemStorage>, MemStorage, Instant) {
        (
            Receiver::new(ReceiverConfig::default()),
            MemStorage::new(),
            Instant::now(),
        )
    }

    fn file(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The tests' file tag: the file's hash (any 32 bytes would do).
    fn tag_of(data: &[u8]) -> [u8; HASH_LEN] {
        *blake3::hash(data).as_bytes()
    }

    fn offer(
        r: &mut Receiver<MemStorage>,
        st: &mut MemStorage,
        now: Instant,
        id: u32,
        data: &[u8],
    ) {
        offer_with(r, st, now, id, data, HashAlg::Blake3);
    }

    fn offer_with(
        r: &mut Receiver<MemStorage>,
        st: &mut MemStorage,
        now: Instant,
        id: u32,
        data: &[u8],
        hash_alg: HashAlg,
    ) {
        offer_from(r, st, now, SRC, id, data, hash_alg);
    }

    fn offer_from(
        r: &mut Receiver<MemStorage>,
        st: &mut MemStorage,
        now: Instant,
        src: Peer,
        id: u32,
        data: &[u8],
        hash_alg: HashAlg,
    ) {
        let o = OfferRepr {
            file_size: data.len() as u64,
            chunk_size: CHUNK,
            chunk_count: data.len().div_ceil(CHUNK as usize) as u32,
            mode: 0o644,
            mtime: 0,
            hash_alg,
            tag: tag_of(data),
            name: b"f",
        };
        let repr = Repr {
            transfer_id: id,
            seq: 0,
            flags: 0,
            message: Message::Offer(o),
        };
        r.handle_packet(src, Some(LOCAL), &repr, now, st);
    }

    fn chunk(
        r: &mut Receiver<MemStorage>,
        st: &mut MemStorage,
        now: Instant,
        id: u32,
        data: &[u8],
        index: u32,
        flags: u16,
    ) {
        let start = (index * CHUNK) as usize;
        let end = (start + CHUNK as usize).min(data.len());
        let repr = Repr {
            transfer_id: id,
            seq: index,
            flags,
            message: Message::Data {
                payload: &data[start..end],
            },
        };
        r.handle_packet(SRC, Some(LOCAL), &repr, now, st);
    }

    /// The sender's hash message for `data` (its BLAKE3, as the real sender sends it).
    fn hash(r: &mut Receiver<MemStorage>, st: &mut MemStorage, now: Instant, id: u32, data: &[u8]) {
        let repr = Repr {
            transfer_id: id,
            seq: data.len().div_ceil(CHUNK as usize) as u32,
            flags: 0,
            message: Message::Hash(HashRepr {
                alg: HashAlg::Blake3,
                hash: *blake3::hash(data).as_bytes(),
            }),
        };
        r.handle_packet(SRC, Some(LOCAL), &repr, now, st);
    }

    /// What the receiver sends now: (type, seq, echo or abort reason, base, bitmap).
    fn out(
        r: &mut Receiver<MemStorage>,
        now: Instant,
    ) -> Vec<(MessageType, u32, u32, u32, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut v = Vec::new();
        while let Some(Transmit { dst, src, len: n }) = r.poll_transmit(now, &mut buf) {
            assert_eq!(dst, SRC);
            assert_eq!(
                src,
                Some(LOCAL),
                "answers leave from the address the sender used"
            );
            let repr = Repr::parse_bytes(&buf[..n]).unwrap();
            v.push(match repr.message {
                Message::Ack(a) => (
                    MessageType::Ack,
                    repr.seq,
                    a.echo,
                    a.base,
                    a.bitmap.to_vec(),
                ),
                Message::Abort(a) => (
                    MessageType::Abort,
                    repr.seq,
                    a.reason.code() as u32,
                    0,
                    vec![],
                ),
                Message::Complete(c) => {
                    (MessageType::Complete, repr.seq, c.status as u32, 0, vec![])
                }
                _ => unreachable!(),
            });
        }
        v
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every event waiting, oldest first.
    fn events(r: &mut Receiver<MemStorage>) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    /// A receiver whose storage reaches verdicts when told to, and a 3-chunk file (transfer 1)
    /// whose chunks and hash it has all received; what it said so far is returned.
    #[allow(clippy::type_complexity)]
    fn finishing_later() -> (
        Receiver<MemStorage>,
        MemStorage,
        Instant,
        Vec<u8>,
        Vec<(MessageType, u32, u32, u32, Vec<u8>)>,
    ) {
        let (mut r, mut st, t0) = fresh();
        st.defer_finishes = true;
        let data = file(25);
        offer(&mut r, &mut st, t0, 1, &data);
        for i in 0..3 {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        hash(&mut r, &mut st, t0, 1, &data);
        let said = out(&mut r, t0);
        (r, st, t0, data, said)
    }

    /// The verdict `finishing_later`'s file gets: verified, 3 chunks.
    fn verified_3_chunks() -> Vec<(MessageType, u32, u32, u32, Vec<u8>)> {
        vec![(
            MessageType::Complete,
            3,
            CompleteStatus::Verified as u32,
            0,
            vec![],
        )]
    }

    /// A chunk handled 20 ms after it reached the host (the receiver was opening a file) and
    /// acknowledged 3 ms after that says 23 ms in the delay field, whether its ack goes at once
    /// or on the 5 ms timer: the sender's round trip and its reading of the chunks' spacing
    /// are the path's, not the pause.
    #[test]
    fn an_acks_delay_counts_from_the_echoed_chunks_arrival() {
        let (mut r, mut st, t0) = fresh();
        let data = file(25);
        offer(&mut r, &mut st, t0, 1, &data);
        out(&mut r, t0);
        let delay = |r: &mut Receiver<MemStorage>, now: Instant| {
            let mut buf = [0u8; 2048];
            let t = r.poll_transmit(now, &mut buf).expect("an ack");
            match Repr::parse_bytes(&buf[..t.len]).unwrap().message {
                Message::Ack(a) => (a.echo, a.delay_us),
                m => panic!("{m:?}"),
            }
        };
        let now = t0 + ms(50);
        let repr = Repr {
            transfer_id: 1,
            seq: 1,
            flags: flags::MORE_CHUNKS,
            message: Message::Data {
                payload: &data[CHUNK as usize..2 * CHUNK as usize],
            },
        };
        // Out of order: acknowledged at once.
        r.handle_arrived(SRC, Some(LOCAL), &repr, now - ms(20), now, &mut st);
        assert_eq!(delay(&mut r, now + ms(3)), (1, 23_000));
        // An arrival stamped later than its handling (clocks read apart) counts as now.
        let repr = Repr { seq: 1, ..repr };
        r.handle_arrived(SRC, Some(LOCAL), &repr, now + ms(9), now + ms(5), &mut st);
        assert_eq!(delay(&mut r, now + ms(5)), (1, 0));
        // In order (chunk 2, one above the highest), its ack held by the receiver's 5 ms timer
        // from the handling: 12 ms of waiting before it, 5 after.
        let at = now + ms(20);
        let repr = Repr {
            seq: 2,
            flags: 0,
            message: Message::Data {
                payload: &data[2 * CHUNK as usize..],
            },
            ..repr
        };
        r.handle_arrived(SRC, Some(LOCAL), &repr, at - ms(12), at, &mut st);
        assert!(out(&mut r, at).is_empty(), "held");
        let due = r.poll_timeout().expect("the delayed ack's timer");
        assert_eq!(due, at + ms(5));
        r.handle_timeout(due, &mut st);
        assert_eq!(delay(&mut r, due), (2, 17_000));
    }

    #[test]
    fn a_verdict_reached_later_is_sent_then_and_its_packets_meanwhile_get_no_answer() {
        let (mut r, mut st, t0, data, said) = finishing_later();
        assert!(
            said.iter().all(|m| m.0 == MessageType::Ack),
            "no verdict before storage reaches it: {said:?}"
        );
        assert_eq!((r.open_transfers(), r.finishing()), (0, 1));
        assert!(st.file("f").is_none());
        // Late data, the hash again (a closing probe), the offer again: its verdict is on its
        // way, so nothing is said (an unknown-transfer abort would end the sender's transfer).
        chunk(&mut r, &mut st, t0, 1, &data, 2, 0);
        hash(&mut r, &mut st, t0, 1, &data);
        offer(&mut r, &mut st, t0, 1, &data);
        r.poll_storage(t0, &mut st);
        assert_eq!(out(&mut r, t0), vec![]);
        assert!(
            !events(&mut r)
                .iter()
                .any(|e| matches!(e, Event::Finished { .. }))
        );
        assert_eq!(r.stats().unknown_transfer, 0);

        st.release_finishes();
        let t1 = t0 + ms(4);
        r.poll_storage(t1, &mut st);
        assert_eq!(out(&mut r, t1), verified_3_chunks());
        let finished: Vec<_> = events(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                Event::Finished {
                    verified,
                    duplicates,
                    duration,
                    ..
                } => Some((verified, duplicates, duration)),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [(true, 1, ms(4))]);
        assert_eq!(st.file("f").unwrap().data, data);
        assert_eq!(r.finishing(), 0);
        // From now on the verdict is repeated as any finished transfer's.
        hash(&mut r, &mut st, t1, 1, &data);
        assert_eq!(out(&mut r, t1).len(), 1);
    }

    #[test]
    fn closing_waits_for_the_verdicts_being_reached_and_sends_them() {
        let (mut r, mut st, t0, data, _) = finishing_later();
        events(&mut r);
        r.close_all(t0, &mut st);
        assert_eq!(out(&mut r, t0), verified_3_chunks());
        assert!(matches!(
            events(&mut r)[..],
            [Event::Finished { verified: true, .. }]
        ));
        assert_eq!(st.file("f").unwrap().data, data);
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let cfg = ReceiverConfig {
            max_transfers: 4,
            max_per_source: 2,
            ..ReceiverConfig::default()
        };
        let mut r = Receiver::new(cfg);
        let mut st = MemStorage::new();
        let now = Instant::now();
        let data = file(100);
        let offer_from = |r: &mut Receiver<MemStorage>, st: &mut MemStorage, src, id: u32| {
            offer_named(r, st, now, src, id, &format!("f{id}"), &data)
        };
        let other = Peer::ipv4(Ipv4Addr::new(198, 18, 0, 2));
        for id in 0..3 {
            offer_from(&mut r, &mut st, SRC, id);
        }
        offer_from(&mut r, &mut st, other, 10);
        assert_eq!(
            r.open_transfers(),
            3,
            "two from SRC, one from the other source"
        );
        let refused: Vec<_> = std::iter::from_fn(|| r.poll_event())
            .filter_map(|e| match e {
                Event::Refused {
                    src,
                    transfer_id,
                    reason,
                    ..
                } => Some((src, transfer_id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(refused, [(SRC, 2, AbortReason::TooManyTransfers)]);
    }

    #[test]
    fn offer_is_accepted_with_an_ack_echoing_nothing() {
        let (mut r, mut st, t0) = fresh();
        let data = file(95);
        offer(&mut r, &mut st, t0, 1, &data);
        assert_eq!(
            out(&mut r, t0),
            vec![(MessageType::Ack, 0, NO_ECHO, 0, vec![])]
        );
        assert_eq!(r.open_transfers(), 1);
        assert!(matches!(
            r.poll_event(),
            Some(Event::Started {
                chunk_count: 10,
                ..
            })
        ));
        // Repeated: a fresh ack.
        offer(&mut r, &mut st, t0, 1, &data);
        assert_eq!(out(&mut r, t0).len(), 1);
    }

    #[test]
    fn acks_every_16_chunks_or_after_5_ms_and_at_once_on_holes_and_duplicates() {
        let cfg = ReceiverConfig::default();
        let (mut r, mut st, t0) = (Receiver::new(cfg), MemStorage::new(), Instant::now());
        let data = file(400);
        offer(&mut r, &mut st, t0, 1, &data);
        out(&mut r, t0);
        for i in 0..15 {
            chunk(&mut r, &mut st, t0, 1, &data, i, flags::MORE_CHUNKS);
            assert!(out(&mut r, t0).is_empty());
        }
        chunk(&mut r, &mut st, t0, 1, &data, 15, flags::MORE_CHUNKS);
        assert_eq!(
            out(&mut r, t0),
            vec![(MessageType::Ack, 16, 15, 16, vec![])]
        );
        // One more, then the 5 ms timer.
        chunk(&mut r, &mut st, t0, 1, &data, 16, flags::MORE_CHUNKS);
        assert_eq!(r.poll_timeout(), Some(t0 + ms(5)));
        r.handle_timeout(t0 + ms(5), &mut st);
        assert_eq!(
            out(&mut r, t0 + ms(5)),
            vec![(MessageType::Ack, 17, 16, 17, vec![])]
        );
        // A hole: 18 before 17 is acked at once, with the bitmap.
        chunk(&mut r, &mut st, t0, 1, &data, 18, flags::MORE_CHUNKS);
        assert_eq!(
            out(&mut r, t0),
            vec![(MessageType::Ack, 17, 18, 17, vec![0b10])]
        );
        // A duplicate: acked at once, not written again.
        chunk(&mut r, &mut st, t0, 1, &data, 3, flags::MORE_CHUNKS);
        assert_eq!(out(&mut r, t0).len(), 1);
        // ACK_NOW.
        chunk(
            &mut r,
            &mut st,
            t0,
            1,
            &data,
            19,
            flags::MORE_CHUNKS | flags::ACK_NOW,
        );
        assert_eq!(out(&mut r, t0).len(), 1);
        let stats = r.stats();
        assert_eq!((stats.chunks_written, stats.duplicates), (19, 1));
    }

    /// An empty file has no chunk: the offer is answered with an ack of everything (what a
    /// sender waits for after its offer), and the hash message with the verdict.
    #[test]
    fn an_empty_file_is_answered_with_an_ack_then_the_verdict() {
        let (mut r, mut st, t0) = fresh();
        offer(&mut r, &mut st, t0, 1, &[]);
        assert_eq!(out(&mut r, t0), [(MessageType::Ack, 0, NO_ECHO, 0, vec![])]);
        hash(&mut r, &mut st, t0, 1, &[]);
        assert_eq!(
            out(&mut r, t0),
            [(
                MessageType::Complete,
                0,
                CompleteStatus::Verified as u32,
                0,
                vec![]
            )]
        );
        assert_eq!(st.file("f").unwrap().data, Vec::<u8>::new());
    }

    /// The verdict needs every chunk and the sender's hash, in either order; a hash message
    /// with another chunk count is malformed, and one for a transfer nobody offered gets the
    /// answer data gets.
    #[test]
    fn the_verdict_waits_for_both_the_chunks_and_the_hash() {
        let (mut r, mut st, t0) = fresh();
        let data = file(25);
        // Chunks first: everything acknowledged, no verdict until the hash.
        offer(&mut r, &mut st, t0, 1, &data);
        for i in 0..3 {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        let sent = out(&mut r, t0);
        assert!(sent.iter().all(|m| m.0 == MessageType::Ack), "{sent:?}");
        assert_eq!(sent.last().unwrap().1, 3, "all three acknowledged");
        assert!(st.file("f").is_none());
        let wrong_count = Repr {
            transfer_id: 1,
            seq: 2,
            flags: 0,
            message: Message::Hash(HashRepr {
                alg: HashAlg::Blake3,
                hash: *blake3::hash(&data).as_bytes(),
            }),
        };
        r.handle_packet(SRC, Some(LOCAL), &wrong_count, t0, &mut st);
        assert!(out(&mut r, t0).is_empty());
        assert_eq!(r.stats().malformed, 1);
        hash(&mut r, &mut st, t0, 1, &data);
        assert_eq!(out(&mut r, t0)[0].0, MessageType::Complete);
        assert_eq!(st.file("f").unwrap().data, data);

        // The hash first: kept, and the last chunk brings the verdict.
        let other = file(30);
        let repr = |id| Repr {
            transfer_id: id,
            seq: 0,
            flags: 0,
            message: Message::Offer(OfferRepr {
                file_size: other.len() as u64,
                chunk_size: CHUNK,
                chunk_count: 3,
                mode: 0o644,
                mtime: 0,
                hash_alg: HashAlg::Blake3,
                tag: tag_of(&other),
                name: b"g",
            }),
        };
        r.handle_packet(SRC, Some(LOCAL), &repr(2), t0, &mut st);
        hash(&mut r, &mut st, t0, 2, &other);
        for i in [2, 0] {
            chunk(&mut r, &mut st, t0, 2, &other, i, 0);
        }
        assert!(out(&mut r, t0).iter().all(|m| m.0 == MessageType::Ack));
        chunk(&mut r, &mut st, t0, 2, &other, 1, 0);
        assert_eq!(out(&mut r, t0).last().unwrap().0, MessageType::Complete);
        assert_eq!(st.file("g").unwrap().data, other);

        // Nobody offered transfer 9: the answer data would get.
        hash(&mut r, &mut st, t0 + ms(100), 9, &data);
        assert_eq!((out(&mut r, t0 + ms(100))[0].0), MessageType::Abort);
    }

    /// A hash that is not the file's: the verdict says so and nothing is left under the name.
    #[test]
    fn a_hash_that_is_not_the_files_is_a_mismatch() {
        let (mut r, mut st, t0) = fresh();
        let data = file(25);
        offer(&mut r, &mut st, t0, 1, &data);
        for i in 0..3 {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        let mut other = data.clone();
        other[0] ^= 1;
        hash(&mut r, &mut st, t0, 1, &other);
        let sent = out(&mut r, t0);
        let verdict = sent.last().unwrap();
        assert_eq!(
            (verdict.0, verdict.2),
            (MessageType::Complete, CompleteStatus::HashMismatch as u32)
        );
        assert!(st.file("f").is_none());
    }

    #[test]
    fn an_unknown_hash_algorithm_is_refused_as_unsupported() {
        let (mut r, mut st, t0) = fresh();
        offer_with(&mut r, &mut st, t0, 1, &file(25), HashAlg::Other(2));
        let sent = out(&mut r, t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].0, sent[0].2),
            (MessageType::Abort, AbortReason::Unsupported.code() as u32)
        );
        assert_eq!(r.stats().offers_refused, 1);
        assert!(st.file("f").is_none());
    }

    /// A sender killed mid-transfer and run again with a corrected file of the same name: the
    /// dead transfer gives way once it has been silent for `supersede_after`, not only after
    /// the idle timeout; a live one keeps the name.
    #[test]
    fn a_silent_transfer_gives_its_name_to_a_new_file_from_the_same_sender() {
        let (mut r, mut st, t0) = fresh();
        let old = file(50);
        let mut new = file(50);
        new[0] ^= 0xff;
        offer(&mut r, &mut st, t0, 1, &old);
        chunk(&mut r, &mut st, t0, 1, &old, 0, flags::MORE_CHUNKS);
        out(&mut r, t0);
        // While the old transfer is alive, the new file is refused.
        offer(&mut r, &mut st, t0 + ms(100), 2, &new);
        let sent = out(&mut r, t0 + ms(100));
        assert_eq!(
            (sent[0].0, sent[0].2),
            (MessageType::Abort, AbortReason::Exists.code() as u32)
        );
        // Silent for a second: replaced.
        let later = t0 + ms(100) + ReceiverConfig::default().supersede_after;
        offer(&mut r, &mut st, later, 2, &new);
        let sent = out(&mut r, later);
        assert_eq!(sent[0].0, MessageType::Ack, "{sent:?}");
        for i in 0..5 {
            chunk(&mut r, &mut st, later, 2, &new, i, 0);
        }
        hash(&mut r, &mut st, later, 2, &new);
        let sent = out(&mut r, later);
        assert_eq!(sent.last().unwrap().0, MessageType::Complete);
        assert_eq!(st.file("f").unwrap().data, new);
    }

    /// A sender in UDP that is run again comes from a new port: its new offer of the same file
    /// still takes over its old transfer (by address, as over IP), and the answers go to the
    /// new port.
    #[test]
    fn a_sender_in_udp_restarted_from_a_new_port_supersedes_its_transfer() {
        let (mut r, mut st, t0) = fresh();
        let data = file(50);
        let old = Peer::udp("198.18.0.1:40001".parse().unwrap());
        let new = Peer::udp("198.18.0.1:40002".parse().unwrap());
        offer_from(&mut r, &mut st, t0, old, 1, &data, HashAlg::Blake3);
        let mut buf = vec![0u8; 4096];
        while r.poll_transmit(t0, &mut buf).is_some() {}
        let later = t0 + ms(10);
        offer_from(&mut r, &mut st, later, new, 2, &data, HashAlg::Blake3);
        let mut to = Vec::new();
        while let Some(t) = r.poll_transmit(later, &mut buf) {
            to.push((t.dst, buf[3]));
        }
        assert_eq!(
            to,
            [(new, MessageType::Ack as u8)],
            "answered at the new port"
        );
        let events: Vec<Event> = std::iter::from_fn(|| r.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Superseded {
                    old_transfer_id: 1,
                    transfer_id: 2,
                    ..
                }
            )),
            "{events:?}"
        );
        assert_eq!(r.open_transfers(), 1);
    }

    #[test]
    fn the_last_chunk_brings_the_verdict_which_is_repeated() {
        let (mut r, mut st, t0) = fresh();
        let data = file(25);
        offer(&mut r, &mut st, t0, 1, &data);
        out(&mut r, t0);
        hash(&mut r, &mut st, t0, 1, &data);
        for i in [2, 0, 1] {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        let sent = out(&mut r, t0);
        assert_eq!(sent.last().unwrap().0, MessageType::Complete);
        assert_eq!(sent.last().unwrap().1, 3, "seq is the chunk count");
        assert_eq!(st.file("f").unwrap().data, data);
        // Late data, rate-limited; a repeated offer, always.
        chunk(&mut r, &mut st, t0 + ms(20), 1, &data, 1, 0);
        chunk(&mut r, &mut st, t0 + ms(21), 1, &data, 1, 0);
        assert_eq!(out(&mut r, t0 + ms(21)).len(), 1);
        offer(&mut r, &mut st, t0 + ms(22), 1, &data);
        let again = out(&mut r, t0 + ms(22));
        assert_eq!(
            again.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(MessageType::Ack, 3), (MessageType::Complete, 3)],
            "a repeated offer hears 'all acknowledged', then the verdict"
        );
        // Forgotten after the linger time.
        let at = r.poll_timeout().unwrap();
        assert_eq!(at, t0 + ReceiverConfig::default().verdict_linger);
        r.handle_timeout(at, &mut st);
        chunk(&mut r, &mut st, at, 1, &data, 1, 0);
        assert_eq!(
            out(&mut r, at)[0].2,
            AbortReason::UnknownTransfer.code() as u32
        );
    }

    #[test]
    fn scattered_chunks_cannot_grow_the_state_past_its_cap() {
        let cfg = ReceiverConfig {
            max_transfer_state: 2 * chunkset::PAGE_COST,
            ..ReceiverConfig::default()
        };
        let (mut r, mut st, t0) = (Receiver::new(cfg), MemStorage::new(), Instant::now());
        // 5 pages' worth of chunks.
        let data = file(5 * 4096 * CHUNK as usize);
        offer(&mut r, &mut st, t0, 1, &data);
        for i in [4096, 2 * 4096, 3 * 4096, 4 * 4096] {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        let s = r.stats();
        assert_eq!((s.chunks_written, s.state_limited), (2, 2));
        // In-order progress frees pages, and the refused chunks are then taken.
        for i in 0..=2 * 4096 {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        chunk(&mut r, &mut st, t0, 1, &data, 3 * 4096, 0);
        let s = r.stats();
        assert_eq!(s.state_limited, 2);
        assert_eq!(s.chunks_written, 2 * 4096 + 2);
    }

    #[test]
    fn unknown_transfer_aborts_are_rate_limited() {
        let cfg = ReceiverConfig::default();
        let burst = cfg.unknown_aborts_per_sec as usize;
        let (mut r, mut st, t0) = (Receiver::new(cfg), MemStorage::new(), Instant::now());
        let data = file(100);
        for i in 0..100 {
            chunk(&mut r, &mut st, t0, 77, &data, i % 10, 0);
        }
        assert_eq!(out(&mut r, t0).len(), burst);
        assert_eq!(r.stats().aborts_suppressed, 100 - burst as u64);
        // A second later the bucket has refilled.
        chunk(&mut r, &mut st, t0 + ms(1000), 77, &data, 0, 0);
        assert_eq!(out(&mut r, t0 + ms(1000)).len(), 1);
    }

    #[test]
    fn idle_transfers_are_closed_and_resume_from_what_was_written() {
        let cfg = ReceiverConfig::default();
        let idle = cfg.idle_timeout;
        let (mut r, mut st, t0) = (Receiver::new(cfg), MemStorage::new(), Instant::now());
        let data = file(100);
        offer(&mut r, &mut st, t0, 1, &data);
        for i in [0, 1, 2, 5] {
            chunk(&mut r, &mut st, t0, 1, &data, i, 0);
        }
        out(&mut r, t0);
        r.handle_timeout(t0 + idle, &mut st);
        assert_eq!(r.open_transfers(), 0);
        assert_eq!(st.partial_chunks("f"), Some(4));
        // Another id, same file: the first ack acknowledges what is there.
        offer(&mut r, &mut st, t0 + idle, 2, &data);
        let first = out(&mut r, t0 + idle);
        assert_eq!(first, vec![(MessageType::Ack, 3, NO_ECHO, 3, vec![0b100])]);
    }

    #[test]
    fn malformed_data_is_dropped() {
        let (mut r, mut st, t0) = fresh();
        let data = file(25);
        offer(&mut r, &mut st, t0, 1, &data);
        out(&mut r, t0);
        // Index past the end, and a short middle chunk.
        for seq in [3, 0] {
            let repr = Repr {
                transfer_id: 1,
                seq,
                flags: 0,
                message: Message::Data {
                    payload: &data[..5],
                },
            };
            r.handle_packet(SRC, Some(LOCAL), &repr, t0, &mut st);
        }
        assert_eq!(r.stats().malformed, 2);
        assert!(out(&mut r, t0).is_empty());
    }

    /// An offer of `data` named `name` from `src`.
    fn offer_named(
        r: &mut Receiver<MemStorage>,
        st: &mut MemStorage,
        now: Instant,
        src: Peer,
        id: u32,
        name: &str,
        data: &[u8],
    ) {
        let o = OfferRepr {
            file_size: data.len() as u64,
            chunk_size: CHUNK,
            chunk_count: data.len().div_ceil(CHUNK as usize) as u32,
            mode: 0o644,
            mtime: 0,
            hash_alg: HashAlg::Blake3,
            tag: tag_of(data),
            name: name.as_bytes(),
        };
        let repr = Repr {
            transfer_id: id,
            seq: 0,
            flags: 0,
            message: Message::Offer(o),
        };
        r.handle_packet(src, Some(LOCAL), &repr, now, st);
    }

    /// Transfer `id` of file `f{id}` from SRC, from its offer to its verdict at `now`, as a
    /// sender would run it (every answer taken, the timer polled after every packet).
    fn whole_file(r: &mut Receiver<MemStorage>, st: &mut MemStorage, now: Instant, id: u32) {
        let data = file(25 + id as usize % 7);
        offer_named(r, st, now, SRC, id, &format!("f{id}"), &data);
        out(r, now);
        for i in 0..data.len().div_ceil(CHUNK as usize) as u32 {
            chunk(r, st, now, id, &data, i, 0);
            r.poll_timeout();
            out(r, now);
        }
        hash(r, st, now, id, &data);
        r.poll_timeout();
        let sent = out(r, now);
        assert_eq!(
            sent.last().map(|m| (m.0, m.2)),
            Some((MessageType::Complete, CompleteStatus::Verified as u32)),
            "file {id}"
        );
    }

    /// Thousands of finished transfers (a tree of small files) are kept apart from the open
    /// ones: the timer is the oldest verdict's expiry, they are forgotten one by one as their
    /// linger time ends, oldest first, each repeating its verdict until then; an open transfer
    /// among them keeps its own timers.
    #[test]
    fn thousands_of_finished_transfers_are_forgotten_in_order_and_on_time() {
        let (mut r, mut st, t0) = fresh();
        let linger = ReceiverConfig::default().verdict_linger;
        let n = 3000;
        for id in 0..n {
            whole_file(&mut r, &mut st, t0 + ms(id as u64), id);
        }
        assert_eq!((r.transfers.len(), r.finished.len()), (0, n as usize));
        assert_eq!(r.poll_timeout(), Some(t0 + linger));

        // An open transfer among them: its delayed ack comes first, then the verdicts again.
        let at = t0 + ms(n as u64);
        let data = file(100);
        offer_named(&mut r, &mut st, at, SRC, 99_999, "open", &data);
        out(&mut r, at);
        chunk(&mut r, &mut st, at, 99_999, &data, 0, 0);
        assert_eq!(r.poll_timeout(), Some(at + ms(5)));
        r.handle_timeout(at + ms(5), &mut st);
        assert_eq!(out(&mut r, at + ms(5))[0].0, MessageType::Ack);
        assert_eq!(r.poll_timeout(), Some(t0 + linger));

        // Half the linger times are over: the first half is forgotten, the rest repeats.
        let half = t0 + linger + ms(n as u64 / 2 - 1);
        r.handle_timeout(half, &mut st);
        assert_eq!(r.finished.len(), n as usize / 2);
        assert_eq!(r.poll_timeout(), Some(half + ms(1)));
        let late = file(25 + (n as usize / 2 - 1) % 7);
        chunk(&mut r, &mut st, half, n / 2 - 1, &late, 0, 0);
        assert_eq!(
            out(&mut r, half),
            [(
                MessageType::Abort,
                0,
                AbortReason::UnknownTransfer.code() as u32,
                0,
                vec![]
            )]
        );
        let kept = file(25 + (n as usize / 2) % 7);
        chunk(&mut r, &mut st, half, n / 2, &kept, 0, 0);
        assert_eq!(out(&mut r, half)[0].0, MessageType::Complete);
        offer_named(
            &mut r,
            &mut st,
            half,
            SRC,
            n - 1,
            &format!("f{}", n - 1),
            &{ file(25 + (n as usize - 1) % 7) },
        );
        let again: Vec<_> = out(&mut r, half).into_iter().map(|m| m.0).collect();
        assert_eq!(again, [MessageType::Ack, MessageType::Complete]);

        // All gone once the last linger time is over; the open transfer, silent as long, idle.
        assert_eq!(r.open_transfers(), 1);
        r.handle_timeout(t0 + linger + ms(n as u64), &mut st);
        assert!(r.finished.is_empty() && r.expiry.is_empty());
        assert_eq!(r.open_transfers(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    /// A finished transfer keeps its verdict and what a repeated offer is checked against, not
    /// its open state (file handle, chunk set, hasher, buffers): thousands of them within one
    /// linger time stay a few hundred KiB.
    #[test]
    fn a_finished_transfer_keeps_only_its_verdict() {
        assert!(std::mem::size_of::<Finished>() <= 192);
    }

    /// The per-source limit (and the global one) count right after many transfers opened and
    /// ended every way: finished, cancelled by the sender, gone idle, superseded.
    #[test]
    fn the_limits_count_right_after_many_transfers_open_and_close() {
        let cfg = ReceiverConfig {
            max_transfers: 4,
            max_per_source: 2,
            ..ReceiverConfig::default()
        };
        let idle = cfg.idle_timeout;
        let mut r = Receiver::new(cfg);
        let mut st = MemStorage::new();
        let mut now = Instant::now();
        let other = Peer::ipv4(Ipv4Addr::new(198, 18, 0, 2));
        let data = file(30);
        let abort = Repr {
            transfer_id: 0,
            seq: 0,
            flags: 0,
            message: Message::Abort(AbortRepr {
                reason: AbortReason::Io,
                message: b"",
            }),
        };
        for round in 0..500u32 {
            let id = round * 10;
            // Finished.
            whole_file(&mut r, &mut st, now, id);
            // Cancelled by its sender.
            offer_named(&mut r, &mut st, now, SRC, id + 1, "c", &data);
            let cancel = Repr {
                transfer_id: id + 1,
                ..abort
            };
            r.handle_packet(SRC, Some(LOCAL), &cancel, now, &mut st);
            // Superseded by the same file under a new id.
            offer_named(&mut r, &mut st, now, other, id + 2, "s", &data);
            offer_named(&mut r, &mut st, now, other, id + 3, "s", &data);
            // Gone idle (with the superseding one).
            offer_named(&mut r, &mut st, now, SRC, id + 4, "i", &data);
            assert_eq!(r.open_transfers(), 2, "round {round}");
            now += idle;
            r.handle_timeout(now, &mut st);
            let mut buf = [0u8; 2048];
            while r.poll_transmit(now, &mut buf).is_some() {}
            assert_eq!(r.open_transfers(), 0, "round {round}");
        }
        assert!(r.by_source.is_empty(), "{:?}", r.by_source);
        while r.poll_event().is_some() {}

        for id in 0..3 {
            offer_named(
                &mut r,
                &mut st,
                now,
                SRC,
                90_000 + id,
                &format!("a{id}"),
                &data,
            );
        }
        for id in 0..3 {
            offer_named(
                &mut r,
                &mut st,
                now,
                other,
                91_000 + id,
                &format!("b{id}"),
                &data,
            );
        }
        assert_eq!(r.open_transfers(), 4);
        let refused: Vec<_> = std::iter::from_fn(|| r.poll_event())
            .filter_map(|e| match e {
                Event::Refused {
                    transfer_id,
                    message,
                    ..
                } => Some((transfer_id, message)),
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            [
                (90_002, format!("2 open from {SRC}")),
                (91_002, "4 open".to_string())
            ]
        );
    }

    /// The core's cost per file over a run of many small files, each thousand timed: a
    /// measurement, not a check (`cargo test -p chunk-user --release --lib --
    /// --ignored --nocapture receiver_cost_per_small_file`).
    #[test]
    #[ignore]
    fn receiver_cost_per_small_file() {
        let (mut r, mut st, t0) = fresh();
        let n = 10_000;
        let mut started = std::time::Instant::now();
        for id in 0..n {
            whole_file(&mut r, &mut st, t0 + ms(id as u64), id);
            if (id + 1) % 1000 == 0 {
                let per_file = started.elapsed() / 1000;
                println!("files {:5}..{:5}: {per_file:?} per file", id - 999, id + 1);
                started = std::time::Instant::now();
            }
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "a.txt", "dir/sub/file", "..a", "a..", "é/ü"] {
            assert!(validate_name(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/../b",
            "..",
            ".",
            "a\0b",
        ] {
            assert!(validate_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(validate_name(&[0xff, 0x61]).is_err());
    }
}
