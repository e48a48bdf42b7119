//! A deterministic simulated network for the protocol cores, and the figures measured on it.
//!
//! One or more [`Sender`]s talk to one [`Receiver`] through two one-way [`LinkConfig`] links (data
//! up, control down). A link is a drop-tail queue drained at its rate, then a propagation delay
//! with jitter; it can also drop (independently, or in bursts: a Gilbert–Elliott chain),
//! duplicate, delay (reorder) and corrupt packets at random. Corrupt
//! packets are bit-flipped *after* they were emitted and go through [`Repr::parse_bytes`] (checksum
//! included) before a core sees them, as the kernel and the socket layer would do.
//!
//! Time is virtual: nanoseconds since a base `Instant`, which is read once and only ever used as
//! an origin, so a run depends on nothing but its seed. Events (packet arrivals) and the cores'
//! timeouts are processed in order; nothing sleeps. Files are [`VirtualFile`]s, whose bytes are a
//! function of their offset, so a 256 MiB transfer costs no memory; [`GeneratorSink`] checks every
//! written byte against that function instead of hashing, for the figures.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;

use super::Peer;
use std::time::{Duration, Instant};

use chunk_common::wire::{HASH_LEN, Message, Repr};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::cc::{PathEstimate, ResumeOutcome};
use super::chunkset::ChunkSet;
use super::receiver::{Event, Receiver, ReceiverConfig, ReceiverStats};
use super::sender::{ChunkSource, FileMeta, Path, SendError, Sender, SenderConfig, SenderStats};
use super::storage::{HashCheck, OfferInfo, Opened, Refusal, Storage};

/// Bytes of IPv4 header each packet carries on a link: [`LinkConfig::overhead`]'s default.
const IP_HEADER: u32 = 20;

