//! The sender's congestion controller: a rate-based, BBR-like model ("BBR-lite").
//!
//! Why not Reno/CUBIC: loss-based controllers halve their window on every loss, so at 1 Gbit/s,
//! 100 ms RTT and 1 % *random* loss (the Mathis formula gives ~1.2 MSS/(RTT·√p)) Reno would reach
//! ~1.6 Mbit/s. chunk moves bulk files over paths where loss is often not congestion. So, as BBR v1
//! does (Cardwell et al., 2016), the controller models the path instead of reacting to each loss:
//!
//! - the **bottleneck bandwidth** is the windowed maximum of delivery-rate samples over the last
//!   ten round trips (draft-cheng-iccrg-delivery-rate-estimation: bytes acked between a chunk's
//!   send and its ack, over the longer of the send and ack intervals);
//! - the **minimum RTT** is the lowest sample; it stays valid while samples near it come (a
//!   queue drains now and then), else **ProbeRtt** measures it again after ten seconds;
//! - the sender **paces** at `gain × bandwidth` and keeps at most `cwnd_gain × BDP` in flight;
//! - **Startup** doubles the rate per round (gain 2/ln 2 ≈ 2.89) until the bandwidth stops growing
//!   by 25 % for three rounds, **Drain** empties the queue that built, then **ProbeBw** cycles the
//!   gain through 1.25, 0.75, 1 × 6 to probe for more bandwidth and drain what the probe queued.
//!
//! Losses only repair data (the sender retransmits); they do not cut the rate. A queue filled by
//! this sender shows up as a delivery rate that stops growing, which is what bounds it on a thin
//! link. Random loss does *raise* the rate a little: the delivery rate counts only what
//! arrived, so pacing at it leaves idle the share of the bottleneck that lost packets used (or,
//! lost before it, never reached it): at 5 % loss each way 89.5 % of the link instead of 93.7 %.
//! In ProbeBw the pacing rate is divided by (1 − the loss share), the share measured over round
//! trips in which the RTT stayed within 1.25 × its minimum (+ 1 ms), as it did the round trip
//! before (when the lost packets went): no queue stood, so those losses were the path's and not
//! a queue's own drops. A round trip with a queue switches the compensation off until a
//! queue-free one comes; it is capped at a 20 % loss share.
//!
//! **Beside another flow** (a TCP flow that fills the queue, or another chunk), the probing
//! gain finds a little more of the link each cycle until the window is full: the window bounds
//! how much queue this sender keeps. BBR v1's window of 2 × BDP keeps a whole BDP queued, all of
//! a drop-tail queue of that size: a TCP flow beside it sees twice the round trip and the
//! queue's drops, and TCP CUBIC kept 16–19 % of a 100 ms link. In ProbeBw the window is
//! [`PROBE_BW_CWND_GAIN`] × BDP plus the acks' headroom of 48 chunks: this sender keeps at
//! most half a BDP queued, and that headroom (on a LAN, whose minimum RTT is under
//! [`LAN_RTT`], it keeps BBR v1's 2 × BDP). A queue that stands for [`MIN_RTT_WINDOW`] of
//! sending without a sample within [`MIN_RTT_NEAR`] (and 1 ms) of the minimum (a pause restarts
//! the count) would otherwise pass into the minimum and grow the window with it: as in BBR,
//! **ProbeRtt** then holds the window at [`PROBE_RTT_CWND_GAIN`] × BDP for
//! [`PROBE_RTT_DURATION`] (at least a minimum RTT), its rounds leaving the bandwidth filter as
//! it was, and the lowest sample of a chunk sent into the drained queue becomes the minimum.
//! Alone on a path the window is far above what this sender keeps in flight (it paces at the
//! rate it measures), and the draining phase of each cycle brings samples near the minimum, so
//! neither costs anything there.
//!
//! Left out of full BBR, on purpose: the long-term "policer" model. Known limit, shared with
//! BBR v1: above ~20 % random loss the probing phase can no longer show the full rate, and the
//! estimate decays slowly; the transfer still completes.
//! After an RTO the window drops to a few chunks until an ack shows delivery again, so a path that
//! went dark is probed gently rather than with a full window.
//!
//! **Resuming from a remembered estimate** (the driver keeps one per destination from earlier
//! transfers, see [`PathEstimate`]), in the manner of careful resume (RFC 9959,
//! draft-ietf-tsvwg-careful-resume): Startup from 32 chunks takes eight to nine doublings to
//! reach a 200 Mbit/s × 600 ms path's BDP, a third of a 256 MiB transfer. With an estimate
//! ([`Bbr::resume`]) the controller first checks it (*reconnaissance*, [`Bbr::check_resume`]):
//! the offer's round trip must not be provably below [`RESUME_RTT_MIN`] × the remembered
//! minimum RTT (a shorter path is another path) nor above [`RESUME_RTT_MAX`] × it plus
//! [`RESUME_ANSWER_SLACK`] (the offer's answer waits for the receiver to open the file, and an
//! offer sent more than once gives only bounds), and nothing may have been delivered yet; else
//! the estimate is dropped and Startup runs as usual. Confirmed, the controller *jumps*: it paces at
//! [`RESUME_SHARE`] of the remembered bandwidth, with a window of that rate × the remembered RTT
//! (the RFC's "half the saved window"). The first exact RTT sample above [`RESUME_RTT_MAX`] ×
//! the remembered RTT, or below [`RESUME_RTT_MIN`] × it, ends the jump (*retreat*: the path is
//! not the one remembered). Otherwise,
//! once acks have come back for a quarter of a round trip (and at least two acks' worth of
//! chunks), their rate, ack-clocked by the bottleneck, is a real delivery-rate sample: at least
//! [`RESUME_VALID`] of the jump's rate and the jump is *validated*; below it (the path is slower
//! now) it *retreats*. Either way the measured rate (never more than the jump's) seeds the
//! bandwidth filter, the jump ends and Startup carries on from the measured rate, so a stale
//! estimate costs at most the jump's one window, and the model from then on is built from this
//! path's samples alone. An RTO during the jump ends it without seeding anything.
//!
//! **A cold start reads the bottleneck from the first round** (no estimate, or one rejected), on
//! paths long enough for Startup's doublings to cost seconds ([`Bbr::may_read_first_round`]:
//! round trips of about 126 ms and more): the initial window goes out within
//! [`FIRST_FLIGHT_SPAN`], faster than most bottlenecks drain it, so the bottleneck spaces its
//! chunks at its own rate (packet-train dispersion: Keshav's packet pair, 1991; Dovrolis,
//! Ramanathan and Moore, 2001); the receiver's acks say when each echoed chunk
//! arrived (the ack's time less its delay field), so the chunks delivered between the first
//! ack's echo and a later one's, over the time between those arrivals (widened by
//! [`DISPERSION_SLACK`] for the receiver's batching, and never above the rate the train was
//! sent at), is the bottleneck's rate. That rate, when Startup would take a second or more to
//! reach it ([`FIRST_ROUND_MIN_STARTUP`]: where it is quicker, the jump gains little and takes
//! the link from a TCP flow starting beside it), becomes the estimate of a jump exactly like a
//! remembered one's: half its rate, one round trip of that as the window, validated or
//! retreated from by the jump's own acks, so an estimate that ack compression inflated costs
//! what a stale remembered one costs.

use std::time::{Duration, Instant};

