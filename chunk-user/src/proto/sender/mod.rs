//! The sender's state machine for one file (docs/PROTOCOL.md, "Sender").
//!
//! Phases: **Offering** (the offer, resent after 200 ms on a path nothing is known of, a
//! round trip and a little on one that is, or at once when the chunks behind it come back
//! `unknown transfer`; doubling to 2 s until an ack or abort),
//! **Sending** (chunks the receiver lacks, in index order, within the configured window and the
//! congestion window, paced), **Closing** (everything acknowledged: wait for the complete message,
//! probing on each RTO), then done with an outcome. The whole-file hash is not in the offer: the
//! driver hashes the file as it reads it for the first copies of its chunks and hands the hash
//! over ([`Sender::set_hash`]) when it reaches the end; the hash message goes out then (twice,
//! back to back, on a path that loses at random), and again as Closing's probe, until the
//! verdict.
//!
//! Loss recovery. Every transmission gets a number from a counter that only grows. A chunk is lost
//! when three transmissions sent after it have been acknowledged: that is exactly "its number is
//! below the third-highest acknowledged number", so three integers replace any per-chunk counting
//! (this also catches a lost retransmission, which a per-chunk duplicate count would not). A chunk
//! is also lost when it has been out for a whole RTO; the RTO (RFC 6298 with a margin for the ack
//! delay and queueing, see [`rtt`]) runs from the oldest transmission still out and doubles on
//! each expiry until a fresh RTT sample (Karn).
//! An ack names chunks, not transmissions, so for a resent chunk the sender cannot always tell
//! which copy arrived. Two cases are certain. First, an ack that comes back sooner after the
//! retransmission than 7/8 of the shortest round trip ever measured (a margin for a minimum that
//! was a little long) answers an earlier copy, so the retransmission was spurious; the earlier
//! copy's send then makes the rate sample. Second, as RACK (RFC 8985) takes it, an ack sent for
//! the chunk's arrival (its echo) that comes later than that answers the retransmission when
//! every earlier copy was declared lost by later acks (none by an RTO, none a tail probe's):
//! those copies are behind later ones that arrived, and a FIFO path delivers nothing sent before
//! the retransmission after it. Loss detection then counts the retransmission as sent when it
//! was, so that one lost again at the file's end, where no new chunk follows, is found by the
//! ones after it in a round trip, not by the RTO; otherwise it counts the first copy's send,
//! which can only make it slower to declare a loss, never declare a false one. When
//! that ack was sent for the arrival of the chunk's only earlier copy (its echo names the chunk:
//! the echo stands in for the timestamp of Eifel's detection, RFC 3522) and an RTO had given up on
//! that copy, the RTO was spurious and is undone (RFC 4015's response): the chunks it gave up on
//! and has not resent yet are in flight again, the timer is widened to what the copy took, and the
//! backoff and the controller's post-RTO window are reset.
//! When the chunks in flight are followed by nothing (window full, end of file) and their acks
//! are lost, a tail probe (RFC 9002's PTO) resends the newest one with `ACK_NOW` about a round
//! trip later instead of waiting for a 200 ms RTO.
//! Rate and window come from [`cc`] (a BBR-like model, see there why not Reno).
//!
//! The transmissions and their losses, the RTO and the tail probes are `recovery`'s; the send
//! times and the window check are `pacing`'s; each phase's own timers and counters travel in
//! its `Phase`.
//!
//! If the receiver forgets the transfer (it restarted, or closed it as idle) it answers data with
//! an `unknown transfer` abort; the sender then offers again under the same id, and the receiver's
//! storage says which chunks it kept (resume).
//!
//! [`rtt`]: super::rtt
//! [`cc`]: super::cc

mod pacing;
mod path;
mod recovery;

use std::time::{Duration, Instant};

use chunk_common::wire::{
    self, AbortReason, AbortRepr, AckRepr, CompleteRepr, CompleteStatus, HASH_LEN, HEADER_LEN,
    HashAlg, HashRepr, Message, OfferRepr, Repr, flags,
};

use pacing::Full;
pub use path::{Path, SharedPath};
use recovery::Recovery;

use super::chunkset::ChunkSet;
use super::{NO_ECHO, chunk_len};

/// Where the sender reads chunks from: a file, or a generator in the simulation.
pub trait ChunkSource {
    /// Fills `buf` with chunk `index`: the file's bytes from `index × chunk_size`, `buf.len()` of
    /// them (the chunk's exact length; the implementation knows the chunk size). Returns the bytes
    /// read; fewer than `buf.len()` means the file shrank, and the transfer fails.
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// What the sender says about the file in its offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Path relative to the receiver's output directory, `/`-separated.
    pub name: String,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    /// This version of the file, as the sender knows it before reading it (see
    /// [`file_tag`](crate::driver::send::file_tag)): the offer carries it, so that a receiver
    /// resumes a partial copy only of the same version. The whole-file hash comes later
    /// ([`Sender::set_hash`]).
    pub tag: [u8; HASH_LEN],
    /// A directory (size 0): the offer carries `DIRECTORY`.
    pub directory: bool,
    /// A symbolic link: its content is the target, and the offer carries `SYMLINK`.
    pub symlink: bool,
    /// A stream (stdin): `size` is what is known so far (0 to start with), and grows by
    /// [`Sender::extend_stream`] until its end; the offer carries `STREAM` and no size.
    pub stream: bool,
    /// A bundle of small files (docs/PROTOCOL.md, "Bundles"), with its manifest's length: the
    /// offer carries `BUNDLE` and no name (`name` is only the sender's), and the chunks past the
    /// manifest wait until the receiver has acknowledged it, with what it already holds.
    pub bundle: Option<u64>,
}

/// Sender tuning; [`Default`] follows the protocol's defaults.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Bytes per chunk (the offer announces it).
    pub chunk_size: u32,
    /// Most chunks unacknowledged at once (`--window`); 1 is stop-and-wait.
    pub window: u32,
    /// A cap on the sending rate, bits per second of chunk packets plus their IPv4 header
    /// (`--rate`). `None`: the congestion controller alone decides.
    pub max_rate: Option<u64>,
    /// Peer silence after which the transfer fails (`--timeout`).
    pub timeout: Duration,
    /// First offer retransmission interval on a path nothing is known of; doubles up to
    /// `offer_max_interval`. Once the path's round trip is known (a re-offer, a later file on a
    /// shared path) the first interval is the probe timeout instead.
    pub offer_interval: Duration,
    pub offer_max_interval: Duration,
    /// RTO before any RTT sample, and its bounds (the minimum is absolute; above it the RTO keeps
    /// its own margin over SRTT, see [`rtt`](super::rtt)).
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Chunks the congestion controller allows before it has any estimate.
    pub initial_cwnd: u32,
    /// On a long path with nothing remembered, read the bottleneck's rate from the first
    /// round's acks and start from half of it (see [`cc`](super::cc)); off, Startup doubles from
    /// the initial window.
    pub first_round: bool,
    /// Receiver forgetting the transfer this many times fails it (see the module comment).
    pub max_reoffers: u32,
    /// Chunks that may go right behind the offer's first copy, before its answer (within the
    /// windows and the pacing as any chunk): a first transfer's first round then costs no round
    /// trip of its own. 0: none, the original wait for the answer.
    pub early_chunks: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            chunk_size: super::DEFAULT_CHUNK_SIZE,
            window: 1 << 16,
            max_rate: None,
            timeout: Duration::from_secs(30),
            offer_interval: Duration::from_millis(200),
            offer_max_interval: Duration::from_secs(2),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            initial_cwnd: 32,
            first_round: true,
            max_reoffers: 4,
            early_chunks: 32,
        }
    }
}

/// Why a transfer failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The receiver answered the offer with an abort.
    #[error("receiver refused the file: {reason} ({message})", reason = .0.as_str(), message = .1)]
    Refused(AbortReason, String),
    /// The receiver aborted the transfer after accepting it.
    #[error("receiver aborted the transfer: {reason} ({message})", reason = .0.as_str(), message = .1)]
    PeerAborted(AbortReason, String),
    /// Nothing heard from the receiver for the configured timeout.
    #[error("no answer from the receiver for {0:?}; giving up")]
    Timeout(Duration),
    /// The receiver's whole-file hash differs from the sender's; no file was left in place.
    #[error("the receiver's hash of the file differs from ours; the file was not kept")]
    HashMismatch {
        expected: [u8; HASH_LEN],
        received: [u8; HASH_LEN],
    },
    /// [`Sender::cancel`] was called.
    #[error("transfer cancelled")]
    Cancelled,
    /// The chunk source failed.
    #[error("reading chunk {index}: {message}")]
    Io { index: u32, message: String },
    /// The file could not be read to its end to hash it.
    #[error("{0}")]
    Hashing(String),
    /// The file needs more chunks than a `u32` counts at this chunk size (or the size is 0).
    #[error("file of {size} bytes needs too many chunks of {chunk_size} bytes")]
    TooManyChunks { size: u64, chunk_size: u32 },
    /// The name does not fit in an offer packet: more than `max(chunk_size, 1024) - 64` bytes.
    #[error("file name too long for an offer ({0} bytes)")]
    NameTooLong(usize),
    /// The receiver forgot a stream (it restarted, or closed it as idle): a stream cannot be
    /// offered again, its beginning is gone.
    #[error(
        "the receiver forgot the stream (it restarted, or closed it as idle), and a stream \
         cannot resume: send it again"
    )]
    StreamLost,
}

/// From this share of packets lost at random (the congestion controller's estimate over
/// queue-free round trips, once several of them lost something,
/// [`Bbr::random_loss_share`](super::cc::Bbr::random_loss_share)), a retransmission
/// sent once every chunk has gone out goes twice, back to back: at 5 % loss a few hundred
/// chunks of the last round trip are resent, and without a copy about one in twenty of them is
/// lost again, each costing another round trip and often an RTO (in `chunk sim`, 200 Mbit/s,
/// 600 ms: 20-30 RTOs in 256 MiB, the last 5 % taking 2-3 round trips longer than its bytes).
/// With it, one in four hundred. The copies are at most 5 % of the transfer's
/// retransmissions, sent on a link the tail leaves idle.
pub const TAIL_COPY_LOSS: f64 = 0.01;
/// At most one tail copy per this many retransmissions (copies included): 5 %.
const TAIL_COPY_BUDGET: u64 = 20;

