//! The I/O loops around the protocol cores, one per side, as quinn's `ConnectionDriver` wraps
//! quinn-proto: packets in through [`crate::intake`], the core fed, its packets out, its timers
//! kept. Both sides use one model: a plain blocking loop over `ppoll` (nanosecond timeouts, for
//! the sender's pacing), no async runtime. `cmd/` turns arguments into a driver's config and
//! its result into a report, nothing else.
//!
//! - [`send`]: one file after another to one receiver, over a raw socket.
//! - [`recv`]: every transfer arriving on one receive path, into one directory.
//! - [`wait`]: waiting for fds or a deadline, and the signals that stop a driver.

pub mod recv;
pub mod send;
pub mod wait;
