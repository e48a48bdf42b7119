//! `chunk listen`: attach the receive path, take valid chunk packets, print the counters.

use std::time::Duration;

use anyhow::Result;
use chunk_common::wire::Repr;

use crate::net::rx::{RxArgs, RxSource, StateFile};

#[derive(clap::Args)]
pub struct ListenArgs {
    #[command(flatten)]
    pub rx: RxArgs,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print each received chunk packet as a JSON line (with its bytes in hex).
    #[arg(long)]
    pub dump: bool,
    /// Print the final counters as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Wait this long after attaching before reading the ring buffer (for tests of a receiver
    /// that falls behind).
    #[arg(long, hide = true, default_value_t = 0)]
    pub stall_ms: u64,
}

pub fn run(args: ListenArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(listen(args))
}

async fn listen(args: ListenArgs) -> Result<()> {
    let mut rx = RxSource::open(&args.rx)?;
    println!("attached iface={} mode={}", rx.iface(), rx.mode());
    let state_file = StateFile::new(rx.iface());
    let started = crate::auth::now_ms();
    let write_state = |rx: &RxSource| {
        state_file.write(&serde_json::json!({"pid": std::process::id(),
            "started_unix_ms": started, "receive_path": rx.describe()}))
    };
    write_state(&rx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    if args.stall_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.stall_ms)).await;
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = async {
        match args.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut received = 0u64;
    let mut unparsable = 0u64;
    loop {
        tokio::select! {
            r = rx.read_batch(256, |rec| {
                received += 1;
                let parsed = Repr::parse_crc_checked(rec.packet);
                if parsed.is_err() {
                    unparsable += 1;
                }
                if args.dump {
                    let (ty, seq, tid) = match &parsed {
                        Ok(r) => (format!("{:?}", r.msg_type()).to_lowercase(), r.seq, r.transfer_id),
                        Err(_) => ("invalid".into(), 0, 0),
                    };
                    let hex: String = rec.packet.iter().map(|b| format!("{b:02x}")).collect();
                    println!(
                        "{}",
                        serde_json::json!({"src": rec.src.to_string(), "dst": rec.dst.to_string(),
                            "type": ty, "transfer_id": tid, "seq": seq, "len": rec.packet.len(), "hex": hex})
                    );
                }
            }) => { r?; }
            _ = tick.tick() => write_state(&rx),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    let counters = rx.counters()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"counters": counters.to_json(), "received": received,
                "unparsable": unparsable, "mode": rx.mode()})
        );
    } else {
        println!("received {received} chunk packets ({unparsable} unparsable)\n{counters}");
    }
    Ok(())
}