/// Counters and estimates, for progress bars and the figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SenderStats {
    /// The file's size, as offered.
    pub file_size: u64,
    /// What the controller's start read and why its jump ended, and what each ProbeRtt
    /// measured, in words.
    pub start_notes: Vec<String>,
    pub chunk_count: u32,
    pub offers_sent: u64,
    /// Data packets sent, first transmissions and retransmissions.
    pub chunks_sent: u64,
    pub chunks_retransmitted: u64,
    /// Distinct chunks the receiver has acknowledged.
    pub chunks_acked: u64,
    /// Chunks declared lost by acks (three later transmissions acknowledged).
    pub losses_by_ack: u64,
    pub rto_expiries: u64,
    /// RTO expiries found spurious afterwards (an ack for a chunk they declared lost came back too
    /// soon to answer its retransmission) and undone.
    pub spurious_rtos: u64,
    /// Retransmissions found unneeded the same way (after an RTO or a reordering).
    pub spurious_retransmits: u64,
    /// Tail probes (a chunk in flight resent with `ACK_NOW` after a silent round trip).
    pub tail_probes: u64,
    /// Second copies of retransmissions sent once every chunk had gone out (see
    /// [`TAIL_COPY_LOSS`]); counted in `chunks_retransmitted` too.
    pub tail_copies: u64,
    /// Probes while waiting for the complete message (the hash message once the hash is known,
    /// else the last chunk with `ACK_NOW`).
    pub probes_sent: u64,
    /// Copies of the hash message sent (the probes among them).
    pub hashes_sent: u64,
    /// The file's BLAKE3, once the driver has read it all ([`Sender::set_hash`]).
    pub hash: Option<[u8; HASH_LEN]>,
    /// Offers made again because the receiver had forgotten the transfer.
    pub reoffers: u32,
    /// The receiver accepted the offer (an ack answered it).
    pub offer_accepted: bool,
    /// Chunks the ack that accepted the offer already acknowledged: the receiver had them from
    /// an interrupted transfer (resume), so they were never sent.
    pub chunks_resumed: u64,
    /// A bundle's chunks sent at least once: a member none of whose chunks went was already
    /// at the receiver.
    pub sent: Option<ChunkSet>,
    pub srtt: Option<Duration>,
    pub min_rtt: Option<Duration>,
    pub rto: Duration,
    pub cwnd_bytes: u64,
    pub bytes_in_flight: u64,
    /// The congestion controller's bottleneck estimate, bits/s.
    pub bandwidth_bps: u64,
    /// The rate chunks are paced at, bits/s (after `max_rate`).
    pub pacing_rate_bps: u64,
}

/// Where the transfer is, with what only that phase keeps.
#[derive(Debug)]
enum Phase {
    /// The offer goes out until an ack (or an abort) answers it.
    Offering(Offering),
    /// Chunks go out until every one is acknowledged.
    Sending(Accepted),
    /// Everything is acknowledged: waiting for the complete message, probing for it.
    Closing(Accepted, Probe),
    /// Over, with the outcome.
    Done(Result<(), SendError>),
}

/// The offer's copies and its retransmission timer.
#[derive(Clone, Copy, Debug)]
struct Offering {
    /// A copy is due now (none has gone yet, the timer fired, or an `unknown transfer` for
    /// the chunks behind the only copy said it was lost).
    due: bool,
    /// When the next copy is due, once the last one has gone.
    next: Instant,
    /// The wait after the next copy; doubles up to `offer_max_interval` (or the RTO).
    interval: Duration,
    /// Copies sent so far.
    sends: u32,
    /// When the first copy went out; until one has, when the previous offer's first copy did
    /// (or the sender was made), so that an answer to anything sent before still gives an
    /// upper bound on the round trip.
    first_sent_at: Instant,
    /// When the latest copy went out.
    sent_at: Instant,
    /// An `unknown transfer` abort came while offering: chunks sent behind the offer reached
    /// the receiver before it (the first copy was lost), and were dropped.
    early_lost: bool,
    /// Chunks went behind this offer (see [`Sender::early_at`]).
    early_sent: bool,
}

impl Offering {
    /// An offer whose first copy is due at once, `interval` before the second.
    fn new(interval: Duration, since: Instant) -> Self {
        Self {
            due: true,
            next: since,
            interval,
            sends: 0,
            first_sent_at: since,
            sent_at: since,
            early_lost: false,
            early_sent: false,
        }
    }

    /// A copy goes out at `now`: the next one is due after the interval, which then doubles up
    /// to `cap`.
    fn on_sent(&mut self, now: Instant, cap: Duration) {
        self.due = false;
        if self.sends == 0 {
            self.first_sent_at = now;
        }
        self.sends += 1;
        self.sent_at = now;
        self.next = now + self.interval;
        self.interval = (self.interval * 2).min(cap);
    }
}

/// What the receiver's acceptance of the offer leaves for the phases after it.
#[derive(Clone, Copy, Debug)]
struct Accepted {
    /// When the accepted offer's first copy went out (a re-offer starts from it, see
    /// [`Offering::first_sent_at`]).
    offered_at: Instant,
    /// `unknown transfer` aborts before this are answers to data sent before a re-offer.
    stale_aborts_until: Instant,
}

/// Closing's timer: on each (backed-off) RTO without the verdict, a probe goes.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// A probe is due now (the timer fired).
    due: bool,
    /// When the next probe is due (already set while one is due).
    at: Instant,
    /// Probes so far, each doubling the wait.
    backoff: u32,
}

/// Chunks a receiver may take in order before it acks (docs/PROTOCOL.md, "Acks in detail").
const RECEIVER_ACK_EVERY: usize = 16;

/// The longest the receiver holds an ack (docs/PROTOCOL.md, Receiver 2: at least every 5 ms).
/// Samples have the hold subtracted; every timer adds it back (see [`rtt`](super::rtt)).
const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

/// The longest a stream waiting for its input stays quiet (see `Sender::waiting_for_input`).
/// Well under the 1 s of silence after which a receiver may give the transfer's slot to a new
/// offer from the same address (docs/PROTOCOL.md, "Room from a dead sender").
const KEEPALIVE: Duration = Duration::from_millis(500);

/// The sending side of one transfer.
pub struct Sender {
    id: u32,
    meta: FileMeta,
    cfg: SenderConfig,
    count: u32,
    phase: Phase,
    /// An abort to send once (cancel, timeout, local error), then nothing more.
    pending_abort: Option<(AbortReason, &'static str)>,
    last_heard: Instant,
    acked: ChunkSet,
    /// Chunks at or above this were never sent (unless acknowledged: resume).
    next_new: u64,
    /// A bundle's manifest chunks (0 otherwise): see [`Sender::send_limit`].
    hold: u32,
    /// Chunks sent since the last one that asked for an ack (see [`Sender::ack_for_share`]).
    since_ack_now: u32,
    /// A second copy of the retransmission just sent, to go next (see [`TAIL_COPY_LOSS`]).
    tail_copy: Option<(u32, u16)>,
    recovery: Recovery,
    /// The path to the receiver: its controller, pacer and RTT estimate, shared with the other
    /// transfers to it ([`Sender::on_path`]).
    path: SharedPath,
    /// What this transfer has told the path it has in flight (chunks, bytes).
    reported: (usize, u64),
    scratch: Vec<u8>,
    /// The whole file's BLAKE3, once the driver has read the whole file.
    hash: Option<[u8; HASH_LEN]>,
    /// Copies of the hash message due now: its first, and on a path that loses at random a
    /// second one back to back (later ones go as Closing's probes).
    hash_due: u8,
    /// When the hash message last went out.
    hash_sent_at: Option<Instant>,
    /// A stream's end is known (always, for a file): `count` is final.
    end_known: bool,
    /// When anything last went out (a stream waiting for its input keeps the transfer alive
    /// from it).
    last_tx: Instant,
    /// A keep-alive (the offer again) is due.
    keepalive_due: bool,
    /// Its packets are sealed before they leave ([`Sender::set_sealed`]): written without a
    /// checksum.
    sealed: bool,
    stats: SenderStats,
    /// How the first offer was answered, in words (leads [`SenderStats::start_notes`]).
    offer_note: Option<String>,
}

impl Sender {
    /// A sender for `meta`, which will offer it first thing (`poll_transmit`), on a path of its
    /// own.
    pub fn new(
        transfer_id: u32,
        meta: FileMeta,
        cfg: SenderConfig,
        now: Instant,
    ) -> Result<Self, SendError> {
        let path = Path::shared(&cfg, now);
        Self::on_path(transfer_id, meta, cfg, &path, now)
    }

    /// A sender for `meta` on a path shared with other transfers to the same receiver: they
    /// share its congestion controller, pacer, RTT estimate and `window` (see [`path`]).
    pub fn on_path(
        transfer_id: u32,
        meta: FileMeta,
        cfg: SenderConfig,
        path: &SharedPath,
        now: Instant,
    ) -> Result<Self, SendError> {
        let count = if meta.stream {
            0
        } else {
            wire::chunk_count(meta.size, cfg.chunk_size).ok_or(SendError::TooManyChunks {
                size: meta.size,
                chunk_size: cfg.chunk_size,
            })?
        };
        // The offer must fit in a packet no larger than a data packet, or than one with a
        // 1024-byte payload for small chunks: a larger one may exceed the path MTU that the
        // chunk size was chosen for, and be dropped. Its body is the fixed fields, then the name.
        let name_limit = (cfg.chunk_size as usize).max(1024) - wire::offer::NAME;
        if meta.bundle.is_none() && meta.name.len() > name_limit {
            return Err(SendError::NameTooLong(meta.name.len()));
        }
        path.borrow_mut().transfers += 1;
        Ok(Self {
            id: transfer_id,
            count,
            phase: Phase::Offering(Offering::new(
                first_offer_interval(&cfg, &path.borrow()),
                now,
            )),
            pending_abort: None,
            last_heard: now,
            acked: ChunkSet::new(),
            next_new: 0,
            recovery: Recovery::new(now),
            path: path.clone(),
            reported: (0, 0),
            scratch: vec![0; cfg.chunk_size as usize],
            hash: None,
            hash_due: 0,
            hash_sent_at: None,
            end_known: !meta.stream,
            last_tx: now,
            keepalive_due: false,
            sealed: false,
            since_ack_now: 0,
            tail_copy: None,
            hold: meta.bundle.map_or(0, |m| {
                m.div_ceil(cfg.chunk_size as u64).min(count as u64) as u32
            }),
            stats: SenderStats {
                file_size: meta.size,
                chunk_count: count,
                sent: meta.bundle.map(|_| ChunkSet::new()),
                ..SenderStats::default()
            },
            offer_note: None,
            meta,
            cfg,
        })
    }

    pub fn transfer_id(&self) -> u32 {
        self.id
    }

    pub fn chunk_count(&self) -> u32 {
        self.count
    }

    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.cfg.chunk_size
    }

