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
//! How acks are kept and written is [`acks`].

mod acks;
mod stream;
mod transfer;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use super::Peer;
use std::time::{Duration, Instant};

use chunk_common::wire::{
    AbortReason, AbortRepr, AckRepr, CompleteRepr, CompleteStatus, HASH_LEN, HashAlg, HashRepr,
    Message, OfferRepr, Repr, flags,
};

use acks::AckState;
use stream::{StreamEnd, StreamError};
use transfer::{Open, State, Transfer};

use super::chunkset::{self, ChunkSet};
use super::storage::{OfferInfo, Storage};
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
            max_transfers: 16,
            max_per_source: 4,
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
    transfers: HashMap<TransferKey, Transfer<S::Handle>>,
    open: usize,
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
            open: 0,
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
        self.open
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Feeds one packet from `src`, sent to the local address `local` when the receive path
    /// knows it (already checksum-checked and parsed). Answers leave from `local`.
    pub fn handle_packet(
        &mut self,
        src: Peer,
        local: Option<IpAddr>,
        repr: &Repr<'_>,
        now: Instant,
        storage: &mut S,
    ) {
        let key = (src, repr.transfer_id);
        self.answering_local = local;
        if let Some(t) = self.transfers.get_mut(&key) {
            // The sender's latest choice of our address is where it listens for us.
            t.local = local;
        }
        match repr.message {
            Message::Offer(offer) => {
                use chunk_common::wire::flags;
                let directory = repr.flags & flags::DIRECTORY != 0;
                let symlink = repr.flags & flags::SYMLINK != 0;
                let stream = repr.flags & flags::STREAM != 0;
                // A directory holds no bytes, a link 1 to 4095 (its target), a stream says
                // neither size nor count (and only a stream may): any other offer so flagged
                // is malformed.
                if (directory && (symlink || offer.file_size != 0))
                    || (symlink && !(1..=flags::MAX_LINK_TARGET).contains(&offer.file_size))
                    || stream != offer.is_stream()
                    || (stream && (directory || symlink))
                {
                    self.stats.malformed += 1;
                    return;
                }
                self.on_offer(key, &offer, (directory, symlink, stream), now, storage)
            }
            Message::Data { payload } => {
                self.on_data(key, repr.seq, repr.flags, payload, now, storage)
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
            let State::Open(open) = &mut t.state else {
                continue;
            };
            let len = open.ack.emit(
                key,
                t.info.chunk_count,
                &open.received,
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

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transfers
            .values()
            .map(|t| match &t.state {
                State::Open(o) => {
                    let idle = t.last_activity + self.cfg.idle_timeout;
                    o.ack.due().map_or(idle, |d| d.min(idle))
                }
                State::Finished { until, .. } => *until,
            })
            .min()
    }

    /// Delayed acks, idle transfers, expired verdicts.
    pub fn handle_timeout(&mut self, now: Instant, storage: &mut S) {
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (&key, t) in &mut self.transfers {
            match &mut t.state {
                State::Open(o) => {
                    if now >= t.last_activity + self.cfg.idle_timeout {
                        idle.push(key);
                    } else {
                        o.ack.on_timer(now, key, &mut self.ready);
                    }
                }
                State::Finished { until, .. } => {
                    if now >= *until {
                        expired.push(key);
                    }
                }
            }
        }
        for key in expired {
            self.transfers.remove(&key);
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

    /// Removes transfer `key`; if it was open, frees its slot and hands its file back to
    /// storage, partial data kept for a resume. Returns its offer and the chunks it held if it
    /// was open (`None` for a finished or unknown transfer, which is only forgotten).
    fn close(&mut self, key: TransferKey, storage: &mut S) -> Option<(OfferInfo, u64)> {
        let t = self.transfers.remove(&key)?;
        let State::Open(open) = t.state else {
            return None;
        };
        self.open -= 1;
        let have = open.received.len();
        storage.abandon(open.handle, true);
        Some((t.info, have))
    }

    /// Closes every open transfer, keeping partial data (for a clean shutdown).
    pub fn close_all(&mut self, storage: &mut S) {
        for (_, t) in self.transfers.drain() {
            if let State::Open(open) = t.state {
                storage.abandon(open.handle, true);
            }
        }
        self.open = 0;
        self.ready.clear();
    }

    fn on_offer(
        &mut self,
        key: TransferKey,
        offer: &OfferRepr<'_>,
        (directory, symlink, stream): (bool, bool, bool),
        now: Instant,
        storage: &mut S,
    ) {
        if let Some(t) = self.transfers.get_mut(&key) {
            // A stream's size is learnt from its end: its offer says none.
            let same = (if t.info.stream {
                offer.is_stream()
            } else {
                t.info.size == offer.file_size
            }) && t.info.chunk_size == offer.chunk_size
                && t.info.tag == offer.tag
                && t.info.name.as_bytes() == offer.name;
            if !same {
                let name = t.info.name.clone();
                let message = "transfer id already in use for another file";
                self.refuse(key, name, AbortReason::Unsupported, message.into());
                return;
            }
            t.last_activity = now;
            match &mut t.state {
                State::Open(open) => {
                    // The sender has not heard our ack: a fresh one.
                    open.ack.on_repeated_offer(key, &mut self.ready);
                }
                State::Finished { .. } => {
                    // The sender may not have heard our first answer: say "all acknowledged"
                    // again, then the verdict.
                    let chunk_count = t.info.chunk_count;
                    self.push_out(
                        key,
                        Outgoing::AckAll {
                            transfer_id: key.1,
                            chunk_count,
                        },
                    );
                    self.repeat_verdict(key, now, true)
                }
            }
            return;
        }

        let name = match validate_name(offer.name) {
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
        } else {
            Ok(())
        };
        if let Err((reason, message)) = check {
            self.refuse(key, name, reason, message);
            return;
        }
        self.supersede(key, &name, offer, now, storage);
        let check = if self.open >= self.cfg.max_transfers {
            Err((AbortReason::TooManyTransfers, format!("{} open", self.open)))
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
        self.open += 1;
        self.events.push_back(Event::Started {
            src: key.0,
            transfer_id: key.1,
            name: info.name.clone(),
            size: info.size,
            chunk_count: info.chunk_count,
            resumed_chunks: resumed,
        });
        let complete = !stream && resumed == info.chunk_count as u64;
        let info_count = info.chunk_count;
        let mut open = Open {
            handle: opened.handle,
            received,
            ack: AckState::new(now),
            expected: None,
        };
        if !complete {
            open.ack.queue(key, &mut self.ready);
        }
        self.transfers.insert(
            key,
            Transfer {
                info,
                local: self.answering_local,
                started: now,
                last_activity: now,
                state: State::Open(open),
                chunks_received: 0,
                duplicates: 0,
                out_of_order: 0,
                resumed,
                stream_end: stream.then(StreamEnd::default),
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
        let old = self.transfers.iter().find_map(|(&k, t)| {
            let same_file = t.info.size == offer.file_size && t.info.tag == offer.tag;
            let silent = now.saturating_duration_since(t.last_activity) >= after;
            // By address: a restarted sender in UDP comes from a new port.
            let replace = k.0.addr() == key.0.addr()
                && matches!(t.state, State::Open(_))
                && t.info.name == name
                && (same_file || silent);
            replace.then_some(k)
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
        let old = self
            .transfers
            .iter()
            .filter(|(k, t)| {
                k.0.addr() == key.0.addr()
                    && matches!(t.state, State::Open(_))
                    && now.saturating_duration_since(t.last_activity) >= after
            })
            .min_by_key(|(_, t)| t.last_activity)
            .map(|(&k, _)| k);
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

    fn on_data(
        &mut self,
        key: TransferKey,
        index: u32,
        packet_flags: u16,
        payload: &[u8],
        now: Instant,
        storage: &mut S,
    ) {
        self.stats.data_packets += 1;
        let Some(t) = self.transfers.get_mut(&key) else {
            self.stats.unknown_transfer += 1;
            self.unknown_transfer(key, now);
            return;
        };
        let State::Open(_) = &t.state else {
            self.repeat_verdict(key, now, false);
            return;
        };
        if let Some(end) = &mut t.stream_end {
            let more = packet_flags & flags::MORE_CHUNKS != 0;
            let max = self.cfg.max_size;
            match end.on_chunk(t.info.chunk_size, index, more, payload.len(), max) {
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
            if let Err(e) = Self::learn_stream_end(t, storage) {
                self.fail(
                    key,
                    AbortReason::Io,
                    format!("ending the stream: {e}"),
                    storage,
                );
                return;
            }
        }
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        let State::Open(open) = &mut t.state else {
            return;
        };
        let info = &t.info;
        let len_ok = if t.stream_end.is_some() {
            // A stream before its end is known: `StreamEnd` checked the length.
            true
        } else {
            index < info.chunk_count
                && payload.len() == chunk_len(info.size, info.chunk_size, index)
        };
        if !len_ok {
            // Not a sign of life: a malformed packet does not keep a transfer open.
            self.stats.malformed += 1;
            return;
        }
        t.last_activity = now;
        let ack_now = packet_flags & flags::ACK_NOW != 0;
        if open.received.contains(index) {
            // The sender resent it, so it has not seen our ack: answer at once.
            t.duplicates += 1;
            self.stats.duplicates += 1;
            open.ack.on_arrival(index, now);
            open.ack.queue(key, &mut self.ready);
            return;
        }
        if open.received.would_grow(index)
            && (open.received.pages() + 1) * chunkset::PAGE_COST > self.cfg.max_transfer_state
        {
            self.stats.state_limited += 1;
            return;
        }
        let offset = index as u64 * info.chunk_size as u64;
        if let Err(e) = storage.write(&mut open.handle, index, offset, payload) {
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
        let next = open.received.last().map_or(0, |l| l as u64 + 1);
        let in_order = index as u64 == next;
        open.received.insert(index);
        if !in_order {
            t.out_of_order += 1;
        }
        open.ack.on_arrival(index, now);
        if open.received.len() == info.chunk_count as u64 {
            if open.expected.is_some() {
                self.finish(key, now, storage);
            } else {
                // Everything is here but the sender's hash: say so at once.
                open.ack.queue(key, &mut self.ready);
            }
            return;
        }
        let enough = open.ack.count_in_order(self.cfg.ack_every);
        if !in_order || ack_now || enough {
            open.ack.queue(key, &mut self.ready);
        } else {
            open.ack.arm(now + self.cfg.ack_delay);
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
            self.stats.unknown_transfer += 1;
            self.unknown_transfer(key, now);
            return;
        };
        let State::Open(open) = &mut t.state else {
            self.repeat_verdict(key, now, false);
            return;
        };
        if let Some(end) = &mut t.stream_end {
            if hash.alg != HashAlg::Blake3 || end.on_hash(seq, open.received.last()).is_err() {
                self.stats.malformed += 1;
                return;
            }
            if let Err(e) = Self::learn_stream_end(t, storage) {
                self.fail(
                    key,
                    AbortReason::Io,
                    format!("ending the stream: {e}"),
                    storage,
                );
                return;
            }
        }
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        let State::Open(open) = &mut t.state else {
            return;
        };
        if seq != t.info.chunk_count || hash.alg != HashAlg::Blake3 {
            self.stats.malformed += 1;
            return;
        }
        t.last_activity = now;
        open.expected.get_or_insert(hash.hash);
        if open.received.len() == t.info.chunk_count as u64 {
            self.finish(key, now, storage);
        }
    }

    fn on_abort(&mut self, key: TransferKey, abort: &AbortRepr<'_>, storage: &mut S) {
        // A finished transfer keeps its verdict for late packets; only an open one is closed.
        if !self
            .transfers
            .get(&key)
            .is_some_and(|t| matches!(t.state, State::Open(_)))
        {
            return;
        }
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

    /// Once a stream's count and size are both known, it is a file of that size: its offer's
    /// record and storage's say so, and the ordinary checks and verdict apply from then on.
    fn learn_stream_end(t: &mut Transfer<S::Handle>, storage: &mut S) -> std::io::Result<()> {
        let Some((count, size)) = t.stream_end.and_then(|e| e.known()) else {
            return Ok(());
        };
        let State::Open(open) = &mut t.state else {
            return Ok(());
        };
        storage.end_stream(&mut open.handle, size, count)?;
        t.info.size = size;
        t.info.chunk_count = count;
        t.stream_end = None;
        Ok(())
    }

    /// Every chunk is in: storage checks and commits, and the verdict goes to the sender.
    fn finish(&mut self, key: TransferKey, now: Instant, storage: &mut S) {
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        let linger = State::Finished {
            verdict: CompleteRepr {
                status: CompleteStatus::HashMismatch,
                hash: [0; HASH_LEN],
            },
            until: now + self.cfg.verdict_linger,
            last_sent: Some(now),
        };
        let State::Open(open) = std::mem::replace(&mut t.state, linger) else {
            return;
        };
        self.open -= 1;
        let expected = open
            .expected
            .expect("finish runs once the sender's hash is known");
        let verdict = match storage.finish(open.handle, &expected) {
            Ok(v) => v,
            Err(e) => {
                // A file already there under the name, with other contents, is `exists`.
                let (reason, message) = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    (AbortReason::Exists, e.to_string())
                } else if e.kind() == std::io::ErrorKind::InvalidInput {
                    // A link's target that would leave the receiver's directory.
                    (AbortReason::BadName, e.to_string())
                } else {
                    (AbortReason::Io, format!("finishing the file: {e}"))
                };
                self.events.push_back(Event::Failed {
                    src: key.0,
                    transfer_id: key.1,
                    name: t.info.name.clone(),
                    reason,
                    message: message.clone(),
                });
                self.transfers.remove(&key);
                self.send_abort(key, reason, message);
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
        if let State::Finished { verdict: v, .. } = &mut t.state {
            *v = complete;
        }
        self.stats.transfers_finished += 1;
        self.events.push_back(Event::Finished {
            src: key.0,
            transfer_id: key.1,
            name: t.info.name.clone(),
            size: t.info.size,
            duration: now.saturating_duration_since(t.started),
            verified: verdict.verified,
            chunks_received: t.chunks_received,
            duplicates: t.duplicates,
            out_of_order: t.out_of_order,
            resumed_chunks: t.resumed,
        });
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
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        let State::Finished {
            verdict, last_sent, ..
        } = &mut t.state
        else {
            return;
        };
        let recent =
            last_sent.is_some_and(|t| now.saturating_duration_since(t) < VERDICT_REPEAT_INTERVAL);
        if recent && !force {
            return;
        }
        *last_sent = Some(now);
        let (chunk_count, verdict) = (t.info.chunk_count, *verdict);
        self.push_out(
            key,
            Outgoing::Complete {
                transfer_id: key.1,
                chunk_count,
                verdict,
            },
        );
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

    /// Open transfers from the host `src` (at most `max_transfers` to look at): by address, so
    /// that a host's UDP ports do not each get the per-source limit.
    fn open_from(&self, src: IpAddr) -> usize {
        self.transfers
            .iter()
            .filter(|(k, t)| k.0.addr() == src && matches!(t.state, State::Open(_)))
            .count()
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
        let src = self
            .transfers
            .get(&key)
            .map_or(self.answering_local, |t| t.local);
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
    use chunk_common::wire::{HashAlg, MessageType};

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
            let name = format!("f{id}");
            let o = OfferRepr {
                file_size: data.len() as u64,
                chunk_size: CHUNK,
                chunk_count: data.len().div_ceil(CHUNK as usize) as u32,
                mode: 0o644,
                mtime: 0,
                hash_alg: HashAlg::Blake3,
                tag: tag_of(&data),
                name: name.as_bytes(),
            };
            let repr = Repr {
                transfer_id: id,
                seq: 0,
                flags: 0,
                message: Message::Offer(o),
            };
            r.handle_packet(src, Some(LOCAL), &repr, now, st);
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
