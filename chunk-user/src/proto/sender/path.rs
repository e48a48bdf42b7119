//! What the transfers of one sender to one receiver share: the path. One congestion controller,
//! one pacer and one RTT estimate serve every file in flight to the same receiver (as one QUIC
//! connection's controller serves all its streams), so several files at once take the path's
//! rate between them rather than each starting up and pushing on its own, and a file that
//! starts after another begins at the rate and round trip the path is already known to have.
//!
//! Each transfer keeps its own transmissions, losses, RTO backoff and tail probes
//! (`recovery`); the path keeps the sum of what they all have in flight, which is what the
//! controller's window and rate samples are about. A [`Sender`](super::Sender) reports its own
//! share to the path after each call into it (see `Sender::sync_flight`) and takes it back when
//! it is dropped.
//!
//! A path can also start from what an earlier run learnt of the same destination
//! ([`Path::resume`]: the driver keeps a [`PathEstimate`] per destination and gives it before
//! the first offer; the controller checks it against the offer's round trip before using it)
//! and says what this run learnt ([`Path::estimate`]) for the driver to keep.

use std::{cell::RefCell, rc::Rc, time::Instant};

use chunk_common::wire::HEADER_LEN;

use super::super::{
    cc::{Bbr, PathEstimate, ResumeOutcome},
    rtt::RttEstimator,
};
use super::{MAX_ACK_DELAY, SenderConfig, pacing::Pacer};

/// A path shared by several [`Sender`](super::Sender)s (`Sender::on_path`). Single-threaded by
/// design: the send driver runs every transfer of a path in one loop.
pub type SharedPath = Rc<RefCell<Path>>;

/// The state of the path to one receiver.
#[derive(Debug)]
pub struct Path {
    pub(super) rtt: RttEstimator,
    pub(super) cc: Bbr,
    pub(super) pacer: Pacer,
    /// Chunks and bytes in flight, summed over the transfers on the path.
    pub(super) chunks_in_flight: usize,
    pub(super) bytes_in_flight: u64,
    /// Transfers on the path (made and not yet dropped).
    pub(super) transfers: usize,
}

impl Path {
    /// A path nothing is known of yet, for transfers with `cfg` (its chunk size, initial window,
    /// timers and rate cap; every transfer on the path must share them).
    pub fn new(cfg: &SenderConfig, now: Instant) -> Self {
        let chunk_bytes = HEADER_LEN as u64 + cfg.chunk_size as u64;
        Self {
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto, MAX_ACK_DELAY),
            cc: Bbr::new(chunk_bytes, cfg.initial_cwnd.max(1) as u64, now)
                .with_first_round(cfg.first_round),
            pacer: Pacer::new(cfg.max_rate, now),
            chunks_in_flight: 0,
            bytes_in_flight: 0,
            transfers: 0,
        }
    }

    /// The same, ready to share.
    pub fn shared(cfg: &SenderConfig, now: Instant) -> SharedPath {
        Rc::new(RefCell::new(Self::new(cfg, now)))
    }

    /// Bytes in flight on the path, over all its transfers.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<std::time::Duration> {
        self.rtt.smoothed()
    }

    /// Transfers on the path now.
    pub fn transfers(&self) -> usize {
        self.transfers
    }

    /// Starts from `estimate`, remembered from an earlier transfer to the same receiver, once
    /// the first offer's round trip confirms it (see [`cc`](super::super::cc)). Give it before
    /// the first transfer starts; ignored later.
    pub fn resume(&mut self, estimate: PathEstimate) {
        self.cc.resume(estimate);
    }

    /// What became of the estimate given to [`resume`](Self::resume), if one was.
    pub fn resume_outcome(&self) -> Option<ResumeOutcome> {
        self.cc.resume_outcome()
    }

    /// What became of the jump from the first round's reading of the bottleneck (a cold start
    /// on a long path, see [`cc`](super::super::cc)), if one was made.
    pub fn first_round_outcome(&self) -> Option<ResumeOutcome> {
        self.cc.first_round_outcome()
    }

    /// What the transfers on this path measured of it, worth remembering for the next run
    /// (`None` when they were too short to find the bottleneck).
    pub fn estimate(&self) -> Option<PathEstimate> {
        // The controller's minimum RTT is the one ProbeRtt last measured, which beside another
        // flow's standing queue may have that queue in it; the lowest sample of the whole run
        // is the path's.
        self.cc.estimate().map(|mut e| {
            if let Some(m) = self.rtt.min() {
                e.min_rtt = e.min_rtt.min(m);
            }
            e
        })
    }
}