/// Round trips the bandwidth maximum remembers.
const BW_ROUNDS: usize = 10;
/// Shortest span of one bandwidth-filter slot: on a LAN or veth a round trip is tens of
/// microseconds, and ten of them are shorter than one hiccup of the host (a descheduled
/// thread, a page-cache flush); a maximum that forgot the path's rate that fast would shrink
/// the window to what the hiccup delivered. So a slot lasts a round trip or this, whichever is
/// longer (ten slots: at least 25 ms of memory).
const BW_SLOT_MIN: Duration = Duration::from_micros(2500);
/// How long a minimum RTT stays valid without a sample near it ([`MIN_RTT_NEAR`]): then
/// ProbeRtt measures it again (in Startup and Drain, the next sample replaces it).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// A sample within this share above the minimum RTT (plus [`QUEUE_FREE_SLACK`]) shows that no
/// queue stood at the bottleneck: the minimum is still the path's, and its age starts again.
const MIN_RTT_NEAR: f64 = 1.0 / 16.0;
/// ProbeRtt's window, as a multiple of the BDP (BBR v2's).
const PROBE_RTT_CWND_GAIN: f64 = 0.5;
/// How long ProbeRtt holds its window once in flight has come down to it (BBR's 200 ms), and
/// at least a minimum RTT.
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// 2 / ln 2: the smallest gain that doubles the delivery rate each round in Startup.
const HIGH_GAIN: f64 = 2.885;
/// ProbeBw's pacing gains, one per min-RTT phase.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// The window's multiple of the BDP in ProbeBw (but on a LAN, [`LAN_RTT`]). A sender whose
/// window is full keeps the RTT at this multiple of the minimum: BBR v1's 2 keeps a queue of a
/// whole BDP, all of a drop-tail queue that size, which doubles the round trip of a TCP flow
/// beside it and drops its packets (TCP CUBIC kept 16–19 % of a 100 ms link next to chunk);
/// 1.5 keeps half of one, plus the acks' headroom (see [`Bbr::cwnd`]). Alone on a long path
/// the window is far above what this sender keeps in flight (it paces at the rate it
/// measures), so the smaller gain costs nothing there.
const PROBE_BW_CWND_GAIN: f64 = 1.5;
/// A minimum RTT under this is a LAN's: the hosts' own scheduling, not a path's, and the BDP
/// it gives a few chunks. There the window keeps BBR v1's 2 × BDP: 1.5 cost the LAN bench
/// 1–5 % by its medians.
const LAN_RTT: Duration = Duration::from_millis(1);
/// Bandwidth growth below this factor per round counts as a plateau in Startup.
const GROWTH: f64 = 1.25;
/// Plateau rounds that end Startup.
const PLATEAU_ROUNDS: u32 = 3;
/// Round trips whose queue stayed under this multiple of the minimum RTT (plus
/// [`QUEUE_FREE_SLACK`]) count as queue-free: their losses were not a queue's own drops.
const QUEUE_FREE_RTT: f64 = 1.25;
const QUEUE_FREE_SLACK: Duration = Duration::from_millis(1);
/// The largest loss share paced around (BBR's own model holds up to about 20 %).
const MAX_LOSS_SHARE: f64 = 0.2;
/// Weight of a new round's loss share in the running estimate.
const LOSS_SHARE_GAIN: f64 = 0.25;
/// A round's loss share counts only when it carried at least this many chunks.
const LOSS_ROUND_MIN_CHUNKS: u64 = 16;
/// Queue-free rounds with losses (not counting Startup's once the bandwidth stopped growing,
/// nor Drain's) before [`Bbr::random_loss_share`] tells the loss share.
const RANDOM_LOSS_ROUNDS: u32 = 4;
/// Smallest window, in chunks: enough to keep fast retransmit (3 later chunks) working.
const MIN_CWND_CHUNKS: u64 = 4;
/// The receiver acknowledges at least every this many chunks (docs/PROTOCOL.md, Receiver 2).
const ACK_EVERY: u64 = 16;
/// A remembered estimate is used only when the first RTT sample is at least this share of the
/// remembered minimum RTT (a much shorter path is another path)…
pub const RESUME_RTT_MIN: f64 = 0.5;
/// …and at most this multiple of it (longer: another path, or a queue that says the bandwidth
/// is not what it was).
pub const RESUME_RTT_MAX: f64 = 1.5;
/// The jump paces at this share of the remembered bandwidth (careful resume's half).
pub const RESUME_SHARE: f64 = 0.5;
/// How much later than the remembered RTT × [`RESUME_RTT_MAX`] the offer's answer may come and
/// still start the jump: the receiver answers an offer once it has opened (and preallocated) the
/// file, which its answer does not count as delay (about 20 ms for 256 MiB on tmpfs here; a
/// disk that must zero its blocks, or a slow network file system, takes longer).
pub const RESUME_ANSWER_SLACK: Duration = Duration::from_secs(1);
/// What a sender that remembers a path adds to the offer's first wait (see
/// `first_offer_interval`): a receiver preallocating a large file answers that much later
/// (about 20 ms for 256 MiB on tmpfs here). A slower answer costs one more copy of the offer,
/// and the answer's sample: the estimate is then checked against bounds.
pub const RESUME_OPEN_ALLOWANCE: Duration = Duration::from_millis(50);
/// The jump is validated when the acks' rate reaches this share of the jump's rate.
pub const RESUME_VALID: f64 = 0.8;
/// On a path long enough for a reading ([`Bbr::may_read_first_round`]) the initial window goes
/// out within this span (32 chunks of 1.5 KB: about 750 Mbit/s), so that a slower bottleneck
/// queues and spaces it.
pub const FIRST_FLIGHT_SPAN: Duration = Duration::from_micros(500);
/// The reading is used only where Startup would take at least this long to double from the
/// initial window to a round trip of the rate read: there the jump saves seconds. Where Startup
/// is quicker the jump saves little, and a flow that starts up beside it (a TCP slow start)
/// would find the queue full of the jump's packets rounds earlier than of Startup's, and leave
/// its slow start with a small window (at 100 ms, TCP CUBIC kept 8 % of the link next to a
/// jumping chunk, 26 % next to one in Startup).
pub const FIRST_ROUND_MIN_STARTUP: Duration = Duration::from_secs(1);
/// Added to the span between two echoed arrivals: the receiver stamps arrivals per batch it
/// reads (its reader naps 50 µs), which can shorten a span by that much at either end.
pub const DISPERSION_SLACK: Duration = Duration::from_micros(100);
/// Chunks delivered between two echoed arrivals of the first round that make a reading: the
/// receiver acks every [`ACK_EVERY`] chunks, and a loss among them leaves fewer.
const TRAIN_MIN_CHUNKS: u64 = ACK_EVERY / 2;

/// What a sender remembers of a path from an earlier transfer, to start the next one from
/// ([`Bbr::resume`]); the driver stores it (with its age) per destination.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathEstimate {
    /// The bottleneck bandwidth, bytes per second of chunk packets.
    pub bandwidth: f64,
    /// The path's minimum RTT.
    pub min_rtt: Duration,
}

/// What became of a remembered estimate ([`Bbr::resume_outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Given, not yet checked (no RTT sample yet).
    Pending,
    /// The first RTT sample did not match the remembered one (or came after data was
    /// delivered): a normal Startup.
    Rejected,
    /// Jumped to the remembered rate; its acks have not yet told.
    Jumping,
    /// Jumped, and the acks' rate confirmed the estimate.
    Validated,
    /// Jumped, and the acks' rate (or an RTO) said the path is slower now: Startup from the
    /// measured rate.
    Retreated,
}

impl ResumeOutcome {
    /// The outcome's name in reports (`--json`, `chunk sim`).
    pub fn name(self) -> &'static str {
        match self {
            ResumeOutcome::Pending => "pending",
            ResumeOutcome::Rejected => "rejected",
            ResumeOutcome::Jumping => "jumping",
            ResumeOutcome::Validated => "validated",
            ResumeOutcome::Retreated => "retreated",
        }
    }
}

/// A remembered estimate's progress (see the module docs).
#[derive(Clone, Copy, Debug)]
enum Resume {
    Pending(PathEstimate),
    Jumping {
        /// The jump's pacing rate, bytes per second.
        rate: f64,
        /// The remembered minimum RTT: the jump's window is `rate` × it.
        rtt: Duration,
        /// An RTT sample outside this ends the jump.
        rtt_range: (Duration, Duration),
        /// The first ack of a chunk sent during the jump: when, and `delivered` then.
        first_ack: Option<(Instant, u64)>,
        /// When the jump began: its chunks are those sent since (not the ones that went
        /// before the offer's answer, nor the first round's train).
        since: Instant,
        /// Jumped from the first round's estimate, not a remembered one.
        cold: bool,
    },
}

/// A cold start's reading of the bottleneck from its first round (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
enum FirstRound {
    /// It may still happen: no echoed arrival of the first round yet.
    Waiting,
    /// The first round's first echoed arrival, and `delivered` then.
    From(Instant, u64),
    /// Made, abandoned or never to be (turned off, a remembered estimate, an RTO).
    Over,
}

/// What the controller remembers about one transmission, to turn its ack into a rate sample.
#[derive(Clone, Copy, Debug)]
pub struct SendSnapshot {
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    sent_at: Instant,
    app_limited: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// The rate sample being built while one ack's newly acknowledged chunks are processed.
#[derive(Clone, Copy, Debug)]
struct RateSample {
    prior_delivered: u64,
    interval: Duration,
    app_limited: bool,
}

#[derive(Clone, Debug)]
pub struct Bbr {
    /// Bytes of a full chunk packet, the controller's unit.
    chunk: u64,
    initial_cwnd: u64,
    mode: Mode,

    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    /// While non-zero, transmissions are marked app-limited: the sender had nothing to send, so
    /// their rate samples say nothing about the path. Cleared once `delivered` passes it.
    app_limited_until: u64,
    sample: Option<RateSample>,

    /// Per-slot maxima of delivery rate (bytes/s), indexed by `bw_slot % BW_ROUNDS`; a slot
    /// is a round trip, at least [`BW_SLOT_MIN`].
    bw_rounds: [f64; BW_ROUNDS],
    bw_slot: u64,
    bw_slot_start: Instant,
    round: u64,
    next_round_delivered: u64,
    round_start: bool,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,

    full_bw: f64,
    plateau_rounds: u32,
    cycle_index: usize,
    cycle_start: Instant,
    /// Set by an RTO to the bytes then in flight; cleared by the next rate sample.
    after_rto: Option<u64>,
    /// A remembered estimate being checked or used; `None` once over (or never given).
    resume: Option<Resume>,
    resume_outcome: Option<ResumeOutcome>,
    /// A chunk sent during the jump was acknowledged by the ack being processed.
    jump_acked: bool,
    /// The first round's reading of the bottleneck (see the module docs).
    first_round: FirstRound,
    /// What became of the jump from the first round's estimate; `None`: there was none.
    first_round_outcome: Option<ResumeOutcome>,
    /// What the start read and why its jump ended, and what each ProbeRtt measured, in words,
    /// for the sender's debug log.
    start_notes: Vec<String>,

