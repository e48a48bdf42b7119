//! Loss recovery: every transmission not yet acknowledged (by chunk, and by transmission number,
//! which is send order), the chunks declared lost and not yet resent, loss detection by later
//! acks and by the RTO, tail probes, and telling a retransmission (or an RTO) that was not needed
//! from one that was. Why each rule is what it is: the [sender's module comment](super).
//!
//! The RTT estimator and the congestion controller belong to the sender (they outlive a
//! re-offer); the methods that need them take them as arguments, and the RTO is passed in already
//! backed off ([`rto`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::cc::{Bbr, SendSnapshot};
use super::super::rtt::RttEstimator;

/// An ack that comes back sooner than this share of the minimum RTT after a retransmission
/// answers an earlier copy ([`InFlight::answers_earlier_copy`]).
const EARLIER_COPY_SHARE: f64 = 0.875;

/// The RTO after `backoff` expiries in a row. Doubling stops at a sixth of the transfer's
/// `timeout`, so that a sender that has heard nothing still tries several times before it gives
/// up.
pub(super) fn rto(rtt: &RttEstimator, backoff: u32, timeout: Duration) -> Duration {
    let base = rtt.rto();
    rtt.backed_off(backoff).min((timeout / 6).max(base))
}

/// A transmission not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    tx: u64,
    /// The number of the chunk's first transmission.
    first_tx: u64,
    sent_at: Instant,
    /// Transmissions of this chunk so far, this one included (Karn's rule needs 1).
    sends: u32,
    /// No copy of the chunk but this transmission can still arrive on a FIFO path: each earlier
    /// one was declared lost by later acks (none given up by an RTO, none a tail probe's).
    sole: bool,
    /// Packet bytes, as the congestion controller counts them.
    bytes: u64,
    snapshot: SendSnapshot,
    /// For a retransmission: the transmission it repeats, in case that one is what gets acked.
    prev: Option<Earlier>,
}

impl InFlight {
    /// Whether an ack for this resent chunk arriving at `now` must be for an earlier copy: the
    /// retransmission has been out for clearly less than the shortest round trip ever measured
    /// (7/8 of it: that minimum may be a little long, the offer's answer, say, and an ack that
    /// came back in the path's true round trip is the retransmission's own).
    fn answers_earlier_copy(&self, now: Instant, rtt: &RttEstimator) -> bool {
        self.prev.is_some()
            && rtt.min().is_some_and(|min| {
                now.saturating_duration_since(self.sent_at) < min.mul_f64(EARLIER_COPY_SHARE)
            })
    }

    /// Whether an ack sent for an arrival of this resent chunk (its echo names the chunk), one
    /// that does not [answer an earlier copy](Self::answers_earlier_copy), answers this
    /// retransmission, as RACK (RFC 8985) takes it: when every earlier copy was declared lost by
    /// later acks ([`InFlight::sole`]) and the shortest round trip is known. Those copies are
    /// then behind later ones that arrived, not queued (an RTO's may be), and a FIFO path
    /// delivers nothing sent before the retransmission after it. So the ack may move loss
    /// detection past the retransmission's own number: at the file's end, where no new chunk
    /// follows, a lost retransmission is then found by the ones sent after it, in a round trip,
    /// instead of by the RTO (more than a round trip and a quarter, one oldest batch at a time;
    /// on a queue too thin for Startup, 69 RTOs for an 8 MiB file instead of 1).
    ///
    /// Only the ack sent for the arrival counts: one that merely lists the chunk may come after
    /// a copy that arrived long before, its own acks lost, when acks far ahead of a hole report
    /// only what arrived since the previous one (docs/PROTOCOL.md, "What a receiver sends").
    fn answers_own_copy(&self, rtt: &RttEstimator) -> bool {
        self.prev.is_some() && self.sole && rtt.min().is_some()
    }
}

