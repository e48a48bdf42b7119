//! `cargo xtask bench`: chunk against TCP (`nc`) and UFTP on the same file, the same veth links
//! and the same loss, in one run.
//!
//! Three namespaces in a line (sender — router — receiver, `chunk_tests::Routed`) and a fourth,
//! the junk sender, also behind the router. The router drops a share of every forwarded IPv4
//! packet, each direction, with nftables, so every tool sees the same loss, and counts what it
//! forwards (the junk flood's rate, UFTP's data packets). Rounds alternate tools and cases (a
//! slow minute of the machine then hits every tool alike; the tools' order rotates each round)
//! and each figure is the median of the rounds. Every received file's BLAKE3 is checked. Each
//! process runs under `/usr/bin/time`, which gives its CPU seconds and peak RSS; `/proc/stat`
//! gives the whole machine's CPU, which also holds the kernel's receive work that veth does in
//! softirq context on whichever CPU is at hand. Results go to `target/bench/` as markdown, JSON
//! and a PNG chart; docs/PERFORMANCE.md says how to read them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::{Daemon, Netns, Routed, wait_for_line};

use crate::demo::{generate, hash_file};
use serde_json::{Value, json};

const TOOLS: [&str; 4] = ["chunk-xdp", "chunk-socket", "nc", "uftp"];
const CASES: [&str; 4] = ["clean", "loss1", "loss5", "flood"];

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Size of the file every tool sends, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Rounds; each figure is the median over them (veth on 2 cores is noisy: 5 by default).
    #[arg(long, default_value_t = 5)]
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
    /// MTU of every link, for every tool (native XDP on veth works up to 3400).
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Also receive a 64 MiB and a 4 GiB file with chunk and compare the receiver's peak RSS.
    #[arg(long)]
    rss_check: bool,
    /// Where the --rss-check files live (default: target/bench/work, on disk; /dev/shm for tmpfs).
    #[arg(long)]
    rss_dir: Option<PathBuf>,
    /// Give up on one transfer after this many seconds (it is then reported as failed).
    #[arg(long, default_value_t = 240)]
    timeout_s: u64,
    /// Stop starting new runs after this many minutes (what ran is reported).
    #[arg(long, default_value_t = 25)]
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
    /// User + system + interrupt CPU of the whole machine (both cores) during the transfer.
    machine_cpu: f64,
    send_rss_kib: u64,
    recv_rss_kib: u64,
    retransmissions: Option<u64>,
    /// Junk packets the router forwarded to the receiver, per second of the transfer.
    junk_pps: Option<f64>,
    /// Junk packets chunk's receive path counted and dropped (its own counters).
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
            "machine_cpu_s": self.machine_cpu,
            "send_rss_kib": self.send_rss_kib, "recv_rss_kib": self.recv_rss_kib,
            "retransmissions": self.retransmissions, "junk_pps": self.junk_pps,
            "junk_dropped": self.junk_dropped,
        })
    }
}

/// `/usr/bin/time`'s figures for one process: user + system CPU, peak RSS.
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

/// Busy CPU seconds of the whole machine since boot (all cores), from `/proc/stat`.
fn machine_busy() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

/// The benchmark's hosts: `chunk_tests::Routed` plus the junk sender behind the router
/// (198.18.3.1, link `veth-j` — `xj`), so that the router can count the flood by interface.
struct Net {
    routed: Routed,
    junk: Netns,
}

impl Net {
    fn new(mtu: u32) -> Result<Net> {
        let routed = Routed::new("bench")?;
        let junk = Netns::new("bench-j")?;
        junk.ip(&[
            "link",
            "add",
            "veth-j",
            "type",
            "veth",
            "peer",
            "name",
            "xj",
            "netns",
            routed.router.name(),
        ])?;
        junk.ip(&["addr", "add", "198.18.3.1/24", "dev", "veth-j"])?;
        routed
            .router
            .ip(&["addr", "add", "198.18.3.254/24", "dev", "xj"])?;
        let m = mtu.to_string();
        for (ns, i) in [
            (&routed.sender, routed.sender_if),
            (&routed.receiver, routed.receiver_if),
            (&junk, "veth-j"),
            (&routed.router, "xs"),
            (&routed.router, "xr"),
            (&routed.router, "xj"),
        ] {
            ns.ip(&["link", "set", i, "mtu", &m, "up"])?;
        }
        junk.ip(&["route", "add", "198.18.0.0/15", "via", "198.18.3.254"])?;
        let net = Net { routed, junk };
        net.nft(
            "count",
            "table ip bench_count {\n  chain forward {\n    \
             type filter hook forward priority -10; policy accept;\n    \
             iifname \"xj\" counter comment \"junk\"\n    \
             iifname \"xs\" meta l4proto udp counter comment \"udp_to_receiver\"\n  }\n}\n",
        )?;
        Ok(net)
    }

