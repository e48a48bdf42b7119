//! The XDP program's per-reason packet counters.
//!
//! The kernel keeps one `u64` per [`Counter`] in a per-CPU array map indexed by the counter's
//! value; userspace sums the CPUs. Every frame the program sees lands in exactly one counter, so
//! the counters add up to the number of frames, and a drop is never silent.

/// Why the XDP program did what it did with one frame. The discriminant is the map index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Not a chunk packet (not IP, another IP protocol, UDP to another port, ...): handed to the
    /// stack untouched.
    Passed = 0,
    /// A valid chunk packet, copied into the ring buffer for userspace.
    Accepted = 1,
    /// Shorter than the headers it claims (Ethernet, VLAN, IPv4 or IPv6 and its extension
    /// headers, UDP, or the chunk header).
    Truncated = 2,
    /// Wrong magic or an unsupported version: not ours, or from an incompatible release.
    BadMagic = 3,
    /// An unknown message type.
    BadType = 4,
    /// The chunk header's payload length disagrees with the IP total length, or is over the limit.
    BadLength = 5,
    /// The checksum over header and payload does not match.
    BadChecksum = 6,
    /// An IP fragment of the chunk protocol (an IPv4 fragment, an IPv6 Fragment header, or the
    /// first fragment of a UDP datagram to chunk's port): chunks are never fragmented, so it is
    /// junk.
    Fragment = 7,
    /// The source address is not in the allowlist.
    NotAllowed = 8,
    /// Valid, but the ring buffer was full: userspace is falling behind.
    RingFull = 9,
    /// An IPv6 packet with more extension headers before its upper-layer header than the
    /// program walks ([`MAX_EXT_HEADERS`](crate::classify::MAX_EXT_HEADERS)): malformed, dropped.
    ExtHeaders = 10,
    /// A sealed packet (encrypted) whose session id is not one of the receiver's open sessions:
    /// forged or stale, dropped before it costs an AEAD open.
    UnknownSession = 11,
}

impl Counter {
    /// How many counters there are: the size of the per-CPU array map.
    pub const COUNT: u32 = 12;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Passed,
        Counter::Accepted,
        Counter::Truncated,
        Counter::BadMagic,
        Counter::BadType,
        Counter::BadLength,
        Counter::BadChecksum,
        Counter::Fragment,
        Counter::NotAllowed,
        Counter::RingFull,
        Counter::ExtHeaders,
        Counter::UnknownSession,
    ];

    /// The name used in `chunk stats`, JSON output and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Accepted => "accepted",
            Counter::Truncated => "truncated",
            Counter::BadMagic => "bad_magic",
            Counter::BadType => "bad_type",
            Counter::BadLength => "bad_length",
            Counter::BadChecksum => "bad_checksum",
            Counter::Fragment => "fragment",
            Counter::NotAllowed => "not_allowed",
            Counter::RingFull => "ring_full",
            Counter::ExtHeaders => "ext_headers",
            Counter::UnknownSession => "unknown_session",
        }
    }

    /// The counter at a map index, if there is one.
    pub const fn from_index(index: u32) -> Option<Counter> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
            assert_eq!(Counter::from_index(i as u32), Some(*c));
        }
        assert_eq!(Counter::from_index(Counter::COUNT), None);
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT as usize);
    }
}
