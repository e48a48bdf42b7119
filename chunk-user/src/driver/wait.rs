//! Waiting, for both drivers: `ppoll` on a few fds until a deadline, and SIGINT/SIGTERM turned
//! into a flag the loops check (a signal also cuts the wait short: `ppoll` returns EINTR).

use std::{
    io,
    os::fd::BorrowedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rustix::event::{PollFd, PollFlags, Timespec};

/// Waits until one of `fds` is readable or `deadline` passes (`None`: no deadline). Returns
/// whether an fd is readable. A signal ends the wait early (returns `false`).
pub fn until(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<bool> {
    Ok(ready_until(fds, deadline)? != 0)
}

/// As [`until`], saying which of `fds` (the first 64) are readable: bit `i` for `fds[i]`.
pub fn ready_until(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<u64> {
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(0) | Err(rustix::io::Errno::INTR) => Ok(0),
        Ok(_) => Ok(pfds
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, p)| !p.revents().is_empty())
            .fold(0, |m, (i, _)| m | 1 << i)),
        Err(e) => Err(e.into()),
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: forever).
pub fn for_at_most(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<bool> {
    until(fds, timeout.and_then(|t| Instant::now().checked_add(t)))
}

/// SIGINT and SIGTERM, caught as flags. The first signal asks a driver to stop cleanly; the
/// handlers stay installed, so a second one is not fatal either (a driver ends soon anyway).
#[derive(Clone)]
pub struct Stop {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
}

impl Stop {
    pub fn install() -> io::Result<Stop> {
        let stop = Stop {
            interrupt: Arc::new(AtomicBool::new(false)),
            terminate: Arc::new(AtomicBool::new(false)),
        };
        signal_hook::flag::register(signal_hook::consts::SIGINT, stop.interrupt.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.terminate.clone())?;
        Ok(stop)
    }

    /// Which signal asked to stop, if one did.
    pub fn requested(&self) -> Option<&'static str> {
        if self.interrupt.load(Ordering::Relaxed) {
            Some("interrupt")
        } else if self.terminate.load(Ordering::Relaxed) {
            Some("terminate")
        } else {
            None
        }
    }
}
