//! TCP: `nc -l` on the receiver writes the stream to the file, `nc -N` on the sender sends it.
//! The receiver has everything when its nc sees the end of the stream and exits.
//! Retransmissions are the sender namespace's `TcpRetransSegs`. Which TCP it was (the sender
//! namespace's congestion control) is in the machine header and nc's label.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{Transfer, output_within, wait_listening};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};
use chunk_tests::{Daemon, Netns};

const PORT: &str = "5001";

/// How long a TCP transfer may run before it is cut off and measured by what arrived: long
/// enough for tens of thousands of round trips here, so the figure is TCP's steady state, and
/// short enough that TCP at 5 % loss each way (about 1.5 MB/s) does not take the bench's whole
/// time.
pub(in crate::bench) const CUT_OFF: Duration = Duration::from_secs(45);

/// TCP segments `ns` has retransmitted since it was made.
pub(in crate::bench) fn tcp_retransmissions(ns: &Netns) -> Option<u64> {
    let out = ns.exec("nstat", &["-asz", "TcpRetransSegs"]).ok()?;
    out.lines()
        .find(|l| l.starts_with("TcpRetransSegs"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

pub fn run(t: &Transfer, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let name = t.file.file_name().expect("a file name");
    let dest = t.out_dir.join(name);
    let mut rc = timed(&net.receiver, &times.recv, "sh");
    rc.arg("-c")
        .arg(format!("exec nc -l {PORT} > '{}'", dest.display()));
    let receiver = Daemon::spawn(rc, "nc -l")?;
    wait_listening(&net.receiver, PORT)?;
    let before = tcp_retransmissions(&net.sender);
    let mut sc = timed(&net.sender, &times.send, "sh");
    sc.arg("-c").arg(format!(
        "exec nc -N {} {PORT} < '{}'",
        net.receiver_addr,
        t.file.display()
    ));
    let mark = Mark::start(t.net);
    let out = match output_within(sc, t.timeout.min(CUT_OFF)) {
        Ok(out) => out,
        Err(e) => {
            // Cut off: what arrived in the time allowed is the figure (the caller checks that
            // it is the file's first bytes).
            mark.stop(t.net, run);
            drop(receiver);
            return super::cut_off(&dest, &times, run, e);
        }
    };
    // The receiver has everything when its nc sees the end of the stream and exits.
    let status = receiver.wait(t.timeout)?;
    mark.stop(t.net, run);
    times.read_into(run);
    run.retransmissions = match (before, tcp_retransmissions(&net.sender)) {
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