    /// Bytes declared lost (by later acks, not by an RTO) in the current round.
    round_lost: u64,
    /// `delivered` when the current round began.
    round_delivered_from: u64,
    /// The largest RTT sample of the current round.
    round_max_rtt: Duration,
    /// The share of packets lost on the path while no queue stood (a running estimate over
    /// queue-free rounds), whether the last round counted as queue-free, and whether the last
    /// round had no queue.
    loss_share: f64,
    queue_free: bool,
    last_round_no_queue: bool,
    /// Queue-free rounds that lost something: random loss goes on round after round, a
    /// queue's overflow taken for the path's (in the round after it drained) does not.
    lossy_free_rounds: u32,
    /// In ProbeRtt: when in flight came down to its window, and the lowest RTT sample taken
    /// a minimum RTT after that (of chunks sent into the drained queue).
    probe_rtt_drained: Option<Instant>,
    probe_rtt_min: Option<Duration>,
}

impl Bbr {
    /// `chunk`: bytes of a full data packet; `initial_cwnd`: chunks allowed before any estimate.
    pub fn new(chunk: u64, initial_cwnd: u64, now: Instant) -> Self {
        Self {
            chunk,
            initial_cwnd: initial_cwnd * chunk,
            mode: Mode::Startup,
            delivered: 0,
            delivered_at: now,
            first_sent_at: now,
            app_limited_until: 0,
            sample: None,
            bw_rounds: [0.0; BW_ROUNDS],
            bw_slot: 0,
            bw_slot_start: now,
            round: 0,
            next_round_delivered: 0,
            round_start: false,
            min_rtt: None,
            min_rtt_at: now,
            full_bw: 0.0,
            plateau_rounds: 0,
            cycle_index: 2,
            cycle_start: now,
            after_rto: None,
            resume: None,
            resume_outcome: None,
            jump_acked: false,
            first_round: FirstRound::Waiting,
            first_round_outcome: None,
            start_notes: Vec::new(),
            round_lost: 0,
            round_delivered_from: 0,
            round_max_rtt: Duration::ZERO,
            loss_share: 0.0,
            queue_free: false,
            last_round_no_queue: false,
            lossy_free_rounds: 0,
            probe_rtt_drained: None,
            probe_rtt_min: None,
        }
    }

    /// Whether a cold start may read the bottleneck from its first round (on by default).
    pub fn with_first_round(mut self, on: bool) -> Self {
        if !on {
            self.first_round = FirstRound::Over;
        }
        self
    }

    /// `chunks` chunks were declared lost by later acks (not by an RTO): counted against the
    /// round's deliveries to estimate the path's random loss ([`Self::pacing_rate`]).
    pub fn on_lost(&mut self, chunks: u64) {
        self.round_lost += chunks * self.chunk;
    }

    /// The share of packets the path loses while no queue stands, as paced around.
    pub fn loss_share(&self) -> f64 {
        if self.queue_free {
            self.loss_share
        } else {
            0.0
        }
    }

    /// The loss share once losses have come in [`RANDOM_LOSS_ROUNDS`] queue-free rounds (0
    /// before), not counting Startup's once the bandwidth stopped growing, nor Drain's: loss
    /// that goes on without a queue, the path's own, not a burst of a queue's drops that one
    /// round misread, nor Startup's overshoot into a queue too thin to show in the RTT.
    pub fn random_loss_share(&self) -> f64 {
        if self.lossy_free_rounds >= RANDOM_LOSS_ROUNDS {
            self.loss_share()
        } else {
            0.0
        }
    }

    /// Ends a round's loss accounting: a round that carried enough and whose RTT stayed near
    /// the minimum, as it did in the round before (no queue of this sender's or anyone's: its
    /// losses are the path's, not a full queue's), updates the loss share; any other round
    /// turns the compensation off until a queue-free one comes. Losses are detected a round
    /// trip after they happened: a queue that overflowed and then drained (a TCP flow beside
    /// backing off) leaves a round without a queue whose losses were the queue's, hence the
    /// round before must have had none either.
    fn end_loss_round(&mut self) {
        let delivered = self.delivered - self.round_delivered_from;
        let lost = self.round_lost;
        let no_queue = self
            .min_rtt
            .is_some_and(|m| self.round_max_rtt <= m.mul_f64(QUEUE_FREE_RTT) + QUEUE_FREE_SLACK);
        let queue_free = no_queue && self.last_round_no_queue;
        self.last_round_no_queue = no_queue;
        if delivered + lost >= LOSS_ROUND_MIN_CHUNKS * self.chunk {
            self.queue_free = queue_free;
            if queue_free {
                let p = lost as f64 / (delivered + lost) as f64;
                self.loss_share += LOSS_SHARE_GAIN * (p - self.loss_share);
                // Once Startup has seen the bandwidth stop growing, it overfills the queue
                // until Drain has emptied it, and a queue too thin to raise the RTT by a
                // quarter hides that: those rounds' losses are not the path's.
                let overfilling = match self.mode {
                    Mode::Startup => self.plateau_rounds > 0,
                    Mode::Drain => true,
                    Mode::ProbeBw | Mode::ProbeRtt => false,
                };
                if lost > 0 && !overfilling {
                    self.lossy_free_rounds += 1;
                }
            }
        }
        self.round_lost = 0;
        self.round_delivered_from = self.delivered;
        self.round_max_rtt = Duration::ZERO;
    }

    /// Starts from `estimate` (remembered from an earlier transfer on this path) once the first
    /// RTT sample confirms it (see the module docs). Ignored once anything has been delivered
    /// or measured, or for an estimate without a bandwidth.
    pub fn resume(&mut self, estimate: PathEstimate) {
        let usable = estimate.bandwidth.is_finite()
            && estimate.bandwidth > 0.0
            && !estimate.min_rtt.is_zero();
        if usable && self.delivered == 0 && self.min_rtt.is_none() && self.resume.is_none() {
            self.resume = Some(Resume::Pending(estimate));
            self.resume_outcome = Some(ResumeOutcome::Pending);
        }
    }

    /// The offer was answered: its round trip lies between `lower` (the time since its last
    /// copy) and `upper` (since its first; the two are equal when it went once). The answer
    /// carries no delay for the receiver's opening of the file, so both may exceed the path's
    /// round trip by that. The reconnaissance of a remembered estimate rejects it when the
    /// bounds prove the path another: a round trip below [`RESUME_RTT_MIN`] × the remembered
    /// one even by `upper`, or above [`RESUME_RTT_MAX`] × it plus [`RESUME_ANSWER_SLACK`] even
    /// by `lower`. Else the jump starts, and the first exact samples (data acks) check the round
    /// trip again, both ways ([`on_rtt`](Self::on_rtt)), with the jump's window (one remembered
    /// round trip of half the remembered rate) bounding what goes out before they come.
    pub fn check_resume(&mut self, lower: Duration, upper: Duration, now: Instant) {
        let Some(Resume::Pending(e)) = self.resume else {
            return;
        };
        let min = e.min_rtt.mul_f64(RESUME_RTT_MIN);
        let short = upper < min;
        let slow = lower > e.min_rtt.mul_f64(RESUME_RTT_MAX) + RESUME_ANSWER_SLACK;
        if self.delivered > 0 || short || slow {
            self.start_notes.push(format!(
                "estimate rejected: offer answered after {lower:?}..{upper:?} against {:?} \
                 remembered, {} bytes delivered before",
                e.min_rtt, self.delivered
            ));
            self.end_resume(ResumeOutcome::Rejected);
            return;
        }
        self.resume = Some(Resume::Jumping {
            rate: RESUME_SHARE * e.bandwidth,
            rtt: e.min_rtt,
            rtt_range: (min, e.min_rtt.mul_f64(RESUME_RTT_MAX)),
            first_ack: None,
            since: now,
            cold: false,
        });
        self.resume_outcome = Some(ResumeOutcome::Jumping);
        self.first_round = FirstRound::Over;
    }

    /// What became of the estimate given to [`resume`](Self::resume); `None`: none was given.
    pub fn resume_outcome(&self) -> Option<ResumeOutcome> {
        self.resume_outcome
    }

    /// The remembered minimum RTT while the estimate waits for its check (the offer's first
    /// wait is sized from it: see `first_offer_interval`).
    pub fn pending_resume_rtt(&self) -> Option<Duration> {
        match self.resume {
            Some(Resume::Pending(e)) => Some(e.min_rtt),
            _ => None,
        }
    }

    /// What this transfer found out about the path, worth remembering for the next: only once
    /// Startup has seen the bandwidth stop growing (a transfer too short for that measured the
    /// file, not the path), with a minimum RTT.
    pub fn estimate(&self) -> Option<PathEstimate> {
        let bw = self.bandwidth();
        let min_rtt = self.min_rtt?;
        (self.mode != Mode::Startup && bw > 0.0).then_some(PathEstimate {
            bandwidth: bw,
            min_rtt,
        })
    }

    /// What the start read and why its jump ended, in words (for a debug log).
    pub fn start_notes(&self) -> &[String] {
        &self.start_notes
    }

    /// What became of the jump from the first round's estimate (`None`: none was made).
    pub fn first_round_outcome(&self) -> Option<ResumeOutcome> {
        self.first_round_outcome
    }

    fn end_resume(&mut self, outcome: ResumeOutcome) {
        let cold = matches!(self.resume, Some(Resume::Jumping { cold: true, .. }));
        self.resume = None;
        if cold {
            self.first_round_outcome = Some(outcome);
        } else {
            self.resume_outcome = Some(outcome);
        }
    }

    /// Whether a path of `rtt` may be read from the first round: whether Startup could take
    /// [`FIRST_ROUND_MIN_STARTUP`] or more to reach the fastest rate a reading gives (the
    /// train's). Shorter paths never jump. The first window of a first transfer goes before
    /// any round trip is known (behind the offer, see the sender's `early_at`), as a train on
    /// every path; a later one on a known path is paced as Startup paces on a short path. An
    /// offer's round trip counts the receiver's opening of the file too: a shorter path may
    /// then send the train, and the data acks' round trips keep it from jumping.
    pub fn may_read_first_round(&self, rtt: Duration) -> bool {
        self.first_round != FirstRound::Over
            && self.startup_time(
                self.initial_cwnd as f64 / FIRST_FLIGHT_SPAN.as_secs_f64(),
                rtt,
            ) >= FIRST_ROUND_MIN_STARTUP
    }

