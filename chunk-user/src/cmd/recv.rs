//! `chunk recv --iface IF --out DIR`: arguments → [`RecvConfig`] → the receive driver → events
//! printed (JSON lines with `--json`, log lines otherwise).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    auth::Psk,
    crypto::{AuthorizedKeys, Credentials, SecretKey, session::ResponderConfig},
    driver::{
        recv::{self, RecvConfig},
        wait::Stop,
    },
    net::rx::{RxArgs, RxSource},
    proto::ReceiverConfig,
    report::{Limits, RecvEvent},
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
    #[arg(long, default_value_t = 64)]
    pub max_transfers: usize,
    /// Refuse offers beyond this many transfers at once from one source address.
    #[arg(long, default_value_t = 16)]
    pub max_per_source: usize,
    /// Replace existing files (otherwise an offer for an existing name is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Make the symbolic links senders send (only links whose targets stay inside --out;
    /// without it links are refused and the sender skips them).
    #[arg(long)]
    pub links: bool,
    /// Memory one transfer's record of received chunks may take, in KiB (a sender scattering
    /// chunks over a huge file to exhaust memory has them dropped beyond it).
    #[arg(long, default_value_t = 4096)]
    pub max_state_kib: usize,
    /// Close a transfer that is silent this many seconds (its progress is kept for a resume).
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Exit after this many files have ended (finished, refused, failed or cancelled; each
    /// file of a bundle counts), and then 2 s without packets (late senders whose verdict was
    /// lost still get it again).
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// Print events (ready, started, finished, refused, ...) as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// The pre-shared key (the same file as the sender's `--psk-file`): senders must know it,
    /// to open an encrypted session (mixed into the handshake) or to authenticate clear
    /// packets; nothing without it is taken. See docs/SECURITY.md.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// This receiver's private key (`chunk keygen`): senders open encrypted sessions with it,
    /// and pin its public key.
    #[arg(long, value_name = "FILE", requires = "authorized_keys")]
    pub key: Option<PathBuf>,
    /// The senders admitted with `--key`: their public keys, one `chunk-x25519 …` line each
    /// (with a comment). Any other sender key is refused with a reason it prints.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub authorized_keys: Option<PathBuf>,
    /// Refuse clear (unencrypted) offers, with a reason the sender prints. With `--key` this is
    /// the default (else a sender whose key is refused could send in clear): see
    /// `--allow-clear`.
    #[arg(long)]
    pub require_encryption: bool,
    /// With `--key`, take clear offers too (from anyone, or with `--psk-file` from anyone who
    /// holds the pre-shared key), besides encrypted ones from the authorized keys.
    #[arg(long, requires = "key", conflicts_with = "require_encryption")]
    pub allow_clear: bool,
}

/// Raises the soft limit on open files toward the hard one (at most 8 192), as Go's runtime does
/// at every start: systemd and most distributions give a process 1 024, and a receiver holds a
/// bundle's files open until their verdict ([`FsStorage`] sizes its groups by the limit).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(cur) = lim.current {
        let want = lim.maximum.map_or(8192, |max| max.min(8192));
        if want > cur {
            lim.current = Some(want);
            if let Err(e) = setrlimit(Resource::Nofile, lim) {
                tracing::debug!(error = %e, "cannot raise the limit on open files");
            }
        }
    }
}

pub fn run(args: RecvArgs) -> Result<()> {
    match std::fs::metadata(&args.out) {
        Ok(md) if !md.is_dir() => bail!("--out {}: not a directory", args.out.display()),
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    }
    raise_open_file_limit();
    let storage = FsStorage::new(&args.out, args.overwrite)
        .with_context(|| format!("opening {}", args.out.display()))?
        .with_links(args.links);
    let key = match &args.psk_file {
        Some(p) => Some(Psk::from_file(p).context("reading the pre-shared key")?),
        None => None,
    };
    let secret = match &args.key {
        Some(p) => Some(SecretKey::load(p).context("reading the private key")?),
        None => None,
    };
    let authorized = match &args.authorized_keys {
        Some(p) => {
            let keys = AuthorizedKeys::load(p).context("reading the authorized keys")?;
            if keys.is_empty() {
                tracing::warn!(file = %p.display(), "no authorized keys: every sender key will be refused");
            }
            keys
        }
        None => AuthorizedKeys::default(),
    };
    if args.require_encryption && secret.is_none() && key.is_none() {
        bail!(
            "--require-encryption needs keys to encrypt with: --key (and --authorized-keys) or --psk-file"
        );
    }
    let encrypts = secret.is_some() || key.is_some();
    // Key pairs admit senders by key: a clear offer would bypass that.
    let require_encryption = args.require_encryption || (secret.is_some() && !args.allow_clear);
    let responder = encrypts.then(|| ResponderConfig {
        creds: Credentials {
            psk: key.as_ref().map(Psk::noise_key),
            key: secret.clone(),
        },
        authorized,
    });
    if let Some(k) = &secret {
        tracing::info!(key = %k.public(), "encrypted sessions with this receiver key");
    }
    let cfg = RecvConfig {
        core: ReceiverConfig {
            max_size: args.max_size,
            max_transfers: args.max_transfers,
            max_per_source: args.max_per_source,
            // The payload limit counts the seal, or the authentication trailer
            // (docs/PROTOCOL.md): with keys, any chunk fits it sealed.
            max_chunk_size: (args.rx.max_payload as u32)
                .saturating_sub(if encrypts {
                    crate::crypto::transport::OVERHEAD as u32
                } else {
                    0
                })
                .max(1),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout.max(0.1)),
            max_transfer_state: args.max_state_kib.saturating_mul(1024),
            ..ReceiverConfig::default()
        },
        key,
        responder,
        require_encryption,
        protocol: args.rx.protocol,
        udp_port: args.rx.udp,
        exit_after: args.exit_after,
        out: args.out.display().to_string(),
        limits: Limits {
            max_size: args.max_size,
            max_transfers: args.max_transfers,
            max_per_source: args.max_per_source,
            max_state_kib: args.max_state_kib,
            idle_timeout_s: args.idle_timeout,
            max_payload: args.rx.max_payload,
            ring_bytes: args.rx.ring_bytes,
            allow: args.rx.allow.iter().map(|p| p.to_string()).collect(),
            psk: args.psk_file.is_some(),
            encryption: encrypts,
            require_encryption,
            overwrite: args.overwrite,
            udp_port: args.rx.udp,
        },
    };
    let stop = Stop::install().context("installing signal handlers")?;
    let rx = RxSource::open(&args.rx)?;
    let keyed = cfg.key.is_some();
    let exit = recv::run(cfg, rx, storage, &stop, |ev| report(ev, args.json))?;
    if args.json {
        println!("{}", serde_json::to_string(&exit)?);
    } else if let RecvEvent::Exit {
        reason,
        counters,
        intake,
        ..
    } = &exit
    {
        println!("stopped ({reason}); receive-path counters:\n{counters}");
        if keyed || intake.auth_rejected > 0 {
            println!(
                "refused by authentication: {}; stale offers: {}",
                intake.auth_rejected, intake.stale_offers
            );
        }
        let s = &intake.sessions;
        if s.handshakes + s.handshakes_refused + s.seal_failures > 0 {
            println!(
                "encryption: {} sessions opened, {} handshakes refused, {} sealed packets \
                 failed authentication, {} replayed, {} clear packets refused",
                s.handshakes, s.handshakes_refused, s.seal_failures, s.replayed, s.clear_refused
            );
        }
    }
    Ok(())
}

