//! When the sender may put the next chunk on the wire: the pacer spreads chunks at the
//! congestion controller's rate (under the configured cap) with a small burst credit, and
//! [`room`] is the one check of both windows, the user's (chunks) and the controller's (bytes).
//!
//! The rate and the window come from [`cc`](super::super::cc); this only turns them into times
//! and a yes or no.

use std::time::{Duration, Instant};

use super::super::cc::Bbr;

/// Bytes of IPv4 header the pacer adds to each packet (the link carries them too).
const IP_HEADER: u64 = 20;
/// Pacing credit: after a pause the sender may catch up this much at once, which absorbs a
/// timer that wakes it a millisecond late without letting an idle period become a huge burst.
const PACING_BURST: Duration = Duration::from_millis(2);

/// The earliest time the next chunk may leave.
#[derive(Clone, Debug)]
pub(super) struct Pacer {
    next_send_at: Instant,
    /// A cap on the rate, bits per second (`SenderConfig::max_rate`).
    max_rate: Option<u64>,
}

impl Pacer {
    pub(super) fn new(max_rate: Option<u64>, now: Instant) -> Self {
        Self {
            next_send_at: now,
            max_rate,
        }
    }

    /// When the next chunk may go.
    pub(super) fn next_send_at(&self) -> Instant {
        self.next_send_at
    }

    /// Bytes per second to pace at: the controller's rate under the configured cap.
    pub(super) fn rate(&self, cc: &Bbr) -> f64 {
        let rate = cc.pacing_rate();
        match self.max_rate {
            Some(cap) => rate.min(cap as f64 / 8.0),
            None => rate,
        }
    }

    /// Sending starts (the offer was accepted): the first chunk may go at once.
    pub(super) fn start(&mut self, now: Instant) {
        self.next_send_at = now;
    }

    /// An RTO fired: the retransmissions need not wait for a pacing slot booked earlier.
    pub(super) fn wake(&mut self, now: Instant) {
        self.next_send_at = self.next_send_at.min(now);
    }

    /// A packet of `bytes` (chunk header included) went out at `now`, paced at `rate` bytes per
    /// second: the next one waits for it to drain at that rate, counted from no earlier than the
    /// burst credit allows.
    pub(super) fn on_sent(&mut self, now: Instant, bytes: u64, rate: f64) {
        let gap = Duration::from_secs_f64((bytes + IP_HEADER) as f64 / rate);
        let earliest = now.checked_sub(PACING_BURST).unwrap_or(now);
        self.next_send_at = self.next_send_at.max(earliest) + gap;
    }
}

/// Which window has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// The user's window (`--window`, in chunks): the sender, not the path, is the limit.
    Window,
    /// The congestion window (bytes).
    Congestion,
}

/// Whether one more packet of `bytes` fits beside `chunks_out` chunks and `bytes_out` bytes in
/// flight: fewer than `window` chunks out (at least one is always allowed), and the bytes within
/// `cwnd`, which always lets a single packet through however small it is.
pub(super) fn room(
    window: u32,
    cwnd: u64,
    chunks_out: usize,
    bytes_out: u64,
    bytes: u64,
) -> Result<(), Full> {
    if chunks_out >= window.max(1) as usize {
        return Err(Full::Window);
    }
    if bytes_out + bytes > cwnd.max(bytes) {
        return Err(Full::Congestion);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn chunks_are_spaced_by_their_size_at_the_rate() {
        let t0 = Instant::now() + ms(100);
        let mut p = Pacer::new(None, t0);
        assert_eq!(p.next_send_at(), t0);
        // 980 bytes + 20 of IPv4 header at 1 MB/s: 1 ms apart.
        p.on_sent(t0, 980, 1e6);
        assert_eq!(p.next_send_at(), t0 + ms(1));
        p.on_sent(t0 + ms(1), 980, 1e6);
        assert_eq!(p.next_send_at(), t0 + ms(2));
    }

    #[test]
    fn a_pause_earns_at_most_the_burst_credit() {
        let t0 = Instant::now() + ms(100);
        let mut p = Pacer::new(None, t0);
        // A second late: the next slot counts from 2 ms ago, not from t0.
        let late = t0 + ms(1000);
        p.on_sent(late, 980, 1e6);
        assert_eq!(p.next_send_at(), late - PACING_BURST + ms(1));
        // So one more goes at once, then they are spaced again.
        p.on_sent(late, 980, 1e6);
        assert_eq!(p.next_send_at(), late);
        p.on_sent(late, 980, 1e6);
        assert_eq!(p.next_send_at(), late + ms(1));
    }

    #[test]
    fn wake_only_moves_the_next_send_earlier() {
        let t0 = Instant::now() + ms(100);
        let mut p = Pacer::new(None, t0);
        p.on_sent(t0, 99_980, 1e6);
        assert_eq!(p.next_send_at(), t0 + ms(100));
        p.wake(t0 + ms(10));
        assert_eq!(p.next_send_at(), t0 + ms(10));
        p.wake(t0 + ms(50));
        assert_eq!(p.next_send_at(), t0 + ms(10));
        p.start(t0 + ms(60));
        assert_eq!(p.next_send_at(), t0 + ms(60));
    }

    #[test]
    fn the_rate_cap_is_in_bits_per_second() {
        let cc = Bbr::new(1420, 32, Instant::now());
        let uncapped = Pacer::new(None, Instant::now()).rate(&cc);
        assert!(uncapped > 1000.0);
        let capped = Pacer::new(Some(8000), Instant::now()).rate(&cc);
        assert_eq!(capped, 1000.0);
    }

    #[test]
    fn room_checks_the_user_window_first_then_the_congestion_window() {
        assert_eq!(room(4, 10_000, 3, 3000, 1000), Ok(()));
        assert_eq!(room(4, 10_000, 4, 0, 1000), Err(Full::Window));
        assert_eq!(room(4, 3500, 4, 3000, 1000), Err(Full::Window));
        assert_eq!(room(4, 3500, 3, 3000, 1000), Err(Full::Congestion));
        assert_eq!(room(4, 4000, 3, 3000, 1000), Ok(()), "exactly full fits");
        // A window of 0 chunks still lets one out (stop-and-wait), and a congestion window
        // smaller than one packet still lets that one packet out.
        assert_eq!(room(0, 10_000, 0, 0, 1000), Ok(()));
        assert_eq!(room(0, 10_000, 1, 1000, 1000), Err(Full::Window));
        assert_eq!(room(8, 500, 0, 0, 1000), Ok(()));
        assert_eq!(room(8, 500, 1, 1000, 1000), Err(Full::Congestion));
    }
}