/// The transmission a retransmission repeats (see the module comment on spurious retransmissions).
#[derive(Clone, Copy, Debug)]
struct Earlier {
    sent_at: Instant,
    snapshot: SendSnapshot,
    /// It was the chunk's only copy (no tail probe, no earlier retransmission): when it is the one
    /// acknowledged, its round trip is a valid sample.
    only: bool,
    /// It was declared lost by an RTO (not by later acks).
    by_rto: bool,
}

/// A chunk declared lost and not yet resent.
#[derive(Clone, Copy, Debug)]
struct Lost {
    /// Its last transmission.
    last: InFlight,
    /// Declared by an RTO, which a spurious-RTO undo puts back in flight.
    by_rto: bool,
}

/// The copy of a chunk an ack certainly answers (see [`Recovery::only_copy_acked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OnlyCopy {
    pub sent_at: Instant,
    /// An RTO had given up on it.
    pub by_rto: bool,
}

/// The sender's transmissions and what became of them.
#[derive(Debug)]
pub(super) struct Recovery {
    in_flight: BTreeMap<u32, InFlight>,
    /// The same transmissions by number (= send order): loss detection and the RTO look at the
    /// oldest first.
    by_tx: BTreeMap<u64, (u32, Instant)>,
    /// Chunks declared lost and not yet resent, with their last transmission: an ack for it
    /// may still come (the loss was only reordering), and it still makes a rate sample.
    lost: BTreeMap<u32, Lost>,
    next_tx: u64,
    /// The three highest acknowledged transmission numbers, highest first (0: none).
    top_acked: [u64; 3],
    bytes_in_flight: u64,
    /// RTO expiries in a row, each doubling the timer.
    backoff: u32,
    /// Set by an RTO: the next chunks ask for an immediate ack.
    ack_now: bool,
    /// When the last data packet went out, and probes sent since the last ack (see
    /// [`Recovery::tail_probe_deadline`]).
    last_sent_at: Instant,
    tail_probes: u32,
    /// A tail probe's timer fired and the probe has not gone yet.
    tail_probe_due: bool,
    /// When the last tail probe went and which chunk it resent, until an ack or an RTO.
    tail_probe_at: Option<(Instant, u32)>,
}

