//! The receive driver: one receive path (XDP ring buffer or raw socket) feeding the receiver
//! core through [`Intake`], files written by [`FsStorage`], answers sent back through a raw
//! socket from the address each was sent to, the state file for `chunk stats` kept fresh.
//!
//! The loop: wait for the receive path's fd (or the core's next timer), take every packet
//! waiting, hand each to the core and send what it answers at once (a batch can hold a whole
//! window, and one ack for all of it, if lost, would leave the sender waiting for its probe
//! timer), then timers, events and the state file.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::wait::{self, Stop};
use crate::{
    auth,
    crypto::{
        session::{FilterChange, ResponderConfig, Sessions},
        transport::{INNER_AT, OVERHEAD},
    },
    intake::{Intake, Rejected},
    net::{
        answer::Answerer,
        rx::{RxSource, StatePublisher},
        session_filter::SessionFilter,
    },
    proto::{Receiver, ReceiverConfig, Transmit},
    report::{IntakeCounts, Limits, ReceiverState, RecvEvent, StateFile},
    store::FsStorage,
};

/// How often the state file for `chunk stats` is refreshed, and never more often: rewritten at
/// the end of every transfer as well, it took 30 % of the receiver's CPU on a tree of thousands
/// of small files. An outcome shows in `chunk stats` within this time.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// With `exit_after`, how long the receiver keeps answering after the last transfer ended (late
/// senders whose verdict was lost still get it again).
const EXIT_QUIET: Duration = Duration::from_secs(2);

/// Records taken from the receive path per round.
const BATCH: usize = 512;

/// How long the ring reader lets records gather after a batch before it reads again. The kernel
/// interrupts (wakes) the reader only for a record that finds it caught up; a reader that reads
/// each record as it comes is caught up every time, and each record then costs an interrupt (a
/// self-IPI through irq_work, on the core that runs XDP: 10 % of all CPU time in a profile of
/// a 256 MiB transfer on veth). Napping this long between batches makes it one interrupt per
/// batch, for at most this much extra latency.
const NAP: Duration = Duration::from_micros(50);
/// The longest first wait on the ring's fd after napping (see the receive loop).
const FIRST_IDLE_WAIT: Duration = Duration::from_millis(1);

/// What the receive driver needs besides the receive path.
pub struct RecvConfig {
    pub core: ReceiverConfig,
    pub key: Option<auth::Psk>,
    /// Encryption: the credentials handshakes are answered with, and the senders admitted.
    pub responder: Option<ResponderConfig>,
    /// Refuse clear offers (`--require-encryption`).
    pub require_encryption: bool,
    /// The IP protocol answers are sent with.
    pub protocol: u8,
    /// The UDP port answers over UDP leave from (`--udp`).
    pub udp_port: Option<u16>,
    /// Stop after this many transfers ended (then [`EXIT_QUIET`] without packets).
    pub exit_after: Option<u64>,
    /// As published in the state file.
    pub out: String,
    pub limits: Limits,
}

