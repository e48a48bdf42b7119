//! chunk's XDP program: parse, filter, verify, hand off, count. Nothing else: the protocol's
//! decisions are made in userspace.
//!
//! For every frame: Ethernet (one 802.1Q tag allowed), IPv4 (options allowed). A frame that is not
//! IPv4 carrying the chunk protocol goes to the stack untouched (`XDP_PASS`). A chunk packet is
//! checked (fragment, lengths, magic, version, type, source allowlist), copied into a ring-buffer
//! record, checksum-checked *in the record*, and submitted or discarded. Every chunk packet is then
//! consumed (`XDP_DROP`): the stack would only answer it with ICMP protocol-unreachable.
//! Each frame increments exactly one counter in `COUNTERS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

/// On the host this crate is only a stub, so that `cargo clippy --workspace` and friends can walk
/// the workspace; the real program is built for `bpfel-unknown-none` by chunk-user's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
