//! rsync: an rsync daemon of the bench's own in the receiver's namespace (`rsync --daemon
//! --no-detach`, its own configuration: one writable module, `bench`, at the receive directory,
//! listening only on the receiver's test address), and `rsync -a FILE_OR_DIR
//! rsync://ADDR:PORT/bench/` from the sender's namespace. rsync returns once the daemon has the
//! last file in place. The daemon forks a process per connection and reaps it, so `time` counts
//! its CPU. TCP underneath, so cut off and measured like nc at [`super::nc::CUT_OFF`];
//! retransmissions are the sender namespace's `TcpRetransSegs`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use chunk_tests::Daemon;

use super::{
    Server, Transfer,
    nc::{retransmitted_since, send_or_cut_off, tcp_retransmissions},
    wait_listening,
};
use crate::bench::{
    accounting::{TimeFiles, timed},
    run::Run,
};

/// The port the daemon listens on (on the receiver's test address only).
const PORT: &str = "8873";

/// The daemon's module.
const MODULE: &str = "bench";

/// The daemon's configuration: one writable module at `dir`, as root, no chroot (the bench
/// runs as root and the module is its own receive directory), on `addr` only.
fn rsyncd_config(addr: Ipv4Addr, dir: &Path, log: &Path) -> String {
    format!(
        "# The benchmark's own rsync daemon (cargo xtask bench, tool rsync): one transfer, then\n\
         # stopped.\n\
         address = {addr}\n\
         port = {PORT}\n\
         use chroot = no\n\
         log file = {}\n\
         [{MODULE}]\n\
         path = {}\n\
         read only = no\n\
         uid = root\n\
         gid = root\n",
        log.display(),
        dir.display()
    )
}

/// The daemon's last log lines, for a failure's message.
fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

pub fn run(t: &Transfer, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let dest = t.out_dir.join(t.file.file_name().expect("a file name"));
    let (config, log) = (t.work.join("rsyncd.conf"), t.work.join("rsyncd.log"));
    std::fs::write(&config, rsyncd_config(net.receiver_addr, t.out_dir, &log))?;
    let _ = std::fs::remove_file(&log);
    let mut rc = timed(&net.receiver, &times.recv, "rsync");
    rc.args(["--daemon", "--no-detach", "--config"])
        .arg(&config);
    let mut server = Server::new(Daemon::spawn(rc, "rsync --daemon")?);
    wait_listening(&net.receiver, PORT)
        .with_context(|| format!("the rsync daemon did not start: {}", log_tail(&log)))?;
    let before = tcp_retransmissions(&net.sender);
    let mut sc = timed(&net.sender, &times.send, "rsync");
    sc.arg("-a")
        .arg(t.file)
        .arg(format!("rsync://{}:{PORT}/{MODULE}/", net.receiver_addr));
    // Cut off: what arrived whole in the time allowed is the figure (rsync's temporary files
    // do not count).
    let stop = |s: &mut Server| drop(s.stop(Duration::from_secs(5)));
    let Some((out, mark, _)) = send_or_cut_off(sc, t, run, (&dest, &times), &mut server, stop)?
    else {
        return Ok(());
    };
    // rsync returns once the daemon has put the last file in place.
    mark.stop(t.net, run);
    server.stop(Duration::from_secs(10))?;
    times.read_into(run);
    run.retransmissions = retransmitted_since(before, &net.sender);
    if !out.status.success() {
        bail!(
            "rsync failed ({}): {}; daemon: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&log)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_serves_one_writable_module_on_the_test_address() {
        let c = rsyncd_config(
            Ipv4Addr::new(198, 18, 2, 1),
            Path::new("/w/recv"),
            Path::new("/w/rsyncd.log"),
        );
        for line in [
            "address = 198.18.2.1",
            "port = 8873",
            "use chroot = no",
            "log file = /w/rsyncd.log",
            "[bench]",
            "path = /w/recv",
            "read only = no",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from\n{c}");
        }
    }
}
