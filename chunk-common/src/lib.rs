//! chunk's shared definitions: one source of truth for the kernel (XDP) and userspace sides.
//!
//! - [`classify`]: the receive path's checks, the same in the XDP program and the socket path;
//! - [`wire`]: the chunk header and message bodies, as zero-copy views and `Repr` structs;
//! - [`checksum`]: the packet checksum both sides verify (XXH64's low 32 bits), in steps the eBPF
//!   verifier accepts;
//! - [`counters`]: the per-reason counters the XDP program keeps, indexed by one enum;
//! - [`bundle`]: the manifest of a bundle (many small files in one transfer);
//! - [`ring`]: the record layout the XDP program hands to userspace through the ring buffer.
//!
//! No std, no allocation: everything here must build for `bpfel-unknown-none`.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

pub mod bundle;
pub mod checksum;
pub mod classify;
pub mod counters;
pub mod ring;
pub mod wire;
pub mod xdp;

/// The IP protocol number chunk uses unless told otherwise: 253 is reserved by RFC 3692 for
/// experimentation and testing, so it collides with nothing deployed.
pub const DEFAULT_IP_PROTOCOL: u8 = 253;
