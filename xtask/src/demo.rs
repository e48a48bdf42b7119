//! `cargo xtask demo`: the main job, end to end, in two namespaces this command creates and
//! always removes: `chunk recv` with XDP in one, `chunk send` of a generated file from the other
//! (with a burst of corrupt chunk packets alongside, for the kernel to drop), then the received
//! file's hash is compared with the original's and the kernel's counters are shown.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use chunk_tests::{ReadyRecv, TwoHosts, spawn_recv};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Size of the generated file, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Corrupt chunk packets to send while the file travels.
    #[arg(long, default_value_t = 10_000)]
    corrupt: u32,
}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `size` pseudo-random bytes to `path` and returns their BLAKE3 (also used by the bench).
pub(crate) fn generate(path: &Path, size: u64) -> Result<[u8; 32]> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut x: u64 = 0x243F_6A88_85A3_08D3;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(*hasher.finalize().as_bytes())
}

pub(crate) fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(*hasher.finalize().as_bytes())
}

pub fn run(bin: &Path, args: &DemoArgs) -> Result<()> {
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("demo: removed stale namespaces: {}", removed.join(", "));
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("chunk-demo-{}", std::process::id())));
    let src_dir = scratch.0.join("send");
    let out_dir = scratch.0.join("recv");
    std::fs::create_dir_all(&src_dir)?;
    let file = src_dir.join("demo.bin");
    let size = args.size_mib << 20;
    eprintln!(
        "demo: generating {} MiB in {}",
        args.size_mib,
        file.display()
    );
    let want = generate(&file, size)?;

    let hosts = TwoHosts::new("demo", 1500)?;
    eprintln!(
        "demo: namespaces {} ({}) and {} ({}) joined by a veth pair",
        hosts.sender.name(),
        hosts.sender_addr,
        hosts.receiver.name(),
        hosts.receiver_addr
    );
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let ReadyRecv {
        daemon: receiver,
        ready: line,
        lines,
    } = spawn_recv(
        hosts.receiver.command(bin),
        hosts.receiver_if,
        &out_dir,
        &["--exit-after", "1"],
    )?;
    eprintln!("demo: receiver {line}");

    let to = hosts.receiver_addr.to_string();
    let mut probe = hosts.sender.command(bin);
    probe.args(["probe", "--to", &to, "--count", "0", "--corrupt"]);
    probe.arg(args.corrupt.to_string());
    let mut send = hosts.sender.command(bin);
    send.args(["send", "--json", "--to", &to]).arg(&file);
    eprintln!("demo: sending {} with chunk send", file.display());
    let (send_out, probe_out) = std::thread::scope(|s| {
        let p = s.spawn(|| probe.output());
        (send.output(), p.join().expect("probe thread"))
    });
    let send_out = send_out.context("running chunk send")?;
    let probe_out = probe_out.context("running chunk probe")?;
    if !send_out.status.success() {
        bail!(
            "demo FAILED: chunk send: {}",
            String::from_utf8_lossy(&send_out.stderr).trim()
        );
    }
    if !probe_out.status.success() {
        bail!(
            "demo FAILED: chunk probe: {}",
            String::from_utf8_lossy(&probe_out.stderr).trim()
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&send_out.stdout).context("chunk send printed no JSON summary")?;

    let mut exit = None;
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(20)) {
        let v: serde_json::Value =
            serde_json::from_str(&l).with_context(|| format!("receiver line is not JSON: {l}"))?;
        if v["event"] == "exit" {
            exit = Some(v);
            break;
        }
    }
    let exit = exit.context("the receiver did not finish")?;
    let status = receiver.wait(Duration::from_secs(10))?;
    if !status.success() {
        bail!("chunk recv exited with {status}");
    }
    drop(hosts);

    let got = hash_file(&out_dir.join("demo.bin")).context("the received file")?;
    let f = &report["files"][0];
    println!(
        "sent {} MiB in {:.2} s: {:.1} MB/s goodput, {} of {} chunks retransmitted",
        args.size_mib,
        f["seconds"].as_f64().unwrap_or(0.0),
        f["goodput_mb_s"].as_f64().unwrap_or(0.0),
        f["retransmitted"],
        f["chunks"]
    );
    println!("kernel counters on the receiver (XDP):");
    if let Some(map) = exit["counters"].as_object() {
        for (k, n) in map {
            println!("  {k:<12} {n:>10}");
        }
    }
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    println!("BLAKE3 sent     {}", hex(&want));
    println!("BLAKE3 received {}", hex(&got));
    if got != want {
        bail!("demo FAILED: the received file differs from the one sent");
    }
    let bad_checksum = exit["counters"]["bad_checksum"].as_u64().unwrap_or(0);
    let ring_full = exit["counters"]["ring_full"].as_u64().unwrap_or(0);
    if exit["unknown_transfer"] != 0 || bad_checksum + ring_full < args.corrupt as u64 {
        bail!(
            "demo FAILED: {} corrupt packets sent, the kernel counted {bad_checksum} bad checksum: {exit}",
            args.corrupt
        );
    }
    println!(
        "demo OK: the file arrived intact and verified; {bad_checksum} corrupt packets died in the kernel"
    );
    Ok(())
}