    /// A stream has `available` bytes so far (`end`: and no more). Its chunks up to the last
    /// whole one (all of them at the end) may go; at the end the count is final, and once every
    /// chunk is acknowledged the transfer closes as a file's does. Ignored for a file, and once
    /// the end is known.
    pub fn extend_stream(&mut self, available: u64, end: bool, now: Instant) {
        if self.end_known || self.is_done() || available < self.meta.size {
            return;
        }
        let cs = self.cfg.chunk_size as u64;
        let count = if end {
            available.div_ceil(cs)
        } else {
            available / cs
        };
        if count > wire::UNKNOWN_COUNT as u64 - 1 {
            let err = SendError::TooManyChunks {
                size: available,
                chunk_size: self.cfg.chunk_size,
            };
            self.fail(err, Some((AbortReason::TooLarge, "stream too long")));
            return;
        }
        self.meta.size = available;
        self.count = count as u32;
        self.stats.chunk_count = self.count;
        self.stats.file_size = available;
        if end {
            self.end_known = true;
            self.close_if_all_acked(now);
        }
    }

    /// The receiver has accepted the offer (an ack answered it).
    pub fn accepted(&self) -> bool {
        self.stats.offer_accepted
    }

    /// Chunks `0..n` are all acknowledged: a stream's sender may let go of them.
    pub fn acked_prefix(&self) -> u64 {
        let count = self.count as u64;
        self.acked.next_missing(0, count).unwrap_or(count)
    }

    /// Chunks the receiver has acknowledged, and the chunk count.
    pub fn progress(&self) -> (u64, u32) {
        (self.acked.len(), self.count)
    }

    /// The smallest `buf` that [`poll_transmit`](Self::poll_transmit) accepts.
    pub fn max_packet_len(&self) -> usize {
        HEADER_LEN + (self.cfg.chunk_size as usize).max(wire::offer::NAME + self.meta.name.len())
    }

    /// The result, once the transfer is over. After it is `Some`, call `poll_transmit` until it
    /// returns `None`: a final abort may still be waiting to go out.
    pub fn outcome(&self) -> Option<Result<(), SendError>> {
        match &self.phase {
            Phase::Done(result) => Some(result.clone()),
            _ => None,
        }
    }

    /// Cancels the transfer: one abort (reason cancelled) goes out, then nothing.
    pub fn cancel(&mut self) {
        if !self.is_done() {
            self.fail(
                SendError::Cancelled,
                Some((AbortReason::Cancelled, "cancelled by the sender")),
            );
            self.sync_flight();
        }
    }

    pub fn stats(&self) -> SenderStats {
        let mut s = self.stats.clone();
        s.chunks_acked = self.acked.len();
        s.rto = self.rto(self.recovery.backoff());
        s.bytes_in_flight = self.recovery.bytes_in_flight();
        let path = self.path.borrow();
        s.srtt = path.rtt.smoothed();
        s.min_rtt = path.cc.min_rtt();
        s.cwnd_bytes = path.cc.cwnd();
        s.bandwidth_bps = (path.cc.bandwidth() * 8.0) as u64;
        s.pacing_rate_bps = (path.pacer.rate(&path.cc) * 8.0) as u64;
        s.start_notes = self.offer_note.iter().cloned().collect();
        s.start_notes.extend_from_slice(path.cc.start_notes());
        drop(path);
        s.hash = self.hash;
        s
    }

    /// Feeds one packet from the receiver (already checksum-checked and parsed).
    pub fn handle_packet(&mut self, repr: &Repr<'_>, now: Instant) {
        self.on_packet(repr, now);
        self.sync_flight();
    }

    fn on_packet(&mut self, repr: &Repr<'_>, now: Instant) {
        if repr.transfer_id != self.id || self.is_done() {
            return;
        }
        match repr.message {
            Message::Ack(ack) => {
                self.last_heard = now;
                match self.phase {
                    Phase::Offering(offering) => self.on_offer_accepted(offering, &ack, now),
                    Phase::Sending(_) => self.on_ack(&ack, now),
                    Phase::Closing(..) | Phase::Done(_) => {}
                }
            }
            Message::Complete(complete) if repr.seq == self.count => {
                self.last_heard = now;
                self.on_complete(&complete);
            }
            Message::Abort(abort) => {
                self.last_heard = now;
                self.on_abort(&abort, now);
            }
            // Data and offers go the other way; a complete with a wrong count is malformed.
            _ => {}
        }
    }