    /// How long Startup takes to double from the initial window to a round trip of `rate`
    /// (bytes per second) on a path of `rtt`.
    fn startup_time(&self, rate: f64, rtt: Duration) -> Duration {
        let doublings = (rate * rtt.as_secs_f64() / self.initial_cwnd as f64)
            .max(1.0)
            .log2();
        rtt.mul_f64(doublings)
    }

    /// In the first round of a cold start, after each ack: `arrived`, when the chunk the ack
    /// echoes reached the receiver (on this side's clock, less the one-way delay), starts the
    /// train or, once [`TRAIN_MIN_CHUNKS`] more have been delivered, ends it: the bottleneck's
    /// rate, and from it the jump (see the module docs).
    fn read_first_round(&mut self, arrived: Option<Instant>, newly: bool, now: Instant) {
        if self.first_round == FirstRound::Over {
            return;
        }
        if self.round > 1 || self.resume.is_some() {
            // The train's acks are over (or a remembered estimate is being used): Startup goes
            // on as it is.
            if self.resume.is_none() {
                self.start_notes.push(format!(
                    "no reading: round {} began with {} bytes delivered since the first echo",
                    self.round,
                    match self.first_round {
                        FirstRound::From(_, d0) => self.delivered - d0,
                        _ => 0,
                    }
                ));
            }
            self.first_round = FirstRound::Over;
            return;
        }
        let Some(at) = arrived.filter(|_| newly && self.round == 1) else {
            return;
        };
        let FirstRound::From(t0, d0) = self.first_round else {
            self.first_round = FirstRound::From(at, self.delivered);
            return;
        };
        // Echoes of a train that arrived bunched (a host or a bridge that held it and let it
        // go at once) can come a few microseconds out of order: the receiver converts the
        // kernel's stamps with one clock reading per batch. Within the slack they arrived
        // together (the span below saturates at zero), and the reading is the train's own rate
        // (the jump's acks then correct it).
        if at + DISPERSION_SLACK < t0 {
            // An ack held longer than the first (another transfer's): what it delivered may
            // have arrived before the train's first echo, so it cannot be read.
            self.start_notes.push(format!(
                "no reading: an echo arrived {:?} before the first",
                t0.saturating_duration_since(at)
            ));
            self.first_round = FirstRound::Over;
            return;
        }
        let bytes = self.delivered - d0;
        if bytes < TRAIN_MIN_CHUNKS * self.chunk {
            return;
        }
        self.first_round = FirstRound::Over;
        let Some(rtt) = self.min_rtt else {
            self.start_notes
                .push("no reading: no round trip measured".into());
            return;
        };
        let span = at.saturating_duration_since(t0) + DISPERSION_SLACK;
        let train = self.initial_cwnd as f64 / FIRST_FLIGHT_SPAN.as_secs_f64();
        let read = (bytes as f64 / span.as_secs_f64()).min(train);
        if self.startup_time(read, rtt) < FIRST_ROUND_MIN_STARTUP {
            // Startup gets there soon enough, side by side with any other flow starting up.
            self.start_notes
                .push("no jump: Startup is quick enough".into());
            return;
        }
        let rate = RESUME_SHARE * read;
        self.start_notes.push(format!(
            "first round read {:.1} Mbit/s: {bytes} bytes in {span:?}, min RTT {rtt:?}",
            read * 8e-6
        ));
        if rate <= HIGH_GAIN * self.bandwidth() {
            self.start_notes.push(format!(
                "no jump: Startup paces at {:.1} Mbit/s already",
                HIGH_GAIN * self.bandwidth() * 8e-6
            ));
            // Startup's next round paces at that already: the path is slow, or the train was
            // not sent fast (the sender had little to send).
            return;
        }
        self.resume = Some(Resume::Jumping {
            rate,
            rtt,
            rtt_range: (rtt.mul_f64(RESUME_RTT_MIN), rtt.mul_f64(RESUME_RTT_MAX)),
            first_ack: None,
            since: now,
            cold: true,
        });
        self.first_round_outcome = Some(ResumeOutcome::Jumping);
    }

    /// During a jump, after each ack: once acks have come back for a quarter of a round trip
    /// (and two acks' worth of chunks), their rate decides (see the module docs).
    fn check_jump(&mut self, now: Instant) {
        let Some(Resume::Jumping {
            rate, first_ack, ..
        }) = &mut self.resume
        else {
            return;
        };
        let rate = *rate;
        let Some((t0, d0)) = *first_ack else {
            if self.jump_acked {
                // Acks of earlier chunks (the offer's answer, the first round's train) say
                // nothing of the jump.
                *first_ack = Some((now, self.delivered));
            }
            return;
        };
        let Some(Resume::Jumping { rtt, .. }) = self.resume else {
            return;
        };
        let span = now.saturating_duration_since(t0);
        let bytes = self.delivered - d0;
        if span < rtt / 4 || bytes < 2 * ACK_EVERY * self.chunk {
            return;
        }
        // Paced at `rate`, the acks cannot honestly come back faster; faster is ack compression.
        let measured = (bytes as f64 / span.as_secs_f64()).min(rate);
        self.start_notes.push(format!(
            "jump at {:.1} Mbit/s: acks came back at {:.1} Mbit/s over {span:?}",
            rate * 8e-6,
            measured * 8e-6
        ));
        let slot = &mut self.bw_rounds[self.bw_slot as usize % BW_ROUNDS];
        *slot = slot.max(measured);
        self.end_resume(if measured >= RESUME_VALID * rate {
            ResumeOutcome::Validated
        } else {
            ResumeOutcome::Retreated
        });
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bottleneck bandwidth estimate, bytes per second (0 before the first sample).
    pub fn bandwidth(&self) -> f64 {
        self.bw_rounds.iter().copied().fold(0.0, f64::max)
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Records a transmission of `bytes_in_flight` bytes already outstanding.
    pub fn on_send(&mut self, now: Instant, bytes_in_flight: u64) -> SendSnapshot {
        if bytes_in_flight == 0 {
            // Nothing in flight: intervals restart here, or idle time would dilute the samples.
            self.first_sent_at = now;
            self.delivered_at = now;
            // Whatever queue stood has drained meanwhile: the minimum's age counts from here,
            // so that the first ack after a pause does not start ProbeRtt.
            self.min_rtt_at = self.min_rtt_at.max(now);
        }
        SendSnapshot {
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent_at: self.first_sent_at,
            sent_at: now,
            // ProbeRtt's small window says nothing about the path's rate.
            app_limited: self.app_limited_until != 0 || self.mode == Mode::ProbeRtt,
        }
    }

    /// The sender could have sent but had nothing (or its configured window was full).
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.app_limited_until = (self.delivered + bytes_in_flight).max(1);
    }

    /// One newly acknowledged transmission (call for each, then [`on_ack_end`](Self::on_ack_end)).
    pub fn on_acked(&mut self, now: Instant, sent: &SendSnapshot, bytes: u64) {
        self.delivered += bytes;
        self.delivered_at = now;
        let newer = self
            .sample
            .is_none_or(|s| sent.delivered >= s.prior_delivered);
        if newer {
            let send_elapsed = sent.sent_at.saturating_duration_since(sent.first_sent_at);
            let ack_elapsed = now.saturating_duration_since(sent.delivered_at);
            self.sample = Some(RateSample {
                prior_delivered: sent.delivered,
                interval: send_elapsed.max(ack_elapsed),
                app_limited: sent.app_limited,
            });
            self.first_sent_at = sent.sent_at;
        }
        if sent.delivered >= self.next_round_delivered {
            self.round_start = true;
        }
        if let Some(Resume::Jumping { since, .. }) = self.resume
            && sent.sent_at >= since
        {
            self.jump_acked = true;
        }
    }

    /// Ends the processing of one ack: updates the model and the mode. `arrived`: when the
    /// chunk the ack echoes reached the receiver, on this side's clock (the ack's arrival less
    /// its delay field), if it echoes one.
    pub fn on_ack_end(
        &mut self,
        now: Instant,
        rtt: Option<Duration>,
        arrived: Option<Instant>,
        bytes_in_flight: u64,
    ) {
        // `on_acked` leaves a sample for `on_ack_end` whenever the ack delivered something.
        let newly = self.sample.is_some();
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        if let Some(rtt) = rtt {
            self.on_rtt(now, rtt);
            self.round_max_rtt = self.round_max_rtt.max(rtt);
        }
        if self.round_start {
            self.round_start = false;
            self.end_loss_round();
            self.round += 1;
            self.next_round_delivered = self.delivered;
            // ProbeRtt's rounds say nothing of the bandwidth (its sends are app-limited): the
            // filter keeps its slots through them, or a short path's ten would all expire.
            if self.mode != Mode::ProbeRtt
                && now.saturating_duration_since(self.bw_slot_start) >= BW_SLOT_MIN
            {
                self.bw_slot += 1;
                self.bw_slot_start = now;
                self.bw_rounds[self.bw_slot as usize % BW_ROUNDS] = 0.0;
            }
            self.check_full_pipe();
        }
        if let Some(s) = self.sample.take() {
            self.after_rto = None;
            let min_interval = self.min_rtt.unwrap_or(Duration::ZERO);
            // Shorter than a round trip: ack compression, not the path's rate.
            if !s.interval.is_zero() && s.interval >= min_interval {
                let rate = (self.delivered - s.prior_delivered) as f64 / s.interval.as_secs_f64();
                if !s.app_limited || rate > self.bandwidth() {
                    let slot = &mut self.bw_rounds[self.bw_slot as usize % BW_ROUNDS];
                    *slot = slot.max(rate);
                }
            }
        }
        if self.resume.is_some() {
            if self.delivered > 0 && matches!(self.resume, Some(Resume::Pending(_))) {
                // Data acknowledged while the estimate still waits for its check (a data ack
                // taken for the lost answer gave no exact round trip): it can no longer be
                // checked before the jump would start.
                self.start_notes
                    .push("estimate rejected: data acked before the offer's answer".into());
                self.end_resume(ResumeOutcome::Rejected);
            }
            self.check_jump(now);
        }
        self.jump_acked = false;
        self.read_first_round(arrived, newly, now);
        self.update_mode(now, bytes_in_flight);
    }

    /// The retransmission timer fired with `bytes_in_flight` still out (not yet timed out): the
    /// path may be gone, so only a few chunks more go out until an ack shows delivery again.
    pub fn on_rto(&mut self, bytes_in_flight: u64) {
        self.after_rto = Some(bytes_in_flight);
        // A first round that went dark says nothing of the bottleneck: no train again, no reading.
        self.first_round = FirstRound::Over;
        if self.resume.is_some() {
            self.start_notes.push("start ended by an RTO".into());
        }
        match self.resume {
            Some(Resume::Jumping { .. }) => self.end_resume(ResumeOutcome::Retreated),
            Some(Resume::Pending(_)) => self.end_resume(ResumeOutcome::Rejected),
            None => {}
        }
    }

    /// The last RTO was spurious (an ack showed its chunks were still on their way): the path
    /// did not go dark, so the post-RTO window goes. The model itself (bandwidth, min RTT) is
    /// never reset by an RTO in the first place.
    pub fn on_spurious_rto(&mut self) {
        self.after_rto = None;
    }

    /// Seeds the RTT model before any ack (the offer's round trip).
    pub fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        if let Some(Resume::Jumping { rtt_range, .. }) = self.resume
            && !(rtt_range.0..=rtt_range.1).contains(&rtt)
        {
            // An exact sample (a data ack's) says the path is longer or shorter than the one
            // remembered: whatever its rate, the estimate is not this path's.
            self.start_notes.push(format!(
                "jump ended by a round trip of {rtt:?}, out of {rtt_range:?}"
            ));
            self.end_resume(ResumeOutcome::Retreated);
        }
        if let Some(drained) = self.probe_rtt_drained
            && now >= drained + self.min_rtt.unwrap_or_default()
        {
            self.probe_rtt_min = Some(self.probe_rtt_min.map_or(rtt, |m| m.min(rtt)));
        }
        // In ProbeBw an old minimum is measured again by ProbeRtt (`update_mode`); before it,
        // the next sample replaces it.
        let expired = now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW
            && matches!(self.mode, Mode::Startup | Mode::Drain);
        match self.min_rtt {
            Some(m) if rtt > m && !expired => {
                if rtt <= m.mul_f64(1.0 + MIN_RTT_NEAR) + QUEUE_FREE_SLACK {
                    self.min_rtt_at = now;
                }
            }
            _ => {
                self.min_rtt = Some(rtt);
                self.min_rtt_at = now;
            }
        }
    }