/// Runs until a signal (or `exit_after`), handing every event to `on_event`; returns the exit
/// event with the totals. Open transfers keep their partial files for a resume.
pub fn run(
    cfg: RecvConfig,
    mut rx: RxSource,
    mut storage: FsStorage,
    stop: &Stop,
    mut on_event: impl FnMut(&RecvEvent),
) -> Result<RecvEvent> {
    let ack_sock = Answerer::open(cfg.protocol, cfg.udp_port, rx.udp_sockets(), rx.iface())
        .context("opening the sockets for answers (raw sockets need root or CAP_NET_RAW)")?;
    let mut core: Receiver<FsStorage> = Receiver::new(cfg.core.clone());
    let mut intake = Intake::receiver(
        cfg.key.clone(),
        Sessions::new(cfg.responder),
        cfg.require_encryption,
    );
    let filter = rx.session_filter();
    let idle = cfg.core.idle_timeout;
    let publisher = StatePublisher::new(rx.iface());
    let started_ms = auth::now_ms();
    on_event(&RecvEvent::Ready {
        iface: rx.iface().into(),
        mode: rx.mode().into(),
        out: cfg.out.clone(),
    });

    let mut buf = vec![0u8; OVERHEAD + auth::TRAILER_LEN + (1 << 12)];
    let mut counts = IntakeCounts::default();
    let mut ended = 0u64;
    let mut next_state = Instant::now();
    let mut last_packet = Instant::now();
    let mut draining = false;
    let mut napping = false;
    let mut just_idle = false;
    let reason = loop {
        if let Some(why) = stop.requested() {
            break why;
        }
        let quiet_end = draining.then(|| last_packet + EXIT_QUIET);
        let deadline = [core.poll_timeout(), quiet_end, Some(next_state)]
            .into_iter()
            .flatten()
            .min();
        if napping {
            let nap_end = Instant::now() + NAP;
            std::thread::sleep(deadline.map_or(NAP, |d| {
                d.min(nap_end).saturating_duration_since(Instant::now())
            }));
        } else {
            // Just back from napping, the program may have read "busy" an instant before it
            // was cleared, and submitted without a wakeup: the first wait is bounded.
            let deadline = if just_idle {
                let cap = Instant::now() + FIRST_IDLE_WAIT;
                Some(deadline.map_or(cap, |d| d.min(cap)))
            } else {
                deadline
            };
            // Also woken by the thread that puts files in place, when a verdict is reached.
            let mut fds = rx.fds();
            fds.extend(storage.finish_fd());
            wait::until(&fds, deadline).context("waiting for packets")?;
        }
        let batch = rx
            .read_batch(BATCH, |rec| {
                let now = Instant::now();
                counts.packets += 1;
                match intake.open_checked_at(rec.src, rec.packet, auth::now_ms(), now) {
                    Ok(repr) => {
                        let arrived = rec.arrived.unwrap_or(now);
                        let (src, dst) = (rec.src, Some(rec.dst));
                        core.handle_arrived(src, dst, &repr, arrived, now, &mut storage);
                        send_answers(
                            &mut core,
                            now,
                            &mut buf,
                            &mut intake,
                            &ack_sock,
                            &mut counts,
                        );
                    }
                    Err(why) => {
                        counts.sessions = intake.sessions().counts;
                        count_rejected(&mut counts, why, rec.src);
                        // A session opened: the receive path lets its sealed packets through
                        // before its sender hears the answer.
                        apply_filter(&mut intake, &filter);
                        for (to, p) in intake.take_outbox() {
                            send_one(&ack_sock, &p, Some(rec.dst), to, &mut counts);
                        }
                    }
                }
            })
            .context("reading the receive path")?;
        let was_napping = napping;
        napping = rx.is_ring() && batch.read > 0;
        // While it drains batch after batch the program need not wake it (BPF_RB_NO_WAKEUP:
        // no irq_work interrupt on the CPU that runs the program, on veth the sender's).
        rx.set_reader_busy(napping);
        just_idle = was_napping && !napping;
        let now = Instant::now();
        // The socket path can wake for a batch of junk only: that is not a sender.
        if batch.accepted > 0 {
            last_packet = now;
        }
        if draining && now >= last_packet + EXIT_QUIET {
            break "done";
        }
        core.poll_storage(now, &mut storage);
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now, &mut storage);
        }
        send_answers(
            &mut core,
            now,
            &mut buf,
            &mut intake,
            &ack_sock,
            &mut counts,
        );
        while let Some(ev) = core.poll_event() {
            let ev = RecvEvent::from(&ev);
            if ev.ends_a_file() {
                ended += 1;
            }
            on_event(&ev);
        }
        if cfg.exit_after.is_some_and(|n| ended >= n) {
            draining = true;
        }
        if now >= next_state {
            next_state = now + STATE_EVERY;
            intake.sessions_mut().expire(now, idle);
            apply_filter(&mut intake, &filter);
            counts.sessions = intake.sessions().counts;
            counts.sessions_open = intake.sessions().len() as u64;
            publisher.write(&StateFile {
                pid: std::process::id(),
                started_unix_ms: started_ms,
                receive_path: rx.describe(),
                receiver: Some(ReceiverState {
                    updated_unix_ms: auth::now_ms(),
                    out: cfg.out.clone(),
                    limits: cfg.limits.clone(),
                    transfers_open: core.open_transfers(),
                    core: core.stats(),
                    intake: counts,
                }),
            });
        }
    };
    // Verdicts being reached are waited for, and sent: their senders need not probe a
    // receiver that has gone.
    core.close_all(Instant::now(), &mut storage);
    send_answers(
        &mut core,
        Instant::now(),
        &mut buf,
        &mut intake,
        &ack_sock,
        &mut counts,
    );
    while let Some(ev) = core.poll_event() {
        on_event(&RecvEvent::from(&ev));
    }
    if counts.unparsable > 0 {
        // The kernel checks the header, lengths and checksum, not message bodies (an offer whose
        // fields disagree, say): those are dropped here.
        tracing::warn!(
            count = counts.unparsable,
            "packets with a malformed message body were dropped"
        );
    }
    if rx.bad_records() > 0 {
        bail!(
            "{} ring-buffer records were inconsistent: a bug, please report it",
            rx.bad_records()
        );
    }
    let stats = core.stats();
    counts.sessions = intake.sessions().counts;
    counts.sessions_open = intake.sessions().len() as u64;
    Ok(RecvEvent::Exit {
        reason: reason.into(),
        counters: rx.counters()?,
        transfers_finished: stats.transfers_finished,
        files_finished: stats.files_finished,
        chunks_written: stats.chunks_written,
        duplicates: stats.duplicates,
        unknown_transfer: stats.unknown_transfer,
        intake: counts,
        bad_records: rx.bad_records(),
    })
}

