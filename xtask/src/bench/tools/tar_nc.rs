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
    nc::{retransmitted_since, send_or_cut_off, tcp_retransmissions},
    stop_timed, wait_listening,
};
use crate::bench::{
    accounting::{TimeFiles, timed},
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
    // Cut off: what arrived whole in the time allowed is the figure. The receiver's nc sees
    // the stream end and its tar stops.
    let stop = |r| drop(stop_timed(r, Duration::from_secs(5)));
    let Some((out, mark, receiver)) = send_or_cut_off(sc, t, run, (&dest, &times), receiver, stop)?
    else {
        return Ok(());
    };
    // The receiver has everything when its tar has read the end of the archive and exited.
    let status = receiver.wait(t.timeout)?;
    mark.stop(t.net, run);
    times.read_into(run);
    run.retransmissions = retransmitted_since(before, &net.sender);
    if !out.status.success() || !status.success() {
        bail!(
            "tar | nc failed: sender {}, receiver {status}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
