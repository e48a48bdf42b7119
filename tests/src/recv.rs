//! Starting `chunk recv`: the one launcher the tests, `cargo xtask demo` and `cargo xtask bench`
//! share. It runs `chunk recv --iface IFACE --json --out DIR ...` and returns once the receiver
//! has printed its `ready` event, that is once its XDP program (or socket) is attached and a
//! sender may start; the later events come through the returned line receiver.

use std::{path::Path, process::Command, sync::mpsc::Receiver, time::Duration};

use anyhow::{Context, Result};

use crate::{Daemon, wait_for_line};

/// How long `chunk recv` may take to say it is ready (loading and attaching the XDP program).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `chunk recv --json` that has said it is ready.
#[derive(Debug)]
pub struct ReadyRecv {
    pub daemon: Daemon,
    /// The `ready` event, as printed.
    pub ready: String,
    /// Every line the receiver prints after `ready` (one JSON event each).
    pub lines: Receiver<String>,
}

/// Appends `recv --iface IFACE --json --out OUT EXTRA...` to `chunk` (a command that runs the
/// chunk binary in a namespace: `Netns::command(bin)`, or a wrapper such as `/usr/bin/time ...
/// bin`), starts it, and waits up to [`READY_TIMEOUT`] for its `ready` event.
pub fn spawn_recv(
    mut chunk: Command,
    iface: &str,
    out: &Path,
    extra: &[&str],
) -> Result<ReadyRecv> {
    chunk
        .args(["recv", "--iface", iface, "--json", "--out"])
        .arg(out)
        .args(extra);
    let mut daemon = Daemon::spawn(chunk, "chunk recv")?;
    let stdout = daemon.stdout().context("chunk recv's stdout")?;
    let (ready, lines) = wait_for_line(stdout, READY_TIMEOUT, |l| l.contains("\"ready\""))
        .context("chunk recv did not say it is ready")?;
    Ok(ReadyRecv {
        daemon,
        ready,
        lines,
    })
}