    /// When the sender next wants [`handle_timeout`](Self::handle_timeout), or to be polled for a
    /// paced chunk.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase_timer = match &self.phase {
            Phase::Done(_) => return None,
            Phase::Offering(o) => {
                let early = self.early_at().filter(|_| self.can_send_data());
                opt_min((!o.due).then_some(o.next), early)
            }
            Phase::Sending(_) => {
                let path = self.path.borrow();
                let pacing = (self.can_send_data() || self.tail_copy.is_some())
                    .then(|| path.pacer.next_send_at());
                let probe = self.recovery.tail_probe_timer(path.rtt.reply_timeout());
                let keepalive = (self.waiting_for_input() && !self.keepalive_due)
                    .then(|| self.last_tx + self.keepalive());
                opt_min(
                    opt_min(opt_min(self.rto_deadline(), pacing), probe),
                    keepalive,
                )
            }
            Phase::Closing(_, p) => (!p.due).then_some(p.at),
        };
        opt_min(Some(self.last_heard + self.cfg.timeout), phase_timer)
    }

    /// Fires whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_timeout(now);
        self.sync_flight();
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        if now >= self.last_heard + self.cfg.timeout {
            let err = SendError::Timeout(self.cfg.timeout);
            self.fail(
                err,
                Some((AbortReason::Timeout, "receiver silent; sender gave up")),
            );
            return;
        }
        match &mut self.phase {
            Phase::Offering(o) => {
                if now >= o.next {
                    o.due = true;
                }
            }
            Phase::Sending(_) => {
                if self.waiting_for_input() && now >= self.last_tx + self.keepalive() {
                    self.keepalive_due = true;
                }
                if self.rto_deadline().is_some_and(|d| now >= d) {
                    self.on_rto(now);
                } else if self
                    .recovery
                    .tail_probe_deadline(self.path.borrow().rtt.reply_timeout())
                    .is_some_and(|d| now >= d)
                {
                    self.recovery.on_tail_probe_timeout();
                    self.stats.tail_probes += 1;
                }
            }
            Phase::Closing(_, p) => {
                if !p.due && now >= p.at {
                    p.due = true;
                    p.backoff += 1;
                    p.at = now + probe_after(&self.path.borrow().rtt, p.backoff, self.cfg.timeout);
                }
            }
            Phase::Done(_) => {}
        }
    }

    /// Writes the next packet to send into `buf` and returns its length, or `None` if nothing is
    /// due now. Call it until `None` after every other call.
    pub fn poll_transmit<C: ChunkSource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut C,
        buf: &mut [u8],
    ) -> Option<usize> {
        let sent = self.transmit(now, source, buf);
        if sent.is_some() {
            self.last_tx = now;
        }
        self.sync_flight();
        sent
    }

    /// A stream waiting for its input: nothing in flight, nothing to send, no end. Its sender
    /// and receiver would each give up on the silence; the offer, sent again every
    /// [`keepalive`](Self::keepalive) (a receiver answers it with an ack), keeps both alive.
    fn waiting_for_input(&self) -> bool {
        !self.end_known
            && matches!(self.phase, Phase::Sending(_))
            && self.recovery.chunks_in_flight() == 0
            && self.next_chunk().is_none()
    }

    /// How long a stream waiting for its input stays quiet: well inside the timeout.
    fn keepalive(&self) -> Duration {
        (self.cfg.timeout / 4).min(KEEPALIVE)
    }

    fn transmit<C: ChunkSource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut C,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.pending_abort.is_some() {
            return self.emit_pending_abort(buf);
        }
        if self.hash_due > 0 && matches!(self.phase, Phase::Sending(_) | Phase::Closing(..)) {
            self.hash_due -= 1;
            return self.emit_hash(now, buf);
        }
        match &mut self.phase {
            Phase::Done(_) => None,
            Phase::Offering(_) => match self.send_offer(now, buf) {
                Some(len) => Some(len),
                None if self.early_at().is_some_and(|t| now >= t) => {
                    let len = self.send_data(now, source, buf)?;
                    if let Phase::Offering(o) = &mut self.phase {
                        o.early_sent = true;
                    }
                    Some(len)
                }
                None => None,
            },
            Phase::Closing(_, p) => {
                if !p.due {
                    return None;
                }
                p.due = false;
                self.stats.probes_sent += 1;
                if self.hash.is_some() {
                    // The hash message is the probe: the receiver answers it with the verdict
                    // (or, lacking chunks, the acks say which).
                    return self.emit_hash(now, buf);
                }
                match self.count.checked_sub(1) {
                    Some(last) => self.emit_chunk(last, flags::ACK_NOW, source, buf),
                    // An empty file has no chunk to probe with: offer again, which a receiver
                    // that finished answers with its verdict.
                    None => self.emit_offer(buf, flags::ACK_NOW),
                }
            }
            Phase::Sending(_) if self.keepalive_due => {
                self.keepalive_due = false;
                self.stats.offers_sent += 1;
                self.emit_offer(buf, 0)
            }
            Phase::Sending(_) => self.send_data(now, source, buf),
        }
    }

    /// Whether chunks may go before the offer's answer: behind its first copy, the first
    /// [`SenderConfig::early_chunks`] of the file, on a path whose round trip is not known yet
    /// (docs/PROTOCOL.md, Sender 1). A receiver takes packets in the order they come, so on a
    /// path that keeps order they find the transfer open; those that arrive before the offer
    /// (its first copy was lost) get `unknown transfer`, and go again when the answer comes
    /// (see [`Sender::on_offer_accepted`]). The answer still says what the receiver held before
    /// them (resume), and their own acks follow it.
    ///
    /// Only the first files on a path, and not with a remembered estimate to check: there the
    /// round trip they save is a first round of Startup (on a long path, the one its rate is
    /// read from). A remembered estimate jumps at the answer, from the first chunk on; chunks
    /// sent a round trip ahead of the jump would split its first window in two, and one of
    /// their last three lost would be found only by the RTO (no three chunks after it come
    /// back before the jump's), which ends the jump (seen at 600 ms, 5 % loss). A later file of
    /// a tree finds the path known and busy, the window shared, and its offer's round trip
    /// overlapped by the other files' chunks; chunks sent ahead there would mostly be ones a
    /// receiver that already holds the file (a tree sent again) does not need.
    ///
    /// They go from the next poll after the offer's (a microsecond later), never in the same
    /// batch: the offer leaves first, and reading the file for them does not hold it back.
    /// Returns when the next one may go, if one may.
    fn early_at(&self) -> Option<Instant> {
        let Phase::Offering(o) = &self.phase else {
            return None;
        };
        let path = self.path.borrow();
        (o.sends > 0
            && self.next_new < self.cfg.early_chunks as u64
            && path.rtt.smoothed().is_none()
            && path.cc.pending_resume_rtt().is_none())
        .then(|| {
            path.pacer
                .next_send_at()
                .max(o.first_sent_at + Duration::from_micros(1))
        })
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// Chunks and bytes in flight on the whole path, this transfer's current figures included
    /// (the path holds what it last reported).
    fn path_in_flight(&self) -> (usize, u64) {
        let p = self.path.borrow();
        (
            p.chunks_in_flight - self.reported.0 + self.recovery.chunks_in_flight(),
            p.bytes_in_flight - self.reported.1 + self.recovery.bytes_in_flight(),
        )
    }

    /// Tells the path what this transfer has in flight now (after every public call).
    fn sync_flight(&mut self) {
        let now = (
            self.recovery.chunks_in_flight(),
            self.recovery.bytes_in_flight(),
        );
        if now != self.reported {
            let mut p = self.path.borrow_mut();
            p.chunks_in_flight = p.chunks_in_flight - self.reported.0 + now.0;
            p.bytes_in_flight = p.bytes_in_flight - self.reported.1 + now.1;
            self.reported = now;
        }
    }

    /// Nothing (more) to send: the controller's samples until what is in flight now is
    /// delivered say nothing about the path's capacity. On a shared path that holds only when
    /// no other transfer is sending either; one whose data has run out while others go on
    /// leaves the samples alone.
    fn on_app_limited(&mut self, bytes_out: u64) {
        let mut p = self.path.borrow_mut();
        if p.transfers == 1 || bytes_out == self.recovery.bytes_in_flight() {
            p.cc.on_app_limited(bytes_out);
        }
    }

    /// The whole file's hash, from the driver once it has read the file to its end. Its first
    /// copy goes out with the next transmission (once the offer is accepted); Closing's probes
    /// repeat it until the verdict. Only the first call counts: a file has one hash.
    ///
    /// The hash goes when the last chunks have gone once, so the verdict waits for it at the
    /// end; lost, it costs a round trip (see [`close_if_all_acked`](Self::close_if_all_acked)).
    /// So on a path that loses at random, as for the tail's retransmissions, it goes twice.
    pub fn set_hash(&mut self, hash: [u8; HASH_LEN]) {
        if self.hash.is_none() && !self.is_done() {
            self.hash = Some(hash);
            let lossy = self.path.borrow().cc.random_loss_share() >= TAIL_COPY_LOSS;
            self.hash_due = if lossy { 2 } else { 1 };
        }
    }

    /// Whether the verdict now waits for the hash alone: every chunk is acknowledged (or was
    /// already there, resume) and [`set_hash`](Self::set_hash) has not been called. The driver
    /// then reads what it has not read of the file, to hash it.
    pub fn needs_hash(&self) -> bool {
        self.hash.is_none() && matches!(self.phase, Phase::Closing(..))
    }

    /// Whether every chunk has gone out at least once (or was acknowledged without: resume).
    pub fn all_sent_once(&self) -> bool {
        self.next_new >= self.count as u64 && !matches!(self.phase, Phase::Offering(_))
    }

    /// Says that every packet of this transfer is sealed before it leaves (encryption): the
    /// packets are then written with their checksum field zero, as a sealed packet's plaintext
    /// carries it, instead of checksummed for the seal to zero again: one pass less over each.
    pub fn set_sealed(&mut self, sealed: bool) {
        self.sealed = sealed;
    }

    fn write(sealed: bool, repr: &Repr<'_>, buf: &mut [u8]) -> Option<usize> {
        if sealed {
            repr.emit_without_checksum(buf).ok()
        } else {
            repr.emit(buf).ok()
        }
    }

    fn emit_hash(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let hash = self.hash?;
        self.stats.hashes_sent += 1;
        self.hash_sent_at = Some(now);
        let repr = Repr {
            transfer_id: self.id,
            seq: self.count,
            flags: 0,
            message: Message::Hash(HashRepr {
                alg: HashAlg::Blake3,
                hash,
            }),
        };
        Self::write(self.sealed, &repr, buf)
    }

    /// The next copy of the offer, if one is due.
    fn send_offer(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let cap = self.cfg.offer_max_interval.max(self.first_offer_interval());
        let Phase::Offering(o) = &mut self.phase else {
            return None;
        };
        if !o.due {
            return None;
        }
        o.on_sent(now, cap);
        self.stats.offers_sent += 1;
        self.emit_offer(buf, 0)
    }

    fn emit_offer(&self, buf: &mut [u8], flags: u16) -> Option<usize> {
        let stream = self.meta.stream;
        let flags = flags
            | if stream { flags::STREAM } else { 0 }
            | if self.meta.directory {
                chunk_common::wire::flags::DIRECTORY
            } else {
                0
            }
            | if self.meta.symlink {
                chunk_common::wire::flags::SYMLINK
            } else {
                0
            }
            | if self.meta.bundle.is_some() {
                flags::BUNDLE
            } else {
                0
            };
        let repr = Repr {
            transfer_id: self.id,
            seq: 0,
            flags,
            message: Message::Offer(OfferRepr {
                file_size: if stream { 0 } else { self.meta.size },
                chunk_size: self.cfg.chunk_size,
                chunk_count: if stream {
                    wire::UNKNOWN_COUNT
                } else {
                    self.count
                },
                mode: self.meta.mode,
                mtime: self.meta.mtime,
                hash_alg: HashAlg::Blake3,
                tag: self.meta.tag,
                // A bundle's offer has no name: its members' are in its manifest.
                name: if self.meta.bundle.is_some() {
                    b""
                } else {
                    self.meta.name.as_bytes()
                },
            }),
        };
        Self::write(self.sealed, &repr, buf)
    }

    /// Reads chunk `index` and writes its data packet; a read failure ends the transfer.
    fn emit_chunk<C: ChunkSource + ?Sized>(
        &mut self,
        index: u32,
        extra_flags: u16,
        source: &mut C,
        buf: &mut [u8],
    ) -> Option<usize> {
        let len = chunk_len(self.meta.size, self.cfg.chunk_size, index);
        let data = &mut self.scratch[..len];
        let read = match source.read_chunk(index, data) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(format!("short read: {n} of {len} bytes (file changed?)")),
            Err(e) => Err(e.to_string()),
        };
        if let Err(message) = read {
            let abort = (AbortReason::Io, "sender could not read the file");
            self.fail(SendError::Io { index, message }, Some(abort));
            return self.emit_pending_abort(buf);
        }
        // A stream's chunk is the last only once its end is known.
        let more = if index + 1 < self.count || !self.end_known {
            flags::MORE_CHUNKS
        } else {
            0
        };
        let repr = Repr {
            transfer_id: self.id,
            seq: index,
            flags: more | extra_flags,
            message: Message::Data { payload: data },
        };
        Self::write(self.sealed, &repr, buf)
    }

    fn emit_pending_abort(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (reason, message) = self.pending_abort.take()?;
        let repr = Repr {
            transfer_id: self.id,
            seq: 0,
            flags: 0,
            message: Message::Abort(AbortRepr {
                reason,
                message: message.as_bytes(),
            }),
        };
        Self::write(self.sealed, &repr, buf)
    }

    /// The next chunk to send: the lowest lost one, else the lowest never sent and not acked;
    /// with the number of times it was sent.
    fn next_chunk(&self) -> Option<(u32, u32)> {
        if let Some(lost) = self.recovery.first_lost() {
            return Some(lost);
        }
        let index = self.acked.next_missing(self.next_new, self.send_limit())?;
        Some((index as u32, 0))
    }

    /// The end of the chunks that may go now: a bundle's manifest chunks alone until the
    /// receiver has acknowledged them all (its answer says which members it holds already).
    fn send_limit(&self) -> u64 {
        if self.hold > 0 && self.acked.cumulative() < self.hold {
            self.hold as u64
        } else {
            self.count as u64
        }
    }

    fn chunk_bytes(&self, index: u32) -> u64 {
        (HEADER_LEN + chunk_len(self.meta.size, self.cfg.chunk_size, index)) as u64
    }

    /// Whether a packet of `bytes` fits in both windows beside `chunks_out` chunks and
    /// `bytes_out` bytes in flight.
    fn room(&self, chunks_out: usize, bytes_out: u64, bytes: u64) -> Result<(), Full> {
        pacing::room(
            self.cfg.window,
            self.path.borrow().cc.cwnd(),
            chunks_out,
            bytes_out,
            bytes,
        )
    }

    /// Something to send, and room for it in both windows (pacing aside).
    fn can_send_data(&self) -> bool {
        let Some((index, _)) = self.next_chunk() else {
            return false;
        };
        let bytes = self.chunk_bytes(index);
        let (chunks_out, bytes_out) = self.path_in_flight();
        self.room(chunks_out, bytes_out, bytes).is_ok()
    }

    fn send_data<C: ChunkSource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut C,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.recovery.take_tail_probe() {
            if let Some(len) = self.send_tail_probe(now, source, buf) {
                return Some(len);
            }
        }
        if now < self.path.borrow().pacer.next_send_at() {
            return None;
        }
        if let Some((index, flags)) = self.tail_copy.take()
            && !self.acked.contains(index)
        {
            let len = self.emit_chunk(index, flags, source, buf)?;
            if self.is_done() {
                return Some(len);
            }
            let bytes = self.chunk_bytes(index);
            let mut path = self.path.borrow_mut();
            let rate = path.pacer.rate(&path.cc);
            path.pacer.on_sent(now, bytes, rate);
            self.stats.chunks_sent += 1;
            self.stats.chunks_retransmitted += 1;
            self.stats.tail_copies += 1;
            return Some(len);
        }
        let (chunks_out, bytes_out) = self.path_in_flight();
        let Some((index, sends)) = self.next_chunk() else {
            // Everything is out: what gets acked now says nothing about the path's capacity.
            self.on_app_limited(bytes_out);
            return None;
        };
        let bytes = self.chunk_bytes(index);
        match self.room(chunks_out, bytes_out, bytes) {
            Ok(()) => {}
            // The user's window, not the path, is the limit: same as running out of data.
            Err(Full::Window) => {
                self.on_app_limited(bytes_out);
                return None;
            }
            Err(Full::Congestion) => return None,
        }
        let retransmit = sends > 0;
        // Ask for an ack at once when this is the last chunk we can send for now (no room for
        // another after it, or nothing left), so a sender that has to wait does not also wait for
        // a delayed ack.
        let window_full = self.room(chunks_out + 1, bytes_out + bytes, bytes).is_err();
        let last_for_now = if retransmit {
            self.recovery.lost_len() == 1
                && self
                    .acked
                    .next_missing(self.next_new, self.send_limit())
                    .is_none()
        } else {
            self.acked
                .next_missing(index as u64 + 1, self.send_limit())
                .is_none()
                // The last chunk before the offer's answer.
                || (matches!(self.phase, Phase::Offering(_))
                    && index as u64 + 1 >= self.cfg.early_chunks as u64)
                // A quarter into the first round behind the offer: with the receiver's own ack
                // 16 chunks later (it acks every 16) and the last one's, three acks echo the
                // train, the first two 16 chunks apart (the reading is taken from the first
                // two that span `cc::TRAIN_MIN_CHUNKS`), and one of them lost still leaves two
                // that span a reading of the bottleneck.
                || (matches!(self.phase, Phase::Offering(_))
                    && index as u64 + 1 == self.cfg.early_chunks as u64 / 4)
        };
        let ack_now = if self.recovery.ack_now()
            || window_full
            || last_for_now
            || self.ack_for_share(bytes)
        {
            self.since_ack_now = 0;
            flags::ACK_NOW
        } else {
            0
        };
        let len = self.emit_chunk(index, ack_now, source, buf)?;
        if self.is_done() {
            // The read failed; `len` is the abort.
            return Some(len);
        }

        let mut path = self.path.borrow_mut();
        let path = &mut *path;
        let snapshot = path.cc.on_send(now, bytes_out);
        self.recovery.on_sent(index, bytes, snapshot, now);
        self.stats.chunks_sent += 1;
        if ack_now == 0 {
            self.since_ack_now += 1;
        }
        if let Some(sent) = &mut self.stats.sent {
            sent.insert(index);
        }
        if retransmit {
            self.stats.chunks_retransmitted += 1;
        } else {
            self.next_new = index as u64 + 1;
        }
        // The tail: every chunk has gone out, so the link has room, and a retransmission lost
        // again costs another round trip (found only by a tail probe when it was the last).
        // On a path that loses at random, its second copy goes next, while the copies stay
        // within 5 % of the retransmissions (a file of a few round trips is mostly tail),
        // and always for a chunk lost more than once: the last round's first retransmissions
        // may use up that budget, and the few lost again are the ones the file waits for.
        if retransmit
            && self.next_new >= self.count as u64
            && self.end_known
            && path.cc.random_loss_share() >= TAIL_COPY_LOSS
            && (sends >= 2
                || self.stats.tail_copies * TAIL_COPY_BUDGET < self.stats.chunks_retransmitted)
        {
            self.tail_copy = Some((index, ack_now));
        }
        let rate = path.pacer.rate(&path.cc);
        path.pacer.on_sent(now, bytes, rate);
        Some(len)
    }

    /// Whether to ask for an ack now because the path's window is shared: with several
    /// transfers on the path, each holds only its share of the window in flight, which may be
    /// fewer chunks than a receiver takes between acks (16; docs/PROTOCOL.md, "Acks in
    /// detail"). Its acks would then wait the receiver's 5 ms timer, the window full meanwhile:
    /// 16 transfers of 1 MiB went at a fifth of one file's rate. So a transfer whose share is
    /// under twice that asks once per share of chunks sent (once per half share asked twice as
    /// often for no gain).
    fn ack_for_share(&self, bytes: u64) -> bool {
        let p = self.path.borrow();
        if p.transfers < 2 {
            return false;
        }
        let window = (p.cc.cwnd() / bytes.max(1)) as usize;
        let share = window / p.transfers;
        if share >= 2 * RECEIVER_ACK_EVERY {
            return false;
        }
        let every = share.clamp(1, RECEIVER_ACK_EVERY);
        self.since_ack_now as usize + 1 >= every
    }

    /// Sends the most recently sent chunk still in flight again with `ACK_NOW` (see
    /// [`Recovery::tail_probe_deadline`]), outside the congestion window.
    fn send_tail_probe<C: ChunkSource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut C,
        buf: &mut [u8],
    ) -> Option<usize> {
        let index = self.recovery.newest_in_flight()?;
        let len = self.emit_chunk(index, flags::ACK_NOW, source, buf)?;
        if self.is_done() {
            return Some(len);
        }
        self.recovery.on_tail_probe_sent(index, now);
        self.stats.chunks_sent += 1;
        self.stats.chunks_retransmitted += 1;
        Some(len)
    }

    fn on_offer_accepted(&mut self, offering: Offering, ack: &AckRepr<'_>, now: Instant) {
        // The offer's round trip is a fine first sample, if there was only one offer (Karn).
        // Otherwise (the path is longer than the offer interval, or an offer was lost) the time
        // since the first copy is still an upper bound, which sizes the first RTO: without it the
        // first chunks would run on the 1 s initial RTO, shorter than a long path's round trip.
        // The controller gets nothing: its minimum RTT must be a sample, not a bound.
        if ack.echo == NO_ECHO {
            let delay = Duration::from_micros(ack.delay_us as u64);
            if offering.sends == 1 {
                if let Some(rtt) = now
                    .saturating_duration_since(offering.sent_at)
                    .checked_sub(delay)
                {
                    let mut path = self.path.borrow_mut();
                    path.rtt.on_sample(rtt);
                    path.cc.on_rtt(now, rtt);
                }
            } else if let Some(bound) = now
                .saturating_duration_since(offering.first_sent_at)
                .checked_sub(delay)
            {
                self.path.borrow_mut().rtt.on_upper_bound(bound);
            }
            // A remembered estimate of the path is checked against the offer's round trip,
            // between the answer's time since the last copy and since the first.
            let since = |t: Instant| now.saturating_duration_since(t).saturating_sub(delay);
            self.path.borrow_mut().cc.check_resume(
                since(offering.sent_at),
                since(offering.first_sent_at),
                now,
            );
        } else if let Some((_, _, Some(rtt))) = self.echoed_copy(ack, now) {
            // The answer was lost and this ack is for a chunk sent behind the offer: its round
            // trip is exact (sent once, its delay subtracted), and checks a remembered estimate
            // as the answer's would have, before the chunks it acknowledges count as delivered.
            self.path.borrow_mut().cc.check_resume(rtt, rtt, now);
        }
        let idle = self.path_in_flight().0 == 0;
        let mut path = self.path.borrow_mut();
        self.phase = Phase::Sending(Accepted {
            offered_at: offering.first_sent_at,
            stale_aborts_until: now + path.rtt.smoothed().unwrap_or(path.rtt.rto()),
        });
        // The first chunk may go at once, unless other transfers keep the path busy: then it
        // takes its turn at the path's pace.
        if idle {
            path.pacer.start(now);
        }
        drop(path);
        // It may already acknowledge chunks (resume).
        let before = self.acked.len();
        self.on_ack(ack, now);
        if offering.early_lost {
            // The chunks sent behind the offer reached the receiver before it, and were
            // dropped (`unknown transfer`): they go again now, not after a tail probe or an RTO
            // (they fill the first window, so no later chunk's ack would show them lost). Some
            // may have come after the offer (it was overtaken, not lost) and be acknowledged
            // yet: they stay on record as sent, so their acks time the right copy. (Forgetting
            // them instead, an ack for a first copy timed the second, sent a moment before:
            // seen once at 600 ms without loss, 2096 RTOs and the whole file sent twice.)
            self.recovery.lose_all();
        }
        if !self.stats.offer_accepted {
            self.stats.offer_accepted = true;
            self.offer_note = Some(format!(
                "offer answered {:?} after its first copy, {} cop{} sent, by {}{}",
                now.saturating_duration_since(offering.first_sent_at),
                offering.sends,
                if offering.sends == 1 { "y" } else { "ies" },
                if ack.echo == NO_ECHO {
                    "its answer"
                } else {
                    "a data ack"
                },
                if offering.early_lost {
                    ", the chunks behind it lost"
                } else {
                    ""
                }
            ));
            // What the receiver held before. The answer says so exactly: it was sent before the
            // chunks behind the offer were handled. A data ack taken as the answer (the answer
            // itself lost) may also acknowledge those chunks: they were sent, not resumed.
            let early = if ack.echo == NO_ECHO {
                0
            } else {
                (0..self.next_new.min(self.count as u64))
                    .filter(|&i| self.acked.contains(i as u32))
                    .count() as u64
            };
            self.stats.chunks_resumed = self.acked.len() - before - early;
        }
    }

    /// The copy of the echoed chunk this ack certainly answers (see
    /// [`Recovery::only_copy_acked`]), how long ago it went, and that less the ack's delay: a
    /// round-trip sample.
    fn echoed_copy(
        &self,
        ack: &AckRepr<'_>,
        now: Instant,
    ) -> Option<(recovery::OnlyCopy, Duration, Option<Duration>)> {
        if ack.echo == NO_ECHO || !ack.has(ack.echo) {
            return None;
        }
        let copy = self
            .recovery
            .only_copy_acked(ack.echo, now, &self.path.borrow().rtt)?;
        let age = now.saturating_duration_since(copy.sent_at);
        let delay = Duration::from_micros(ack.delay_us as u64);
        Some((copy, age, age.checked_sub(delay)))
    }

    fn on_ack(&mut self, ack: &AckRepr<'_>, now: Instant) {
        let count = self.count as u64;
        // A round trip, if the ack was sent for a copy it certainly answers (see
        // [`Recovery::only_copy_acked`]); and if an RTO had given up on that copy, how long it took.
        // When the echoed chunk reached the receiver, on this side's clock: the controller reads
        // the bottleneck's spacing of the first round's chunks from it.
        let arrived = (ack.echo != NO_ECHO)
            .then(|| now.checked_sub(Duration::from_micros(ack.delay_us as u64)))
            .flatten();
        let echoed = self.echoed_copy(ack, now);
        let rtt_sample = echoed.and_then(|(_, _, sample)| sample);
        let spurious_rto = echoed.and_then(|(copy, age, _)| copy.by_rto.then_some(age));

        let acked_before = self.acked.len();
        let cumulative = (ack.cumulative as u64).min(count) as u32;
        let mut guard = self.path.borrow_mut();
        let path = &mut *guard;
        let mut spurious =
            self.recovery
                .on_acked_below(cumulative, ack.echo, now, &path.rtt, &mut path.cc);
        self.acked.insert_below(cumulative);

        // The bitmap, 64 chunks at a time, looking only at bits not already known.
        for (j, bytes) in ack.bitmap.chunks(8).enumerate() {
            let start = ack.base as u64 + 64 * j as u64;
            if start >= count {
                break;
            }
            let mut word = [0u8; 8];
            word[..bytes.len()].copy_from_slice(bytes);
            let mut word = u64::from_le_bytes(word);
            if count - start < 64 {
                word &= (1u64 << (count - start)) - 1;
            }
            let mut new = word & !self.acked.word_at(start);
            while new != 0 {
                let index = (start + new.trailing_zeros() as u64) as u32;
                new &= new - 1;
                self.acked.insert(index);
                spurious += self
                    .recovery
                    .on_acked(index, ack.echo, now, &path.rtt, &mut path.cc)
                    as u64;
            }
        }
        self.stats.spurious_retransmits += spurious;

        if let Some(rtt) = rtt_sample {
            path.rtt.on_sample(rtt);
            self.recovery.reset_backoff();
        }
        drop(guard);
        if let Some(age) = spurious_rto {
            self.undo_spurious_rto(age);
        }
        if self.acked.len() > acked_before {
            // New chunks acknowledged: the path works, whether or not Karn allowed a sample
            // (as Linux does; RFC 6298 §5.7 permits it).
            self.recovery.reset_backoff();
        }
        let lost = self.recovery.on_ack_end();
        self.stats.losses_by_ack += lost;
        let (_, bytes_out) = self.path_in_flight();
        let mut path = self.path.borrow_mut();
        path.cc.on_lost(lost);
        // Read from one transfer's acks only: another's, held up to 5 ms longer, may report
        // chunks that arrived before the first one read.
        let arrived = arrived.filter(|_| path.transfers == 1);
        path.cc.on_ack_end(now, rtt_sample, arrived, bytes_out);
        drop(path);
        self.close_if_all_acked(now);
    }

    /// Every chunk is acknowledged and there will be no more: wait for the verdict, probing
    /// for it `first` from now.
    fn close_after(&mut self, now: Instant, first: Duration) {
        if self.end_known && self.acked.len() == self.count as u64 {
            if let Phase::Sending(accepted) = self.phase {
                let probe = Probe {
                    due: false,
                    at: now + first,
                    backoff: 0,
                };
                self.phase = Phase::Closing(accepted, probe);
            }
        }
    }

    /// Closes (see [`close_after`](Self::close_after)) with the first probe a reply timeout
    /// from now, or at once when the hash message went out a reply timeout or more ago: a
    /// receiver acknowledges every chunk instead of sending its verdict only while it lacks the
    /// hash message, and that one had time to arrive before this ack was sent, so it was lost.
    /// (At 600 ms and 5 % loss the wait made one transfer in twenty end 1.3 s late.)
    fn close_if_all_acked(&mut self, now: Instant) {
        let wait = probe_after(&self.path.borrow().rtt, 0, self.cfg.timeout);
        let lost = self.hash_sent_at.is_some_and(|at| now >= at + wait);
        self.close_after(now, if lost { Duration::ZERO } else { wait });
    }

    /// An RTO turned out spurious (its chunks were still on their way: one it gave up on arrived
    /// and was answered `age` after it was sent): as F-RTO and Eifel do (RFC 5682, RFC 4015), take
    /// back what it did. The chunks it declared lost and that have not gone again are in flight
    /// once more, with their own send times (the timer is widened to cover `age`, so they are not
    /// timed out again at once; the ack rule re-declares any that later acks show lost), the
    /// backoff is reset, and the controller's post-RTO window is lifted. The controller's
    /// bandwidth estimate is never touched by an RTO.
    ///
    /// Only an ack sent for that copy's arrival (its echo) counts as proof. An ack that merely
    /// lists the chunk may come after an outage that also swallowed the chunk's first ack: that
    /// RTO was not spurious, and `age` would include the outage.
    fn undo_spurious_rto(&mut self, age: Duration) {
        self.stats.spurious_rtos += 1;
        let mut path = self.path.borrow_mut();
        path.rtt.on_spurious_timeout(age);
        path.cc.on_spurious_rto();
        drop(path);
        self.recovery.undo_rto();
    }

    /// The RTO after `backoff` expiries in a row (see [`recovery::rto`]).
    fn rto(&self, backoff: u32) -> Duration {
        recovery::rto(&self.path.borrow().rtt, backoff, self.cfg.timeout)
    }

    /// When the oldest transmission still out times out.
    fn rto_deadline(&self) -> Option<Instant> {
        let rto = self.rto(self.recovery.backoff());
        self.recovery
            .rto_deadline(rto, self.path.borrow().rtt.reply_timeout())
    }

    /// The oldest transmission went unanswered for a whole RTO (see [`Recovery::on_rto`]). The
    /// congestion window allows what is still out plus a few chunks, so the retransmissions can
    /// leave at once.
    fn on_rto(&mut self, now: Instant) {
        let rto = self.rto(self.recovery.backoff());
        self.recovery.on_rto(now, rto);
        self.stats.rto_expiries += 1;
        let (_, bytes_out) = self.path_in_flight();
        let mut path = self.path.borrow_mut();
        path.cc.on_rto(bytes_out);
        path.pacer.wake(now);
    }

    fn on_complete(&mut self, complete: &CompleteRepr) {
        // A verdict is on the hash we sent: before we have one, it is not an answer to us.
        let Some(ours) = self.hash else {
            return;
        };
        let result = match complete.status {
            CompleteStatus::Verified if complete.hash == ours => {
                // The verdict implies every chunk arrived, even if their last acks were lost.
                self.acked.insert_below(self.count);
                Ok(())
            }
            // Verified against a hash that is not ours, or not verified: either way, not our file.
            _ => Err(SendError::HashMismatch {
                expected: ours,
                received: complete.hash,
            }),
        };
        self.finish(result);
    }

    fn on_abort(&mut self, abort: &AbortRepr<'_>, now: Instant) {
        let message = String::from_utf8_lossy(abort.message).into_owned();
        let unknown = abort.reason == AbortReason::UnknownTransfer;
        match self.phase {
            // The receiver never answers an offer with "unknown transfer": this one is about data
            // sent before the offer (we are re-offering), or behind a copy of it that was lost.
            Phase::Offering(ref mut o) if unknown => {
                // The first such abort for chunks sent behind the only copy of the offer says
                // that copy was lost (a receiver answers an offer before it takes the next
                // packet): the next copy goes now, about a round trip after the first, not
                // after the offer's timer (200 ms on a path nothing is known of).
                if o.early_sent && !o.early_lost && o.sends == 1 {
                    o.due = true;
                }
                o.early_lost = true;
            }
            Phase::Offering(o) => {
                // A refusal answers the offer at once, as an acceptance does: a first sample of
                // the path (and no more chunks behind the offers of the files after this one).
                if o.sends == 1
                    && let Some(rtt) = now.checked_duration_since(o.sent_at)
                {
                    let mut path = self.path.borrow_mut();
                    path.rtt.on_sample(rtt);
                    path.cc.on_rtt(now, rtt);
                }
                self.finish(Err(SendError::Refused(abort.reason, message)))
            }
            Phase::Sending(accepted) | Phase::Closing(accepted, _) if unknown => {
                if now < accepted.stale_aborts_until {
                    return;
                }
                if self.meta.stream {
                    self.finish(Err(SendError::StreamLost));
                } else if self.stats.reoffers >= self.cfg.max_reoffers {
                    self.finish(Err(SendError::PeerAborted(abort.reason, message)));
                } else {
                    self.reoffer(accepted.offered_at);
                }
            }
            Phase::Sending(_) | Phase::Closing(..) => {
                self.finish(Err(SendError::PeerAborted(abort.reason, message)))
            }
            Phase::Done(_) => {}
        }
    }

    /// The receiver forgot the transfer: start over with an offer. Nothing it acknowledged before
    /// is trusted (a restarted receiver may have lost unsynced writes); its answer says what it
    /// has now. The path estimates stay.
    fn reoffer(&mut self, offered_at: Instant) {
        self.stats.reoffers += 1;
        self.phase = Phase::Offering(Offering::new(self.first_offer_interval(), offered_at));
        self.acked = ChunkSet::new();
        self.next_new = 0;
        self.recovery.forget();
    }

    /// The first offer retransmission interval (see [`first_offer_interval`]).
    fn first_offer_interval(&self) -> Duration {
        first_offer_interval(&self.cfg, &self.path.borrow())
    }

    /// Over: what is still in flight is no longer waited for (nor counted on the path).
    fn finish(&mut self, result: Result<(), SendError>) {
        self.phase = Phase::Done(result);
        self.recovery.forget();
    }

    /// The driver could not read the file to hash it: the transfer ends, and the receiver is
    /// told (an I/O error abort).
    pub fn fail_io(&mut self, message: String) {
        if !self.is_done() {
            let abort = (AbortReason::Io, "sender could not read the file");
            self.fail(SendError::Hashing(message), Some(abort));
            self.sync_flight();
        }
    }

    fn fail(&mut self, err: SendError, abort: Option<(AbortReason, &'static str)>) {
        self.finish(Err(err));
        self.pending_abort = abort;
    }
}

