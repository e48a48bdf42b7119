//! `tar c | nc`: the sender's tar writes the file or the tree as one stream into `nc -N`; the
//! receiver's `nc -l` hands it to `tar x` in the receive directory. Both sides run as a shell
//! pipeline under `/usr/bin/time` (which counts the shell's children: both commands). Done when
//! the receiver's tar has read the end of the archive and exited. TCP underneath, so cut off and
//! measured like nc at [`super::nc::CUT_OFF`]; retransmissions are the sender namespace's
//! `TcpRetransSegs`.

use std::time::Duration;

use anyhow::{Result, bail};
use chunk_tests::Daemon;

use super::{
    Transfer,
    nc::{CUT_OFF, tcp_retransmissions},
    output_within, stop_timed, wait_listening,
};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};

/// Not nc's port: a receiver left from an nc run cannot take this one's stream.
const PORT: &str = "5003";

pub fn run(t: &Transfer, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let name = t.file.file_name().expect("a file name");
    let parent = t.file.parent().expect("a parent directory");
    let dest = t.out_dir.join(name);
    let mut rc = timed(&net.receiver, &times.recv, "sh");
    rc.arg("-c")
        .arg(format!("nc -l {PORT} | tar x -C '{}'", t.out_dir.display()));
    let receiver = Daemon::spawn(rc, "nc -l | tar x")?;
    wait_listening(&net.receiver, PORT)?;
    let before = tcp_retransmissions(&net.sender);
    let mut sc = timed(&net.sender, &times.send, "sh");
    sc.arg("-c").arg(format!(
        "tar c -C '{}' '{}' | nc -N {} {PORT}",
        parent.display(),
        name.to_string_lossy(),
        net.receiver_addr,
    ));
    let mark = Mark::start(t.net);
    let out = match output_within(sc, t.timeout.min(CUT_OFF)) {
        Ok(out) => out,
        Err(e) => {
            // Cut off: what arrived whole in the time allowed is the figure (the caller checks
            // it). The receiver's nc sees the stream end and its tar stops.
            mark.stop(t.net, run);
            let _ = stop_timed(receiver, Duration::from_secs(5));
            return super::cut_off(&dest, &times, run, e);
        }
    };
    // The receiver has everything when its tar has read the end of the archive and exited.
    let status = receiver.wait(t.timeout)?;
    mark.stop(t.net, run);
    times.read_into(run);
    run.retransmissions = match (before, tcp_retransmissions(&net.sender)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if !out.status.success() || !status.success() {
        bail!(
            "tar | nc failed: sender {}, receiver {status}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
