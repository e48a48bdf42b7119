//! TCP: `nc -l` on the receiver writes the stream to the file, `nc -N` on the sender sends it.
//! The receiver has everything when its nc sees the end of the stream and exits.
//! Retransmissions are the sender namespace's `TcpRetransSegs`. Which TCP it was (the sender
//! namespace's congestion control) is in the machine header and nc's label.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

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

/// TCP segments `ns` has retransmitted since it had retransmitted `before`.
pub(in crate::bench) fn retransmitted_since(before: Option<u64>, ns: &Netns) -> Option<u64> {
    Some(tcp_retransmissions(ns)?.saturating_sub(before?))
}

/// Runs a TCP tool's sender `sc` until it exits or [`CUT_OFF`], the transfer's clock started
/// now. Finished: its output, the clock (still running: the caller stops it once its receiver
/// has everything) and `receiver` back. Cut off: `stop` ends `receiver`, and the run is
/// measured by what arrived under `dest` (`None`; the caller checks it).
pub(in crate::bench) fn send_or_cut_off<R>(
    sc: Command,
    t: &Transfer,
    run: &mut Run,
    (dest, times): (&Path, &TimeFiles),
    receiver: R,
    stop: impl FnOnce(R),
) -> Result<Option<(Output, Mark, R)>> {
    let mark = Mark::start(t.net);
    match output_within(sc, t.timeout.min(CUT_OFF)) {
        Ok(out) => Ok(Some((out, mark, receiver))),
        Err(e) => {
            mark.stop(t.net, run);
            stop(receiver);
            super::cut_off(dest, times, run, e).map(|()| None)
        }
    }
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
    // Cut off: what arrived in the time allowed is the figure (the file's first bytes).
    let Some((out, mark, receiver)) = send_or_cut_off(sc, t, run, (&dest, &times), receiver, drop)?
    else {
        return Ok(());
    };
    // The receiver has everything when its nc sees the end of the stream and exits.
    let status = receiver.wait(t.timeout)?;
    mark.stop(t.net, run);
    times.read_into(run);
    run.retransmissions = retransmitted_since(before, &net.sender);
    if !out.status.success() || !status.success() {
        bail!(
            "nc failed: sender {}, receiver {status}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