impl Drop for Sender {
    /// What it still had in flight is no longer the path's concern.
    fn drop(&mut self) {
        let mut p = self.path.borrow_mut();
        p.chunks_in_flight -= self.reported.0;
        p.bytes_in_flight -= self.reported.1;
        p.transfers -= 1;
    }
}

/// The first offer retransmission interval: the configured 200 ms on a path nothing is known
/// of; once its round trip is (a later file on a shared path, or a re-offer), the reply timeout
/// (`SRTT + max(1 ms, 4 RTTVAR)`, see [`RttEstimator::reply_timeout`]; the receiver answers an
/// offer at once): a lost offer or a lost answer to it then costs about a round trip, not
/// 200 ms, which in a tree of small files is most of a file's time. It doubles from there (up
/// to `offer_max_interval`), and a second copy costs the receiver one more ack. With a
/// remembered estimate still to be confirmed, the longest round trip that would confirm it, and
/// a little for the receiver to open and preallocate the file before it answers (the answer
/// does not count that as delay): a lost offer or answer then costs about a round trip of the
/// remembered path too (at 20 ms, 85 ms, where it was 450 ms: some 22 round trips). A copy
/// sent again before a slow answer leaves no exact sample, but the estimate is still checked,
/// against the bounds the copies give and then by the first data acks' exact round trips (see
/// [`Bbr::check_resume`](super::cc::Bbr::check_resume)).
fn first_offer_interval(cfg: &SenderConfig, path: &Path) -> Duration {
    match (path.rtt.smoothed(), path.cc.pending_resume_rtt()) {
        (Some(_), _) => path.rtt.reply_timeout(),
        (None, Some(rtt)) => {
            rtt.mul_f64(super::cc::RESUME_RTT_MAX)
                + MAX_ACK_DELAY
                + super::cc::RESUME_OPEN_ALLOWANCE
        }
        (None, None) => cfg.offer_interval,
    }
}