/// Prints an event as a JSON line (`--json`), and logs it.
fn report(ev: &RecvEvent, as_json: bool) {
    if as_json {
        match serde_json::to_string(ev) {
            Ok(line) => println!("{line}"),
            Err(e) => tracing::warn!(error = %e, "cannot print an event"),
        }
    }
    match ev {
        RecvEvent::Ready { iface, mode, out } => {
            if !as_json {
                println!("receiving on {iface} ({mode} mode) into {out}");
            }
            tracing::info!(iface, mode, out, "ready");
        }
        RecvEvent::Started {
            src,
            transfer_id,
            name,
            size,
            chunks,
            resumed_chunks,
            stream: false,
        } => {
            // A small file's start is news only when debugging: its end follows at once (a
            // tree of thousands of files logged twice per file spent 3 % of the receiver on it).
            if *size >= 1 << 20 {
                tracing::info!(%src, transfer_id, name, size, chunk_count = chunks, resumed_chunks, "transfer started")
            } else {
                tracing::debug!(%src, transfer_id, name, size, chunk_count = chunks, resumed_chunks, "transfer started")
            }
        }
        RecvEvent::Started {
            src,
            transfer_id,
            name,
            stream: true,
            ..
        } => tracing::info!(%src, transfer_id, name, "stream started (its size comes at its end)"),
        RecvEvent::Finished {
            src,
            transfer_id,
            name,
            size,
            seconds,
            goodput_mb_s,
            verified,
            chunks_received,
            duplicates,
            out_of_order,
            resumed_chunks,
            bundle,
        } => {
            if let Some(bundle) = bundle {
                // A bundle's file: a line each only when debugging (a tree has thousands).
                tracing::debug!(%src, transfer_id, name, size, bundle, chunks_received, duplicates,
                    out_of_order, resumed_chunks, seconds = format!("{seconds:.3}"),
                    "file of a bundle finished, hash verified");
            } else if *verified {
                tracing::info!(%src, transfer_id, name, size, seconds = format!("{seconds:.3}"),
                    goodput_mb_s = format!("{goodput_mb_s:.1}"), chunks_received, duplicates,
                    out_of_order, resumed_chunks, "transfer finished, hash verified");
            } else {
                tracing::warn!(%src, transfer_id, name, size, "transfer finished but the hash differs; file removed");
            }
        }
        RecvEvent::Refused {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::warn!(%src, transfer_id, name, reason, message, "offer refused")
        }
        RecvEvent::Failed {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::warn!(%src, transfer_id, name, reason, message, "transfer failed")
        }
        RecvEvent::Cancelled {
            src,
            transfer_id,
            name,
            reason,
            message,
        } => {
            tracing::info!(%src, transfer_id, name, reason, message, "transfer cancelled by the sender")
        }
        RecvEvent::Superseded {
            src,
            old_transfer_id,
            transfer_id,
            name,
        } => {
            tracing::info!(%src, old_transfer_id, transfer_id, name, "sender restarted the transfer")
        }
        RecvEvent::Idle {
            src,
            transfer_id,
            name,
            chunks_have,
            chunks,
        } => {
            tracing::info!(%src, transfer_id, name, chunks_have, chunk_count = chunks, "transfer idle, closed (progress kept)")
        }
        RecvEvent::Exit { .. } => {}
    }
}