    /// Loads an nftables script into the router.
    fn nft(&self, name: &str, script: &str) -> Result<()> {
        let path =
            std::env::temp_dir().join(format!("chunk-bench-{}-{name}.nft", std::process::id()));
        std::fs::write(&path, script)?;
        let r = chunk_tests::run(self.routed.router.command("nft").arg("-f").arg(&path));
        let _ = std::fs::remove_file(&path);
        r.map(|_| ())
    }

    /// Drops `percent` % of every IPv4 packet the router forwards, each way, whatever its
    /// protocol: the same loss for every tool.
    fn set_loss(&self, percent: u32) -> Result<()> {
        let _ = self
            .routed
            .router
            .exec("nft", &["delete", "table", "ip", "bench_loss"]);
        if percent == 0 {
            return Ok(());
        }
        self.nft(
            "loss",
            &format!(
                "table ip bench_loss {{\n  chain forward {{\n    \
                 type filter hook forward priority 0; policy accept;\n    \
                 numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
            ),
        )
    }

    /// The router's counters (before the loss rule): junk packets forwarded, UDP packets from
    /// the sender towards the receiver.
    fn counters(&self) -> (u64, u64) {
        let out = self
            .routed
            .router
            .exec("nft", &["list", "table", "ip", "bench_count"])
            .unwrap_or_default();
        let get = |comment: &str| {
            out.lines()
                .find(|l| l.contains(&format!("comment \"{comment}\"")))
                .and_then(|l| {
                    l.split_whitespace()
                        .skip_while(|w| *w != "packets")
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                })
                .unwrap_or(0)
        };
        (get("junk"), get("udp_to_receiver"))
    }
}

/// What the router and the machine had counted when a transfer started.
struct Mark {
    at: Instant,
    junk: u64,
    udp: u64,
    busy: f64,
}

struct Bench<'a> {
    args: &'a BenchArgs,
    bin: String,
    /// Whether this `chunk recv` has `--mode socket` (else that tool is reported as n/a).
    socket_mode: bool,
    net: Net,
    work: PathBuf,
    file: PathBuf,
    hash: [u8; 32],
}

const PORT: &str = "5001";

/// Sends SIGTERM to the children of `pid` (the program `/usr/bin/time` runs), so that time
/// itself lives to write its figures.
fn term_children(pid: u32) {
    let _ = Command::new("pkill")
        .args(["-TERM", "-P", &pid.to_string()])
        .status();
}

