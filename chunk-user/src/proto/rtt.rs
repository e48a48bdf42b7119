//! The sender's round-trip-time estimator and retransmission timeout, as RFC 6298 computes them.
//!
//! The protocol changes the RFC's inputs, where samples come from: the receiver reports how long
//! it held an ack (`delay_us`), which is subtracted, and only chunks sent once give samples
//! (Karn's rule) — the caller enforces that, and it may also pass a retransmitted chunk's sample
//! when the ack provably answered the first copy (see the sender on spurious retransmissions, and
//! [`on_spurious_timeout`]).
//!
//! And one change to the RTO itself, because samples are taken per ack and without the ack delay:
//! `RTO = SRTT + max(G, 4 RTTVAR, SRTT / 4) + max ack delay`, at least `min_rto`.
//! - The ack delay is taken out of every sample, but the timer does wait for it: without it, a
//!   steady path leaves SRTT + 4 RTTVAR a millisecond above SRTT, below the receiver's 5 ms hold,
//!   and every chunk times out just before its ack (at 200 ms RTT and more, where the absolute
//!   200 ms floor no longer hides it).
//! - RFC 6298 assumes about one sample per round trip; here there is one per ack, dozens to
//!   thousands per round trip, so RTTVAR forgets a delay change within a fraction of a round trip
//!   and is ~0 on a steady path. It cannot be the only margin. The floor SRTT / 4 is the queue this
//!   sender's own bandwidth probe may add in one round (ProbeBw paces at 1.25 × the bottleneck for
//!   one min RTT, see [`cc`]), and is Linux's idea (its RTO never goes below SRTT + 200 ms) made
//!   proportional: on a long path 200 ms of margin would be a small fraction of the round trip and
//!   on a short one a large one, where the absolute 200 ms minimum already applies.
//!
//! [`on_spurious_timeout`]: RttEstimator::on_spurious_timeout
//! [`cc`]: super::cc

use std::time::Duration;

/// The clock granularity `G` of RFC 6298: the smallest variance term the RTO keeps.
const GRANULARITY: Duration = Duration::from_millis(1);

/// SRTT / RTTVAR / RTO (RFC 6298 §2) plus the minimum RTT seen.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Option<Duration>,
    /// The lowest sample ever: no copy of a chunk comes back sooner than this after it was sent
    /// (unless the path itself got faster), which is what tells a spurious retransmission.
    min: Option<Duration>,
    /// Before any sample: an upper bound on the round trip (an offer sent more than once was
    /// answered, see [`on_upper_bound`](Self::on_upper_bound)).
    bound: Option<Duration>,
    initial_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
    /// The longest the peer holds an ack: every timer waits for it on top of the round trip.
    max_ack_delay: Duration,
}

