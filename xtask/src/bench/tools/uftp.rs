//! UFTP: `uftpd` on the receiver, `uftp` to it by unicast, no encryption, blocks as large as
//! the MTU allows. uftpd still joins a multicast group to listen on (its default is 230.4.4.1,
//! outside the groups the bench may use): it is given one in 239.255.0.0/16, which no data uses. `uftp` returns once the client has confirmed the file. UFTP does not count
//! its retransmissions, so the router's count of UDP packets stands in for them.

use std::time::Duration;

use anyhow::{Result, bail};
use chunk_tests::Daemon;

use super::{Transfer, output_within, term_children, wait_listening};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};

/// The group uftpd listens on besides its unicast address (unused: the data is unicast).
pub(in crate::bench) const UFTPD_GROUP: &str = "239.255.0.1";

/// UFTP's block (payload) size: what fits one packet of the MTU after IPv4 (20), UDP (8)
/// and UFTP's own headers (at most 72 with no encryption), rounded down to 100.
fn block(mtu: u32) -> u32 {
    (mtu.saturating_sub(100) / 100 * 100).clamp(500, 8800)
}

pub fn run(t: &Transfer, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let mut rc = timed(&net.receiver, &times.recv, "uftpd");
    rc.args(["-d", "-x", "0", "-M", UFTPD_GROUP, "-D"])
        .arg(t.out_dir);
    let receiver = Daemon::spawn(rc, "uftpd")?;
    wait_listening(&net.receiver, "1044")?;
    let block = block(t.mtu);
    let mut sc = timed(&net.sender, &times.send, "uftp");
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
    .arg(t.file);
    let mark = Mark::start(t.net);
    let out = output_within(sc, t.timeout)?;
    // uftp returns once the client has confirmed the file.
    let udp = mark.stop(t.net, run);
    // UFTP does not count its retransmissions: take the data packets the router saw
    // beyond the file's blocks (a handful of them are UFTP's announcements and status).
    let size = std::fs::metadata(t.file).map_or(0, |m| m.len());
    run.retransmissions = Some(udp.saturating_sub(size.div_ceil(u64::from(block))));
    term_children(receiver.id());
    let _ = receiver.wait(Duration::from_secs(10));
    times.read_into(run);
    if !out.status.success() {
        bail!(
            "uftp failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
