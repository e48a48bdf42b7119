//! `chunk listen`: attach the receive path, take valid chunk packets, print the counters.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chunk_common::wire::Repr;

use crate::{
    driver::wait::{self, Stop},
    net::rx::{RxArgs, RxSource, StatePublisher},
    report::StateFile,
};

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
    let stop = Stop::install().context("installing signal handlers")?;
    let mut rx = RxSource::open(&args.rx)?;
    println!("attached iface={} mode={}", rx.iface(), rx.mode());
    let publisher = StatePublisher::new(rx.iface());
    let started = crate::auth::now_ms();
    let write_state = |rx: &RxSource| {
        publisher.write(&StateFile {
            pid: std::process::id(),
            started_unix_ms: started,
            receive_path: rx.describe(),
            receiver: None,
        })
    };
    write_state(&rx);
    if args.stall_ms > 0 {
        std::thread::sleep(Duration::from_millis(args.stall_ms));
    }
    let end = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut next_state = Instant::now() + Duration::from_secs(1);
    let mut received = 0u64;
    let mut unparsable = 0u64;
    while stop.requested().is_none() {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        if now >= next_state {
            next_state = now + Duration::from_secs(1);
            write_state(&rx);
        }
        let deadline = end.map_or(next_state, |e| e.min(next_state));
        wait::until(&rx.fds(), Some(deadline)).context("waiting for packets")?;
        rx.read_batch(256, |rec| {
            received += 1;
            let parsed = Repr::parse_checksum_already_checked(rec.packet);
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
        })
        .context("reading the receive path")?;
    }
    let counters = rx.counters()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"counters": counters, "received": received,
                "unparsable": unparsable, "mode": rx.mode()})
        );
    } else {
        println!("received {received} chunk packets ({unparsable} unparsable)\n{counters}");
    }
    Ok(())
}
