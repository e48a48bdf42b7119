//! The sender's round-trip-time estimator and retransmission timeout, as RFC 6298 computes them.
//!
//! The protocol makes two changes to the RFC's inputs, both about where samples come from: the
//! receiver reports how long it held an ack (`delay_us`), which is subtracted, and only chunks sent
//! once give samples (Karn's rule) — the caller enforces that.

use std::time::Duration;

/// The clock granularity `G` of RFC 6298: the smallest variance term the RTO keeps.
const GRANULARITY: Duration = Duration::from_millis(1);

/// SRTT / RTTVAR / RTO (RFC 6298 §2) plus the minimum RTT seen, for the congestion controller.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Option<Duration>,
    initial_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            latest: None,
            initial_rto,
            min_rto,
            max_rto,
        }
    }

    /// Folds in one measurement (RFC 6298 §2.2 and §2.3, alpha = 1/8, beta = 1/4).
    pub fn on_sample(&mut self, r: Duration) {
        self.latest = Some(r);
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

    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// The base RTO, before exponential backoff: `SRTT + max(G, 4 RTTVAR)`, clamped (RFC 6298
    /// §2.4 asks for at least 1 s; the protocol uses 200 ms as Linux does).
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => self.initial_rto,
            Some(srtt) => {
                (srtt + (self.rttvar * 4).max(GRANULARITY)).clamp(self.min_rto, self.max_rto)
            }
        }
    }

    /// The probe timeout of RFC 9002 §6.2 without the peer's ack delay: `SRTT + max(G, 4
    /// RTTVAR)`, not clamped to the RTO's minimum, so a stalled tail is probed within about a
    /// round trip rather than after 200 ms.
    pub fn pto_base(&self) -> Duration {
        match self.srtt {
            None => self.initial_rto,
            Some(srtt) => srtt + (self.rttvar * 4).max(GRANULARITY),
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

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(200),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.on_sample(Duration::from_millis(100));
        assert_eq!(e.smoothed(), Some(Duration::from_millis(100)));
        // 100 + 4 * 50 = 300 ms.
        assert_eq!(e.rto(), Duration::from_millis(300));
    }

    #[test]
    fn steady_samples_shrink_to_the_minimum_and_backoff_doubles() {
        let mut e = est();
        for _ in 0..100 {
            e.on_sample(Duration::from_millis(10));
        }
        assert_eq!(e.rto(), Duration::from_millis(200));
        assert_eq!(e.backed_off(2), Duration::from_millis(800));
        assert_eq!(e.backed_off(30), Duration::from_secs(60));
    }
}
