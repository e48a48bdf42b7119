//! Names and sizes shared by the XDP program and its loader: the loader finds maps and
//! load-time settings by these names, so both sides must spell them the same.

/// Per-CPU array of `u64`, one per [`Counter`](crate::counters::Counter).
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Ring buffer of [`Record`](crate::ring::Record)s.
pub const MAP_CHUNKS: &str = "CHUNKS";
/// LPM trie of allowed IPv4 source prefixes ([`AllowKey`]).
pub const MAP_ALLOWLIST: &str = "ALLOWLIST";
/// LPM trie of allowed IPv6 source prefixes ([`AllowKey6`]).
pub const MAP_ALLOWLIST6: &str = "ALLOWLIST6";
/// Array of one `u32`: 1 while the ring's reader is draining it batch after batch (it naps
/// between batches and needs no wakeup: the program then submits with `BPF_RB_NO_WAKEUP`),
/// 0 (the default) when it may be asleep on the ring's fd.
pub const MAP_READER_BUSY: &str = "READER_BUSY";
/// Hash map of the open sessions: key the session id (a sealed packet's transfer id field, read
/// big-endian, stored as a native `u32`), value a reference count kept by userspace and not read
/// by the program. A sealed packet whose session id is not a key is dropped as
/// `unknown_session`.
pub const MAP_SESSIONS: &str = "SESSIONS";

/// Load-time setting (`u8`): the IP protocol number of chunk packets.
pub const GLOBAL_PROTOCOL: &str = "CHUNK_PROTOCOL";
/// Load-time setting (`u16`): the largest payload accepted; longer ones count as `bad_length`.
pub const GLOBAL_MAX_PAYLOAD: &str = "MAX_PAYLOAD";
/// Load-time setting (`u16`): the UDP destination port chunk packets in UDP are sent to
/// (`--udp PORT`); 0 (the default): UDP is not looked into, all of it passes.
pub const GLOBAL_UDP_PORT: &str = "UDP_PORT";
/// Load-time setting (`u8`): 1 if the allowlist is in force (an empty allowlist allows all);
/// it covers both families: with prefixes of one family only, the other's sources are refused.
pub const GLOBAL_ALLOWLIST_ON: &str = "ALLOWLIST_ON";
/// Load-time setting (`u8`): 1 to log every dropped chunk packet through aya-log. At 0 the
/// verifier removes the logging code, so the per-packet path pays nothing for it.
pub const GLOBAL_LOG_DROPS: &str = "LOG_DROPS";

/// The program's name in the object file (and in `bpftool prog show`).
pub const PROGRAM_NAME: &str = "chunk";

/// Default ring-buffer size: 4096 records of 4 KiB, about 20 ms of traffic at 200k packets/s.
/// A power of two, as the kernel requires.
pub const RING_DEFAULT_BYTES: u32 = 16 << 20;

/// How many prefixes the allowlist can hold.
pub const ALLOWLIST_MAX_ENTRIES: u32 = 1024;

/// How many sessions can be open at once (entries of [`MAP_SESSIONS`]): far more than a
/// receiver's transfer slots, few enough that the preallocated map stays small (a few hundred KiB).
pub const SESSIONS_MAX_ENTRIES: u32 = 4096;

/// The allowlist's key: a prefix length, then the IPv4 address in network byte order, as the
/// kernel's LPM trie wants it (`struct bpf_lpm_trie_key` with 4 bytes of data).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct AllowKey {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// The IPv6 allowlist's key: a prefix length, then the address in network byte order.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct AllowKey6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}