fn count_rejected(counts: &mut IntakeCounts, why: Rejected, src: crate::proto::Peer) {
    match why {
        Rejected::Auth(e) => {
            counts.auth_rejected += 1;
            if counts.auth_rejected.is_power_of_two() {
                tracing::warn!(%src, error = %e, count = counts.auth_rejected, "packet refused");
            }
        }
        Rejected::StaleOffer => {
            counts.stale_offers += 1;
            tracing::warn!(%src, "stale offer refused (replay, or clocks apart)");
        }
        // Header, lengths and checksum were fine (the receive path checked); the body is not.
        Rejected::Body(_) | Rejected::Classify(_) | Rejected::NotChunk => counts.unparsable += 1,
        // Counted by the sessions.
        Rejected::Envelope | Rejected::Clear => {}
        Rejected::Session(e) => {
            let c = counts.sessions;
            let refused = c.seal_failures + c.replayed + c.unknown_session;
            if refused.is_power_of_two() {
                tracing::warn!(%src, error = %e, count = refused, "sealed packet refused");
            }
        }
    }
}

/// Tells the receive path which sessions are open now.
fn apply_filter(intake: &mut Intake, filter: &SessionFilter) {
    for change in intake.sessions_mut().take_changes() {
        let r = match change {
            FilterChange::Allow(sid) => filter.allow(sid),
            FilterChange::Forget(sid) => filter.forget(sid),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot update the receive path's session map");
        }
    }
}

fn send_one(
    sock: &Answerer,
    packet: &[u8],
    src: Option<std::net::IpAddr>,
    dst: crate::proto::Peer,
    counts: &mut IntakeCounts,
) {
    if let Err(e) = sock.send(packet, src, dst) {
        counts.ack_send_errors += 1;
        if counts.ack_send_errors.is_power_of_two() {
            tracing::warn!(%dst, error = %e, count = counts.ack_send_errors, "cannot send to the sender");
        }
    }
}

/// Sends every packet the core has ready (acks, completions, aborts), sealed under their
/// transfer's session or tagged with the key as their transfer came, each from the local
/// address its transfer's packets were sent to.
fn send_answers(
    core: &mut Receiver<FsStorage>,
    now: Instant,
    buf: &mut [u8],
    intake: &mut Intake,
    sock: &Answerer,
    counts: &mut IntakeCounts,
) {
    while let Some(Transmit { dst, src, len }) = core.poll_transmit(now, &mut buf[INNER_AT..]) {
        if let Some(range) = intake.seal_out(dst, buf, INNER_AT, len) {
            send_one(sock, &buf[range], src, dst, counts);
        }
    }
}
