//! `cargo xtask bench`: chunk against TCP (`nc`) and UFTP on the same file, the same veth links
//! and the same loss, in one run.
//!
//! Three namespaces in a line (sender — router — receiver, `chunk_tests::Routed`); the router
//! drops a share of every forwarded IPv4 packet, each direction, with nftables, so every tool
//! sees the same loss. Rounds alternate tools and cases (a slow minute of the machine then hits
//! every tool alike) and each figure is the median of the rounds. Every received file's BLAKE3
//! is checked. Each process runs under `/usr/bin/time`, which gives its CPU seconds and peak
//! RSS. Results go to `target/bench/` as markdown, JSON and a PNG chart.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::{Daemon, Netns, Routed, wait_for_line};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Size of the file every tool sends, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Rounds; each figure is the median over them.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Cases: clean, loss1, loss5 (percent lost each way), flood (junk packets at full rate
    /// from a second sender during the transfer).
    #[arg(long, value_delimiter = ',', default_value = "clean,loss1,loss5,flood")]
    cases: Vec<String>,
    /// Tools: chunk-xdp, chunk-socket, nc, uftp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chunk-xdp,chunk-socket,nc,uftp"
    )]
    tools: Vec<String>,
    /// MTU of every link (native XDP on veth works up to 3400).
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Also receive a 64 MiB and a 4 GiB file with chunk and compare the receiver's peak RSS.
    #[arg(long)]
    rss_check: bool,
    /// Give up on one transfer after this many seconds.
    #[arg(long, default_value_t = 240)]
    timeout_s: u64,
    /// Stop starting new runs after this many minutes (what ran is reported).
    #[arg(long, default_value_t = 45)]
    max_minutes: u64,
}

/// One transfer's figures.
#[derive(Clone, Debug, Default)]
struct Run {
    tool: String,
    case: String,
    round: u32,
    error: Option<String>,
    seconds: f64,
    send_cpu: f64,
    recv_cpu: f64,
    send_rss_kib: u64,
    recv_rss_kib: u64,
    retransmissions: Option<u64>,
    /// Junk packets the receive path dropped (chunk: its counters), in the flood case.
    junk_dropped: Option<u64>,
}

impl Run {
    fn goodput(&self, size: u64) -> f64 {
        size as f64 / self.seconds.max(1e-9) / 1e6
    }

    fn to_json(&self, size: u64) -> Value {
        json!({
            "tool": self.tool, "case": self.case, "round": self.round, "ok": self.error.is_none(),
            "error": self.error, "seconds": self.seconds,
            "goodput_mb_s": if self.error.is_none() { Some(self.goodput(size)) } else { None },
            "send_cpu_s": self.send_cpu, "recv_cpu_s": self.recv_cpu,
            "send_rss_kib": self.send_rss_kib, "recv_rss_kib": self.recv_rss_kib,
            "retransmissions": self.retransmissions, "junk_dropped": self.junk_dropped,
        })
    }
}

/// `/usr/bin/time`'s figures for one process: wall, user + system CPU, peak RSS.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu: f64,
    rss_kib: u64,
}

fn read_usage(path: &Path) -> Usage {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // GNU time may print "Command exited with non-zero status N" first: take the last line.
    let f: Vec<&str> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Usage {
        cpu: num(0) + num(1),
        rss_kib: num(2) as u64,
    }
}

/// `ip netns exec NS /usr/bin/time -f ... -o OUT PROGRAM`.
fn timed(ns: &Netns, out: &Path, program: &str) -> Command {
    let mut c = ns.command("/usr/bin/time");
    c.args(["-f", "%U %S %M", "-o"]).arg(out).arg(program);
    c
}

struct Bench<'a> {
    args: &'a BenchArgs,
    bin: String,
    net: Routed,
    work: PathBuf,
    file: PathBuf,
    hash: [u8; 32],
}

const PORT: &str = "5001";

fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(*h.finalize().as_bytes())
}