impl Bench<'_> {
    fn size(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn mark(&self) -> Mark {
        let (junk, udp) = self.net.counters();
        Mark {
            at: Instant::now(),
            junk,
            udp,
            busy: machine_busy(),
        }
    }

    /// Ends a transfer's clock; returns the UDP packets the sender sent meanwhile.
    fn stop(&self, run: &mut Run, mark: &Mark) -> u64 {
        run.seconds = mark.at.elapsed().as_secs_f64();
        run.machine_cpu = machine_busy() - mark.busy;
        let (junk, udp) = self.net.counters();
        if run.case == "flood" {
            run.junk_pps = Some(junk.saturating_sub(mark.junk) as f64 / run.seconds.max(1e-9));
        }
        udp.saturating_sub(mark.udp)
    }

    /// A junk flood from the junk sender: corrupt chunks and foreign packets (chunk's IP
    /// protocol, another magic) of full size, as fast as `chunk probe` sends, until dropped.
    fn flood(&self) -> Result<Daemon> {
        let mut c = self.net.junk.command(&self.bin);
        c.args([
            "probe",
            "--to",
            &self.net.routed.receiver_addr.to_string(),
            "--count",
            "0",
            "--corrupt",
            "2000000000",
            "--foreign",
            "2000000000",
            "--size",
            &(self.args.mtu - 40).to_string(),
        ]);
        let d = Daemon::spawn(c, "junk flood")?;
        // Let it reach its full rate before the transfer starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(d)
    }

    fn run(&self, tool: &str, case: &str, round: u32) -> Run {
        let mut run = Run {
            tool: tool.into(),
            case: case.into(),
            round,
            ..Run::default()
        };
        if tool == "chunk-socket" && !self.socket_mode {
            run.error = Some("n/a: this chunk recv has no --mode socket".into());
            return run;
        }
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
        let net = &self.net.routed;
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let mut rc = timed(&net.receiver, &rt, &self.bin);
        rc.args([
            "recv",
            "--iface",
            net.receiver_if,
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
        let mut sc = timed(&net.sender, &st, &self.bin);
        sc.args([
            "send",
            "--json",
            "--quiet",
            "--to",
            &net.receiver_addr.to_string(),
            "--timeout",
            "60",
        ])
        .arg(&self.file);
        let mark = self.mark();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // chunk send exits only once the receiver confirmed the file's hash.
        self.stop(run, &mark);
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
            .routed
            .sender
            .exec("nstat", &["-asz", "TcpRetransSegs"])
            .ok()?;
        out.lines()
            .find(|l| l.starts_with("TcpRetransSegs"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    fn nc(&self, out_dir: &Path, run: &mut Run) -> Result<()> {
        let net = &self.net.routed;
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let name = self.file.file_name().expect("a file name");
        let dest = out_dir.join(name);
        let mut rc = timed(&net.receiver, &rt, "sh");
        rc.arg("-c")
            .arg(format!("exec nc -l {PORT} > '{}'", dest.display()));
        let receiver = Daemon::spawn(rc, "nc -l")?;
        wait_listening(&net.receiver, PORT)?;
        let before = self.tcp_retransmissions();
        let mut sc = timed(&net.sender, &st, "sh");
        sc.arg("-c").arg(format!(
            "exec nc -N {} {PORT} < '{}'",
            net.receiver_addr,
            self.file.display()
        ));
        let mark = self.mark();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // The receiver has everything when its nc sees the end of the stream and exits.
        let status = receiver.wait(Duration::from_secs(self.args.timeout_s))?;
        self.stop(run, &mark);
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

    /// UFTP's block (payload) size: what fits one packet of the MTU after IPv4 (20), UDP (8)
    /// and UFTP's own headers (at most 72 with no encryption), rounded down to 100.
    fn uftp_block(&self) -> u32 {
        (self.args.mtu.saturating_sub(100) / 100 * 100).clamp(500, 8800)
    }

    fn uftp(&self, out_dir: &Path, run: &mut Run) -> Result<()> {
        let net = &self.net.routed;
        let (rt, st) = (self.work.join("recv.time"), self.work.join("send.time"));
        let mut rc = timed(&net.receiver, &rt, "uftpd");
        rc.args(["-d", "-x", "0", "-D"]).arg(out_dir);
        let receiver = Daemon::spawn(rc, "uftpd")?;
        wait_listening(&net.receiver, "1044")?;
        let block = self.uftp_block();
        let mut sc = timed(&net.sender, &st, "uftp");
        sc.args([
            "-M",
            &net.receiver_addr.to_string(),
            "-R",
            "-1",
            "-Y",
            "none",
            "-x",
            "0",
            "-b",
            &block.to_string(),
        ])
        .arg(&self.file);
        let mark = self.mark();
        let out = output_within(sc, Duration::from_secs(self.args.timeout_s))?;
        // uftp returns once the client has confirmed the file.
        let udp = self.stop(run, &mark);
        // UFTP does not count its retransmissions: take the data packets the router saw
        // beyond the file's blocks (a handful of them are UFTP's announcements and status).
        run.retransmissions = Some(udp.saturating_sub(self.size().div_ceil(u64::from(block))));
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
            bail!("timeout after {} s", limit.as_secs())
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
    /// Every run was skipped because the tool is missing (chunk-socket before `--mode socket`).
    na: bool,
    goodput: Option<f64>,
    goodput_min: Option<f64>,
    goodput_max: Option<f64>,
    send_cpu_per_gib: Option<f64>,
    recv_cpu_per_gib: Option<f64>,
    machine_cpu_per_gib: Option<f64>,
    send_rss_mib: Option<f64>,
    recv_rss_mib: Option<f64>,
    retransmissions: Option<f64>,
    junk_kpps: Option<f64>,
    errors: Vec<String>,
}

impl Summary {
    fn to_json(&self, case: &str, tool: &str) -> Value {
        json!({
            "case": case, "tool": tool, "ok": self.ok, "runs": self.runs, "na": self.na,
            "goodput_mb_s": self.goodput, "goodput_min": self.goodput_min,
            "goodput_max": self.goodput_max,
            "send_cpu_s_per_gib": self.send_cpu_per_gib,
            "recv_cpu_s_per_gib": self.recv_cpu_per_gib,
            "machine_cpu_s_per_gib": self.machine_cpu_per_gib,
            "send_rss_mib": self.send_rss_mib, "recv_rss_mib": self.recv_rss_mib,
            "retransmissions": self.retransmissions, "junk_kpps": self.junk_kpps,
            "errors": self.errors,
        })
    }
}

type Sums = BTreeMap<(String, String), Summary>;

fn summarize(runs: &[Run], size: u64) -> Sums {
    let mut out = Sums::new();
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
        let goodputs = ok.iter().map(|r| r.goodput(size));
        out.insert(
            k,
            Summary {
                ok: ok.len(),
                runs: rs.len(),
                na: rs
                    .iter()
                    .all(|r| r.error.as_deref().is_some_and(|e| e.starts_with("n/a"))),
                goodput: m(&|r| r.goodput(size)),
                goodput_min: goodputs.clone().reduce(f64::min),
                goodput_max: goodputs.reduce(f64::max),
                send_cpu_per_gib: m(&|r| r.send_cpu / gib),
                recv_cpu_per_gib: m(&|r| r.recv_cpu / gib),
                machine_cpu_per_gib: m(&|r| r.machine_cpu / gib),
                send_rss_mib: m(&|r| r.send_rss_kib as f64 / 1024.0),
                recv_rss_mib: m(&|r| r.recv_rss_kib as f64 / 1024.0),
                retransmissions: median(
                    ok.iter()
                        .filter_map(|r| r.retransmissions.map(|n| n as f64))
                        .collect(),
                ),
                junk_kpps: median(
                    ok.iter()
                        .filter_map(|r| r.junk_pps.map(|p| p / 1e3))
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

/// Goodput median of one tool in one case.
fn goodput(sums: &Sums, case: &str, tool: &str) -> Option<f64> {
    sums.get(&(case.to_string(), tool.to_string()))
        .and_then(|s| s.goodput)
}

/// The receiver's peak RSS with chunk for a small and a large file.
#[derive(Clone, Debug)]
struct RssRow {
    tool: String,
    mib: u64,
    goodput: Option<f64>,
    recv_rss_mib: Option<f64>,
    error: Option<String>,
}

/// One ratio the issue asks for: what it compares, its value, the goal (if it has one).
struct Ratio {
    name: String,
    value: Option<f64>,
    goal: &'static str,
    met: Option<bool>,
}

fn ratios(sums: &Sums, rss: &[RssRow]) -> Vec<Ratio> {
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let at_least = |name: &str, value: Option<f64>, goal: f64, text: &'static str| Ratio {
        name: name.into(),
        value,
        goal: text,
        met: value.map(|v| v >= goal),
    };
    let report = |name: &str, value: Option<f64>| Ratio {
        name: name.into(),
        value,
        goal: "report",
        met: None,
    };
    let g = |case, tool| goodput(sums, case, tool);
    let mut v = vec![
        at_least(
            "clean: chunk-xdp / nc goodput",
            div(g("clean", "chunk-xdp"), g("clean", "nc")),
            1.0,
            "≥ 1.0",
        ),
        report(
            "clean: chunk-socket / nc goodput",
            div(g("clean", "chunk-socket"), g("clean", "nc")),
        ),
        at_least(
            "5 % loss: chunk-xdp / nc goodput",
            div(g("loss5", "chunk-xdp"), g("loss5", "nc")),
            1.0,
            "≥ 1.0",
        ),
        at_least(
            "5 % loss: chunk-xdp / uftp goodput",
            div(g("loss5", "chunk-xdp"), g("loss5", "uftp")),
            3.0,
            "≥ 3.0",
        ),
        at_least(
            "flood: chunk-xdp goodput / its clean goodput",
            div(g("flood", "chunk-xdp"), g("clean", "chunk-xdp")),
            0.8,
            "≥ 0.8",
        ),
        report(
            "flood: chunk-socket goodput / its clean goodput",
            div(g("flood", "chunk-socket"), g("clean", "chunk-socket")),
        ),
    ];
    for tool in ["chunk-xdp", "chunk-socket"] {
        let rss_of = |mib| {
            rss.iter()
                .find(|r| r.tool == tool && r.mib == mib)
                .and_then(|r| r.recv_rss_mib)
        };
        if rss.iter().any(|r| r.tool == tool) {
            let value = div(rss_of(4096), rss_of(64));
            v.push(Ratio {
                name: format!("{tool}: receiver peak RSS, 4 GiB / 64 MiB file"),
                value,
                goal: "≤ 1.1",
                met: value.map(|x| x <= 1.1),
            });
        }
    }
    v
}

fn markdown(args: &BenchArgs, sums: &Sums, rss: &[RssRow]) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{} MiB file, MTU {}, median of {} rounds. Goodput = file size / time until the file \
         is complete at the receiver (chunk and UFTP: until the sender has the receiver's \
         confirmation; chunk's includes hashing the file on both sides), range = slowest and \
         fastest round. CPU s/GiB: user + system of each process (`/usr/bin/time`); machine = \
         both cores' busy time during the transfer (kernel receive work, router, flood \
         included). Retransmissions: chunk's own count of chunks sent again; TCP's \
         TcpRetransSegs; UFTP: UDP packets beyond the file's blocks, counted at the router. \
         Junk: packets per second the router forwarded from the junk sender.\n\n",
        args.size_mib, args.mtu, args.rounds
    ));
    o.push_str(
        "| case | tool | goodput MB/s | range | sender CPU s/GiB | receiver CPU s/GiB \
         | machine CPU s/GiB | sender RSS MiB | receiver RSS MiB | retransmissions \
         | junk kpps | ok |\n",
    );
    o.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for case in &args.cases {
        for tool in &args.tools {
            let Some(s) = sums.get(&(case.clone(), tool.clone())) else {
                continue;
            };
            if s.na {
                o.push_str(&format!(
                    "| {case} | {tool} | n/a | | | | | | | | | 0/{} |\n",
                    s.runs
                ));
                continue;
            }
            let range = match (s.goodput_min, s.goodput_max) {
                (Some(a), Some(b)) => format!("{a:.0}–{b:.0}"),
                _ => "–".into(),
            };
            o.push_str(&format!(
                "| {case} | {tool} | {} | {range} | {} | {} | {} | {} | {} | {} | {} | {}/{} |\n",
                fmt(s.goodput, 1),
                fmt(s.send_cpu_per_gib, 2),
                fmt(s.recv_cpu_per_gib, 2),
                fmt(s.machine_cpu_per_gib, 2),
                fmt(s.send_rss_mib, 1),
                fmt(s.recv_rss_mib, 1),
                fmt(s.retransmissions, 0),
                fmt(s.junk_kpps, 0),
                s.ok,
                s.runs
            ));
        }
    }
    o.push_str("\n| ratio (same run) | measured | goal | met |\n|---|---:|---:|---|\n");
    for r in ratios(sums, rss) {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        o.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            r.name,
            fmt(r.value, 2),
            r.goal
        ));
    }
    if !rss.is_empty() {
        o.push_str(&format!(
            "\nReceiver peak RSS against file size (clean link, one round, MTU {}):\n\n\
             | tool | file | goodput MB/s | receiver peak RSS MiB |\n|---|---|---:|---:|\n",
            args.mtu
        ));
        for r in rss {
            let file = if r.mib >= 1024 {
                format!("{} GiB", r.mib / 1024)
            } else {
                format!("{} MiB", r.mib)
            };
            match &r.error {
                None => o.push_str(&format!(
                    "| {} | {file} | {} | {} |\n",
                    r.tool,
                    fmt(r.goodput, 1),
                    fmt(r.recv_rss_mib, 1)
                )),
                Some(e) => o.push_str(&format!("| {} | {file} | failed: {e} | |\n", r.tool)),
            }
        }
    }
    let errors: Vec<String> = sums
        .iter()
        .filter(|(_, s)| !s.na)
        .flat_map(|((c, t), s)| s.errors.iter().map(move |e| format!("- {c}/{t}: {e}")))
        .collect();
    if !errors.is_empty() {
        o.push_str("\nFailed runs:\n\n");
        o.push_str(&errors.join("\n"));
        o.push('\n');
    }
    o
}

fn chart(path: &Path, args: &BenchArgs, sums: &Sums) -> Result<()> {
    use plotters::{
        prelude::*,
        style::text_anchor::{HPos, Pos, VPos},
    };
    // The font is compiled in (the `dejavu` crate): no system fonts needed.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("cannot load the chart font"))?;
    let cases: Vec<&String> = args.cases.iter().collect();
    let tools: Vec<&String> = args.tools.iter().collect();
    let top = sums
        .values()
        .filter_map(|s| s.goodput_max)
        .fold(10.0f64, f64::max)
        * 1.12;
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(940);
    let n = cases.len() as f64;
    let case_label = |x: &f64| {
        let i = (x - 0.5).round();
        if (x - 0.5 - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        match cases.get(i as usize).map(|c| c.as_str()) {
            Some("clean") => "clean".into(),
            Some("loss1") => "1 % loss each way".into(),
            Some("loss5") => "5 % loss each way".into(),
            Some("flood") => "junk flood".into(),
            Some(other) => other.into(),
            None => String::new(),
        }
    };
    let mut ch = ChartBuilder::on(&plot)
        .caption(
            format!(
                "goodput, {} MiB file over veth through a router, MTU {}, median of {} (whiskers: range)",
                args.size_mib, args.mtu, args.rounds
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * cases.len() + 1)
        .x_label_formatter(&case_label)
        .y_desc("MB/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let value_style = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let w = 0.8 / tools.len() as f64;
    for (ti, tool) in tools.iter().enumerate() {
        let color = colors[ti % colors.len()];
        let of = |case: &String| sums.get(&(case.clone(), (*tool).clone()));
        let x0 = |ci: usize| ci as f64 + 0.1 + ti as f64 * w;
        let mid = |ci: usize| x0(ci) + w * 0.45;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let g = of(case)?.goodput?;
            Some(Rectangle::new(
                [(x0(ci), 0.0), (x0(ci) + w * 0.9, g)],
                color.filled(),
            ))
        }))?;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let s = of(case)?;
            let (lo, hi) = (s.goodput_min?, s.goodput_max?);
            (hi > lo).then(|| PathElement::new(vec![(mid(ci), lo), (mid(ci), hi)], BLACK))
        }))?;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let s = of(case)?;
            let (text, y) = if s.na {
                ("n/a".to_string(), 0.0)
            } else {
                (format!("{:.0}", s.goodput?), s.goodput_max?)
            };
            Some(Text::new(
                text,
                (mid(ci), y + top * 0.01),
                value_style.clone(),
            ))
        }))?;
    }
    // The legend beside the plot, so that no bar hides behind it.
    for (ti, tool) in tools.iter().enumerate() {
        let y = 60 + ti as i32 * 26;
        legend.draw(&Rectangle::new(
            [(8, y), (24, y + 16)],
            colors[ti % colors.len()].filled(),
        ))?;
        legend.draw(&Text::new(
            tool.to_string(),
            (32, y + 1),
            ("sans-serif", 15).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Receiver peak RSS for a small and a large chunk transfer: bounded memory means the same.
fn rss_check(bin: &str, socket_mode: bool, dir: &Path, args: &BenchArgs) -> Vec<RssRow> {
    let mut rows = Vec::new();
    let tools: Vec<&str> = ["chunk-xdp", "chunk-socket"]
        .into_iter()
        .filter(|t| *t == "chunk-xdp" || socket_mode)
        .collect();
    for mib in [64u64, 4096] {
        let row = |tool: &str, e: String| RssRow {
            tool: tool.into(),
            mib,
            goodput: None,
            recv_rss_mib: None,
            error: Some(e),
        };
        let _ = std::fs::remove_dir_all(dir);
        let file = dir.join("rss.bin");
        eprintln!(
            "bench: rss check, generating {mib} MiB in {}",
            dir.display()
        );
        let hash = match std::fs::create_dir_all(dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| generate(&file, mib << 20))
        {
            Ok(h) => h,
            Err(e) => {
                rows.extend(tools.iter().map(|t| row(t, format!("{e:#}"))));
                continue;
            }
        };
        let net = match Net::new(args.mtu) {
            Ok(n) => n,
            Err(e) => {
                rows.extend(tools.iter().map(|t| row(t, format!("{e:#}"))));
                continue;
            }
        };
        let b = Bench {
            args,
            bin: bin.into(),
            socket_mode,
            net,
            work: dir.to_path_buf(),
            file: file.clone(),
            hash,
        };
        for tool in &tools {
            let r = b.run(tool, "clean", 0);
            eprintln!(
                "bench: rss check {tool} {mib} MiB: {:.1} MB/s, receiver peak RSS {} KiB{}",
                r.goodput(mib << 20),
                r.recv_rss_kib,
                r.error
                    .as_deref()
                    .map(|e| format!(", FAILED: {e}"))
                    .unwrap_or_default()
            );
            rows.push(RssRow {
                tool: tool.to_string(),
                mib,
                goodput: r.error.is_none().then(|| r.goodput(mib << 20)),
                recv_rss_mib: r.error.is_none().then(|| r.recv_rss_kib as f64 / 1024.0),
                error: r.error,
            });
        }
        drop(b);
        let _ = std::fs::remove_dir_all(dir);
    }
    rows
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this chunk binary's `recv` accepts `--mode socket`.
fn has_socket_mode(bin: &str) -> bool {
    Command::new(bin)
        .args(["recv", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("socket"))
}

pub fn run(bin: &Path, args: &BenchArgs) -> Result<()> {
    if !chunk_tests::is_root() {
        bail!("the benchmark creates network namespaces and attaches XDP: run it as root");
    }
    crate::setup::apt_install(&["uftp", "netcat-openbsd", "time"])?;
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("bench: removed stale namespaces: {}", removed.join(", "));
    }
    for t in &args.tools {
        if !TOOLS.contains(&t.as_str()) {
            bail!("unknown tool {t:?} (known: {})", TOOLS.join(", "));
        }
    }
    for c in &args.cases {
        if !CASES.contains(&c.as_str()) {
            bail!("unknown case {c:?} (known: {})", CASES.join(", "));
        }
    }
    if !(576..=9000).contains(&args.mtu) {
        bail!("--mtu {} is outside 576..=9000", args.mtu);
    }
    let bin = bin.to_str().context("binary path")?.to_string();
    let socket_mode = has_socket_mode(&bin);
    if !socket_mode {
        eprintln!("bench: this chunk recv has no --mode socket: chunk-socket is reported n/a");
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
    let bench = Bench {
        args,
        bin: bin.clone(),
        socket_mode,
        net: Net::new(args.mtu)?,
        work: work.clone(),
        file,
        hash,
    };
    // Another busy process would slow some runs: the load before and after tells.
    let load_before = loadavg();
    let started = Instant::now();
    let deadline = Duration::from_secs(args.max_minutes * 60);
    let mut runs = Vec::new();
    'rounds: for round in 0..args.rounds {
        for case in &args.cases {
            let loss = match case.as_str() {
                "loss1" => 1,
                "loss5" => 5,
                _ => 0,
            };
            bench.net.set_loss(loss)?;
            // Rotate the tools' order each round: no tool always runs first after a change.
            let n = args.tools.len();
            for i in 0..n {
                let tool = &args.tools[(i + round as usize) % n];
                if started.elapsed() > deadline {
                    eprintln!(
                        "bench: time is up ({} min); reporting what ran",
                        args.max_minutes
                    );
                    break 'rounds;
                }
                let r = bench.run(tool, case, round);
                match &r.error {
                    None => eprintln!(
                        "bench: round {round} {case:<5} {tool:<12} {:>7.1} MB/s  cpu send {:.2} s recv {:.2} s machine {:.2} s  rss recv {} KiB  retx {:?}  junk {:?} pps, {:?} dropped by chunk",
                        r.goodput(size),
                        r.send_cpu,
                        r.recv_cpu,
                        r.machine_cpu,
                        r.recv_rss_kib,
                        r.retransmissions,
                        r.junk_pps.map(|p| p.round()),
                        r.junk_dropped
                    ),
                    Some(e) => eprintln!("bench: round {round} {case:<5} {tool:<12} FAILED: {e}"),
                }
                runs.push(r);
            }
        }
    }
    bench.net.set_loss(0)?;
    drop(bench);
    let rss = if args.rss_check {
        let dir = args
            .rss_dir
            .clone()
            .unwrap_or_else(|| out.join("work"))
            .join(format!("rss-{}", std::process::id()));
        rss_check(&bin, socket_mode, &dir, args)
    } else {
        Vec::new()
    };
    let sums = summarize(&runs, size);
    let load_after = loadavg();
    let mut md = markdown(args, &sums, &rss);
    md.push_str(&format!(
        "\nRan in {:.1} min; load average before {load_before}, after {load_after} \
         (other work on the machine skews every figure).\n",
        started.elapsed().as_secs_f64() / 60.0
    ));
    println!("{md}");
    std::fs::write(out.join("results.md"), &md)?;
    let json = json!({
        "size_mib": args.size_mib, "mtu": args.mtu, "rounds": args.rounds,
        "cases": args.cases, "tools": args.tools,
        "seconds": started.elapsed().as_secs_f64(),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "summary": sums.iter().map(|((c, t), s)| s.to_json(c, t)).collect::<Vec<_>>(),
        "ratios": ratios(&sums, &rss).into_iter().map(|r| json!({
            "ratio": r.name, "measured": r.value, "goal": r.goal, "met": r.met,
        })).collect::<Vec<_>>(),
        "rss_check": rss.iter().map(|r| json!({
            "tool": r.tool, "file_mib": r.mib, "goodput_mb_s": r.goodput,
            "recv_rss_mib": r.recv_rss_mib, "error": r.error,
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(|r| r.to_json(size)).collect::<Vec<_>>(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            size_mib: 64,
            rounds: 3,
            cases: CASES.iter().map(|c| c.to_string()).collect(),
            tools: TOOLS.iter().map(|t| t.to_string()).collect(),
            mtu: 1500,
            rss_check: false,
            rss_dir: None,
            timeout_s: 1,
            max_minutes: 1,
        }
    }

    /// Made-up runs: three rounds of every tool in every case, chunk-socket missing.
    fn runs() -> Vec<Run> {
        let mut v = Vec::new();
        for (ci, case) in CASES.iter().enumerate() {
            for (ti, tool) in TOOLS.iter().enumerate() {
                for round in 0..3 {
                    v.push(Run {
                        tool: tool.to_string(),
                        case: case.to_string(),
                        round,
                        error: (*tool == "chunk-socket").then(|| "n/a: test".to_string()),
                        seconds: 0.2 + 0.1 * (ci + ti) as f64 + 0.01 * round as f64,
                        send_cpu: 0.1,
                        recv_cpu: 0.2,
                        machine_cpu: 0.3,
                        send_rss_kib: 1024,
                        recv_rss_kib: 2048,
                        retransmissions: Some(round as u64),
                        junk_pps: (*case == "flood").then_some(4e5),
                        junk_dropped: None,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn summaries_take_medians_and_mark_missing_tools() {
        let sums = summarize(&runs(), 64 << 20);
        let s = &sums[&("clean".to_string(), "chunk-xdp".to_string())];
        assert_eq!((s.ok, s.runs), (3, 3));
        let median = (64u64 << 20) as f64 / 0.21 / 1e6;
        assert!((s.goodput.unwrap() - median).abs() < 1e-9);
        assert!(s.goodput_min.unwrap() < median && median < s.goodput_max.unwrap());
        assert_eq!(s.retransmissions, Some(1.0));
        assert!(sums[&("clean".to_string(), "chunk-socket".to_string())].na);
        let md = markdown(&args(), &sums, &[]);
        assert!(md.contains("| clean | chunk-socket | n/a |"), "{md}");
        assert!(
            md.contains("| 5 % loss: chunk-xdp / uftp goodput |"),
            "{md}"
        );
    }

    #[test]
    fn the_chart_draws_with_the_built_in_font() {
        let sums = summarize(&runs(), 64 << 20);
        let dir = crate::workspace_root().join("target/bench-test");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("goodput.png");
        chart(&path, &args(), &sums).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
