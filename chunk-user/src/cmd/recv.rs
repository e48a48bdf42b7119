//! `chunk recv --iface IF --out DIR`: the receive path (XDP ring buffer) feeding the receiver
//! core, files written by [`FsStorage`], acks sent back through a raw socket.

use std::{
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_common::wire::{self, Message, Packet, Repr, flags};
use serde_json::json;

use crate::{
    auth::{self, Key},
    net::{
        raw::RawSocket,
        rx::{RxArgs, RxSource, StateFile},
        tx::drop_all_input,
    },
    proto::{Event, Receiver, ReceiverConfig, Transmit},
    store::FsStorage,
};

#[derive(clap::Args)]
pub struct RecvArgs {
    #[command(flatten)]
    pub rx: RxArgs,
    /// The directory files are written into (created if missing). Nothing is written outside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Refuse files larger than this many bytes.
    #[arg(long, default_value_t = 1 << 40)]
    pub max_size: u64,
    /// Refuse offers beyond this many transfers at once.
    #[arg(long, default_value_t = 16)]
    pub max_transfers: usize,
    /// Refuse offers beyond this many transfers at once from one source address.
    #[arg(long, default_value_t = 4)]
    pub max_per_source: usize,
    /// Replace existing files (otherwise an offer for an existing name is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Memory one transfer's record of received chunks may take, in KiB (a sender scattering
    /// chunks over a huge file to exhaust memory has them dropped beyond it).
    #[arg(long, default_value_t = 4096)]
    pub max_state_kib: usize,
    /// Close a transfer that is silent this many seconds (its progress is kept for a resume).
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Exit after this many transfers have ended (finished, refused, failed or cancelled), and
    /// then 2 s without packets (late senders whose verdict was lost still get it again).
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// Print events (ready, started, finished, refused, ...) as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Accept only packets authenticated with this pre-shared key (the same file as the
    /// sender's `--psk-file`); see docs/SECURITY.md.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
}

/// How often the state file for `chunk stats` is refreshed.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// With `--exit-after`, how long the receiver keeps answering after the last transfer ended.
const EXIT_QUIET: Duration = Duration::from_secs(2);

pub fn run(args: RecvArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(recv(args))
}

/// What woke the loop.
enum Wake {
    Packets(std::io::Result<usize>),
    Timer,
    Stop(&'static str),
}

async fn recv(args: RecvArgs) -> Result<()> {
    match std::fs::metadata(&args.out) {
        Ok(md) if !md.is_dir() => bail!("--out {}: not a directory", args.out.display()),
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    }
    let mut storage = FsStorage::new(&args.out, args.overwrite)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let ack_sock = RawSocket::new(args.rx.protocol)
        .context("opening a raw IP socket for acks (needs root or CAP_NET_RAW)")?;
    drop_all_input(ack_sock.socket().as_raw_fd()).context("making the ack socket send-only")?;
    let cfg = ReceiverConfig {
        max_file_size: args.max_size,
        max_transfers: args.max_transfers,
        max_per_source: args.max_per_source,
        max_chunk_size: args.rx.max_payload as u32,
        idle_timeout: Duration::from_secs_f64(args.idle_timeout.max(0.1)),
        max_transfer_state: args.max_state_kib.saturating_mul(1024),
        ..ReceiverConfig::default()
    };
    let limits = json!({
        "max_size": args.max_size, "max_transfers": args.max_transfers,
        "max_per_source": args.max_per_source, "max_state_kib": args.max_state_kib,
        "idle_timeout_s": args.idle_timeout, "max_payload": args.rx.max_payload,
        "ring_bytes": args.rx.ring_bytes,
        "allow": args.rx.allow.iter().map(|p| format!("{}/{}", p.addr, p.len)).collect::<Vec<_>>(),
        "psk": args.psk_file.is_some(), "overwrite": args.overwrite,
    });
    let key = match &args.psk_file {
        Some(p) => Some(Key::from_file(p).context("reading the pre-shared key")?),
        None => None,
    };
    let mut core: Receiver<FsStorage> = Receiver::new(cfg);
    let mut rx = RxSource::open(&args.rx)?;
    let state_file = StateFile::new(rx.iface());
    let started_ms = auth::now_ms();
    let mut next_state = Instant::now();
    let ready = json!({"event": "ready", "iface": rx.iface(), "mode": rx.mode(),
        "out": args.out.display().to_string()});
    if args.json {
        println!("{ready}");
    } else {
        println!(
            "receiving on {} ({} mode) into {}",
            rx.iface(),
            rx.mode(),
            args.out.display()
        );
    }
    tracing::info!(iface = rx.iface(), mode = rx.mode(), out = %args.out.display(), "ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut buf = vec![0u8; wire::HEADER_LEN + wire::MAX_ACK_BITMAP_LEN + 64 + auth::TRAILER_LEN];
    let mut opened = vec![0u8; 1 << 16];
    let mut auth_rejected = 0u64;
    let mut stale_offers = 0u64;
    let mut ended = 0u64;
    let mut unparsable = 0u64;
    let mut packets = 0u64;
    let mut send_errors = 0u64;
    let stop_reason;
    let mut last_packet = Instant::now();
    let mut draining = false;
    loop {
        let quiet_end = draining.then(|| last_packet + EXIT_QUIET);
        let deadline = match (core.poll_timeout(), quiet_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map_or(next_state, |d| d.min(next_state));
        let wake = tokio::select! {
            r = rx.read_batch(512, |rec| {
                let now = Instant::now();
                packets += 1;
                let authed = rec.packet.len() >= wire::HEADER_LEN
                    && Packet::new_unchecked(rec.packet).flags() & flags::AUTH != 0;
                let (bytes, ts) = if key.is_none() && !authed {
                    (rec.packet, 0)
                } else {
                    match auth::open_with(key.as_ref(), rec.packet, &mut opened) {
                        Ok((n, ts)) => (&opened[..n], ts),
                        Err(e) => {
                            auth_rejected += 1;
                            if auth_rejected.is_power_of_two() {
                                tracing::warn!(src = %rec.src, error = %e, count = auth_rejected, "packet refused");
                            }
                            return;
                        }
                    }
                };
                match Repr::parse_crc_checked(bytes) {
                    Ok(repr) => {
                        if key.is_some()
                            && matches!(repr.message, Message::Offer(_))
                            && !auth::fresh(ts, auth::now_ms())
                        {
                            // A captured offer played again later: not a new file.
                            stale_offers += 1;
                            tracing::warn!(src = %rec.src, transfer_id = repr.transfer_id, "stale offer refused (replay, or clocks apart)");
                            return;
                        }
                        core.handle_packet(rec.src, Some(rec.dst), &repr, now, &mut storage);
                        // Acks go out as the core asks for them, not once per batch: a batch
                        // can hold a whole window, and one ack for all of it, if lost, would
                        // leave the sender waiting for its probe timer.
                        send_acks(&mut core, now, &mut buf, key.as_ref(), &ack_sock, &mut send_errors);
                    }
                    // Header, lengths and CRC were fine (the kernel checked); the body is not.
                    Err(_) => unparsable += 1,
                }
            }) => Wake::Packets(r),
            _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            _ = tokio::signal::ctrl_c() => Wake::Stop("interrupt"),
            _ = sigterm.recv() => Wake::Stop("terminate"),
        };
        let now = Instant::now();
        match wake {
            Wake::Packets(r) => {
                // The socket path can wake for a batch of junk only: that is not a sender.
                if r.context("reading the receive path")? > 0 {
                    last_packet = now;
                }
            }
            Wake::Timer => {
                if draining && now >= last_packet + EXIT_QUIET {
                    stop_reason = "done";
                    break;
                }
                core.handle_timeout(now, &mut storage)
            }
            Wake::Stop(why) => {
                stop_reason = why;
                break;
            }
        }
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now, &mut storage);
        }
        send_acks(
            &mut core,
            now,
            &mut buf,
            key.as_ref(),
            &ack_sock,
            &mut send_errors,
        );
        while let Some(ev) = core.poll_event() {
            if report(&ev, args.json) {
                ended += 1;
                // Show the outcome in `chunk stats` at once.
                next_state = now;
            }
        }
        if args.exit_after.is_some_and(|n| ended >= n) {
            draining = true;
        }
        if now >= next_state {
            next_state = now + STATE_EVERY;
            let stats = core.stats();
            state_file.write(&json!({
                "pid": std::process::id(), "started_unix_ms": started_ms,
                "updated_unix_ms": auth::now_ms(), "out": args.out.display().to_string(),
                "receive_path": rx.describe(), "limits": limits,
                "transfers_open": core.open_transfers(), "receiver": stats,
                "packets": packets, "unparsable": unparsable, "auth_rejected": auth_rejected,
                "stale_offers": stale_offers, "ack_send_errors": send_errors,
            }));
        }
    }
    // Open transfers keep their partial files and progress for a resume.
    core.close_all(&mut storage);
    while let Some(ev) = core.poll_event() {
        report(&ev, args.json);
    }
    let counters = rx.counters()?;
    let stats = core.stats();
    if args.json {
        println!(
            "{}",
            json!({"event": "exit", "reason": stop_reason, "counters": counters.to_json(),
                "transfers_finished": stats.transfers_finished, "chunks_written": stats.chunks_written,
                "duplicates": stats.duplicates, "unknown_transfer": stats.unknown_transfer,
                "packets": packets, "unparsable": unparsable,
                "auth_rejected": auth_rejected, "stale_offers": stale_offers,
                "bad_records": rx.bad_records(), "ack_send_errors": send_errors})
        );
    } else {
        println!("stopped ({stop_reason}); receive-path counters:\n{counters}");
        if key.is_some() || auth_rejected > 0 {
            println!("refused by authentication: {auth_rejected}; stale offers: {stale_offers}");
        }
    }
    if unparsable > 0 {
        // The kernel checks the header, lengths and CRC, not message bodies (an offer whose
        // fields disagree, say): those are dropped here.
        tracing::warn!(
            count = unparsable,
            "packets with a malformed message body were dropped"
        );
    }
    if rx.bad_records() > 0 {
        bail!(
            "{} ring-buffer records were inconsistent: a bug, please report it",
            rx.bad_records()
        );
    }
    Ok(())
}

/// Logs an event (and prints it as JSON); returns whether it ended a transfer.
/// Sends every packet the core has ready (acks, completions, aborts), sealed when a key is set.
fn send_acks(
    core: &mut Receiver<FsStorage>,
    now: Instant,
    buf: &mut [u8],
    key: Option<&Key>,
    sock: &RawSocket,
    send_errors: &mut u64,
) {
    while let Some(Transmit { dst, src, len }) = core.poll_transmit(now, buf) {
        let mut n = len;
        if let Some(key) = key {
            n = key
                .seal(buf, n, auth::now_ms())
                .expect("the buffer has room for the trailer");
        }
        if let Err(e) = sock.send_from_to(&buf[..n], src, dst) {
            *send_errors += 1;
            if send_errors.is_power_of_two() {
                tracing::warn!(%dst, error = %e, count = *send_errors, "cannot send to the sender");
            }
        }
    }
}

fn report(ev: &Event, as_json: bool) -> bool {
    let (line, ended) = match ev {
        Event::Started {
            src,
            transfer_id,
            name,
            size,
            chunk_count,
            resumed_chunks,
        } => {
            tracing::info!(%src, transfer_id, name, size, chunk_count, resumed_chunks, "transfer started");
            (
                json!({"event": "started", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "size": size, "chunks": chunk_count, "resumed_chunks": resumed_chunks}),
                false,
            )
        }
        Event::Finished {
            src,
            transfer_id,
            name,
            size,
            duration,
            verified,
            chunks_received,
            duplicates,
            out_of_order,
            resumed_chunks,
        } => {
            let secs = duration.as_secs_f64();
            let goodput = *size as f64 / secs.max(1e-9) / 1e6;
            if *verified {
                tracing::info!(%src, transfer_id, name, size, seconds = format!("{secs:.3}"),
                    goodput_mb_s = format!("{goodput:.1}"), chunks_received, duplicates,
                    out_of_order, resumed_chunks, "transfer finished, hash verified");
            } else {
                tracing::warn!(%src, transfer_id, name, size, "transfer finished but the hash differs; file removed");
            }
            (
                json!({"event": "finished", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "size": size, "seconds": secs, "goodput_mb_s": goodput,
                    "verified": verified, "chunks_received": chunks_received,
                    "duplicates": duplicates, "out_of_order": out_of_order,
                    "resumed_chunks": resumed_chunks}),
                true,
            )
        }
        Event::Refused {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::warn!(%src, transfer_id, name, reason = reason.as_str(), message, "offer refused");
            (
                json!({"event": "refused", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "reason": reason.as_str(), "message": message}),
                true,
            )
        }
        Event::Failed {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::warn!(%src, transfer_id, name, reason = reason.as_str(), message, "transfer failed");
            (
                json!({"event": "failed", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "reason": reason.as_str(), "message": message}),
                true,
            )
        }
        Event::Cancelled {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::info!(%src, transfer_id, name, reason = reason.as_str(), message, "transfer cancelled by the sender");
            (
                json!({"event": "cancelled", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "reason": reason.as_str(), "message": message}),
                true,
            )
        }
        Event::Superseded {
            src,
            old_transfer_id,
            transfer_id,
            name,
        } => {
            tracing::info!(%src, old_transfer_id, transfer_id, name, "sender restarted the transfer");
            (
                json!({"event": "superseded", "src": src.to_string(), "old_transfer_id": old_transfer_id,
                    "transfer_id": transfer_id, "name": name}),
                false,
            )
        }
        Event::Idle {
            src,
            transfer_id,
            name,
            chunks_have,
            chunk_count,
        } => {
            tracing::info!(%src, transfer_id, name, chunks_have, chunk_count, "transfer idle, closed (progress kept)");
            (
                json!({"event": "idle", "src": src.to_string(), "transfer_id": transfer_id,
                    "name": name, "chunks_have": chunks_have, "chunks": chunk_count}),
                false,
            )
        }
    };
    if as_json {
        println!("{line}");
    }
    ended
}