    fn check_full_pipe(&mut self) {
        if self.mode != Mode::Startup {
            return;
        }
        let bw = self.bandwidth();
        if bw >= self.full_bw * GROWTH {
            self.full_bw = bw;
            self.plateau_rounds = 0;
        } else {
            self.plateau_rounds += 1;
            if self.plateau_rounds >= PLATEAU_ROUNDS {
                self.mode = Mode::Drain;
            }
        }
    }

    fn update_mode(&mut self, now: Instant, bytes_in_flight: u64) {
        let bdp = self.bdp(1.0);
        match self.mode {
            Mode::Startup => {}
            Mode::Drain => {
                if bdp.is_some_and(|b| bytes_in_flight <= b) {
                    self.mode = Mode::ProbeBw;
                    self.cycle_index = 2;
                    self.cycle_start = now;
                }
            }
            Mode::ProbeBw
                if now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW
                    && !matches!(self.resume, Some(Resume::Jumping { .. })) =>
            {
                // No sample near the minimum RTT for a while: a queue has stood all along, its
                // own or another flow's. Hold the window down until it drains and measure.
                self.mode = Mode::ProbeRtt;
                self.probe_rtt_drained = None;
                self.probe_rtt_min = None;
            }
            Mode::ProbeRtt => {
                if self.probe_rtt_drained.is_none() && bytes_in_flight <= self.probe_rtt_window() {
                    self.probe_rtt_drained = Some(now);
                }
                let hold = PROBE_RTT_DURATION.max(self.min_rtt.unwrap_or_default());
                // It ends once it has held the window and measured a chunk sent into the
                // drained queue (retransmissions give no sample: then at the latest after twice
                // the hold, keeping the old minimum).
                if let Some(drained) = self.probe_rtt_drained
                    && now >= drained + hold
                    && (self.probe_rtt_min.is_some() || now >= drained + 2 * hold)
                {
                    // The lowest sample while the queue drained is the path's minimum now,
                    // even above the old one (a longer route).
                    if let Some(m) = self.probe_rtt_min.take() {
                        self.start_notes.push(format!(
                            "ProbeRtt in round {}: minimum RTT {:?} -> {m:?}",
                            self.round,
                            self.min_rtt.unwrap_or_default()
                        ));
                        self.min_rtt = Some(m);
                    }
                    self.min_rtt_at = now;
                    self.probe_rtt_drained = None;
                    self.mode = Mode::ProbeBw;
                    self.cycle_index = 2;
                    self.cycle_start = now;
                }
            }
            Mode::ProbeBw => {
                let phase = self.min_rtt.unwrap_or(Duration::from_millis(1));
                let elapsed = now.saturating_duration_since(self.cycle_start) > phase;
                // The draining phase may end early once the queue it drains is gone.
                let drained =
                    CYCLE[self.cycle_index] < 1.0 && bdp.is_some_and(|b| bytes_in_flight <= b);
                if elapsed || drained {
                    self.cycle_index = (self.cycle_index + 1) % CYCLE.len();
                    self.cycle_start = now;
                }
            }
        }
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => HIGH_GAIN,
            Mode::Drain => 1.0 / HIGH_GAIN,
            Mode::ProbeBw => CYCLE[self.cycle_index],
            Mode::ProbeRtt => 1.0,
        }
    }