/// One direction of the path.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Bits per second; 0 means no rate limit (and no queue).
    pub rate_bps: u64,
    /// Bytes the bottleneck queue holds; a packet that does not fit is dropped (drop-tail).
    pub queue_bytes: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`, per packet (reorders packets closer than that).
    pub jitter: Duration,
    /// Probability that a packet is lost (in the good state, when `burst` is set).
    pub loss: f64,
    /// Burst loss, a Gilbert–Elliott chain: per slot of the link's time (the time a 1538-byte
    /// frame, a full one of a 1500-byte MTU on Ethernet's wire, takes at `rate_bps`; at least
    /// once per packet offered; per packet without a rate), the link goes from the good state to
    /// the bad one with probability `.0` and back with `.1`; in the bad state every packet is
    /// lost. The state moves before the loss decision, with one draw (as the namespace tests'
    /// delay line does: bursts are stretches of time, so a direction that carries a packet now
    /// and then sees each lost about as often as the loss rate says, not a burst's worth of
    /// them in a row). `None`: independent losses only.
    pub burst: Option<(f64, f64)>,
    /// Bytes each packet costs on the link beyond the chunk packet itself, against the rate and
    /// the queue: 20 (the IPv4 header) by default; an Ethernet link costs 58 (IPv4 20, Ethernet
    /// header 14, preamble, inter-frame gap and FCS 24).
    pub overhead: u32,
    /// Probability that a packet arrives twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Probability that one bit of a packet is flipped.
    pub corrupt: f64,
}

impl LinkConfig {
    /// A clean link of `rate_bps` and one-way `delay`, with a queue of one bandwidth-delay
    /// product of the round trip (at least 64 KiB).
    pub fn new(rate_bps: u64, delay: Duration) -> Self {
        let bdp = (rate_bps as f64 / 8.0 * 2.0 * delay.as_secs_f64()) as u64;
        Self {
            rate_bps,
            queue_bytes: bdp.max(64 * 1024),
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            overhead: IP_HEADER,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            corrupt: 0.0,
        }
    }
}

/// What happened on one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered to the link.
    pub packets: u64,
    pub bytes: u64,
    /// Dropped at random (`loss`, or in a `burst`).
    pub lost: u64,
    /// Dropped because the queue was full.
    pub queue_drops: u64,
    /// Dropped by the test's filter.
    pub filtered: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    /// Arrived but failed `Repr::parse_bytes` (the corrupted ones, normally).
    pub rejected: u64,
}

/// Which way a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Sender to receiver.
    Up,
    /// Receiver to sender.
    Down,
}

struct Link {
    cfg: LinkConfig,
    /// When the queue will have drained (virtual ns).
    busy_until: u64,
    /// The burst-loss chain is in its bad state (every packet lost).
    bad: bool,
    /// The burst chain's clock (see [`LinkConfig::burst`]): when the link's first packet came
    /// (virtual ns), and the latest slot (since then) a packet came in.
    chain_start: Option<u64>,
    chain_slot: u64,
    stats: LinkStats,
}

/// Bytes of the link's time a burst chain's step stands for (see [`LinkConfig::burst`]).
const BURST_SLOT_BYTES: u64 = 1538;

/// The probability that a Gilbert–Elliott chain (good → bad `to_bad`, bad → good `to_good` per
/// step) is in its bad state `steps` steps after being in `bad`: the stationary share plus the
/// start's difference from it, decaying by `1 − to_bad − to_good` a step. The namespace tests'
/// delay line has the same function (`chunk_tests::impair::burst_chain_bad`; that harness does
/// not depend on this crate): the two must move their chains alike for their figures to agree.
fn burst_chain_bad(bad: bool, (to_bad, to_good): (f64, f64), steps: u64) -> f64 {
    let sum = to_bad + to_good;
    if sum <= 0.0 {
        return if bad { 1.0 } else { 0.0 };
    }
    let stationary = to_bad / sum;
    let lambda = 1.0 - sum;
    let odd = steps % 2 == 1;
    let decay = lambda.abs().powf(steps as f64) * if lambda < 0.0 && odd { -1.0 } else { 1.0 };
    (stationary + (f64::from(u8::from(bad)) - stationary) * decay).clamp(0.0, 1.0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    Receiver(Peer),
    Sender(usize),
}

/// A packet in flight, ordered by arrival time then by creation.
struct Arrival {
    at: u64,
    seq: u64,
    dest: Dest,
    bytes: Vec<u8>,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Arrival {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated sender and its file.
pub struct SimSender {
    pub sender: Sender,
    pub source: Box<dyn ChunkSource>,
    pub addr: Peer,
    /// Virtual time at which the sender's outcome was set.
    pub done_at: Option<Duration>,
    /// Virtual times at which the acknowledged share of the file first reached 50 % and 90 %
    /// (the steady-state goodput is measured between them, past the startup).
    pub half_at: Option<Duration>,
    pub ninety_at: Option<Duration>,
}

/// Decides whether to drop a packet before it enters a link (tests: "lose the first offer").
pub type Filter = Box<dyn FnMut(Dir, &Repr<'_>) -> bool>;

/// The simulated network: senders, one receiver and its storage, two links, virtual time.
pub struct Sim<S: Storage> {
    base: Instant,
    now: u64,
    rng: SmallRng,
    up: Link,
    down: Link,
    senders: Vec<SimSender>,
    receiver: Receiver<S>,
    storage: S,
    queue: BinaryHeap<Reverse<Arrival>>,
    seq: u64,
    filter: Option<Filter>,
    events: Vec<(Duration, Event)>,
    buf: Vec<u8>,
    /// Bytes on the wire (each packet with its link overhead) that arrived at the receiver, per
    /// [`TRACE_SLOT`] of virtual time: the delivery rate over time, as the benchmark samples it
    /// at its bridge.
    delivered: Vec<u64>,
    /// How long the receiver is busy after taking an offer ([`Sim::set_offer_pause`]), and
    /// until when it is: what arrives meanwhile waits, and nothing leaves it.
    offer_pause: u64,
    receiver_busy_until: u64,
    /// Packets that arrived while the receiver was busy, with their arrival.
    waiting: VecDeque<(u64, Peer, Vec<u8>)>,
}

/// The resolution of [`Sim::time_to_rate`]: the benchmark's sampling interval.
pub const TRACE_SLOT: Duration = Duration::from_millis(10);

impl<S: Storage> Sim<S> {
    pub fn new(
        seed: u64,
        up: LinkConfig,
        down: LinkConfig,
        receiver: Receiver<S>,
        storage: S,
    ) -> Self {
        let link = |cfg| Link {
            cfg,
            busy_until: 0,
            bad: false,
            chain_start: None,
            chain_slot: 0,
            stats: LinkStats::default(),
        };
        Self {
            // Only an origin: the cores see differences from it, never the clock itself.
            base: Instant::now(),
            now: 0,
            rng: SmallRng::seed_from_u64(seed),
            up: link(up),
            down: link(down),
            senders: Vec::new(),
            receiver,
            storage,
            queue: BinaryHeap::new(),
            seq: 0,
            filter: None,
            events: Vec::new(),
            buf: vec![0; 65_536],
            delivered: Vec::new(),
            offer_pause: 0,
            receiver_busy_until: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Makes the receiver busy for `pause` after each offer it takes, as a real one is while it
    /// opens and preallocates the file (20 ms for 256 MiB on tmpfs here): the packets behind
    /// the offer wait, and are handled when it is done with their arrival times (the kernel's
    /// stamps); its answer leaves then too.
    pub fn set_offer_pause(&mut self, pause: Duration) {
        self.offer_pause = pause.as_nanos() as u64;
    }

    /// The start of the first `window` (at least one [`TRACE_SLOT`]) in which the packets that
    /// arrived at the receiver, on the wire with their overhead, made `share` of the data
    /// link's rate or more; measured from the start, at the slots' resolution, as the benchmark
    /// measures its time to 90 % of the link. `None`: never.
    pub fn time_to_rate(&self, window: Duration, share: f64) -> Option<Duration> {
        let slots = (window.as_nanos() / TRACE_SLOT.as_nanos()).max(1) as usize;
        let want = share * self.up.cfg.rate_bps as f64 / 8.0
            * (slots as u128 * TRACE_SLOT.as_nanos()) as f64
            / 1e9;
        let mut sum: u64 = self.delivered.iter().take(slots).sum();
        for start in 0..self.delivered.len().saturating_sub(slots - 1) {
            if start > 0 {
                sum = sum - self.delivered[start - 1] + self.delivered[start + slots - 1];
            }
            if sum as f64 >= want {
                return Some(TRACE_SLOT * start as u32);
            }
        }
        None
    }

    /// The virtual clock, as the `Instant` the cores are given.
    pub fn now(&self) -> Instant {
        self.instant(self.now)
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// Adds a sender (it should have been created at [`now`](Self::now)); its address is
    /// 10.0.0.(index + 1).
    pub fn add_sender(&mut self, sender: Sender, source: Box<dyn ChunkSource>) -> usize {
        let i = self.senders.len();
        self.senders.push(SimSender {
            sender,
            source,
            addr: Ipv4Addr::new(10, 0, 0, (i + 1) as u8).into(),
            done_at: None,
            half_at: None,
            ninety_at: None,
        });
        i
    }

    /// Replaces sender `i` (a restarted sender process), keeping its address.
    pub fn replace_sender(&mut self, i: usize, sender: Sender) {
        let s = &mut self.senders[i];
        s.sender = sender;
        s.done_at = None;
    }

    pub fn sender(&self, i: usize) -> &SimSender {
        &self.senders[i]
    }

    pub fn sender_mut(&mut self, i: usize) -> &mut SimSender {
        &mut self.senders[i]
    }

    pub fn receiver_mut(&mut self) -> &mut Receiver<S> {
        &mut self.receiver
    }

    /// Replaces the receiver (a restarted receiver process); storage stays.
    pub fn replace_receiver(&mut self, receiver: Receiver<S>) {
        self.receiver = receiver;
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn set_filter(&mut self, filter: Filter) {
        self.filter = Some(filter);
    }

    pub fn link_stats(&self, dir: Dir) -> &LinkStats {
        match dir {
            Dir::Up => &self.up.stats,
            Dir::Down => &self.down.stats,
        }
    }

    /// The receiver's events so far, with their virtual times.
    pub fn events(&self) -> &[(Duration, Event)] {
        &self.events
    }

    pub fn receiver_stats(&self) -> ReceiverStats {
        self.receiver.stats()
    }

    /// Whether every sender has an outcome.
    pub fn all_done(&self) -> bool {
        self.senders.iter().all(|s| s.sender.outcome().is_some())
    }

    /// Runs until every sender has an outcome (true) or virtual time reaches `limit` (false).
    pub fn run_until(&mut self, limit: Duration) -> bool {
        self.run(limit, true)
    }

    /// Runs until virtual time reaches `limit` or nothing is left to happen, outcomes or not
    /// (to let a last abort or complete arrive).
    pub fn run_to(&mut self, limit: Duration) {
        self.run(limit, false);
    }

    fn run(&mut self, limit: Duration, stop_when_done: bool) -> bool {
        let limit = limit.as_nanos() as u64;
        let mut spins = 0u32;
        loop {
            self.transmit_all();
            if stop_when_done && self.all_done() {
                return true;
            }
            let next = self.next_wakeup();
            let Some(next) = next else {
                return self.all_done();
            };
            if next > limit {
                self.now = self.now.max(limit);
                return false;
            }
            if next <= self.now {
                spins += 1;
                assert!(
                    spins < 100_000,
                    "a core keeps asking to be woken at {next} ns without acting"
                );
            } else {
                spins = 0;
            }
            self.now = self.now.max(next);
            self.deliver_due();
            self.fire_timers();
        }
    }

    fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn next_wakeup(&self) -> Option<u64> {
        let arrivals = self.queue.peek().map(|Reverse(a)| a.at);
        let senders = self
            .senders
            .iter()
            .filter_map(|s| s.sender.poll_timeout())
            .map(|t| self.ns(t));
        let receiver = self.receiver.poll_timeout().map(|t| self.ns(t));
        let busy = (self.receiver_busy_until > self.now).then_some(self.receiver_busy_until);
        arrivals
            .into_iter()
            .chain(senders)
            .chain(receiver)
            .chain(busy)
            .min()
    }

    /// Lets every endpoint send everything it wants to at this instant.
    fn transmit_all(&mut self) {
        let now = self.instant(self.now);
        let mut buf = std::mem::take(&mut self.buf);
        for i in 0..self.senders.len() {
            {
                // What the real driver does: the hash once the file has been read to its end
                // (every first copy is out), or at once when only the hash is missing.
                let s = &mut self.senders[i];
                // (A stream's hash is the test's to give, at its end.)
                if !s.sender.meta().stream && (s.sender.needs_hash() || s.sender.all_sent_once()) {
                    let hash = s.sender.meta().tag;
                    s.sender.set_hash(hash);
                }
            }
            loop {
                let s = &mut self.senders[i];
                let Some(n) = s.sender.poll_transmit(now, &mut *s.source, &mut buf) else {
                    break;
                };
                let src = s.addr;
                self.send(Dir::Up, Dest::Receiver(src), &buf[..n]);
            }
            self.note_progress(i);
        }
        self.buf = buf;
        self.receiver_transmit();
    }

    /// Sends what the receiver has to send now (nothing while it is busy).
    fn receiver_transmit(&mut self) {
        let now = self.instant(self.now);
        let mut buf = std::mem::take(&mut self.buf);
        while self.now >= self.receiver_busy_until
            && let Some(super::Transmit { dst, len: n, .. }) =
                self.receiver.poll_transmit(now, &mut buf)
        {
            let Some(i) = self.senders.iter().position(|s| s.addr == dst) else {
                continue;
            };
            self.send(Dir::Down, Dest::Sender(i), &buf[..n]);
        }
        self.buf = buf;
    }

    /// Puts one packet on a link.
    fn send(&mut self, dir: Dir, dest: Dest, bytes: &[u8]) {
        if let Some(filter) = &mut self.filter {
            let repr = Repr::parse_bytes(bytes).expect("cores emit valid packets");
            if filter(dir, &repr) {
                self.link(dir).stats.filtered += 1;
                return;
            }
        }
        let now = self.now;
        let rng = &mut self.rng;
        let link = match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        };
        let cfg = &link.cfg;
        link.stats.packets += 1;
        link.stats.bytes += bytes.len() as u64;
        // The burst chain moves first, then the loss decision (as the real link emulator does);
        // no draw for a zero probability, so a link without loss draws nothing here.
        let mut chance = |p: f64| p > 0.0 && rng.r#gen::<f64>() < p;
        if let Some(chain) = cfg.burst {
            let slot = (BURST_SLOT_BYTES * 8 * 1_000_000_000).checked_div(cfg.rate_bps);
            let steps = if let Some(slot) = slot {
                let slot_ns = slot.max(1);
                let start = *link.chain_start.get_or_insert(now);
                let due = (now - start) / slot_ns;
                // The slots since the last packet's, or one step for a packet in the same slot
                // (a packet's own step is not owed back by the packets after it).
                let steps = due.saturating_sub(link.chain_slot).max(1);
                link.chain_slot = link.chain_slot.max(due);
                steps
            } else {
                1
            };
            link.bad = chance(burst_chain_bad(link.bad, chain, steps));
        }
        if link.bad || chance(cfg.loss) {
            link.stats.lost += 1;
            return;
        }
        let wire = bytes.len() as u64 + cfg.overhead as u64;
        let departs = if cfg.rate_bps == 0 {
            now
        } else {
            let backlog_ns = link.busy_until.saturating_sub(now) as u128;
            let backlog = backlog_ns * cfg.rate_bps as u128 / 8_000_000_000;
            if backlog as u64 + wire > cfg.queue_bytes {
                link.stats.queue_drops += 1;
                return;
            }
            let serialize = (wire as u128 * 8_000_000_000 / cfg.rate_bps as u128) as u64;
            link.busy_until = link.busy_until.max(now) + serialize;
            link.busy_until
        };
        let copies = if cfg.duplicate > 0.0 && rng.r#gen::<f64>() < cfg.duplicate {
            link.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut arrivals = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut at = departs + cfg.delay.as_nanos() as u64;
            if !cfg.jitter.is_zero() {
                at += rng.gen_range(0..cfg.jitter.as_nanos() as u64);
            }
            if cfg.reorder > 0.0 && rng.r#gen::<f64>() < cfg.reorder {
                at += cfg.reorder_delay.as_nanos() as u64;
            }
            let mut copy = bytes.to_vec();
            if cfg.corrupt > 0.0 && rng.r#gen::<f64>() < cfg.corrupt {
                let bit = rng.gen_range(0..copy.len() * 8);
                copy[bit / 8] ^= 1 << (bit % 8);
                link.stats.corrupted += 1;
            }
            arrivals.push((at, copy));
        }
        for (at, bytes) in arrivals {
            self.seq += 1;
            self.queue.push(Reverse(Arrival {
                at,
                seq: self.seq,
                dest,
                bytes,
            }));
        }
    }

    fn link(&mut self, dir: Dir) -> &mut Link {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    /// Hands every packet due by now to its core, after the checksum check.
    fn deliver_due(&mut self) {
        let now = self.instant(self.now);
        // The receiver, back from a pause, takes what arrived meanwhile, in order, answering
        // after each packet as chunk's receive loop does.
        while self.now >= self.receiver_busy_until
            && let Some((at, src, bytes)) = self.waiting.pop_front()
        {
            let repr = Repr::parse_bytes(&bytes).expect("checked when it arrived");
            self.receiver_takes(src, &repr, self.instant(at), now);
            self.receiver_transmit();
        }
        while self.queue.peek().is_some_and(|Reverse(a)| a.at <= self.now) {
            let Some(Reverse(arrival)) = self.queue.pop() else {
                break;
            };
            let dir = match arrival.dest {
                Dest::Receiver(_) => Dir::Up,
                Dest::Sender(_) => Dir::Down,
            };
            let Ok(repr) = Repr::parse_bytes(&arrival.bytes) else {
                self.link(dir).stats.rejected += 1;
                continue;
            };
            match arrival.dest {
                Dest::Receiver(src) => {
                    let slot = (self.now / TRACE_SLOT.as_nanos() as u64) as usize;
                    if self.delivered.len() <= slot {
                        self.delivered.resize(slot + 1, 0);
                    }
                    self.delivered[slot] +=
                        (arrival.bytes.len() + self.up.cfg.overhead as usize) as u64;
                    if self.now < self.receiver_busy_until {
                        self.waiting.push_back((self.now, src, arrival.bytes));
                        continue;
                    }
                    self.receiver_takes(src, &repr, now, now);
                }
                Dest::Sender(i) => {
                    self.senders[i].sender.handle_packet(&repr, now);
                    self.note_progress(i);
                }
            }
        }
    }

    /// The receiver handles a packet that arrived at `arrived`; after an offer it is busy for
    /// the offer pause (see [`Sim::set_offer_pause`]).
    fn receiver_takes(&mut self, src: Peer, repr: &Repr<'_>, arrived: Instant, now: Instant) {
        self.receiver
            .handle_arrived(src, None, repr, arrived, now, &mut self.storage);
        self.collect_events();
        if matches!(repr.message, Message::Offer(_)) && self.offer_pause > 0 {
            self.receiver_busy_until = self.now + self.offer_pause;
        }
    }

    fn fire_timers(&mut self) {
        let now = self.instant(self.now);
        for i in 0..self.senders.len() {
            if self.senders[i]
                .sender
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.senders[i].sender.handle_timeout(now);
                self.note_progress(i);
            }
        }
        if self.receiver.poll_timeout().is_some_and(|t| t <= now) {
            self.receiver.handle_timeout(now, &mut self.storage);
            self.collect_events();
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.receiver.poll_event() {
            self.events.push((Duration::from_nanos(self.now), e));
        }
    }

    fn note_progress(&mut self, i: usize) {
        let now = Duration::from_nanos(self.now);
        let s = &mut self.senders[i];
        if s.done_at.is_none() && s.sender.outcome().is_some() {
            s.done_at = Some(now);
        }
        let (acked, count) = s.sender.progress();
        if s.half_at.is_none() && acked * 2 >= count as u64 {
            s.half_at = Some(now);
        }
        if s.ninety_at.is_none() && acked * 10 >= count as u64 * 9 {
            s.ninety_at = Some(now);
        }
    }
}

/// A file whose bytes are a function of their offset (and a seed): any size, no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualFile {
    pub seed: u64,
    pub size: u64,
    pub chunk_size: u32,
}

impl VirtualFile {
    pub fn new(seed: u64, size: u64, chunk_size: u32) -> Self {
        Self {
            seed,
            size,
            chunk_size,
        }
    }

    /// The file's bytes from `offset`, `buf.len()` of them.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = offset;
        let mut out = 0;
        while out < buf.len() {
            let word =
                splitmix64(self.seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
            let skip = (pos % 8) as usize;
            let n = (8 - skip).min(buf.len() - out);
            buf[out..out + n].copy_from_slice(&word[skip..skip + n]);
            out += n;
            pos += n as u64;
        }
    }

    /// The whole file in memory (small files, for tests).
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0; self.size as usize];
        self.fill(0, &mut v);
        v
    }

    /// BLAKE3 of the whole file, streamed.
    pub fn hash(&self) -> [u8; HASH_LEN] {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = 0;
        while pos < self.size {
            let n = (self.size - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        *hasher.finalize().as_bytes()
    }

    /// The sender's description of this file under `name` (hashes it).
    pub fn meta(&self, name: &str) -> FileMeta {
        self.meta_with_hash(name, self.hash())
    }

    /// In the simulation a file's tag is its hash: the simulated driver hands the tag over as
    /// the file's hash once the real reader would have reached the end of the file.
    pub fn meta_with_hash(&self, name: &str, hash: [u8; HASH_LEN]) -> FileMeta {
        FileMeta {
            name: name.to_owned(),
            size: self.size,
            mode: 0o644,
            mtime: 1_700_000_000,
            tag: hash,
            directory: false,
            symlink: false,
            stream: false,
            bundle: None,
        }
    }
}

impl ChunkSource for VirtualFile {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(index as u64 * self.chunk_size as u64, buf);
        Ok(buf.len())
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A [`Storage`] for [`VirtualFile`]s that keeps nothing: each write is compared with the
/// generator (seed `seed`), and `finish` reports verified if every byte matched. It stands in for
/// hashing in large simulations; its "computed hash" is the expected one when all bytes matched.
#[derive(Debug, Default)]
pub struct GeneratorSink {
    pub seed: u64,
    /// Reported as already present by the next `open` (to start a transfer near its end).
    pub already_have: Option<ChunkSet>,
    /// Chunks whose bytes differed from the generator.
    pub mismatches: u64,
    /// Names finished, and whether they verified.
    pub finished: Vec<(String, bool)>,
    scratch: Vec<u8>,
}

/// [`GeneratorSink`]'s handle.
#[derive(Debug)]
pub struct SinkHandle {
    name: String,
    file: VirtualFile,
    ok: bool,
}

impl GeneratorSink {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }
}

impl Storage for GeneratorSink {
    type Handle = SinkHandle;

    fn open(&mut self, offer: &OfferInfo) -> Result<Opened<SinkHandle>, Refusal> {
        Ok(Opened {
            handle: SinkHandle {
                name: offer.name.clone(),
                file: VirtualFile::new(self.seed, offer.size, offer.chunk_size),
                ok: true,
            },
            already_have: self.already_have.take(),
        })
    }

    fn write(
        &mut self,
        h: &mut SinkHandle,
        _index: u32,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.scratch.resize(data.len(), 0);
        h.file.fill(offset, &mut self.scratch);
        if self.scratch != data {
            h.ok = false;
            self.mismatches += 1;
        }
        Ok(())
    }

    fn end_stream(&mut self, h: &mut SinkHandle, size: u64, _chunk_count: u32) -> io::Result<()> {
        h.file.size = size;
        Ok(())
    }

    fn finish(&mut self, h: SinkHandle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck> {
        self.finished.push((h.name, h.ok));
        Ok(HashCheck {
            verified: h.ok,
            hash: if h.ok { *expected } else { [0; HASH_LEN] },
            members: Vec::new(),
        })
    }

    fn abandon(&mut self, _h: SinkHandle, _keep_partial: bool) {}
}

/// One transfer of a virtual file over a simulated path.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub file_size: u64,
    pub up: LinkConfig,
    pub down: LinkConfig,
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
    /// Virtual time after which the run stops, finished or not.
    pub time_limit: Duration,
    /// An estimate remembered from an earlier transfer, to start from ([`Path::resume`]).
    pub resume: Option<PathEstimate>,
    /// How long the receiver is busy after taking the offer ([`Sim::set_offer_pause`]).
    pub offer_pause: Duration,
}

/// What a [`Scenario`] measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub outcome: Option<Result<(), SendError>>,
    /// Virtual time from the offer to the outcome (or the limit).
    pub elapsed: Duration,
    /// File bits per second over the whole transfer.
    pub goodput_bps: f64,
    /// File bits per second between 50 % and 90 % acknowledged: the steady state.
    pub steady_goodput_bps: f64,
    pub sender: SenderStats,
    pub receiver: ReceiverStats,
    pub up: LinkStats,
    pub down: LinkStats,
    /// Whether the receiver's sink saw exactly the generator's bytes.
    pub verified: bool,
    /// Real time the simulation took.
    pub wall: Duration,
    /// From the start to the first round trip (at least 50 ms) whose packets arrived at the
    /// receiver at 90 % of the link's rate or more ([`Sim::time_to_rate`]); `None`: never.
    pub t90: Option<Duration>,
    /// What the sender learnt of the path, for a later transfer ([`Path::estimate`]).
    pub estimate: Option<PathEstimate>,
    /// What became of [`Scenario::resume`].
    pub resume_outcome: Option<ResumeOutcome>,
    /// What became of the jump from the first round's reading of the bottleneck, if one was
    /// made ([`Path::first_round_outcome`]).
    pub first_round_outcome: Option<ResumeOutcome>,
}

/// Runs `s` with a [`GeneratorSink`] and reports.
pub fn run_scenario(s: &Scenario, file_hash: [u8; HASH_LEN]) -> Report {
    let wall = Instant::now();
    let file = VirtualFile::new(s.seed, s.file_size, s.sender.chunk_size);
    let receiver = Receiver::new(s.receiver.clone());
    let mut sim = Sim::new(
        s.seed,
        s.up.clone(),
        s.down.clone(),
        receiver,
        GeneratorSink::new(s.seed),
    );
    sim.set_offer_pause(s.offer_pause);
    let path = Path::shared(&s.sender, sim.now());
    if let Some(e) = s.resume {
        path.borrow_mut().resume(e);
    }
    let sender = Sender::on_path(
        0x5EED,
        file.meta_with_hash("figure.bin", file_hash),
        s.sender.clone(),
        &path,
        sim.now(),
    )
    .expect("scenario file fits the protocol");
    sim.add_sender(sender, Box::new(file));
    sim.run_until(s.time_limit);
    let ss = sim.sender(0);
    let elapsed = ss.done_at.unwrap_or(sim.elapsed());
    let bits = s.file_size as f64 * 8.0;
    let steady = match (ss.half_at, ss.ninety_at) {
        (Some(a), Some(b)) if b > a => 0.4 * bits / (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let verified =
        sim.storage().finished.iter().all(|(_, ok)| *ok) && sim.storage().mismatches == 0;
    Report {
        outcome: ss.sender.outcome(),
        elapsed,
        goodput_bps: bits / elapsed.as_secs_f64(),
        steady_goodput_bps: steady,
        sender: ss.sender.stats(),
        receiver: sim.receiver_stats(),
        up: sim.link_stats(Dir::Up).clone(),
        down: sim.link_stats(Dir::Down).clone(),
        verified,
        wall: wall.elapsed(),
        t90: sim.time_to_rate(s.up.delay.mul_f64(2.0).max(Duration::from_millis(50)), 0.9),
        estimate: path.borrow().estimate(),
        resume_outcome: path.borrow().resume_outcome(),
        first_round_outcome: path.borrow().first_round_outcome(),
    }
}

/// The figure scenario: a file of `size` bytes in 1400-byte chunks over `rate_bps` links with
/// round trip `rtt` and `loss` each way, queues of one BDP.
pub fn figure_scenario(rate_bps: u64, rtt: Duration, loss: f64, size: u64, seed: u64) -> Scenario {
    let mut up = LinkConfig::new(rate_bps, rtt / 2);
    up.loss = loss;
    let down = up.clone();
    Scenario {
        seed,
        file_size: size,
        up,
        down,
        sender: SenderConfig::default(),
        receiver: ReceiverConfig::default(),
        time_limit: Duration::from_secs(600),
        resume: None,
        offer_pause: Duration::ZERO,
    }
}

/// The (link rate, RTT) pairs of [`figures_table`]: a LAN and a continent at 100 Mbit/s and
/// 1 Gbit/s, then long paths (a satellite hop, the other side of the world) beyond both the
/// 200 ms minimum RTO and the 200 ms offer interval, which a short path never exercises; and the
/// rates and RTTs of the WAN benchmark's delay line (200 Mbit/s at 20, 100, 300 and 600 ms; the
/// benchmark simulates each of its cases itself, with the real run's chunk size and framing,
/// through `chunk sim`).
const FIGURE_PATHS: [(u64, u64); 12] = [
    (100_000_000, 1),
    (100_000_000, 100),
    (1_000_000_000, 1),
    (1_000_000_000, 100),
    (50_000_000, 300),
    (50_000_000, 600),
    (1_000_000_000, 300),
    (1_000_000_000, 600),
    (200_000_000, 20),
    (200_000_000, 100),
    (200_000_000, 300),
    (200_000_000, 600),
];

/// Goodput as a share of the link rate for each of [`FIGURE_PATHS`] × {0, 1, 5 %} loss each
/// way, and retransmissions per lost data packet, as a Markdown table.
pub fn figures_table() -> String {
    const SIZE: u64 = 256 << 20;
    let hash = VirtualFile::new(1, SIZE, super::DEFAULT_CHUNK_SIZE).hash();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{SIZE_MIB} MiB virtual file, 1400-byte chunks, drop-tail queue of one BDP, loss on both links.\n\
         Goodput counts file bytes; the ceiling is 1400/1440 = 97.2 % (chunk and IPv4 headers).\n\
         Steady = between 50 % and 90 % acknowledged (past the startup). RTOs = retransmission\n\
         timeouts (a long path whose RTO kept no margin over the ack delay had one per chunk).\n",
        SIZE_MIB = SIZE >> 20
    );
    let _ = writeln!(
        out,
        "| link | RTT | loss | goodput (whole) | goodput (steady) | retx / lost data pkt | RTOs | result | sim time | wall |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (rate, rtt_ms) in FIGURE_PATHS {
        for loss in [0.0, 0.01, 0.05] {
            let s = figure_scenario(rate, Duration::from_millis(rtt_ms), loss, SIZE, 1);
            let r = run_scenario(&s, hash);
            let lost = r.up.lost + r.up.queue_drops;
            let retx = if lost == 0 {
                format!("{} retx, 0 lost", r.sender.chunks_retransmitted)
            } else {
                format!("{:.2}", r.sender.chunks_retransmitted as f64 / lost as f64)
            };
            let result = match &r.outcome {
                Some(Ok(())) if r.verified => "verified".to_owned(),
                Some(Ok(())) => "WRONG BYTES".to_owned(),
                Some(Err(e)) => format!("failed: {e}"),
                None => "unfinished".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} Mbit/s | {rtt_ms} ms | {:.0} % | {:.1} % | {:.1} % | {retx} | {} | {result} | {:.2} s | {:.2} s |",
                rate / 1_000_000,
                loss * 100.0,
                100.0 * r.goodput_bps / rate as f64,
                100.0 * r.steady_goodput_bps / rate as f64,
                r.sender.rto_expiries,
                r.elapsed.as_secs_f64(),
                r.wall.as_secs_f64(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "slow in debug; run with --release (see the module docs)"]
    fn print_figures() {
        println!("{}", figures_table());
    }

    #[test]
    fn virtual_file_is_consistent_across_offsets() {
        let f = VirtualFile::new(7, 1000, 100);
        let all = f.bytes();
        let mut part = vec![0; 37];
        f.fill(13, &mut part);
        assert_eq!(&all[13..50], &part[..]);
        assert_ne!(VirtualFile::new(8, 1000, 100).bytes(), all);
    }

    #[test]
    fn link_rate_and_queue_are_honoured() {
        // 10 Mbit/s, queue of 64 KiB: a burst of 100 × 1440 B on the wire keeps 45.
        let up = LinkConfig::new(10_000_000, Duration::from_millis(5));
        let down = up.clone();
        let mut sim: Sim<GeneratorSink> = Sim::new(
            1,
            up,
            down,
            Receiver::new(ReceiverConfig::default()),
            GeneratorSink::new(1),
        );
        let pkt = Repr {
            transfer_id: 1,
            seq: 0,
            flags: 0,
            message: chunk_common::wire::Message::Data {
                payload: &[0; 1400],
            },
        };
        let mut buf = vec![0; 2000];
        let n = pkt.emit(&mut buf).unwrap();
        for _ in 0..100 {
            sim.send(
                Dir::Up,
                Dest::Receiver(Ipv4Addr::LOCALHOST.into()),
                &buf[..n],
            );
        }
        let st = sim.link_stats(Dir::Up).clone();
        assert_eq!(st.queue_drops, 100 - 45);
        // The last kept packet leaves after 45 × 1440 × 8 / 10 Mbit/s = 51.84 ms, plus 5 ms.
        let last = sim.queue.iter().map(|Reverse(a)| a.at).max().unwrap();
        assert_eq!(last, 51_840_000 + 5_000_000);
    }

    /// A sim whose links are `up` and a clean copy of it down, and a small data packet.
    fn bare_sim(up: LinkConfig) -> (Sim<GeneratorSink>, Vec<u8>) {
        let sim = Sim::new(
            1,
            up.clone(),
            LinkConfig::new(up.rate_bps, up.delay),
            Receiver::new(ReceiverConfig::default()),
            GeneratorSink::new(1),
        );
        let pkt = Repr {
            transfer_id: 1,
            seq: 0,
            flags: 0,
            message: chunk_common::wire::Message::Data { payload: &[0; 16] },
        };
        let mut buf = vec![0; 100];
        let n = pkt.emit(&mut buf).unwrap();
        buf.truncate(n);
        (sim, buf)
    }

    #[test]
    fn burst_loss_follows_the_chain() {
        // Good → bad with 1 %, bad → good with 25 %: the bad state's stationary share is
        // 0.01 / 0.26 = 3.85 %, and a run of losses lasts 1 / 0.25 = 4 packets on average.
        let (to_bad, to_good) = (0.01, 0.25);
        let mut up = LinkConfig::new(0, Duration::from_millis(1));
        up.burst = Some((to_bad, to_good));
        let (mut sim, pkt) = bare_sim(up);
        const N: u64 = 400_000;
        let (mut runs, mut in_run) = (0u64, false);
        for i in 0..N {
            let before = sim.link_stats(Dir::Up).lost;
            sim.send(Dir::Up, Dest::Receiver(Ipv4Addr::LOCALHOST.into()), &pkt);
            let lost = sim.link_stats(Dir::Up).lost > before;
            if lost && !in_run {
                runs += 1;
            }
            in_run = lost;
            if i % 10_000 == 0 {
                sim.queue.clear();
            }
        }
        let st = sim.link_stats(Dir::Up).clone();
        assert_eq!(st.packets, N);
        assert_eq!(st.queue_drops, 0);
        let rate = st.lost as f64 / N as f64;
        let stationary = to_bad / (to_bad + to_good);
        assert!(
            (rate / stationary - 1.0).abs() < 0.1,
            "loss rate {rate}, stationary {stationary}"
        );
        let mean_run = st.lost as f64 / runs as f64;
        assert!(
            (mean_run * to_good - 1.0).abs() < 0.1,
            "mean run {mean_run}, expected {}",
            1.0 / to_good
        );
        // Independent losses at the same rate would come in runs of 1 / (1 - 0.0385) ≈ 1.04.
        assert!(mean_run > 3.0);

        // In the good state `loss` still applies: 3.85 % + 96.15 % × 2 % = 5.77 %.
        let mut up = LinkConfig::new(0, Duration::from_millis(1));
        up.burst = Some((to_bad, to_good));
        up.loss = 0.02;
        let (mut sim, pkt) = bare_sim(up);
        for i in 0..N {
            sim.send(Dir::Up, Dest::Receiver(Ipv4Addr::LOCALHOST.into()), &pkt);
            if i % 10_000 == 0 {
                sim.queue.clear();
            }
        }
        let rate = sim.link_stats(Dir::Up).lost as f64 / N as f64;
        let expected = stationary + (1.0 - stationary) * 0.02;
        assert!(
            (rate / expected - 1.0).abs() < 0.1,
            "loss rate {rate}, expected {expected}"
        );
    }

    /// On a link with a rate the chain moves with the link's time: packets a slot apart see
    /// bursts of `1 / to_good` packets, packets far apart (an ack now and then) independent
    /// losses at the same rate.
    #[test]
    fn bursts_are_of_the_links_time() {
        let (to_bad, to_good) = (0.01, 0.25);
        let stationary = to_bad / (to_bad + to_good);
        let rate = 100_000_000;
        let slot = Duration::from_nanos(BURST_SLOT_BYTES * 8 * 1_000_000_000 / rate);
        for (gap, run_lo, run_hi) in [(slot, 3.6, 4.4), (slot * 1000, 1.0, 1.1)] {
            let mut up = LinkConfig::new(rate, Duration::from_millis(1));
            up.queue_bytes = u64::MAX / 2;
            up.burst = Some((to_bad, to_good));
            let (mut sim, pkt) = bare_sim(up);
            // A busy spell first, packets half a slot apart: the chain's clock keeps up with
            // the link's, so the sparse packets after it are far apart to the chain too.
            for i in 0..10_000u32 {
                sim.now = (slot / 2 * i).as_nanos() as u64;
                sim.queue.clear();
                sim.send(Dir::Up, Dest::Receiver(Ipv4Addr::LOCALHOST.into()), &pkt);
            }
            // One step per packet, but the clock is the link's: 4999 slots, not 10 000.
            assert_eq!(sim.up.chain_slot, 4_999);
            let start = slot * 5_000;
            let lost_before = sim.link_stats(Dir::Up).lost;
            const N: u32 = 100_000;
            let (mut runs, mut in_run) = (0u32, false);
            for i in 0..N {
                sim.now = (start + gap * (i + 1)).as_nanos() as u64;
                sim.queue.clear();
                let before = sim.link_stats(Dir::Up).lost;
                sim.send(Dir::Up, Dest::Receiver(Ipv4Addr::LOCALHOST.into()), &pkt);
                let lost = sim.link_stats(Dir::Up).lost > before;
                runs += u32::from(lost && !in_run);
                in_run = lost;
            }
            let lost = (sim.link_stats(Dir::Up).lost - lost_before) as f64;
            let share = lost / f64::from(N);
            assert!(
                (share / stationary - 1.0).abs() < 0.1,
                "{gap:?}: loss {share}"
            );
            let run = lost / f64::from(runs);
            assert!((run_lo..run_hi).contains(&run), "{gap:?}: runs of {run}");
        }
    }

    #[test]
    fn overhead_is_charged_against_the_rate() {
        // 1000 packets of 36 bytes at 1 Mbit/s: the last leaves after 1000 × (36 + overhead) × 8 µs.
        for overhead in [20u32, 58, 100] {
            let mut up = LinkConfig::new(1_000_000, Duration::from_millis(5));
            up.queue_bytes = u64::MAX / 2;
            up.overhead = overhead;
            let (mut sim, pkt) = bare_sim(up);
            for _ in 0..1000 {
                sim.send(Dir::Up, Dest::Receiver(Ipv4Addr::LOCALHOST.into()), &pkt);
            }
            let last = sim.queue.iter().map(|Reverse(a)| a.at).max().unwrap();
            let wire = (pkt.len() as u64 + overhead as u64) * 8_000;
            assert_eq!(last, 1000 * wire + 5_000_000, "overhead {overhead}");
        }

        // A whole rate-limited transfer in 200-byte chunks (220-byte packets) takes longer in
        // proportion to the bytes on the wire: (220 + 58) / (220 + 20) = 1.158.
        let run = |overhead: u32| {
            let mut s = figure_scenario(10_000_000, Duration::from_millis(10), 0.0, 2 << 20, 1);
            s.sender.chunk_size = 200;
            s.up.overhead = overhead;
            s.down.overhead = overhead;
            let r = run_scenario(&s, [0; HASH_LEN]);
            assert!(matches!(r.outcome, Some(Ok(()))) && r.verified);
            r
        };
        let (ip, eth) = (run(20), run(58));
        let expected = (220.0 + 58.0) / (220.0 + 20.0);
        let steady = ip.steady_goodput_bps / eth.steady_goodput_bps;
        assert!(
            (steady / expected - 1.0).abs() < 0.02,
            "steady goodput ratio {steady}, expected {expected}"
        );
        let whole = eth.elapsed.as_secs_f64() / ip.elapsed.as_secs_f64();
        assert!(
            (whole / expected - 1.0).abs() < 0.05,
            "time ratio {whole}, expected {expected}"
        );
    }
}
