//! What a transfer cost: each process's CPU seconds and peak RSS (it runs under `/usr/bin/time`),
//! the whole machine's busy CPU (`/proc/stat`: it also holds the kernel's receive work, which
//! veth does in softirq context on whichever CPU is at hand), and the clock, the router's
//! counters (packets forwarded each way) and the machine's wakeups between the start and the end
//! of a transfer.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use chunk_tests::Netns;

use super::{Case, run::Run, topology::Net, wakeups::Wakeups};

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
pub fn timed(ns: &Netns, out: &Path, program: &str) -> Command {
    let mut c = ns.command("/usr/bin/time");
    c.args(["-f", "%U %S %M", "-o"]).arg(out).arg(program);
    c
}

/// Where `/usr/bin/time` writes the receiver's and the sender's figures.
pub struct TimeFiles {
    pub recv: PathBuf,
    pub send: PathBuf,
}

impl TimeFiles {
    pub fn in_dir(work: &Path) -> TimeFiles {
        TimeFiles {
            recv: work.join("recv.time"),
            send: work.join("send.time"),
        }
    }

    /// Copies both processes' CPU seconds and peak RSS into `run` (call it once both exited).
    pub fn read_into(&self, run: &mut Run) {
        let (r, s) = (read_usage(&self.recv), read_usage(&self.send));
        (run.recv_cpu, run.recv_rss_kib) = (r.cpu, r.rss_kib);
        (run.send_cpu, run.send_rss_kib) = (s.cpu, s.rss_kib);
    }
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

/// What the router and the machine had counted when a transfer started.
pub struct Mark {
    at: Instant,
    junk: u64,
    udp: u64,
    /// The router's veth counters: packets towards the receiver, towards the sender.
    links: Option<(u64, u64)>,
    busy: f64,
    wakeups: Option<Wakeups>,
}

impl Mark {
    /// Starts a transfer's clock. The router's counters, which take a process each to read, come
    /// first, the clock and the machine's own counters last.
    pub fn start(net: &Net) -> Mark {
        let (junk, udp) = net.counters();
        let links = net.link_packets();
        Mark {
            at: Instant::now(),
            junk,
            udp,
            links,
            busy: machine_busy(),
            wakeups: Wakeups::read(),
        }
    }

    /// Ends a transfer's clock: sets `run`'s seconds, machine CPU, wakeups, the packets the
    /// router forwarded each way and (in a flood) the junk rate; returns the UDP packets the
    /// sender sent meanwhile. The clock and the machine's counters are read first, so that
    /// reading the router's does not count.
    pub fn stop(&self, net: &Net, run: &mut Run) -> u64 {
        run.seconds = self.at.elapsed().as_secs_f64();
        run.machine_cpu = machine_busy() - self.busy;
        run.wakeups = Wakeups::read()
            .zip(self.wakeups)
            .map(|(now, then)| now.since(&then));
        let (junk, udp) = net.counters();
        let junk = junk.saturating_sub(self.junk);
        if run.case == Case::Flood {
            run.junk_pps = Some(junk as f64 / run.seconds.max(1e-9));
        }
        if let (Some((r0, s0)), Some((r1, s1))) = (self.links, net.link_packets()) {
            // The junk leaves on the same veth as the data: what is left is the transfer's.
            run.data_packets = Some(r1.saturating_sub(r0).saturating_sub(junk));
            run.reverse_packets = Some(s1.saturating_sub(s0));
        }
        udp.saturating_sub(self.udp)
    }
}
