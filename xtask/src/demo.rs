//! `cargo xtask demo`: the main job, end to end, in two namespaces this command creates and
//! always removes.
//!
//! Until `chunk send`/`chunk recv` land, the demo proves the kernel path: it attaches the XDP
//! program in the receiver namespace, sends valid and deliberately corrupted chunk packets from
//! the sender namespace through a raw socket, and checks that the kernel delivered every valid
//! one to userspace and dropped every corrupt one.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use chunk_tests::{Daemon, TwoHosts, wait_for_line};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Valid chunk packets to send.
    #[arg(long, default_value_t = 100_000)]
    count: u32,
    /// Corrupt chunk packets to send along with them.
    #[arg(long, default_value_t = 10_000)]
    corrupt: u32,
}

pub fn run(bin: &Path, args: &DemoArgs) -> Result<()> {
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("demo: removed stale namespaces: {}", removed.join(", "));
    }
    let hosts = TwoHosts::new("demo", 1500)?;
    eprintln!(
        "demo: namespaces {} ({}) and {} ({}) joined by a veth pair",
        hosts.sender.name(),
        hosts.sender_addr,
        hosts.receiver.name(),
        hosts.receiver_addr
    );
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let mut cmd = hosts.receiver.command(bin);
    cmd.args(["listen", "--iface", hosts.receiver_if, "--json"]);
    let mut listener = Daemon::spawn(cmd, "chunk listen")?;
    let (line, lines) = wait_for_line(
        listener.stdout().context("listener stdout")?,
        Duration::from_secs(20),
        |l| l.starts_with("attached"),
    )?;
    eprintln!("demo: receiver {line}");

    let started = std::time::Instant::now();
    let out = hosts.sender.exec(
        bin,
        &[
            "probe",
            "--to",
            &hosts.receiver_addr.to_string(),
            "--count",
            &args.count.to_string(),
            "--corrupt",
            &args.corrupt.to_string(),
        ],
    )?;
    let elapsed = started.elapsed();
    eprintln!("demo: sender {}", out.trim());
    std::thread::sleep(Duration::from_millis(300));
    listener.signal(libc::SIGTERM);
    let summary = lines
        .recv_timeout(Duration::from_secs(10))
        .context("the listener printed no summary")?;
    let status = listener.wait(Duration::from_secs(10))?;
    if !status.success() {
        bail!("chunk listen exited with {status}");
    }
    let v: serde_json::Value = serde_json::from_str(&summary)
        .with_context(|| format!("listener summary is not JSON: {summary}"))?;
    let c = &v["counters"];
    println!(
        "kernel counters (receiver, XDP {} mode):",
        v["mode"].as_str().unwrap_or("?")
    );
    if let Some(map) = c.as_object() {
        for (k, n) in map {
            println!("  {k:<12} {n:>10}");
        }
    }
    println!(
        "userspace received {} chunk packets; sender took {:.2} s ({:.0} packets/s)",
        v["received"],
        elapsed.as_secs_f64(),
        (args.count + args.corrupt) as f64 / elapsed.as_secs_f64()
    );
    let accepted = c["accepted"].as_u64().unwrap_or(0);
    let bad_crc = c["bad_crc"].as_u64().unwrap_or(0);
    let ring_full = c["ring_full"].as_u64().unwrap_or(0);
    let received = v["received"].as_u64().unwrap_or(0);
    if accepted + ring_full != args.count as u64 || bad_crc != args.corrupt as u64 {
        bail!(
            "demo FAILED: expected {} valid and {} corrupt, kernel counted {accepted} accepted \
             (+{ring_full} ring full) and {bad_crc} bad CRC",
            args.count,
            args.corrupt
        );
    }
    if received != accepted {
        bail!("demo FAILED: kernel accepted {accepted} but userspace received {received}");
    }
    println!("demo OK: every valid chunk reached userspace, every corrupt one died in the kernel");
    Ok(())
}