impl RttEstimator {
    pub fn new(
        initial_rto: Duration,
        min_rto: Duration,
        max_rto: Duration,
        max_ack_delay: Duration,
    ) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            latest: None,
            min: None,
            bound: None,
            initial_rto,
            min_rto,
            max_rto,
            max_ack_delay,
        }
    }

    /// Folds in one measurement (RFC 6298 §2.2 and §2.3, alpha = 1/8, beta = 1/4).
    pub fn on_sample(&mut self, r: Duration) {
        self.latest = Some(r);
        self.min = Some(self.min.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + err / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
    }

    /// An RTO proved spurious: a transmission it gave up on was answered `age` after it was sent
    /// (its round trip, already given as a sample, plus the receiver's hold). One sample moves
    /// RTTVAR by a quarter of its error, forgotten within a few acks; as RFC 4015's response does,
    /// the timer is widened further, so that the next timeout is not spurious too and the chunks
    /// the RTO gave up on, back in flight with their old send times, are not timed out again at
    /// once: the variance keeps at least `age - SRTT`, which makes the RTO at least
    /// `SRTT + 4 (age - SRTT)`. Later samples shrink it again at the usual rate.
    pub fn on_spurious_timeout(&mut self, age: Duration) {
        let missed_by = self.srtt.map_or(age, |s| age.saturating_sub(s));
        self.rttvar = self.rttvar.max(missed_by);
    }

    /// Before any sample: the round trip is at most `r`. An offer sent twice and then answered
    /// gives no sample (Karn: which copy was answered?), but the time since the first copy bounds
    /// the round trip. The timers treat it as a first sample would be treated (RTO = 3 r); it is
    /// not a sample, so SRTT stays unknown and the first real sample replaces it.
    pub fn on_upper_bound(&mut self, r: Duration) {
        if self.srtt.is_none() {
            self.bound = Some(self.bound.map_or(r, |b| b.min(r)));
        }
    }

    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// The lowest sample so far.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }

    /// SRTT and RTTVAR for the timers: the estimate, else the bound as a first sample.
    fn srtt_var(&self) -> Option<(Duration, Duration)> {
        match (self.srtt, self.bound) {
            (Some(srtt), _) => Some((srtt, self.rttvar)),
            (None, Some(b)) => Some((b, b / 2)),
            (None, None) => None,
        }
    }

    /// The base RTO, before exponential backoff: `SRTT + max(G, 4 RTTVAR, SRTT / 4) + max ack
    /// delay` (see the module comment), clamped (RFC 6298 §2.4 asks for at least 1 s; the
    /// protocol uses 200 ms as Linux does).
    pub fn rto(&self) -> Duration {
        match self.srtt_var() {
            None => self.initial_rto,
            Some((srtt, rttvar)) => {
                let margin = (rttvar * 4).max(srtt / 4).max(GRANULARITY);
                (srtt + margin + self.max_ack_delay).clamp(self.min_rto, self.max_rto)
            }
        }
    }

    /// How long to wait for an answer the receiver sends at once, not after its ack delay: to
    /// an offer, to a hash message (the verdict) or to a chunk with `ACK_NOW`.
    /// `SRTT + max(G, 4 RTTVAR)`: the probe timeout without the peer's ack delay, which on a
    /// LAN is most of it (5 of 6 ms): a lost offer or verdict in a tree of small files cost
    /// that much each.
    pub fn reply_timeout(&self) -> Duration {
        match self.srtt_var() {
            None => self.initial_rto,
            Some((srtt, rttvar)) => srtt + (rttvar * 4).max(GRANULARITY),
        }
    }

    /// The RTO after `backoff` expiries in a row, each doubling it (RFC 6298 §5.5).
    pub fn backed_off(&self, backoff: u32) -> Duration {
        self.rto()
            .saturating_mul(1u32 << backoff.min(16))
            .min(self.max_rto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            ms(200),
            Duration::from_secs(60),
            ms(5),
        )
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.on_sample(ms(100));
        assert_eq!(e.smoothed(), Some(ms(100)));
        // 100 + 4 * 50 + 5 = 305 ms.
        assert_eq!(e.rto(), ms(305));
    }

    #[test]
    fn steady_samples_shrink_to_the_minimum_and_backoff_doubles() {
        let mut e = est();
        for _ in 0..100 {
            e.on_sample(ms(10));
        }
        assert_eq!(e.rto(), ms(200));
        assert_eq!(e.backed_off(2), ms(800));
        assert_eq!(e.backed_off(30), Duration::from_secs(60));
    }

    #[test]
    fn a_steady_long_path_keeps_a_margin_above_the_ack_delay() {
        // RTTVAR decays to nothing on identical samples; the RTO must still wait for the
        // receiver's ack delay and a quarter round trip of queue.
        let mut e = est();
        for _ in 0..1000 {
            e.on_sample(ms(300));
        }
        assert_eq!(e.rto(), ms(300 + 75 + 5));
        // An answer sent at once (offer, hash message, `ACK_NOW`) is not held: no ack delay.
        assert_eq!(e.reply_timeout(), ms(300 + 1));
        assert_eq!(e.min(), Some(ms(300)));
    }

    #[test]
    fn an_upper_bound_stands_in_until_the_first_sample() {
        let mut e = est();
        e.on_upper_bound(ms(400));
        assert_eq!(e.smoothed(), None);
        assert_eq!(e.rto(), ms(400 + 800 + 5));
        e.on_sample(ms(300));
        assert_eq!(e.smoothed(), Some(ms(300)), "replaced, not averaged");
        e.on_upper_bound(ms(10));
        assert_eq!(
            e.smoothed(),
            Some(ms(300)),
            "a bound after a sample is ignored"
        );
    }

    #[test]
    fn a_spurious_timeout_widens_the_variance_by_what_the_timer_missed() {
        let mut e = est();
        for _ in 0..1000 {
            e.on_sample(ms(300));
        }
        e.on_spurious_timeout(ms(420));
        assert_eq!(e.smoothed(), Some(ms(300)));
        assert_eq!(e.rto(), ms(300 + 4 * 120 + 5));
    }
}