/// Closing's wait for the verdict before probe number `backoff + 1`: the reply timeout (the
/// receiver answers the probe, a hash message or a chunk with `ACK_NOW`, at once), doubled per
/// probe without an answer, never longer than the RTO so backed off (the hash message or the
/// verdict lost costs about a round trip, as a lost tail chunk does).
fn probe_after(rtt: &super::rtt::RttEstimator, backoff: u32, timeout: Duration) -> Duration {
    rtt.reply_timeout()
        .saturating_mul(1u32 << backoff.min(16))
        .min(recovery::rto(rtt, backoff, timeout))
}

fn opt_min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_common::wire::{CompleteRepr, CompleteStatus, MessageType};

    struct Sevens;
    impl ChunkSource for Sevens {
        fn read_chunk(&mut self, _index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(7);
            Ok(buf.len())
        }
    }

    const ID: u32 = 0xC0FFEE;

    fn sender(size: u64, cfg: SenderConfig, now: Instant) -> Sender {
        let meta = FileMeta {
            name: "f".into(),
            size,
            mode: 0o600,
            mtime: 0,
            tag: [9; HASH_LEN],
            directory: false,
            symlink: false,
            stream: false,
            bundle: None,
        };
        Sender::new(
            ID,
            meta,
            SenderConfig {
                chunk_size: 100,
                ..cfg
            },
            now,
        )
        .unwrap()
    }

    /// The next packet's type, sequence number and flags.
    fn poll(s: &mut Sender, now: Instant) -> Option<(MessageType, u32, u16)> {
        let mut buf = [0u8; 2048];
        let n = s.poll_transmit(now, &mut Sevens, &mut buf)?;
        let r = Repr::parse_bytes(&buf[..n]).unwrap();
        Some((r.msg_type(), r.seq, r.flags))
    }

    fn feed(s: &mut Sender, now: Instant, seq: u32, message: Message<'_>) {
        let repr = Repr {
            transfer_id: ID,
            seq,
            flags: 0,
            message,
        };
        s.handle_packet(&repr, now);
    }

    fn ack(s: &mut Sender, now: Instant, cumulative: u32, echo: u32, base: u32, bitmap: &[u8]) {
        let a = AckRepr {
            cumulative,
            echo,
            delay_us: 0,
            base,
            bitmap,
        };
        feed(s, now, cumulative, Message::Ack(a));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn offer_backs_off_from_200_ms_to_2_s() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        assert_eq!(poll(&mut s, t0), Some((MessageType::Offer, 0, 0)));
        // Its chunks go right behind the first copy, paced, the 8th and the last asking for an
        // ack at once (ten of 100 bytes: nothing is known of the path), and no more before the
        // answer.
        let mut at = t0;
        for i in 0..10 {
            at = at.max(s.poll_timeout().unwrap());
            assert!(at < t0 + ms(1), "a train, not the offer's timer");
            s.handle_timeout(at);
            let more = if i < 9 { flags::MORE_CHUNKS } else { 0 };
            let now = if i == 7 || i == 9 { flags::ACK_NOW } else { 0 };
            assert_eq!(poll(&mut s, at), Some((MessageType::Data, i, more | now)));
        }
        assert_eq!(poll(&mut s, at), None);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(200)));
        let mut expected = t0;
        for gap in [200, 400, 800, 1600, 2000, 2000] {
            expected += ms(gap);
            assert_eq!(s.poll_timeout(), Some(expected));
            s.handle_timeout(expected);
            assert_eq!(
                poll(&mut s, expected).map(|p| p.0),
                Some(MessageType::Offer)
            );
        }
    }

    #[test]
    fn abort_answering_the_offer_is_a_refusal() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        let stale = AbortRepr {
            reason: AbortReason::UnknownTransfer,
            message: b"",
        };
        feed(&mut s, t0 + ms(5), 0, Message::Abort(stale));
        assert_eq!(s.outcome(), None, "unknown transfer cannot answer an offer");
        let abort = AbortRepr {
            reason: AbortReason::Exists,
            message: b"f exists",
        };
        feed(&mut s, t0 + ms(10), 0, Message::Abort(abort));
        let want = SendError::Refused(AbortReason::Exists, "f exists".into());
        assert_eq!(s.outcome(), Some(Err(want)));
        assert_eq!(poll(&mut s, t0 + ms(10)), None, "no abort is sent back");
        // The refusal answered the offer at once: a sample of the path, so the next file to
        // this receiver waits for its offer's answer before any chunk (none go behind it).
        assert_eq!(s.path.borrow().rtt.smoothed(), Some(ms(10)));
        let (meta, cfg) = (s.meta.clone(), s.cfg.clone());
        let mut next = Sender::on_path(ID + 1, meta, cfg, &s.path, t0 + ms(10)).unwrap();
        assert_eq!(
            poll(&mut next, t0 + ms(10)).map(|p| p.0),
            Some(MessageType::Offer)
        );
        // The offer's own timer, the reply timeout: 10 + 4 × 5 ms.
        assert_eq!(next.poll_timeout(), Some(t0 + ms(10) + ms(30)));
        assert_eq!(poll(&mut next, t0 + ms(11)), None);
    }

    /// With a remembered estimate to check, nothing goes behind the offer: the jump sends
    /// from its answer, its first window in one piece.
    #[test]
    fn a_remembered_estimate_sends_nothing_before_the_answer() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        s.path.borrow_mut().resume(crate::proto::PathEstimate {
            bandwidth: 1e6,
            min_rtt: ms(100),
        });
        assert_eq!(poll(&mut s, t0).map(|p| p.0), Some(MessageType::Offer));
        let next = s.poll_timeout().unwrap();
        assert!(
            next >= t0 + ms(150),
            "the offer's timer, not a chunk's: {next:?}"
        );
        assert_eq!(poll(&mut s, t0 + ms(1)), None);
    }

    #[test]
    fn data_skips_what_the_first_ack_acknowledges() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        // Resume: chunks 0..3 and 4 are there already.
        ack(&mut s, t0 + ms(10), 3, NO_ECHO, 3, &[0b10]);
        assert_eq!(
            s.stats().srtt,
            Some(ms(10)),
            "the offer's round trip is a sample"
        );
        let mut sent = Vec::new();
        let mut now = t0 + ms(10);
        while let Some((t, seq, flags)) = poll(&mut s, now) {
            assert_eq!(t, MessageType::Data);
            sent.push((seq, flags));
            now += ms(1);
        }
        let more = flags::MORE_CHUNKS;
        let want = vec![
            (3, more),
            (5, more),
            (6, more),
            (7, more),
            (8, more),
            (9, flags::ACK_NOW),
        ];
        assert_eq!(sent, want);
    }

    #[test]
    fn fast_retransmit_after_three_later_chunks_are_acked() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        ack(&mut s, t0 + ms(10), 0, NO_ECHO, 0, &[]);
        let mut now = t0 + ms(10);
        for i in 0..6 {
            assert_eq!(poll(&mut s, now).map(|p| p.1), Some(i));
            now += ms(1);
        }
        // Chunks 1 and 2 acked: not enough.
        ack(&mut s, now, 0, 2, 0, &[0b110]);
        assert_eq!(s.stats().losses_by_ack, 0);
        ack(&mut s, now, 0, 3, 0, &[0b1110]);
        assert_eq!(s.stats().losses_by_ack, 1);
        assert_eq!(
            poll(&mut s, now + ms(1)).map(|p| p.1),
            Some(0),
            "lost chunk first"
        );
        assert_eq!(s.stats().chunks_retransmitted, 1);
    }

    #[test]
    fn rto_resends_with_ack_now_and_backs_off() {
        let t0 = Instant::now();
        let cfg = SenderConfig {
            window: 1,
            ..SenderConfig::default()
        };
        let mut s = sender(1000, cfg, t0);
        poll(&mut s, t0);
        ack(&mut s, t0 + ms(10), 0, NO_ECHO, 0, &[]);
        let sent_at = t0 + ms(10);
        assert_eq!(
            poll(&mut s, sent_at),
            Some((MessageType::Data, 0, flags::MORE_CHUNKS | flags::ACK_NOW))
        );
        assert_eq!(poll(&mut s, sent_at + ms(1)), None, "window of one");
        // A tail probe first (a round trip plus the ack delay), then the 200 ms RTO.
        let probe = s.poll_timeout().unwrap();
        assert!(probe < sent_at + ms(200));
        s.handle_timeout(probe);
        assert_eq!(
            poll(&mut s, probe).map(|p| p.2 & flags::ACK_NOW),
            Some(flags::ACK_NOW)
        );
        let mut now = probe;
        while s.stats().rto_expiries == 0 {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
        }
        assert_eq!(now, sent_at + ms(200));
        assert_eq!(
            poll(&mut s, now),
            Some((MessageType::Data, 0, flags::MORE_CHUNKS | flags::ACK_NOW))
        );
        assert_eq!(s.stats().rto, ms(400), "doubled");
    }

    #[test]
    fn an_offer_answered_after_two_copies_bounds_the_first_rto() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        s.handle_timeout(t0 + ms(200));
        assert_eq!(
            poll(&mut s, t0 + ms(200)).map(|p| p.0),
            Some(MessageType::Offer)
        );
        // A 300 ms path: the ack answers the first copy, but which one is unknown (Karn).
        ack(&mut s, t0 + ms(300), 0, NO_ECHO, 0, &[]);
        let st = s.stats();
        assert_eq!(st.srtt, None, "not a sample");
        // The time since the first copy, as a first sample: 300 + 4 × 150 + 5 ms (not the 1 s
        // initial RTO, which a path longer than 1 s would exceed).
        assert_eq!(st.rto, ms(905));
    }

    #[test]
    fn a_reoffer_waits_a_reply_timeout_before_offering_again() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        ack(&mut s, t0 + ms(300), 0, NO_ECHO, 0, &[]);
        assert_eq!(s.stats().srtt, Some(ms(300)));
        let forgot = AbortRepr {
            reason: AbortReason::UnknownTransfer,
            message: b"",
        };
        let at = t0 + ms(1000);
        feed(&mut s, at, 0, Message::Abort(forgot));
        assert_eq!(s.stats().reoffers, 1);
        assert_eq!(poll(&mut s, at).map(|p| p.0), Some(MessageType::Offer));
        // Not 200 ms: on this path that would send a second copy before the first is answered.
        // The reply timeout, 300 + 4 × 150 ms (the receiver answers an offer at once).
        assert_eq!(s.poll_timeout(), Some(at + ms(900)));
    }

    /// A 100 ms path with ten chunks out, all declared lost by one RTO (fired late on purpose),
    /// and chunk 0 resent; returns when that was.
    fn ten_chunks_given_up_by_an_rto(s: &mut Sender, t0: Instant) -> Instant {
        poll(s, t0);
        ack(s, t0 + ms(100), 0, NO_ECHO, 0, &[]);
        let mut now = t0 + ms(100);
        let mut sent = 0;
        while sent < 10 {
            if poll(s, now).is_some() {
                sent += 1;
            } else {
                now += ms(1);
            }
        }
        let fire = s.poll_timeout().unwrap() + ms(50);
        s.handle_timeout(fire);
        assert_eq!(s.stats().rto_expiries, 1);
        assert_eq!(s.stats().bytes_in_flight, 0);
        assert_eq!(poll(s, fire).map(|p| p.1), Some(0), "oldest first");
        assert_eq!(s.stats().chunks_retransmitted, 1);
        fire
    }

    #[test]
    fn a_spurious_rto_is_detected_and_undone() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        let fire = ten_chunks_given_up_by_an_rto(&mut s, t0);
        // The path's queue grew: the ack for the first copy of chunk 0 (echo 0) comes 1 ms after
        // its retransmission, far sooner than the 100 ms the path takes, so it cannot answer it.
        ack(&mut s, fire + ms(1), 1, 0, 1, &[]);
        let st = s.stats();
        assert_eq!((st.spurious_rtos, st.spurious_retransmits), (1, 1));
        assert_eq!(st.rto, s.path.borrow().rtt.rto(), "backoff reset");
        // The late round trip (about 356 ms) is a sample, and the RTO is widened past it.
        assert!(st.srtt.unwrap() > ms(100));
        assert!(st.rto > ms(400), "{:?}", st.rto);
        // Chunks 1..10 are in flight again, not resent.
        assert_eq!(st.bytes_in_flight, 9 * 120);
        assert_eq!(poll(&mut s, fire + ms(2)), None);
        assert_eq!(s.stats().chunks_retransmitted, 1);
        ack(&mut s, fire + ms(3), 10, 9, 10, &[]);
        assert_eq!(s.progress(), (10, 10));
    }

    #[test]
    fn an_ack_that_only_lists_a_chunk_does_not_undo_the_rto() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        let fire = ten_chunks_given_up_by_an_rto(&mut s, t0);
        // Chunk 0 is reported, but not by an ack sent for its arrival: after an outage that
        // swallowed its first ack, say. The retransmission was not needed, but the RTO stands.
        ack(&mut s, fire + ms(1), 1, NO_ECHO, 1, &[]);
        let st = s.stats();
        assert_eq!((st.spurious_rtos, st.spurious_retransmits), (0, 1));
        assert_eq!(st.bytes_in_flight, 0, "the others stay lost");
        assert_eq!(poll(&mut s, fire + ms(1)).map(|p| p.1), Some(1));
    }

    /// All acknowledged before the file's hash is known: Closing probes with the last chunk;
    /// once the hash is in, its message goes at once and is the probe from then on; a verdict
    /// before the hash, or with another count, is not an answer.
    #[test]
    fn closing_probes_with_the_last_chunk_then_the_hash_until_the_verdict() {
        let t0 = Instant::now();
        let mut s = sender(250, SenderConfig::default(), t0);
        poll(&mut s, t0);
        ack(&mut s, t0 + ms(10), 3, NO_ECHO, 0, &[]);
        assert_eq!(
            poll(&mut s, t0 + ms(10)),
            None,
            "all acked at once: nothing to send"
        );
        assert!(s.needs_hash());
        let verdict = CompleteRepr {
            status: CompleteStatus::Verified,
            hash: [9; HASH_LEN],
        };
        feed(&mut s, t0 + ms(10), 3, Message::Complete(verdict));
        assert_eq!(
            s.outcome(),
            None,
            "a verdict before our hash answers nothing of ours"
        );
        let at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        assert_eq!(
            poll(&mut s, at),
            Some((MessageType::Data, 2, flags::ACK_NOW))
        );
        s.set_hash([9; HASH_LEN]);
        assert!(!s.needs_hash());
        assert_eq!(poll(&mut s, at), Some((MessageType::Hash, 3, 0)));
        assert_eq!(poll(&mut s, at), None);
        let at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        assert_eq!(
            poll(&mut s, at),
            Some((MessageType::Hash, 3, 0)),
            "the probe"
        );
        feed(&mut s, at, 2, Message::Complete(verdict));
        assert_eq!(s.outcome(), None);
        feed(&mut s, at, 3, Message::Complete(verdict));
        assert_eq!(s.outcome(), Some(Ok(())));
        assert_eq!(s.stats().hash, Some([9; HASH_LEN]));
    }

    /// A receiver acknowledges every chunk, instead of sending its verdict, only while it lacks
    /// the hash message. When that message went out a reply timeout or more before such an ack,
    /// it was lost: it goes again at once. Sent after the last chunk, it may still arrive, and
    /// the first probe waits a reply timeout, as always before.
    #[test]
    fn a_lost_hash_message_goes_again_as_soon_as_every_chunk_is_acknowledged() {
        for (hash_after_chunk, probe_at_once) in [(None, true), (Some(9), false)] {
            let what = format!("hash after chunk {hash_after_chunk:?}");
            let t0 = Instant::now();
            let cfg = SenderConfig {
                window: 2,
                ..SenderConfig::default()
            };
            let mut s = sender(1000, cfg, t0);
            assert_eq!(poll(&mut s, t0), Some((MessageType::Offer, 0, 0)));
            let mut now = t0 + ms(10);
            ack(&mut s, now, 0, NO_ECHO, 0, &[]);
            if hash_after_chunk.is_none() {
                s.set_hash([9; HASH_LEN]);
                assert_eq!(
                    poll(&mut s, now),
                    Some((MessageType::Hash, 10, 0)),
                    "{what}"
                );
            }
            // Two chunks a round trip of 10 ms; the hash message goes when the driver has it.
            let mut acked = 0;
            while acked < 10 {
                let mut last = None;
                while let Some((kind, seq, _)) = poll(&mut s, now) {
                    if kind == MessageType::Data {
                        last = Some(seq);
                        if hash_after_chunk == Some(seq) {
                            s.set_hash([9; HASH_LEN]);
                        }
                    }
                }
                let last = last.expect("the window moved");
                now += ms(10);
                acked = last + 1;
                ack(&mut s, now, acked, last, 0, &[]);
            }
            assert_eq!(s.stats().hashes_sent, 1, "{what}");
            let probe = s.poll_timeout().unwrap();
            assert_eq!(probe == now, probe_at_once, "{what}: {:?}", probe - now);
            s.handle_timeout(probe);
            assert_eq!(
                poll(&mut s, probe),
                Some((MessageType::Hash, 10, 0)),
                "{what}"
            );
        }
    }

    /// On a path whose controller measures random loss, the hash message goes twice, back to
    /// back: the verdict waits for it at the end. Elsewhere once.
    #[test]
    fn the_hash_message_goes_twice_on_a_path_that_loses_at_random() {
        for (lossy, copies) in [(false, 1), (true, 2)] {
            let t0 = Instant::now();
            let mut s = sender(1000, SenderConfig::default(), t0);
            if lossy {
                // Rounds of 1440-byte packets, as the controller of a real chunk size counts.
                let mut cc = crate::proto::cc::Bbr::new(1440, 32, t0);
                crate::proto::cc::tests::make_lossy(&mut cc);
                s.path.borrow_mut().cc = cc;
                assert!(s.path.borrow().cc.random_loss_share() >= TAIL_COPY_LOSS);
            }
            assert_eq!(poll(&mut s, t0), Some((MessageType::Offer, 0, 0)));
            ack(&mut s, t0 + ms(10), 0, NO_ECHO, 0, &[]);
            s.set_hash([9; HASH_LEN]);
            for _ in 0..copies {
                let hash = poll(&mut s, t0 + ms(10));
                assert_eq!(hash, Some((MessageType::Hash, 10, 0)), "{lossy}");
            }
            let next = poll(&mut s, t0 + ms(10)).map(|p| p.0);
            assert_eq!(next, Some(MessageType::Data), "{lossy}");
            assert_eq!(s.stats().hashes_sent, copies, "{lossy}");
        }
    }

    #[test]
    fn a_verdict_on_another_hash_is_a_mismatch() {
        let t0 = Instant::now();
        let mut s = sender(0, SenderConfig::default(), t0);
        poll(&mut s, t0);
        s.set_hash([9; HASH_LEN]);
        let verdict = CompleteRepr {
            status: CompleteStatus::Verified,
            hash: [1; HASH_LEN],
        };
        feed(&mut s, t0, 0, Message::Complete(verdict));
        assert!(matches!(
            s.outcome(),
            Some(Err(SendError::HashMismatch { .. }))
        ));
    }

    #[test]
    fn cancel_sends_one_abort() {
        let t0 = Instant::now();
        let mut s = sender(1000, SenderConfig::default(), t0);
        poll(&mut s, t0);
        s.cancel();
        assert_eq!(s.outcome(), Some(Err(SendError::Cancelled)));
        assert_eq!(poll(&mut s, t0).map(|p| p.0), Some(MessageType::Abort));
        assert_eq!(poll(&mut s, t0), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn too_many_chunks_is_an_error() {
        let meta = FileMeta {
            name: "f".into(),
            size: u32::MAX as u64 + 1,
            mode: 0,
            mtime: 0,
            tag: [0; HASH_LEN],
            directory: false,
            symlink: false,
            stream: false,
            bundle: None,
        };
        let cfg = SenderConfig {
            chunk_size: 1,
            ..SenderConfig::default()
        };
        let err = Sender::new(1, meta, cfg, Instant::now()).err();
        assert!(matches!(err, Some(SendError::TooManyChunks { .. })));
    }

    #[test]
    fn an_offer_is_no_larger_than_a_data_packet_or_a_1024_byte_payload() {
        let meta = |name_len| FileMeta {
            name: "n".repeat(name_len),
            size: 1 << 20,
            mode: 0,
            mtime: 0,
            tag: [0; HASH_LEN],
            directory: false,
            symlink: false,
            stream: false,
            bundle: None,
        };
        let now = Instant::now();
        // The offer's body is 64 bytes and the name.
        for (chunk_size, longest) in [(1400, 1336), (100, 960)] {
            let cfg = SenderConfig {
                chunk_size,
                ..SenderConfig::default()
            };
            let mut s = Sender::new(1, meta(longest), cfg.clone(), now).unwrap();
            let payload = (chunk_size as usize).max(1024);
            assert_eq!(s.max_packet_len(), HEADER_LEN + payload);
            let mut buf = [0u8; 2048];
            let len = s.poll_transmit(now, &mut Sevens, &mut buf);
            assert_eq!(len, Some(HEADER_LEN + payload), "chunk size {chunk_size}");
            let err = Sender::new(1, meta(longest + 1), cfg, now).err();
            assert_eq!(err, Some(SendError::NameTooLong(longest + 1)));
        }
    }
}