/// Sends SIGTERM to the children of `pid` (the program `/usr/bin/time` runs), so that time
/// itself lives to write its figures.
fn term_children(pid: u32) {
    let _ = Command::new("pkill")
        .args(["-TERM", "-P", &pid.to_string()])
        .status();
}

impl Bench<'_> {
    fn set_loss(&self, percent: u32) -> Result<()> {
        let _ = self
            .net
            .router
            .exec("nft", &["delete", "table", "ip", "bench_loss"]);
        if percent == 0 {
            return Ok(());
        }
        let rule = format!(
            "table ip bench_loss {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
        );
        let path = self.work.join("loss.nft");
        std::fs::write(&path, rule)?;
        chunk_tests::run(self.net.router.command("nft").arg("-f").arg(&path))?;
        Ok(())
    }

    /// A junk flood from the sender's namespace: corrupt chunks and foreign packets of chunk's
    /// protocol, as fast as it can, until dropped.
    fn flood(&self) -> Result<Daemon> {
        let mut c = self.net.sender.command(&self.bin);
        c.args([
            "probe",
            "--to",
            &self.net.receiver_addr.to_string(),
            "--count",
            "0",
            "--corrupt",
            "1500000000",
            "--foreign",
            "1500000000",
            "--size",
            &(self.args.mtu - 40 - 20).to_string(),
        ]);
        Daemon::spawn(c, "junk flood")
    }

    fn run(&self, tool: &str, case: &str, round: u32) -> Run {
        let mut run = Run {
            tool: tool.into(),
            case: case.into(),
            round,
            ..Run::default()
        };
        let out_dir = self.work.join("recv");
        let _ = std::fs::remove_dir_all(&out_dir);
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            run.error = Some(e.to_string());
            return run;
        }
        let flood = if case == "flood" {
            match self.flood() {
                Ok(d) => Some(d),
                Err(e) => {
                    run.error = Some(format!("flood: {e:#}"));
                    return run;
                }
            }
        } else {
            None
        };
        let result = match tool {
            "chunk-xdp" => self.chunk(&out_dir, false, &mut run),
            "chunk-socket" => self.chunk(&out_dir, true, &mut run),
            "nc" => self.nc(&out_dir, &mut run),
            "uftp" => self.uftp(&out_dir, &mut run),
            other => Err(anyhow::anyhow!("unknown tool {other}")),
        };
        drop(flood);
        let result = result.and_then(|()| {
            let name = self.file.file_name().expect("a file name");
            let got = hash_file(&out_dir.join(name)).context("the received file")?;
            if got != self.hash {
                bail!("the received file differs from the one sent");
            }
            Ok(())
        });
        if let Err(e) = result {
            run.error = Some(format!("{e:#}"));
        }
        let _ = std::fs::remove_dir_all(&out_dir);
        run
    }

    fn chunk(&self, out_dir: &Path, socket: bool, run: &mut Run) -> Result<()> {
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let mut rc = timed(&self.net.receiver, &rt, &self.bin);
        rc.args([
            "recv",
            "--iface",
            self.net.receiver_if,
            "--json",
            "--exit-after",
            "1",
        ])
        .arg("--out")
        .arg(out_dir);
        if socket {
            rc.args(["--mode", "socket"]);
        }
        let mut receiver = Daemon::spawn(rc, "chunk recv")?;
        let (_, lines) = wait_for_line(
            receiver.stdout().context("receiver stdout")?,
            Duration::from_secs(30),
            |l| l.contains("\"ready\""),
        )?;
        let mut sc = timed(&self.net.sender, &st, &self.bin);
        sc.args([
            "send",
            "--json",
            "--quiet",
            "--to",
            &self.net.receiver_addr.to_string(),
            "--timeout",
            "60",
        ])
        .arg(&self.file);
        let start = Instant::now();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // chunk send exits only once the receiver confirmed the file's hash.
        run.seconds = start.elapsed().as_secs_f64();
        let status = receiver.wait(Duration::from_secs(20))?;
        let (r, s) = (read_usage(&rt), read_usage(&st));
        (run.recv_cpu, run.recv_rss_kib) = (r.cpu, r.rss_kib);
        (run.send_cpu, run.send_rss_kib) = (s.cpu, s.rss_kib);
        if !out.status.success() {
            bail!(
                "chunk send failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !status.success() {
            bail!("chunk recv exited with {status}");
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("chunk send's JSON")?;
        run.retransmissions = v["files"][0]["retransmitted"].as_u64();
        if let Some(exit) = lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v["event"] == "exit")
        {
            let c = &exit["counters"];
            run.junk_dropped = Some(
                ["bad_crc", "bad_magic", "ring_full"]
                    .iter()
                    .map(|k| c[k].as_u64().unwrap_or(0))
                    .sum(),
            );
        }
        Ok(())
    }

    fn tcp_retransmissions(&self) -> Option<u64> {
        let out = self
            .net
            .sender
            .exec("nstat", &["-asz", "TcpRetransSegs"])
            .ok()?;
        out.lines()
            .find(|l| l.starts_with("TcpRetransSegs"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    fn nc(&self, out_dir: &Path, run: &mut Run) -> Result<()> {
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let name = self.file.file_name().expect("a file name");
        let dest = out_dir.join(name);
        let mut rc = timed(&self.net.receiver, &rt, "sh");
        rc.arg("-c")
            .arg(format!("exec nc -l {PORT} > '{}'", dest.display()));
        let receiver = Daemon::spawn(rc, "nc -l")?;
        wait_listening(&self.net.receiver, PORT)?;
        let before = self.tcp_retransmissions();
        let mut sc = timed(&self.net.sender, &st, "sh");
        sc.arg("-c").arg(format!(
            "exec nc -N {} {PORT} < '{}'",
            self.net.receiver_addr,
            self.file.display()
        ));
        let start = Instant::now();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // The receiver has everything when its nc sees the end of the stream and exits.
        let status = receiver.wait(Duration::from_secs(self.args.timeout_s))?;
        run.seconds = start.elapsed().as_secs_f64();
        let (r, s) = (read_usage(&rt), read_usage(&st));
        (run.recv_cpu, run.recv_rss_kib) = (r.cpu, r.rss_kib);
        (run.send_cpu, run.send_rss_kib) = (s.cpu, s.rss_kib);
        run.retransmissions = match (before, self.tcp_retransmissions()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        if !out.status.success() || !status.success() {
            bail!(
                "nc failed: sender {}, receiver {status}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn uftp(&self, out_dir: &Path, run: &mut Run) -> Result<()> {
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let mut rc = timed(&self.net.receiver, &rt, "uftpd");
        rc.args(["-d", "-x", "0", "-D"]).arg(out_dir);
        let receiver = Daemon::spawn(rc, "uftpd")?;
        wait_listening(&self.net.receiver, "1044")?;
        let block = (self.args.mtu - 200).to_string();
        let mut sc = timed(&self.net.sender, &st, "uftp");
        sc.args([
            "-M",
            &self.net.receiver_addr.to_string(),
            "-R",
            "-1",
            "-Y",
            "none",
            "-x",
            "0",
            "-b",
            &block,
        ])
        .arg(&self.file);
        let start = Instant::now();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // uftp returns once the client has confirmed the file.
        run.seconds = start.elapsed().as_secs_f64();
        term_children(receiver.id());
        let _ = receiver.wait(Duration::from_secs(10));
        let (r, s) = (read_usage(&rt), read_usage(&st));
        (run.recv_cpu, run.recv_rss_kib) = (r.cpu, r.rss_kib);
        (run.send_cpu, run.send_rss_kib) = (s.cpu, s.rss_kib);
        if !out.status.success() {
            bail!(
                "uftp failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Waits until something listens on `port` (TCP or UDP) in `ns`.
fn wait_listening(ns: &Netns, port: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns.exec("ss", &["-lntuH"]).unwrap_or_default();
        if out
            .split_whitespace()
            .any(|w| w.ends_with(&format!(":{port}")))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port}")
}

/// Runs `cmd` to completion, killing it after `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            term_children(pid);
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("timed out after {} s", limit.as_secs())
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The medians of one tool in one case.
#[derive(Clone, Debug, Default)]
struct Summary {
    ok: usize,
    runs: usize,
    goodput: Option<f64>,
    send_cpu_per_gib: Option<f64>,
    recv_cpu_per_gib: Option<f64>,
    send_rss_mib: Option<f64>,
    recv_rss_mib: Option<f64>,
    retransmissions: Option<f64>,
    errors: Vec<String>,
}

fn summarize(runs: &[Run], size: u64) -> BTreeMap<(String, String), Summary> {
    let mut out: BTreeMap<(String, String), Summary> = BTreeMap::new();
    let gib = size as f64 / (1u64 << 30) as f64;
    let mut groups: BTreeMap<(String, String), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.case.clone(), r.tool.clone()))
            .or_default()
            .push(r);
    }
    for (k, rs) in groups {
        let ok: Vec<&&Run> = rs.iter().filter(|r| r.error.is_none()).collect();
        let m = |f: &dyn Fn(&Run) -> f64| median(ok.iter().map(|r| f(r)).collect());
        out.insert(
            k,
            Summary {
                ok: ok.len(),
                runs: rs.len(),
                goodput: m(&|r| r.goodput(size)),
                send_cpu_per_gib: m(&|r| r.send_cpu / gib),
                recv_cpu_per_gib: m(&|r| r.recv_cpu / gib),
                send_rss_mib: m(&|r| r.send_rss_kib as f64 / 1024.0),
                recv_rss_mib: m(&|r| r.recv_rss_kib as f64 / 1024.0),
                retransmissions: median(
                    ok.iter()
                        .filter_map(|r| r.retransmissions.map(|n| n as f64))
                        .collect(),
                ),
                errors: rs.iter().filter_map(|r| r.error.clone()).collect(),
            },
        );
    }
    out
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.prec$}"))
}

/// `a / b` of two medians, when both exist.
fn ratio(
    sums: &BTreeMap<(String, String), Summary>,
    a: (&str, &str),
    b: (&str, &str),
) -> Option<f64> {
    let get = |(case, tool): (&str, &str)| {
        sums.get(&(case.to_string(), tool.to_string()))
            .and_then(|s| s.goodput)
    };
    Some(get(a)? / get(b)?)
}

fn ratios(sums: &BTreeMap<(String, String), Summary>) -> Vec<(String, Option<f64>, f64)> {
    vec![
        (
            "clean: chunk-xdp / nc".into(),
            ratio(sums, ("clean", "chunk-xdp"), ("clean", "nc")),
            1.0,
        ),
        (
            "5 % loss: chunk-xdp / nc".into(),
            ratio(sums, ("loss5", "chunk-xdp"), ("loss5", "nc")),
            1.0,
        ),
        (
            "5 % loss: chunk-xdp / uftp".into(),
            ratio(sums, ("loss5", "chunk-xdp"), ("loss5", "uftp")),
            3.0,
        ),
        (
            "flood: chunk-xdp / its clean goodput".into(),
            ratio(sums, ("flood", "chunk-xdp"), ("clean", "chunk-xdp")),
            0.8,
        ),
        (
            "flood: chunk-socket / its clean goodput".into(),
            ratio(sums, ("flood", "chunk-socket"), ("clean", "chunk-socket")),
            0.0,
        ),
    ]
}

fn markdown(args: &BenchArgs, sums: &BTreeMap<(String, String), Summary>, extra: &str) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{} MiB file, MTU {}, median of {} rounds; goodput = file size / time until the file \
         is complete at the receiver (for chunk and UFTP: until the sender has the receiver's \
         confirmation).\n\n",
        args.size_mib, args.mtu, args.rounds
    ));
    o.push_str("| case | tool | goodput MB/s | sender CPU s/GiB | receiver CPU s/GiB | sender RSS MiB | receiver RSS MiB | retransmissions | ok |\n");
    o.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for ((case, tool), s) in sums {
        o.push_str(&format!(
            "| {case} | {tool} | {} | {} | {} | {} | {} | {} | {}/{} |\n",
            fmt(s.goodput, 1),
            fmt(s.send_cpu_per_gib, 2),
            fmt(s.recv_cpu_per_gib, 2),
            fmt(s.send_rss_mib, 1),
            fmt(s.recv_rss_mib, 1),
            fmt(s.retransmissions, 0),
            s.ok,
            s.runs
        ));
    }
    o.push_str("\n| ratio | measured | goal |\n|---|---:|---:|\n");
    for (name, r, goal) in ratios(sums) {
        let goal = if goal > 0.0 {
            format!("≥ {goal:.1}")
        } else {
            "report".into()
        };
        o.push_str(&format!("| {name} | {} | {goal} |\n", fmt(r, 2)));
    }
    let errors: Vec<String> = sums
        .iter()
        .flat_map(|((c, t), s)| s.errors.iter().map(move |e| format!("- {c}/{t}: {e}")))
        .collect();
    if !errors.is_empty() {
        o.push_str("\nFailed runs:\n");
        o.push_str(&errors.join("\n"));
        o.push('\n');
    }
    o.push_str(extra);
    o
}

fn chart(path: &Path, args: &BenchArgs, sums: &BTreeMap<(String, String), Summary>) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("DejaVu Sans (Debian package fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load the chart font"))?;
    let cases: Vec<&String> = args.cases.iter().collect();
    let tools: Vec<&String> = args.tools.iter().collect();
    let top = sums
        .values()
        .filter_map(|s| s.goodput)
        .fold(10.0f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = cases.len() as f64;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            format!(
                "goodput, {} MiB over veth, MTU {}, median of {}",
                args.size_mib, args.mtu, args.rounds
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("MB/s")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let w = 0.8 / tools.len() as f64;
    for (ti, tool) in tools.iter().enumerate() {
        let color = colors[ti % colors.len()];
        let bars = cases.iter().enumerate().filter_map(|(ci, case)| {
            let g = sums.get(&((*case).clone(), (*tool).clone()))?.goodput?;
            let x0 = ci as f64 + 0.1 + ti as f64 * w;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + w * 0.95, g)],
                color.filled(),
            ))
        });
        ch.draw_series(bars)?
            .label(tool.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (ci, case) in cases.iter().enumerate() {
        ch.draw_series(std::iter::once(Text::new(
            case.to_string(),
            (ci as f64 + 0.4, top * 0.02),
            ("sans-serif", 16),
        )))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn generate(path: &Path, size: u64) -> Result<[u8; 32]> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
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
        h.update(&block[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(*h.finalize().as_bytes())
}

fn make_net(mtu: u32) -> Result<Routed> {
    let net = Routed::new("bench")?;
    let m = mtu.to_string();
    net.sender.ip(&["link", "set", net.sender_if, "mtu", &m])?;
    net.receiver
        .ip(&["link", "set", net.receiver_if, "mtu", &m])?;
    for i in ["xs", "xr"] {
        net.router.ip(&["link", "set", i, "mtu", &m])?;
    }
    Ok(net)
}

/// Receiver peak RSS for a small and a large chunk transfer: bounded memory means the same.
fn rss_check(bin: &str, work: &Path, mtu: u32) -> Result<String> {
    let mut rows = String::from(
        "\nReceiver peak RSS against file size (chunk, XDP, clean link, file on disk):\n\n\
         | file | goodput MB/s | receiver peak RSS MiB |\n|---|---:|---:|\n",
    );
    for (label, mib) in [("64 MiB", 64u64), ("4 GiB", 4096)] {
        let dir = work.join("rss");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("rss.bin");
        eprintln!("bench: rss check, generating {label}");
        let hash = generate(&file, mib << 20)?;
        let args = BenchArgs {
            size_mib: mib,
            rounds: 1,
            cases: vec![],
            tools: vec![],
            mtu,
            rss_check: false,
            timeout_s: 600,
            max_minutes: 0,
        };
        let b = Bench {
            args: &args,
            bin: bin.into(),
            net: make_net(mtu)?,
            work: dir.clone(),
            file: file.clone(),
            hash,
        };
        let r = b.run("chunk-xdp", "clean", 0);
        if let Some(e) = &r.error {
            bail!("rss check {label}: {e}");
        }
        rows.push_str(&format!(
            "| {label} | {:.1} | {:.1} |\n",
            r.goodput(mib << 20),
            r.recv_rss_kib as f64 / 1024.0
        ));
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(rows)
}

pub fn run(bin: &Path, args: &BenchArgs) -> Result<()> {
    crate::setup::apt_install(&["uftp", "netcat-openbsd", "fonts-dejavu-core", "time"])?;
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("bench: removed stale namespaces: {}", removed.join(", "));
    }
    for t in &args.tools {
        if !["chunk-xdp", "chunk-socket", "nc", "uftp"].contains(&t.as_str()) {
            bail!("unknown tool {t:?}");
        }
    }
    for c in &args.cases {
        if !["clean", "loss1", "loss5", "flood"].contains(&c.as_str()) {
            bail!("unknown case {c:?}");
        }
    }
    let out = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    // Files live in memory, so that no tool waits for the disk.
    let work = PathBuf::from(format!("/dev/shm/chunk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(work.clone());
    let file = work.join("bench.bin");
    let size = args.size_mib << 20;
    eprintln!("bench: generating {} MiB", args.size_mib);
    let hash = generate(&file, size)?;
    let bin = bin.to_str().context("binary path")?.to_string();
    let bench = Bench {
        args,
        bin: bin.clone(),
        net: make_net(args.mtu)?,
        work: work.clone(),
        file,
        hash,
    };
    let started = Instant::now();
    let mut runs = Vec::new();
    'rounds: for round in 0..args.rounds {
        for case in &args.cases {
            let loss = match case.as_str() {
                "loss1" => 1,
                "loss5" => 5,
                _ => 0,
            };
            bench.set_loss(loss)?;
            for tool in &args.tools {
                if started.elapsed() > Duration::from_secs(args.max_minutes * 60) {
                    eprintln!(
                        "bench: time is up ({} min); reporting what ran",
                        args.max_minutes
                    );
                    break 'rounds;
                }
                let r = bench.run(tool, case, round);
                match &r.error {
                    None => eprintln!(
                        "bench: round {round} {case:<5} {tool:<12} {:>7.1} MB/s  cpu send {:.2} s recv {:.2} s  rss recv {} KiB  retx {:?}  junk dropped {:?}",
                        r.goodput(size),
                        r.send_cpu,
                        r.recv_cpu,
                        r.recv_rss_kib,
                        r.retransmissions,
                        r.junk_dropped
                    ),
                    Some(e) => eprintln!("bench: round {round} {case:<5} {tool:<12} FAILED: {e}"),
                }
                runs.push(r);
            }
        }
    }
    bench.set_loss(0)?;
    drop(bench);
    let extra = if args.rss_check {
        rss_check(
            &bin,
            &crate::workspace_root().join("target/bench/work"),
            args.mtu,
        )?
    } else {
        String::new()
    };
    let sums = summarize(&runs, size);
    let md = markdown(args, &sums, &extra);
    println!("{md}");
    std::fs::write(out.join("results.md"), &md)?;
    let json = json!({
        "size_mib": args.size_mib, "mtu": args.mtu, "rounds": args.rounds,
        "runs": runs.iter().map(|r| r.to_json(size)).collect::<Vec<_>>(),
        "ratios": ratios(&sums).into_iter().map(|(n, r, g)| json!({"ratio": n, "measured": r, "goal": g})).collect::<Vec<_>>(),
        "rss_check": extra,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    if let Err(e) = chart(&out.join("goodput.png"), args, &sums) {
        eprintln!("bench: no chart: {e:#}");
    }
    eprintln!(
        "bench: wrote {}/results.md, results.json, goodput.png",
        out.display()
    );
    Ok(())
}
