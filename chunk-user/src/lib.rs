//! chunk: reliable file transfer over a custom IPv4 protocol, received through XDP.
//!
//! - [`net`]: the XDP loader and the kernel's counters (raw sockets and the ring-buffer reader
//!   come with the receive path);
//! - the `chunk` binary (`src/main.rs`) is a thin CLI over these modules.

pub mod net;

/// The compiled XDP program, embedded so the binary needs no source tree at run time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chunk-xdp"));