impl Recovery {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            in_flight: BTreeMap::new(),
            by_tx: BTreeMap::new(),
            lost: BTreeMap::new(),
            next_tx: 1,
            top_acked: [0; 3],
            bytes_in_flight: 0,
            backoff: 0,
            ack_now: false,
            last_sent_at: now,
            tail_probes: 0,
            tail_probe_due: false,
            tail_probe_at: None,
        }
    }

    /// The receiver forgot the transfer: nothing sent so far will be acknowledged. Transmission
    /// numbers keep counting up and the RTO keeps its backoff (the path is the same).
    pub(super) fn forget(&mut self) {
        self.in_flight.clear();
        self.by_tx.clear();
        self.lost.clear();
        self.top_acked = [0; 3];
        self.bytes_in_flight = 0;
        self.ack_now = false;
        self.tail_probes = 0;
        self.tail_probe_due = false;
        self.tail_probe_at = None;
    }

    /// Every chunk in flight is lost (sent behind an offer that did not open the transfer):
    /// each goes again, and its copy stays on record, so that an ack for it that still comes
    /// (it arrived after all) is matched to the right copy and no round trip is taken from the
    /// other (Karn).
    pub(super) fn lose_all(&mut self) {
        while let Some((&tx, &(index, _))) = self.by_tx.first_key_value() {
            self.declare_lost(tx, index, false);
        }
        self.tail_probe_at = None;
    }

    pub(super) fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Chunks in flight (each counted once, however many copies are out).
    pub(super) fn chunks_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// RTO expiries in a row (reset by an ack that acknowledges something new).
    pub(super) fn backoff(&self) -> u32 {
        self.backoff
    }

    pub(super) fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// Chunks should ask for an immediate ack (an RTO fired and its losses are not all resent).
    pub(super) fn ack_now(&self) -> bool {
        self.ack_now
    }

    /// The lowest chunk declared lost and not yet resent, and how many times it was sent.
    pub(super) fn first_lost(&self) -> Option<(u32, u32)> {
        let (&index, l) = self.lost.first_key_value()?;
        Some((index, l.last.sends))
    }

    /// Chunks declared lost and not yet resent.
    pub(super) fn lost_len(&self) -> usize {
        self.lost.len()
    }

    /// Chunk `index` went out at `now` as a packet of `bytes` (`snapshot`: what the controller
    /// recorded for it): its first transmission, or the retransmission of a lost chunk.
    pub(super) fn on_sent(&mut self, index: u32, bytes: u64, snapshot: SendSnapshot, now: Instant) {
        self.last_sent_at = now;
        let tx = self.next_tx;
        self.next_tx += 1;
        let lost = self.lost.remove(&index);
        let first_tx = lost.map_or(tx, |l| l.last.first_tx);
        let prev = lost.map(|l| Earlier {
            sent_at: l.last.sent_at,
            snapshot: l.last.snapshot,
            only: l.last.sends == 1,
            by_rto: l.by_rto,
        });
        let sends = lost.map_or(0, |l| l.last.sends);
        let sole = lost.is_none_or(|l| l.last.sole && !l.by_rto);
        self.in_flight.insert(
            index,
            InFlight {
                tx,
                first_tx,
                sent_at: now,
                sends: sends + 1,
                sole,
                bytes,
                snapshot,
                prev,
            },
        );
        self.by_tx.insert(tx, (index, now));
        self.bytes_in_flight += bytes;
        if self.lost.is_empty() {
            self.ack_now = false;
        }
    }

    /// When to probe a silent tail (RFC 9002's PTO): if the chunks in flight are followed by
    /// nothing (the window is full, or the file ends) and the ack for them is lost, no later
    /// chunk will show the loss, and the RTO is at least 200 ms. So a round trip (`pto`, the
    /// reply timeout: the last chunk sent had `ACK_NOW`, so no ack delay is waited for) after the
    /// last transmission, doubling per probe, one chunk goes again with `ACK_NOW`: a duplicate
    /// makes the receiver answer with everything it has.
    pub(super) fn tail_probe_deadline(&self, pto: Duration) -> Option<Instant> {
        if self.in_flight.is_empty() {
            return None;
        }
        let pto = pto.saturating_mul(1 << self.tail_probes.min(16));
        Some(self.last_sent_at + pto)
    }

    /// The tail probe's timer, unless the probe it asked for has not gone yet.
    pub(super) fn tail_probe_timer(&self, pto: Duration) -> Option<Instant> {
        self.tail_probe_deadline(pto)
            .filter(|_| !self.tail_probe_due)
    }

    /// The tail probe's timer fired: the next transmission is a probe.
    pub(super) fn on_tail_probe_timeout(&mut self) {
        self.tail_probe_due = true;
        self.tail_probes += 1;
    }

    /// Whether a tail probe is due; it is then no longer (the caller sends it, if it can).
    pub(super) fn take_tail_probe(&mut self) -> bool {
        std::mem::take(&mut self.tail_probe_due)
    }

    /// The chunk a tail probe resends: the most recently sent one still in flight.
    pub(super) fn newest_in_flight(&self) -> Option<u32> {
        let (_, &(index, _)) = self.by_tx.last_key_value()?;
        Some(index)
    }

    /// A tail probe resent chunk `index` at `now`. It goes outside the congestion window (it is
    /// one packet, and it is what unblocks the window), so no bytes are counted.
    pub(super) fn on_tail_probe_sent(&mut self, index: u32, now: Instant) {
        if let Some(f) = self.in_flight.get_mut(&index) {
            // Two copies out: an ack echoing it can no longer time either (Karn), nor tell
            // which one arrived.
            f.sends += 1;
            f.sole = false;
        }
        self.last_sent_at = now;
        self.tail_probe_at = Some((now, index));
    }

    /// When the oldest transmission still out times out, `rto` (backed off) after it was sent;
    /// `pto` is the tail probe's timeout.
    pub(super) fn rto_deadline(&self, rto: Duration, pto: Duration) -> Option<Instant> {
        let (_, &(index, sent_at)) = self.by_tx.first_key_value()?;
        let deadline = sent_at + rto;
        // After a tail probe the RTO waits for the probe's answer, a round trip, when that answer
        // settles the chunk the RTO would resend first: the probed chunk itself, or one sent once
        // (the receiver answers a probe with everything it has, or with its verdict: the end of
        // the file, whose last acks or complete were lost). On a short path this changes nothing
        // (the 200 ms minimum is longer); on a long one the RTO, 1.25 round trips after the
        // chunk, would fire a quarter round trip after the probe and resend for nothing. A lost
        // retransmission keeps its time: the probe's answer does not show it lost (that takes
        // three retransmissions sent after it acknowledged each by an ack for its own arrival,
        // see `InFlight::answers_own_copy`), only the RTO can.
        let settles = |probed: u32| {
            probed == index || self.in_flight.get(&index).is_some_and(|f| f.sends == 1)
        };
        let answer = self
            .tail_probe_at
            .filter(|&(_, probed)| settles(probed))
            .map(|(at, _)| at + pto);
        Some(answer.map_or(deadline, |a| a.max(deadline)))
    }

    /// The oldest transmission went unanswered for a whole `rto`: it, and every other chunk out
    /// for as long, is lost and goes again, lowest index first. Chunks sent more recently keep
    /// their own timers: when an RTO is spurious (the queue grew faster than the RTT estimate)
    /// this resends only the oldest, not the whole window. The timer backs off, and the chunks
    /// sent until the losses are resent ask for an immediate ack.
    pub(super) fn on_rto(&mut self, now: Instant, rto: Duration) {
        while let Some((&tx, &(index, sent_at))) = self.by_tx.first_key_value() {
            if sent_at + rto > now {
                break;
            }
            self.declare_lost(tx, index, true);
        }
        self.backoff += 1;
        self.tail_probe_at = None;
        self.ack_now = true;
    }

    /// Karn's rule: only a chunk sent once, and acknowledged by this very ack, times the path.
    /// Two more cases are just as unambiguous: a resent chunk whose retransmission cannot have
    /// been answered yet (the ack is for its only earlier copy), and a chunk declared lost but
    /// not resent (its only copy is what arrived). Either way, if an RTO had given up on that
    /// copy, the copy's round trip is what the RTO missed: the RTO was spurious.
    ///
    /// For chunk `echo`, the one the ack at `now` was sent for: that copy, if there is one.
    pub(super) fn only_copy_acked(
        &self,
        echo: u32,
        now: Instant,
        rtt: &RttEstimator,
    ) -> Option<OnlyCopy> {
        let (sent_at, by_rto) = match (self.in_flight.get(&echo), self.lost.get(&echo)) {
            (Some(f), _) if f.sends == 1 => Some((f.sent_at, false)),
            (Some(f), _) => f
                .prev
                .filter(|e| e.only && f.answers_earlier_copy(now, rtt))
                .map(|e| (e.sent_at, e.by_rto)),
            (None, Some(l)) if l.last.sends == 1 => Some((l.last.sent_at, l.by_rto)),
            (None, _) => None,
        }?;
        Some(OnlyCopy { sent_at, by_rto })
    }

    /// Every chunk below `cumulative` is acknowledged: those in flight, then those declared lost.
    /// Returns how many of them were retransmitted for nothing (see [`Recovery::on_acked`]).
    ///
    /// `echo` is the chunk whose arrival the ack was sent for (see [`Recovery::on_acked`]).
    pub(super) fn on_acked_below(
        &mut self,
        cumulative: u32,
        echo: u32,
        now: Instant,
        rtt: &RttEstimator,
        cc: &mut Bbr,
    ) -> u64 {
        let mut spurious = 0;
        while let Some((&index, _)) = self.in_flight.first_key_value() {
            if index >= cumulative {
                break;
            }
            spurious += self.on_in_flight_acked(index, index == echo, now, rtt, cc) as u64;
        }
        while let Some((&index, _)) = self.lost.first_key_value() {
            if index >= cumulative {
                break;
            }
            self.on_lost_acked(index, now, cc);
        }
        spurious
    }

    /// Chunk `index` is newly acknowledged at `now`, by an ack sent for the arrival of chunk
    /// `echo` (the ack's echo field). Returns whether its retransmission was not needed (the ack
    /// came too soon to answer it).
    pub(super) fn on_acked(
        &mut self,
        index: u32,
        echo: u32,
        now: Instant,
        rtt: &RttEstimator,
        cc: &mut Bbr,
    ) -> bool {
        if self.in_flight.contains_key(&index) {
            self.on_in_flight_acked(index, index == echo, now, rtt, cc)
        } else {
            self.on_lost_acked(index, now, cc);
            false
        }
    }

    /// `echoed`: the ack was sent for an arrival of this chunk.
    fn on_in_flight_acked(
        &mut self,
        index: u32,
        echoed: bool,
        now: Instant,
        rtt: &RttEstimator,
        cc: &mut Bbr,
    ) -> bool {
        let Some(f) = self.in_flight.remove(&index) else {
            return false;
        };
        self.by_tx.remove(&f.tx);
        self.bytes_in_flight -= f.bytes;
        let mut snapshot = f.snapshot;
        let mut spurious = false;
        if let Some(e) = f.prev.filter(|_| f.answers_earlier_copy(now, rtt)) {
            // The earlier copy arrived: its send is what this delivery measures. The
            // retransmission's would give an interval of a few ms, which the controller rejects
            // as ack compression; when every ack carried one (an RTO firing before each ack),
            // the bandwidth estimate starved to zero.
            snapshot = e.snapshot;
            spurious = true;
        }
        cc.on_acked(now, &snapshot, f.bytes);
        // An ack names chunks, not transmissions: for a chunk sent more than once it may be the
        // first copy that arrived (the loss was spurious). Crediting the latest copy would then
        // make everything sent before it look lost, so the earliest one is credited, unless the
        // ack is the retransmission's own ([`InFlight::answers_own_copy`]).
        let tx = if f.sends == 1 || (echoed && !spurious && f.answers_own_copy(rtt)) {
            f.tx
        } else {
            f.first_tx
        };
        let top = &mut self.top_acked;
        if tx > top[0] {
            *top = [tx, top[0], top[1]];
        } else if tx > top[1] {
            *top = [top[0], tx, top[1]];
        } else if tx > top[2] {
            top[2] = tx;
        }
        spurious
    }

    /// A chunk declared lost was acknowledged after all, before it was resent.
    fn on_lost_acked(&mut self, index: u32, now: Instant, cc: &mut Bbr) {
        if let Some(l) = self.lost.remove(&index) {
            cc.on_acked(now, &l.last.snapshot, l.last.bytes);
        }
    }

    /// An RTO turned out spurious: the chunks it declared lost and that have not gone again are
    /// in flight once more, with their own send times, and the backoff is reset. (The sender
    /// widens the timer and lifts the controller's post-RTO window.)
    pub(super) fn undo_rto(&mut self) {
        self.backoff = 0;
        let gave_up: Vec<u32> = self
            .lost
            .iter()
            .filter(|(_, l)| l.by_rto)
            .map(|(&index, _)| index)
            .collect();
        for index in gave_up {
            let Some(l) = self.lost.remove(&index) else {
                continue;
            };
            let f = l.last;
            self.by_tx.insert(f.tx, (index, f.sent_at));
            self.bytes_in_flight += f.bytes;
            self.in_flight.insert(index, f);
        }
        if self.lost.is_empty() {
            self.ack_now = false;
        }
    }

    /// An ack has been processed: tail probes start over, and the transmissions it shows lost
    /// are declared so. Returns how many.
    pub(super) fn on_ack_end(&mut self) -> u64 {
        self.tail_probes = 0;
        self.tail_probe_at = None;
        self.detect_losses()
    }

    /// Fast retransmit: a transmission numbered below the third-highest acknowledged one has
    /// three later transmissions acknowledged.
    fn detect_losses(&mut self) -> u64 {
        let threshold = self.top_acked[2];
        let mut lost = 0;
        while let Some((&tx, &(index, _))) = self.by_tx.first_key_value() {
            if tx >= threshold {
                break;
            }
            self.declare_lost(tx, index, false);
            lost += 1;
        }
        lost
    }

    fn declare_lost(&mut self, tx: u64, index: u32, by_rto: bool) {
        self.by_tx.remove(&tx);
        if let Some(f) = self.in_flight.remove(&index) {
            self.bytes_in_flight -= f.bytes;
            self.lost.insert(index, Lost { last: f, by_rto });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A 100 ms path: the estimator has one sample, the controller its defaults.
    fn path(t0: Instant) -> (RttEstimator, Bbr) {
        let mut rtt = RttEstimator::new(Duration::from_secs(1), ms(200), ms(60_000), ms(5));
        rtt.on_sample(ms(100));
        (rtt, Bbr::new(120, 32, t0))
    }

    /// Sends chunks `indices` in order, one ms apart from `start`; returns the time after.
    fn send(r: &mut Recovery, cc: &mut Bbr, indices: &[u32], start: Instant) -> Instant {
        let mut now = start;
        for &i in indices {
            let snapshot = cc.on_send(now, r.bytes_in_flight());
            r.on_sent(i, 120, snapshot, now);
            now += ms(1);
        }
        now
    }

    #[test]
    fn a_chunk_is_lost_once_three_later_transmissions_are_acked() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        let now = send(&mut r, &mut cc, &[0, 1, 2, 3, 4], t0);
        assert_eq!((r.chunks_in_flight(), r.bytes_in_flight()), (5, 600));
        for i in [1, 2] {
            assert!(!r.on_acked(i, i, now, &rtt, &mut cc));
            assert_eq!(r.on_ack_end(), 0);
        }
        r.on_acked(3, 3, now, &rtt, &mut cc);
        assert_eq!(r.on_ack_end(), 1, "chunk 0 has three later ones acked");
        assert_eq!(r.first_lost(), Some((0, 1)));
        assert_eq!((r.chunks_in_flight(), r.bytes_in_flight()), (1, 120));
        // Resent: in flight again, and its loss no longer pending.
        let snapshot = cc.on_send(now, r.bytes_in_flight());
        r.on_sent(0, 120, snapshot, now);
        assert_eq!((r.first_lost(), r.lost_len()), (None, 0), "resent");
        assert_eq!(r.chunks_in_flight(), 2);
    }

    #[test]
    fn a_resent_chunk_is_credited_to_the_copy_the_ack_answers() {
        // Chunks 0 and 1 are lost and resent after chunk 5; acks for them and for chunk 6, sent
        // with them, make chunk 5 look lost exactly when they are credited to the retransmissions:
        // when they were sent for the retransmissions' arrival (their echo) a round trip after
        // them (RACK); not when they come too soon for that (the first copies arrived after all:
        // the losses were spurious), not when an RTO gave the first copies up (they may have been
        // queued, ahead of chunk 5's), and not when the ack only lists the chunks (sent for chunk
        // 6's arrival: 0 and 1 may have arrived long before, their own acks lost).
        for (by_rto, answered_after, echoed, chunk_5_lost) in [
            (false, 150, true, true),
            (false, 50, true, false),
            (true, 150, true, false),
            (false, 150, false, false),
        ] {
            let what = format!("by RTO {by_rto}, answered after {answered_after} ms, {echoed}");
            let t0 = Instant::now();
            let (rtt, mut cc) = path(t0);
            let mut r = Recovery::new(t0);
            let now = send(&mut r, &mut cc, &[0, 1, 2, 3, 4, 5], t0);
            if by_rto {
                r.on_rto(t0 + ms(2), ms(1));
                assert_eq!(r.lost_len(), 2, "{what}");
            }
            for i in [2, 3, 4] {
                r.on_acked(i, i, now, &rtt, &mut cc);
            }
            assert_eq!(r.on_ack_end(), if by_rto { 0 } else { 2 }, "{what}");
            send(&mut r, &mut cc, &[0, 1, 6], t0 + ms(100));
            let at = t0 + ms(100 + answered_after);
            for i in [0, 1, 6] {
                let echo = if echoed { i } else { 6 };
                let spurious = r.on_acked(i, echo, at, &rtt, &mut cc);
                assert_eq!(spurious, i < 6 && answered_after < 100, "{what}");
            }
            assert_eq!(r.on_ack_end(), chunk_5_lost as u64, "{what}");
            assert_eq!(r.chunks_in_flight(), !chunk_5_lost as usize, "{what}");
            assert_eq!(r.lost_len(), chunk_5_lost as usize, "{what}");
        }
    }

    #[test]
    fn cumulative_acks_cover_in_flight_and_lost_chunks() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        let now = send(&mut r, &mut cc, &[0, 1, 2, 3], t0);
        r.on_rto(now + ms(300), ms(300));
        assert_eq!((r.lost_len(), r.bytes_in_flight()), (4, 0));
        assert_eq!(
            r.on_acked_below(3, u32::MAX, now + ms(300), &rtt, &mut cc),
            0
        );
        assert_eq!(r.first_lost(), Some((3, 1)));
    }

    #[test]
    fn the_rto_gives_up_only_on_transmissions_out_for_a_whole_rto() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        send(&mut r, &mut cc, &[0, 1], t0);
        send(&mut r, &mut cc, &[2], t0 + ms(100));
        let rto = ms(305);
        assert_eq!(r.rto_deadline(rto, rtt.reply_timeout()), Some(t0 + rto));
        assert!(!r.ack_now());
        r.on_rto(t0 + ms(310), rto);
        assert_eq!(r.first_lost(), Some((0, 1)));
        assert_eq!((r.lost_len(), r.chunks_in_flight()), (2, 1));
        assert_eq!(r.backoff(), 1);
        assert!(r.ack_now(), "until the losses are resent");
        assert_eq!(
            r.rto_deadline(rto, rtt.reply_timeout()),
            Some(t0 + ms(100) + rto)
        );
        let now = send(&mut r, &mut cc, &[0], t0 + ms(311));
        assert!(r.ack_now());
        send(&mut r, &mut cc, &[1], now);
        assert!(!r.ack_now());
        r.reset_backoff();
        assert_eq!(r.backoff(), 0);
    }

    #[test]
    fn an_undone_rto_puts_its_chunks_back_in_flight() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        let now = send(&mut r, &mut cc, &[0, 1, 2], t0);
        r.on_rto(now + ms(300), ms(300));
        let now = send(&mut r, &mut cc, &[0], now + ms(300));
        // The first copy of chunk 0 is answered 1 ms after its retransmission: sooner than the
        // 100 ms minimum RTT, so it is that copy, which the RTO had given up on.
        let copy = r.only_copy_acked(0, now, &rtt);
        assert_eq!(
            copy,
            Some(OnlyCopy {
                sent_at: t0,
                by_rto: true
            })
        );
        assert!(
            r.on_acked(0, 0, now, &rtt, &mut cc),
            "the retransmission was spurious"
        );
        r.undo_rto();
        assert_eq!((r.lost_len(), r.chunks_in_flight()), (0, 2));
        assert_eq!((r.bytes_in_flight(), r.backoff()), (240, 0));
        assert!(!r.ack_now());
        // Back with their old send times.
        assert_eq!(
            r.rto_deadline(ms(300), rtt.reply_timeout()),
            Some(t0 + ms(301))
        );
    }

    #[test]
    fn an_ack_long_after_a_retransmission_times_nothing() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        send(&mut r, &mut cc, &[0], t0);
        assert_eq!(
            r.only_copy_acked(0, t0 + ms(100), &rtt),
            Some(OnlyCopy {
                sent_at: t0,
                by_rto: false
            })
        );
        r.on_rto(t0 + ms(300), ms(300));
        let now = send(&mut r, &mut cc, &[0], t0 + ms(300));
        assert_eq!(
            r.only_copy_acked(0, now + ms(150), &rtt),
            None,
            "which copy?"
        );
        // Nor just under the minimum RTT of 100 ms: a minimum taken from a slow sample (an
        // offer's answer) is a little long, and this may be the retransmission's own ack.
        assert_eq!(r.only_copy_acked(0, now + ms(95), &rtt), None);
        assert!(!r.on_acked(0, 0, now + ms(150), &rtt, &mut cc));
    }

    #[test]
    fn tail_probes_back_off_and_start_over_on_an_ack() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        let pto = rtt.reply_timeout();
        assert_eq!(r.tail_probe_deadline(pto), None, "nothing in flight");
        send(&mut r, &mut cc, &[0, 1], t0);
        let last = t0 + ms(1);
        assert_eq!(r.tail_probe_deadline(pto), Some(last + pto));
        r.on_tail_probe_timeout();
        assert_eq!(r.tail_probe_timer(pto), None, "the probe is due");
        assert!(r.take_tail_probe());
        assert!(!r.take_tail_probe());
        assert_eq!(r.newest_in_flight(), Some(1));
        let at = last + pto;
        r.on_tail_probe_sent(1, at);
        assert_eq!(r.tail_probe_timer(pto), Some(at + 2 * pto), "doubled");
        // The RTO waits for the probe's answer when that settles the oldest chunk (sent once).
        assert_eq!(r.rto_deadline(ms(200), pto), Some(at + pto));
        // The probe made two copies of chunk 1: its ack is no sample.
        assert_eq!(r.only_copy_acked(1, at + ms(100), &rtt), None);
        r.on_acked(0, 0, at + ms(100), &rtt, &mut cc);
        assert_eq!(r.on_ack_end(), 0);
        assert_eq!(r.tail_probe_deadline(pto), Some(at + pto), "backoff reset");
        assert_eq!(r.rto_deadline(ms(200), pto), Some(last + ms(200)));
    }

    #[test]
    fn forget_drops_every_transmission_but_keeps_counting() {
        let t0 = Instant::now();
        let (rtt, mut cc) = path(t0);
        let mut r = Recovery::new(t0);
        let now = send(&mut r, &mut cc, &[0, 1, 2, 3], t0);
        r.on_rto(now + ms(300), ms(300));
        r.forget();
        assert_eq!(
            (r.chunks_in_flight(), r.lost_len(), r.bytes_in_flight()),
            (0, 0, 0)
        );
        assert_eq!(r.backoff(), 1, "the path's backoff stays");
        assert!(!r.ack_now());
        assert_eq!(r.rto_deadline(ms(300), rtt.reply_timeout()), None);
        // Loss detection starts afresh.
        let now = send(&mut r, &mut cc, &[0, 1, 2, 3, 4], now + ms(400));
        for i in [1, 2, 3] {
            r.on_acked(i, i, now, &rtt, &mut cc);
        }
        assert_eq!(r.on_ack_end(), 1);
        assert_eq!(r.first_lost(), Some((0, 1)));
    }
}