    /// Twice the BDP (BBR v1 keeps 2.89 in Startup, but then a drop-tail queue of one BDP
    /// overflows by almost a BDP at the end of Startup, and most of that burst is lost);
    /// [`PROBE_BW_CWND_GAIN`] in ProbeBw but on a LAN, [`PROBE_RTT_CWND_GAIN`] in ProbeRtt.
    fn cwnd_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup | Mode::Drain => 2.0,
            Mode::ProbeBw if self.min_rtt.is_some_and(|m| m < LAN_RTT) => 2.0,
            Mode::ProbeBw => PROBE_BW_CWND_GAIN,
            Mode::ProbeRtt => PROBE_RTT_CWND_GAIN,
        }
    }

    /// `gain × bandwidth × min RTT` in bytes, once both are known.
    fn bdp(&self, gain: f64) -> Option<u64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?;
        (bw > 0.0).then_some((gain * bw * rtt.as_secs_f64()) as u64)
    }

    /// The rate to pace at, bytes per second.
    pub fn pacing_rate(&self) -> f64 {
        if let Some(Resume::Jumping { rate, .. }) = self.resume {
            return rate;
        }
        let bw = self.bandwidth();
        let rtt = self
            .min_rtt
            .unwrap_or(Duration::from_millis(1))
            .max(Duration::from_micros(10));
        if bw > 0.0 {
            // Never below the minimum window per round trip: samples taken across a stall (an
            // RTO, an outage) can be tiny, and pacing at them would starve the very acks that
            // would correct them.
            let floor = (MIN_CWND_CHUNKS * self.chunk) as f64 / rtt.as_secs_f64();
            // The delivery rate counts what arrived; what the path lost at random (no queue
            // stood while it did) used the bottleneck's capacity, or never reached it, all the
            // same: pacing at the delivery rate alone would leave that share of the link idle.
            // So in ProbeBw the rate is raised by the loss share. A queue's own drops come with
            // a queue, which switches this off (see `end_loss_round`).
            let compensation = match self.mode {
                Mode::ProbeBw => 1.0 / (1.0 - self.loss_share().min(MAX_LOSS_SHARE)),
                _ => 1.0,
            };
            return (self.pacing_gain() * bw * compensation).max(floor);
        }
        // No sample yet: the initial window per round trip (BBR's 1 ms when no RTT either); on a
        // long path, a train the bottleneck spaces (see `read_first_round`).
        let startup = HIGH_GAIN * self.initial_cwnd as f64 / rtt.as_secs_f64();
        if self.resume.is_none() && self.may_read_first_round(rtt) {
            startup.max(self.initial_cwnd as f64 / FIRST_FLIGHT_SPAN.as_secs_f64())
        } else {
            startup
        }
    }

    /// ProbeRtt's window: half a BDP, without the acks' headroom (which on a short path is
    /// more than a BDP and would drain nothing), at least the smallest window.
    fn probe_rtt_window(&self) -> u64 {
        let floor = MIN_CWND_CHUNKS * self.chunk;
        self.bdp(PROBE_RTT_CWND_GAIN)
            .unwrap_or(self.initial_cwnd)
            .max(floor)
    }

    /// Bytes that may be in flight.
    pub fn cwnd(&self) -> u64 {
        let floor = MIN_CWND_CHUNKS * self.chunk;
        if let Some(in_flight) = self.after_rto {
            return in_flight + floor;
        }
        if let Some(Resume::Jumping { rate, rtt, .. }) = self.resume {
            // One round trip of the jump's rate: careful resume's "half the saved window".
            let jump = (rate * rtt.as_secs_f64()) as u64 + 3 * ACK_EVERY * self.chunk;
            return jump.max(self.initial_cwnd);
        }
        if self.mode == Mode::ProbeRtt {
            return self.probe_rtt_window();
        }
        // Headroom for the receiver's acks: it may hold up to `ACK_EVERY` chunks before
        // acknowledging, and when an ack is lost the next one comes `ACK_EVERY` chunks later,
        // which the window must still let out. With one `ACK_EVERY` of headroom every lost ack
        // stalled the sender until its probe timer (at 5 % loss each way over veth, ~120 stalls
        // of 6 ms in a 256 MiB transfer); with three, acks keep flowing past one or two lost.
        match self.bdp(self.cwnd_gain()) {
            Some(target) => {
                let target = target + 3 * ACK_EVERY * self.chunk;
                if self.mode == Mode::Startup {
                    target.max(self.initial_cwnd)
                } else {
                    target.max(floor)
                }
            }
            None => self.initial_cwnd,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Feeds the controller a perfect path of `rate` bytes/s and `rtt`, one chunk per ack.
    fn drive(bbr: &mut Bbr, rate: f64, rtt: Duration, rounds: u32) {
        let start = Instant::now();
        let chunk = 1440u64;
        let mut now = start;
        let mut in_flight = std::collections::VecDeque::new();
        let gap = Duration::from_secs_f64(chunk as f64 / rate);
        let end = start + rtt * rounds;
        while now < end {
            let pace = Duration::from_secs_f64(chunk as f64 / bbr.pacing_rate().min(rate));
            if (in_flight.len() as u64 * chunk) < bbr.cwnd() {
                let snap = bbr.on_send(now, in_flight.len() as u64 * chunk);
                in_flight.push_back((now + rtt + gap, snap));
            }
            now += pace.max(gap);
            while in_flight.front().is_some_and(|(t, _)| *t <= now) {
                let (t, snap) = in_flight.pop_front().unwrap();
                bbr.on_acked(t, &snap, chunk);
                bbr.on_ack_end(t, Some(rtt), None, in_flight.len() as u64 * chunk);
            }
        }
    }

    #[test]
    fn startup_finds_the_bottleneck_and_leaves() {
        let now = Instant::now();
        let mut bbr = Bbr::new(1440, 10, now);
        bbr.on_rtt(now, Duration::from_millis(20));
        let rate = 12_500_000.0; // 100 Mbit/s
        drive(&mut bbr, rate, Duration::from_millis(20), 60);
        assert_ne!(bbr.mode(), Mode::Startup);
        let bw = bbr.bandwidth();
        assert!(bw > 0.85 * rate && bw < 1.1 * rate, "bw {bw}");
    }

    /// A FIFO path of `rate` bytes/s and `min_rtt` beside a flow that keeps `queue` of delay
    /// standing unless the sender holds its bytes in flight at `drain_below` or less (then the
    /// queue drains: the other flow alone does not fill the link).
    struct QueuedPath {
        chunk: u64,
        rate: f64,
        min_rtt: Duration,
        queue: Duration,
        drain_below: u64,
    }

    /// Drives a new controller (of `path.chunk`-byte chunks, its minimum RTT seeded with
    /// `seed_rtt`) for 25 s, paced, on `path`. Calls `each` after every ack; returns the
    /// controller.
    fn drive_beside_a_queue(
        path: &QueuedPath,
        seed_rtt: Duration,
        mut each: impl FnMut(&Bbr),
    ) -> Bbr {
        let QueuedPath {
            chunk,
            rate,
            min_rtt,
            queue,
            drain_below,
        } = *path;
        let start = Instant::now();
        let mut bbr = Bbr::new(chunk, 32, start);
        bbr.on_rtt(start, seed_rtt);
        let span = Duration::from_secs(25);
        let mut now = start;
        let mut in_flight = std::collections::VecDeque::new();
        let mut last_ack = start;
        let gap = Duration::from_secs_f64(chunk as f64 / rate);
        while now < start + span {
            let pace = Duration::from_secs_f64(chunk as f64 / bbr.pacing_rate().min(rate));
            let bytes = in_flight.len() as u64 * chunk;
            if bytes < bbr.cwnd() {
                let snap = bbr.on_send(now, bytes);
                let rtt = if bytes > drain_below {
                    min_rtt + queue
                } else {
                    min_rtt
                };
                last_ack = last_ack.max(now + rtt);
                in_flight.push_back((last_ack, now, snap));
            }
            now += pace.max(gap);
            while in_flight.front().is_some_and(|(t, _, _)| *t <= now) {
                let (t, sent, snap) = in_flight.pop_front().unwrap();
                bbr.on_acked(t, &snap, chunk);
                let left = in_flight.len() as u64 * chunk;
                bbr.on_ack_end(t, Some(t - sent), None, left);
                each(&bbr);
            }
        }
        bbr
    }

    /// A queue that stands for ten seconds (another flow's, never drained by this sender's
    /// cycles) does not pass into the minimum RTT: ProbeRtt holds the window at half a BDP
    /// until the queue drains, and measures the path's own round trip again; the bandwidth
    /// estimate keeps its maximum through it, on a long path and on a short one (where
    /// ProbeRtt lasts forty round trips, four times the filter's length). (Between ProbeRtts
    /// this model's queue never yields, so a window-bound sender's estimate shrinks: a flow
    /// that keeps more queued than this sender's window allows takes the link.)
    #[test]
    fn a_standing_queue_is_drained_to_measure_the_min_rtt() {
        for (min, queue) in [(40, 15), (5, 8)] {
            let (min, queue) = (Duration::from_millis(min), Duration::from_millis(queue));
            let (chunk, rate) = (1440, 50e6);
            let bdp = (rate * min.as_secs_f64()) as u64;
            let path = QueuedPath {
                chunk,
                rate,
                min_rtt: min,
                queue,
                drain_below: bdp / 2 + chunk,
            };
            let (mut probes, mut worst_min, mut probe_cwnd) = (0, Duration::ZERO, 0);
            // The bandwidth estimate when each ProbeRtt began, and the least during it.
            let (mut bw_before, mut worst_ratio) = (0.0, f64::INFINITY);
            let mut last = Mode::Startup;
            let bbr = drive_beside_a_queue(&path, min, |b| {
                if b.mode() == Mode::ProbeRtt {
                    if last != Mode::ProbeRtt {
                        probes += 1;
                    }
                    probe_cwnd = probe_cwnd.max(b.cwnd());
                    worst_ratio = f64::min(worst_ratio, b.bandwidth() / bw_before);
                } else {
                    bw_before = b.bandwidth();
                }
                last = b.mode();
                worst_min = worst_min.max(b.min_rtt().unwrap());
            });
            assert!(probes >= 2, "{min:?}: {probes} ProbeRtt");
            assert_eq!(worst_min, min, "{min:?}: the queue passed into the minimum");
            assert!(probe_cwnd <= bdp / 2 + chunk, "{min:?}: {probe_cwnd}");
            assert!(
                worst_ratio > 0.99,
                "{min:?}: bandwidth fell to {worst_ratio} of itself"
            );
            // Half a BDP queued at most.
            if bbr.mode() == Mode::ProbeBw {
                let headroom = 3 * ACK_EVERY * chunk;
                assert_eq!(bbr.cwnd(), bbr.bdp(1.5).unwrap() + headroom);
            }
        }
    }

    /// Alone on a path, the draining phase of each cycle brings samples near the minimum: no
    /// ProbeRtt, ever, although the probing phases queue more than [`MIN_RTT_NEAR`] allows.
    #[test]
    fn alone_on_a_path_the_min_rtt_never_grows_old() {
        let (rate, min) = (50e6, Duration::from_millis(40));
        // No other flow: the queue (8 ms, beyond the 3.5 ms counted as near) is this sender's
        // own, and drains when it holds back to a BDP (its cycle's draining phase).
        let path = QueuedPath {
            chunk: 1440,
            rate,
            min_rtt: min,
            queue: Duration::from_millis(8),
            drain_below: (rate * min.as_secs_f64()) as u64,
        };
        // The lowest sample (the offer's, say) came 0.5 ms under anything the data will see:
        // only samples near the minimum, not at it, keep it.
        let lowest = min - Duration::from_micros(500);
        let mut modes = std::collections::HashSet::new();
        let bbr = drive_beside_a_queue(&path, lowest, |b| {
            modes.insert(b.mode());
        });
        assert!(modes.contains(&Mode::ProbeBw), "{modes:?}");
        assert!(!modes.contains(&Mode::ProbeRtt), "{modes:?}");
        assert_eq!(bbr.min_rtt(), Some(lowest));
        assert_eq!(bbr.mode(), Mode::ProbeBw);
    }

    /// In ProbeBw the window is 1.5 × BDP (plus the acks' headroom) on a path, and BBR v1's
    /// 2 × BDP on a LAN, whose minimum RTT is the hosts' own.
    #[test]
    fn the_window_is_half_a_bdp_over_the_pipe_but_on_a_lan() {
        for (rtt, gain) in [
            (Duration::from_millis(20), 1.5),
            (Duration::from_micros(500), 2.0),
        ] {
            let now = Instant::now();
            let mut bbr = Bbr::new(1440, 10, now);
            bbr.on_rtt(now, rtt);
            drive(
                &mut bbr,
                12_500_000.0,
                rtt,
                (Duration::from_secs(1).as_micros() / rtt.as_micros()) as u32,
            );
            assert_eq!(bbr.mode(), Mode::ProbeBw, "{rtt:?}");
            let headroom = 3 * ACK_EVERY * 1440;
            assert_eq!(bbr.cwnd(), bbr.bdp(gain).unwrap() + headroom, "{rtt:?}");
        }
    }

    /// A pause drains any queue: the first ack after it (whose round trip may still carry a
    /// queue) does not start ProbeRtt, however long ago the last sample near the minimum was.
    #[test]
    fn a_pause_restarts_the_minimum_rtts_age() {
        let now = Instant::now();
        let mut bbr = Bbr::new(1440, 10, now);
        let rtt = Duration::from_millis(20);
        bbr.on_rtt(now, rtt);
        drive(&mut bbr, 12_500_000.0, rtt, 60);
        assert_eq!(bbr.mode(), Mode::ProbeBw);
        let later = now + Duration::from_secs(30);
        let snap = bbr.on_send(later, 0);
        bbr.on_acked(later + rtt * 2, &snap, 1440);
        bbr.on_ack_end(later + rtt * 2, Some(rtt * 2), None, 0);
        assert_eq!(bbr.mode(), Mode::ProbeBw);
        assert_eq!(bbr.min_rtt(), Some(rtt));
    }

    #[test]
    fn rto_shrinks_the_window_until_delivery() {
        let now = Instant::now();
        let mut bbr = Bbr::new(1000, 10, now);
        assert_eq!(bbr.cwnd(), 10_000);
        bbr.on_rto(0);
        assert_eq!(bbr.cwnd(), 4_000);
        let snap = bbr.on_send(now, 0);
        bbr.on_acked(now + Duration::from_millis(5), &snap, 1000);
        bbr.on_ack_end(now + Duration::from_millis(5), None, None, 0);
        assert!(bbr.cwnd() >= 4_000);
        assert!(bbr.after_rto.is_none());
    }

    fn estimate(mbit: f64, rtt_ms: u64) -> PathEstimate {
        PathEstimate {
            bandwidth: mbit * 1e6 / 8.0,
            min_rtt: Duration::from_millis(rtt_ms),
        }
    }

    /// The offer's round trip confirms the estimate: the controller paces at half its rate
    /// with one remembered round trip of that rate as its window, before any ack. An offer
    /// answered sooner than half the remembered RTT (another path), or so late that even the
    /// receiver's opening of the file does not explain it, or none before data was delivered,
    /// leaves the cold start; a later exact sample above 1.5 × the remembered RTT ends the jump.
    #[test]
    fn a_confirmed_estimate_jumps_to_half_its_rate() {
        let now = Instant::now();
        let cold = Bbr::new(1000, 32, now);
        let ms = Duration::from_millis;
        for (lower, upper, jumps) in [
            (100, 100, true),
            (60, 60, true),
            // Sent more than once: only bounds, neither proving another path.
            (0, 400, true),
            (100, 1200, true),
            // Proven shorter.
            (0, 40, false),
            (40, 40, false),
            // The receiver took its time to open the file, or the path is longer: the data
            // acks will tell.
            (400, 400, true),
            // Proven longer than a receiver's opening explains.
            (1200, 1200, false),
        ] {
            let what = format!("offer answered after {lower}..{upper} ms");
            let mut bbr = Bbr::new(1000, 32, now);
            bbr.resume(estimate(80.0, 100));
            assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Pending));
            assert_eq!(bbr.pending_resume_rtt(), Some(ms(100)));
            if lower == upper {
                bbr.on_rtt(now, ms(lower));
            }
            bbr.check_resume(ms(lower), ms(upper), now);
            if jumps {
                assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Jumping), "{what}");
                assert_eq!(bbr.pacing_rate(), 5e6, "{what}");
                assert_eq!(bbr.cwnd(), 500_000 + 3 * ACK_EVERY * 1000, "{what}");
            } else {
                assert_eq!(
                    bbr.resume_outcome(),
                    Some(ResumeOutcome::Rejected),
                    "{what}"
                );
                assert_eq!(bbr.cwnd(), cold.cwnd(), "{what}");
            }
        }
        // A data ack's exact sample says the path is longer, or shorter, than remembered: the
        // jump ends.
        for (first, second) in [(140, 160), (60, 40)] {
            let mut bbr = Bbr::new(1000, 32, now);
            bbr.resume(estimate(80.0, 100));
            bbr.check_resume(ms(0), ms(300), now);
            bbr.on_rtt(now, ms(first));
            assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Jumping));
            bbr.on_rtt(now, ms(second));
            assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Retreated));
            // Startup's first pacing: the initial window per round trip, as cold.
            let rtt = bbr.min_rtt().unwrap().as_secs_f64();
            assert_eq!(bbr.pacing_rate(), HIGH_GAIN * 32_000.0 / rtt);
        }
        // Data acknowledged before the offer's answer was seen (never, but): not used.
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.resume(estimate(80.0, 100));
        let snap = bbr.on_send(now, 0);
        bbr.on_acked(now + ms(100), &snap, 1000);
        bbr.on_ack_end(now + ms(100), None, None, 0);
        assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Rejected));
        // Nor once the controller has measured anything.
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.on_rtt(now, ms(100));
        bbr.resume(estimate(80.0, 100));
        assert_eq!(bbr.resume_outcome(), None);
    }

    /// Acks coming back at the jump's rate validate it; at a fraction of it (the path is slower
    /// now), the controller retreats to the rate they came back at. Either way the jump ends
    /// after a quarter of a round trip of acks, and the bandwidth is the acks' rate.
    #[test]
    fn the_acks_rate_validates_the_jump_or_retreats_from_it() {
        for (path_rate, outcome) in [
            (5e6, ResumeOutcome::Validated),
            (1e6, ResumeOutcome::Retreated),
        ] {
            let now = Instant::now();
            let rtt = Duration::from_millis(100);
            let mut bbr = Bbr::new(1000, 32, now);
            bbr.resume(estimate(80.0, 100));
            bbr.check_resume(rtt, rtt, now);
            bbr.on_rtt(now, rtt);
            // The jump's first round trip, every chunk sent before any ack comes back; the
            // path delivers them at `path_rate`.
            let snaps: Vec<_> = (0..500).map(|i| bbr.on_send(now, i * 1000)).collect();
            let gap = Duration::from_secs_f64(1000.0 / path_rate);
            let mut t = now + rtt;
            for (i, snap) in snaps.iter().enumerate() {
                bbr.on_acked(t, snap, 1000);
                bbr.on_ack_end(t, None, None, (499 - i as u64) * 1000);
                if bbr.resume_outcome() != Some(ResumeOutcome::Jumping) {
                    break;
                }
                t += gap;
            }
            assert_eq!(bbr.resume_outcome(), Some(outcome), "{path_rate}");
            assert!(t >= now + rtt + rtt / 4, "decided after {:?}", t - now);
            let bw = bbr.bandwidth();
            assert!(bw > 0.9 * path_rate && bw <= 5e6, "{path_rate}: {bw}");
            assert_eq!(bbr.pacing_rate(), HIGH_GAIN * bw);
        }
    }

    /// An RTO during the jump ends it (the path may be gone), and only a controller that left
    /// Startup has an estimate worth keeping.
    #[test]
    fn an_rto_ends_the_jump_and_only_a_full_pipe_is_remembered() {
        let now = Instant::now();
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.resume(estimate(80.0, 100));
        bbr.check_resume(Duration::from_millis(100), Duration::from_millis(100), now);
        bbr.on_rto(10_000);
        assert_eq!(bbr.resume_outcome(), Some(ResumeOutcome::Retreated));
        assert_eq!(bbr.cwnd(), 14_000);
        assert_eq!(bbr.estimate(), None);

        let mut bbr = Bbr::new(1440, 10, now);
        let rtt = Duration::from_millis(20);
        bbr.on_rtt(now, rtt);
        assert_eq!(bbr.estimate(), None);
        drive(&mut bbr, 12_500_000.0, rtt, 60);
        let e = bbr.estimate().expect("the pipe was found full");
        assert_eq!(e.min_rtt, rtt);
        assert!(
            e.bandwidth > 0.85 * 12_500_000.0 && e.bandwidth < 1.1 * 12_500_000.0,
            "{e:?}"
        );
    }

    /// A cold start's first round on a path of `rtt`: 32 chunks of 1000 bytes go out as a train
    /// (paced at 32 chunks per 500 µs), the bottleneck spaces them `gap` apart, and the
    /// receiver acks 16 at a time, each ack saying when its echoed chunk arrived. Returns the
    /// controller after the second ack.
    fn first_round(rtt: Duration, gap: Duration) -> Bbr {
        let now = Instant::now();
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.on_rtt(now, rtt);
        let snaps: Vec<_> = (0..32).map(|i| bbr.on_send(now, i * 1000)).collect();
        let arrived0 = now + rtt / 2 + gap * 15;
        for (k, acked) in snaps.chunks(16).enumerate() {
            let arrived = arrived0 + gap * 16 * k as u32;
            let t = arrived + rtt / 2;
            for snap in acked {
                bbr.on_acked(t, snap, 1000);
            }
            bbr.on_ack_end(t, Some(rtt), Some(arrived), (16 - 16 * k as u64) * 1000);
        }
        bbr
    }

    /// The train's spacing at the bottleneck, read from the acks' echoed arrivals (widened by
    /// the receiver's batching), is the bottleneck's rate; on a 300 ms path the controller jumps
    /// to half of it. Acks that arrive bunched (ack compression, a receiver that read them in
    /// one batch) are never read as more than the rate the train was sent at. A path where
    /// Startup takes under a second to reach the rate read (a slow one, or the same rate at
    /// 150 ms), one so slow that the jump would not beat Startup's next round, or one too short
    /// for any reading to need a second of Startup (no train at 100 ms), keeps Startup, and so
    /// does a controller told not to read or whose first round went dark (an RTO).
    #[test]
    fn a_cold_start_reads_the_bottleneck_from_the_trains_spacing() {
        let rtt = Duration::from_millis(300);
        let us = Duration::from_micros;
        let train = 32_000.0 / FIRST_FLIGHT_SPAN.as_secs_f64();
        let now = Instant::now();
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.on_rtt(now, rtt);
        assert_eq!(bbr.pacing_rate(), train, "the train's pace");
        let mut off = Bbr::new(1000, 32, now).with_first_round(false);
        off.on_rtt(now, rtt);
        assert_eq!(off.pacing_rate(), HIGH_GAIN * 32_000.0 / 0.3);

        // 10 MB/s: 100 µs apart.
        let bbr = first_round(rtt, us(100));
        assert_eq!(bbr.first_round_outcome(), Some(ResumeOutcome::Jumping));
        let read = 16_000.0 / (us(1600) + DISPERSION_SLACK).as_secs_f64();
        assert!(
            (bbr.pacing_rate() - 0.5 * read).abs() < 1.0,
            "{}",
            bbr.pacing_rate()
        );
        assert_eq!(bbr.cwnd(), (0.5 * read * 0.3) as u64 + 3 * ACK_EVERY * 1000);
        // The same rate at 150 ms: Startup takes 0.8 s to get there.
        let bbr = first_round(Duration::from_millis(150), us(100));
        assert_eq!(bbr.first_round_outcome(), None);
        // Bunched: no faster than the train went.
        let bbr = first_round(rtt, Duration::ZERO);
        assert_eq!(bbr.pacing_rate(), 0.5 * train);
        // A later ack echoing an arrival before the first one read (another transfer's, held
        // longer): what it delivered cannot be read, and the reading ends.
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.on_rtt(now, rtt);
        let snaps: Vec<_> = (0..32).map(|i| bbr.on_send(now, i * 1000)).collect();
        let (t, arrived) = (now + rtt, now + rtt / 2);
        for (k, acked) in snaps.chunks(16).enumerate() {
            for snap in acked {
                bbr.on_acked(t + us(2000) * k as u32, snap, 1000);
            }
            let echo = arrived - us(1000) * k as u32;
            bbr.on_ack_end(t + us(2000) * k as u32, Some(rtt), Some(echo), 0);
        }
        assert_eq!(bbr.first_round_outcome(), None);
        assert!(!bbr.may_read_first_round(rtt));
        // A train that arrived bunched, its second echo 3 µs before the first (the receiver's
        // per-batch clock conversion): they arrived together, read as the train's own rate.
        let mut bbr = Bbr::new(1000, 32, now);
        bbr.on_rtt(now, rtt);
        let snaps: Vec<_> = (0..32).map(|i| bbr.on_send(now, i * 1000)).collect();
        for (k, acked) in snaps.chunks(16).enumerate() {
            for snap in acked {
                bbr.on_acked(t + us(20) * k as u32, snap, 1000);
            }
            let echo = arrived - us(3) * k as u32;
            bbr.on_ack_end(t + us(20) * k as u32, Some(rtt), Some(echo), 0);
        }
        assert_eq!(bbr.first_round_outcome(), Some(ResumeOutcome::Jumping));
        assert_eq!(bbr.pacing_rate(), 0.5 * train);
        // 100 kB/s, 10 ms apart: Startup would reach it in no time (less than one doubling).
        let bbr = first_round(rtt, Duration::from_millis(10));
        assert_eq!(bbr.first_round_outcome(), None);
        assert_eq!(bbr.mode(), Mode::Startup);
        // 67 kB/s at 1 s: a second of Startup (one doubling), but half of it is less than
        // Startup paces at next (2.89 × the 13 kB/s the first ack measured).
        let bbr = first_round(Duration::from_secs(1), Duration::from_millis(15));
        assert_eq!(bbr.first_round_outcome(), None);
        assert!(
            bbr.pacing_rate() > 0.5 * 16_000.0 / 0.2401,
            "{}",
            bbr.pacing_rate()
        );
        // A 100 ms path: no train, no reading.
        let bbr = first_round(Duration::from_millis(100), Duration::ZERO);
        assert_eq!(bbr.first_round_outcome(), None);
        let mut short = Bbr::new(1000, 32, now);
        short.on_rtt(now, Duration::from_millis(100));
        assert_eq!(short.pacing_rate(), HIGH_GAIN * 32_000.0 / 0.1);
        assert!(!short.may_read_first_round(Duration::from_millis(120)));
        assert!(short.may_read_first_round(Duration::from_millis(130)));
        short.on_rto(0);
        assert!(!short.may_read_first_round(Duration::from_millis(130)));
    }

    /// Feeds the controller a path of `rate` bytes/s whose every `nth` chunk is lost, with
    /// RTT samples of `rtt` (one per ack), for `rounds` round trips of `min_rtt`.
    /// Puts `bbr` in ProbeBW at a gain of 1 and through rounds that lose 5 % at random
    /// without a queue: the state in which a sender copies its tail (for other modules' tests).
    pub(crate) fn make_lossy(bbr: &mut Bbr) {
        bbr.mode = Mode::ProbeBw;
        bbr.cycle_index = 2;
        let rtt = Duration::from_millis(20);
        drive_lossy(bbr, 10e6, rtt, rtt, 20);
    }

    fn drive_lossy(bbr: &mut Bbr, rate: f64, min_rtt: Duration, rtt: Duration, nth: u64) {
        let chunk = 1440u64;
        let start = Instant::now();
        let mut now = start;
        let gap = Duration::from_secs_f64(chunk as f64 / rate);
        let mut k = 0u64;
        // Seed the minimum RTT, then a steady stream: one chunk per gap, acked an RTT later.
        bbr.on_rtt(now, min_rtt);
        let mut in_flight = std::collections::VecDeque::new();
        while now < start + min_rtt * 60 {
            let snap = bbr.on_send(now, in_flight.len() as u64 * chunk);
            in_flight.push_back((now + rtt, snap));
            now += gap;
            while in_flight.front().is_some_and(|(t, _)| *t <= now) {
                let (t, snap) = in_flight.pop_front().unwrap();
                k += 1;
                if k.is_multiple_of(nth) {
                    bbr.on_lost(1);
                } else {
                    bbr.on_acked(t, &snap, chunk);
                }
                bbr.on_ack_end(t, Some(rtt), None, in_flight.len() as u64 * chunk);
            }
        }
    }

    #[test]
    fn random_loss_without_a_queue_raises_the_pacing_rate_by_its_share() {
        let mut bbr = Bbr::new(1440, 32, Instant::now());
        bbr.mode = Mode::ProbeBw;
        bbr.cycle_index = 2; // a gain of 1
        let rtt = Duration::from_millis(20);
        drive_lossy(&mut bbr, 10e6, rtt, rtt, 20); // 5 % lost, RTT at its minimum
        let share = bbr.loss_share();
        assert!((0.04..0.06).contains(&share), "{share}");
        bbr.mode = Mode::ProbeBw;
        bbr.cycle_index = 2;
        let raised = bbr.pacing_rate() / bbr.bandwidth();
        assert!((1.04..1.07).contains(&raised), "{raised}");
        // Round after round: random loss, as the tail's copies ask.
        assert_eq!(bbr.random_loss_share(), share);
    }

    /// One queue-free round that lost a burst (a queue's overflow detected after it drained)
    /// sets a loss share, but not the random loss share, which asks for several such rounds.
    #[test]
    fn one_lossy_round_is_not_random_loss() {
        let mut bbr = Bbr::new(1440, 32, Instant::now());
        let now = Instant::now();
        let rtt = Duration::from_millis(20);
        bbr.on_rtt(now, rtt);
        let mut t = now;
        for round in 0..3 {
            // 100 chunks delivered each round, 30 lost in the second.
            let snap = bbr.on_send(t, 0);
            t += rtt;
            if round == 1 {
                bbr.on_lost(30);
            }
            for _ in 0..100 {
                bbr.on_acked(t, &snap, 1440);
            }
            bbr.on_ack_end(t, Some(rtt), None, 0);
        }
        assert!(bbr.loss_share() > 0.01, "{}", bbr.loss_share());
        assert_eq!(bbr.random_loss_share(), 0.0);
    }

    #[test]
    fn losses_that_come_with_a_queue_are_not_paced_around() {
        let mut bbr = Bbr::new(1440, 32, Instant::now());
        bbr.mode = Mode::ProbeBw;
        bbr.cycle_index = 2;
        // The same 5 % lost, but every RTT sample is twice the minimum: a queue stands, the
        // drops are its own.
        let min = Duration::from_millis(20);
        drive_lossy(&mut bbr, 10e6, min, min * 2, 20);
        assert_eq!(bbr.loss_share(), 0.0);
        bbr.mode = Mode::ProbeBw;
        bbr.cycle_index = 2;
        assert!((bbr.pacing_rate() / bbr.bandwidth() - 1.0).abs() < 1e-9);
    }
}
