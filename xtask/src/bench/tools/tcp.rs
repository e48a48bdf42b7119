//! TCP with the congestion control chosen per socket ([`crate::bench::tcp`]): the reference
//! `nc` cannot be, since it runs with whatever the namespace's default is (BBR on this machine,
//! CUBIC on most distributions). CPU is each thread's own; RSS is not measured (the threads
//! live in the bench's process) and is reported as 0.

use std::time::Duration;

use anyhow::Result;

use super::{Transfer, nc::tcp_retransmissions};
use crate::bench::{accounting::Mark, run::Run};

/// As long as `nc` may run before it is cut off (see there).
const CUT_OFF: Duration = Duration::from_secs(45);

pub fn run(t: &Transfer, cc: &str, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let dest = t.out_dir.join(t.file.file_name().expect("a file name"));
    let before = tcp_retransmissions(&net.sender);
    let mut mark = None;
    let out = crate::bench::tcp::transfer(
        &net.sender,
        &net.receiver,
        net.receiver_addr,
        cc,
        t.file,
        &dest,
        t.timeout.min(CUT_OFF),
        &mut || mark = Some(Mark::start(t.net)),
    );
    if let Some(m) = &mark {
        m.stop(t.net, run);
    }
    let out = out?;
    // The sender's clock, not the mark's: the transfer ends when the receiver read the end.
    run.seconds = out.seconds;
    run.send_cpu = out.send_cpu;
    run.recv_cpu = out.recv_cpu;
    run.partial_bytes = out.partial_bytes;
    run.retransmissions = match (before, out.retransmissions) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(())
}
