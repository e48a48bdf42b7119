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
//! - the **minimum RTT** is the lowest sample of the last ten seconds;
//! - the sender **paces** at `gain × bandwidth` and keeps at most `cwnd_gain × BDP` in flight;
//! - **Startup** doubles the rate per round (gain 2/ln 2 ≈ 2.89) until the bandwidth stops growing
//!   by 25 % for three rounds, **Drain** empties the queue that built, then **ProbeBw** cycles the
//!   gain through 1.25, 0.75, 1 × 6 to probe for more bandwidth and drain what the probe queued.
//!
//! Losses only repair data (the sender retransmits); they do not cut the rate. A queue filled by
//! this sender shows up as a delivery rate that stops growing, which is what bounds it on a thin
//! link. Left out of full BBR, on purpose: ProbeRTT (a file transfer is one flow and its min RTT is
//! refreshed from samples) and the long-term "policer" model. Known limit, shared with BBR v1:
//! above ~20 % random loss the probing phase can no longer show the full rate, and the estimate
//! decays slowly; the transfer still completes.
//! After an RTO the window drops to a few chunks until an ack shows delivery again, so a path that
//! went dark is probed gently rather than with a full window.

use std::time::{Duration, Instant};

/// Round trips the bandwidth maximum remembers.
const BW_ROUNDS: usize = 10;
/// Shortest span of one bandwidth-filter slot: on a LAN or veth a round trip is tens of
/// microseconds, and ten of them are shorter than one hiccup of the host (a descheduled
/// thread, a page-cache flush); a maximum that forgot the path's rate that fast would shrink
/// the window to what the hiccup delivered. So a slot lasts a round trip or this, whichever is
/// longer (ten slots: at least 25 ms of memory).
const BW_SLOT_MIN: Duration = Duration::from_micros(2500);
/// How long a minimum RTT stays valid before a newer (larger) sample replaces it.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// 2 / ln 2: the smallest gain that doubles the delivery rate each round in Startup.
const HIGH_GAIN: f64 = 2.885;
/// ProbeBw's pacing gains, one per min-RTT phase.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Bandwidth growth below this factor per round counts as a plateau in Startup.
const GROWTH: f64 = 1.25;
/// Plateau rounds that end Startup.
const PLATEAU_ROUNDS: u32 = 3;
/// Smallest window, in chunks: enough to keep fast retransmit (3 later chunks) working.
const MIN_CWND_CHUNKS: u64 = 4;
/// The receiver acknowledges at least every this many chunks (docs/PROTOCOL.md, Receiver 2).
const ACK_EVERY: u64 = 16;

/// What the controller remembers about one transmission, to turn its ack into a rate sample.
#[derive(Clone, Copy, Debug)]
pub struct SendSnapshot {
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    sent_at: Instant,
    app_limited: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
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
        }
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
        }
        SendSnapshot {
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent_at: self.first_sent_at,
            sent_at: now,
            app_limited: self.app_limited_until != 0,
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
    }

    /// Ends the processing of one ack: updates the model and the mode.
    pub fn on_ack_end(&mut self, now: Instant, rtt: Option<Duration>, bytes_in_flight: u64) {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        if let Some(rtt) = rtt {
            self.on_rtt(now, rtt);
        }
        if self.round_start {
            self.round_start = false;
            self.round += 1;
            self.next_round_delivered = self.delivered;
            if now.saturating_duration_since(self.bw_slot_start) >= BW_SLOT_MIN {
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
        self.update_mode(now, bytes_in_flight);
    }

    /// The retransmission timer fired with `bytes_in_flight` still out (not yet timed out): the
    /// path may be gone, so only a few chunks more go out until an ack shows delivery again.
    pub fn on_rto(&mut self, bytes_in_flight: u64) {
        self.after_rto = Some(bytes_in_flight);
    }

    /// The last RTO was spurious (an ack showed its chunks were still on their way): the path
    /// did not go dark, so the post-RTO window goes. The model itself (bandwidth, min RTT) is
    /// never reset by an RTO in the first place.
    pub fn on_spurious_rto(&mut self) {
        self.after_rto = None;
    }

    /// Seeds the RTT model before any ack (the offer's round trip).
    pub fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        let expired = now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW;
        if self.min_rtt.is_none_or(|m| rtt <= m || expired) {
            self.min_rtt = Some(rtt);
            self.min_rtt_at = now;
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
        }
    }

    /// Twice the BDP in every mode. BBR v1 keeps 2.89 in Startup, but then a drop-tail queue of
    /// one BDP overflows by almost a BDP at the end of Startup, and most of that burst is lost.
    fn cwnd_gain(&self) -> f64 {
        2.0
    }

    /// `gain × bandwidth × min RTT` in bytes, once both are known.
    fn bdp(&self, gain: f64) -> Option<u64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?;
        (bw > 0.0).then_some((gain * bw * rtt.as_secs_f64()) as u64)
    }

    /// The rate to pace at, bytes per second.
    pub fn pacing_rate(&self) -> f64 {
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
            return (self.pacing_gain() * bw).max(floor);
        }
        // No sample yet: the initial window per round trip (BBR's 1 ms when no RTT either).
        HIGH_GAIN * self.initial_cwnd as f64 / rtt.as_secs_f64()
    }

    /// Bytes that may be in flight.
    pub fn cwnd(&self) -> u64 {
        let floor = MIN_CWND_CHUNKS * self.chunk;
        if let Some(in_flight) = self.after_rto {
            return in_flight + floor;
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
mod tests {
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
                bbr.on_ack_end(t, Some(rtt), in_flight.len() as u64 * chunk);
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

    #[test]
    fn rto_shrinks_the_window_until_delivery() {
        let now = Instant::now();
        let mut bbr = Bbr::new(1000, 10, now);
        assert_eq!(bbr.cwnd(), 10_000);
        bbr.on_rto(0);
        assert_eq!(bbr.cwnd(), 4_000);
        let snap = bbr.on_send(now, 0);
        bbr.on_acked(now + Duration::from_millis(5), &snap, 1000);
        bbr.on_ack_end(now + Duration::from_millis(5), None, 0);
        assert!(bbr.cwnd() >= 4_000);
        assert!(bbr.after_rto.is_none());
    }
}
