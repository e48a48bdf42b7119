use core::{hint::black_box, mem::size_of, ptr};

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, xdp_action},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_ringbuf_output, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use chunk_common::{
    checksum::{self, Lanes},
    classify::{
        self, IPV4_MIN_HLEN, IPV6_FRAG_HLEN, IPV6_HLEN, MAX_EXT_HEADERS, Next, Transport, UDP_HLEN,
        Verdict,
    },
    counters::Counter,
    ring::{
        FAMILY_IPV4, FAMILY_IPV6, MAX_PACKET_LEN, RECORD_HEADER_LEN, RECORD_LEN, Record,
        RecordHeader,
    },
    wire::{HEADER_LEN, field},
    xdp::{ALLOWLIST_MAX_ENTRIES, RING_DEFAULT_BYTES, SESSIONS_MAX_ENTRIES},
};

/// Per-reason frame counters, indexed by [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// One record of scratch space per CPU, where a packet is copied and checked before it may go
/// into the ring buffer.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A record and 32 bytes of slack after it: the checksum's tail reads words at offsets the
/// verifier can only bound by "last stripe + up to 31", which may pass the packet's end; the
/// slack keeps every such read inside the map value without a per-read bounds check (whatever
/// lies past the packet's length is never folded in).
#[repr(C)]
struct Scratch {
    rec: Record,
    slack: [u8; TAIL_SLACK],
    /// Where [`forget`] puts a number, to read it back as one the verifier knows nothing about.
    forget: u64,
}

const TAIL_SLACK: usize = 32;

/// Valid chunk packets for userspace. The loader may resize it.
#[map]
static CHUNKS: RingBuf = RingBuf::with_byte_size(RING_DEFAULT_BYTES, 0);

/// 1 while userspace drains the ring batch after batch, 0 when it may be asleep on the ring's fd
/// (`chunk_common::xdp::MAP_READER_BUSY`).
#[map]
static READER_BUSY: Array<u32> = Array::with_max_entries(1, 0);

/// Source prefixes allowed to send chunk packets (IPv4, network byte order). Consulted only when
/// `ALLOWLIST_ON` is set, so that an empty allowlist means "allow all".
#[map]
static ALLOWLIST: LpmTrie<u32, u8> = LpmTrie::with_max_entries(ALLOWLIST_MAX_ENTRIES, 0);

/// The same for IPv6 sources.
#[map]
static ALLOWLIST6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ALLOWLIST_MAX_ENTRIES, 0);

/// The receiver's open sessions, by session id (`chunk_common::xdp::MAP_SESSIONS`); the value is
/// userspace's reference count, not read here. A sealed packet of any other session is dropped.
#[map]
static SESSIONS: HashMap<u32, u32> = HashMap::with_max_entries(SESSIONS_MAX_ENTRIES, 0);

// Load-time configuration, in .rodata: the loader sets them, and the verifier then treats them
// as constants. Read them with `read_volatile`, or LLVM folds the defaults in at compile time.
#[unsafe(no_mangle)]
static CHUNK_PROTOCOL: u8 = chunk_common::DEFAULT_IP_PROTOCOL;
#[unsafe(no_mangle)]
static MAX_PAYLOAD: u16 = chunk_common::ring::MAX_PAYLOAD_LEN as u16;
/// The UDP port chunk packets in UDP arrive on; 0: UDP is not looked into.
#[unsafe(no_mangle)]
static UDP_PORT: u16 = 0;
#[unsafe(no_mangle)]
static ALLOWLIST_ON: u8 = 0;
#[unsafe(no_mangle)]
static LOG_DROPS: u8 = 0;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// Declared multi-buffer (`frags`): a frame larger than a page (a jumbo frame on veth, or on a
/// driver that splits it) arrives in fragments; the headers are in the first, and
/// `bpf_xdp_load_bytes` copies across all of them.
#[xdp(frags)]
pub fn chunk(ctx: XdpContext) -> u32 {
    let (action, counter) = match check(&ctx) {
        Ok(()) => (xdp_action::XDP_DROP, Counter::Accepted),
        Err(Verdict::Pass) => (xdp_action::XDP_PASS, Counter::Passed),
        Err(Verdict::Drop(c)) => {
            if unsafe { ptr::read_volatile(&LOG_DROPS) } != 0 {
                debug!(&ctx, "chunk: dropped a chunk packet: {}", c.name());
            }
            (xdp_action::XDP_DROP, c)
        }
    };
    if let Some(n) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU: no other writer, a plain add is enough.
        unsafe { *n += 1 };
    }
    action
}

/// A pointer to a `T` at `offset` into the frame, if the frame is long enough.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    Some(u16::from_be_bytes(unsafe { *p }))
}

/// What the IP layer, of either family, says about a chunk packet; offsets are from the start
/// of the frame. The addresses and the family are in the scratch record's header already.
struct IpLayer {
    /// Where the upper-layer header (chunk's, or UDP) starts.
    l4: usize,
    /// Where the IP packet ends (the frame may go on: Ethernet padding).
    end: usize,
    transport: Transport,
    /// An IPv4 first fragment of UDP (`classify::Ipv4Info::first_fragment`).
    first_fragment: bool,
}

#[inline(always)]
fn check(ctx: &XdpContext) -> Result<(), Verdict> {
    // Ethernet, with at most one VLAN tag.
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Err(Verdict::Pass);
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = be16_at(ctx, 16) else {
            return Err(Verdict::Pass);
        };
        ethertype = inner;
        l3 += 4;
    }
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Err(Verdict::Pass);
    }
    // The record's header is filled in as the headers are read, the addresses straight from the
    // packet: carried on the stack through the rest, IPv4's (zero bytes after the first four)
    // and IPv6's would keep the verifier's states for the two families apart, and it would walk
    // everything after the parser twice.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // A one-entry array always has entry 0; this only satisfies the verifier.
        return Err(Counter::Truncated.into());
    };
    let header = unsafe { ptr::addr_of_mut!((*scratch).rec.header) };
    let protocol = unsafe { ptr::read_volatile(&CHUNK_PROTOCOL) };
    let udp_port = unsafe { ptr::read_volatile(&UDP_PORT) };
    // From here on (unless it passes) the frame is ours, and consumed whatever happens to it.
    let ip = if ethertype == ETH_P_IP {
        ipv4(ctx, header, l3, protocol, udp_port)?
    } else {
        ipv6(ctx, scratch, l3, protocol, udp_port)?
    };
    let mut l4 = forget(scratch, ip.l4, MAX_L4)?;
    let mut src_port = 0;
    if ip.transport == Transport::Udp {
        // No UDP header in the frame, no port: nothing says the packet is chunk's.
        let Some(udp) = ptr_at::<[u8; UDP_HLEN]>(ctx, l4) else {
            return Err(Verdict::Pass);
        };
        src_port = classify::udp(unsafe { &*udp }, ip.end - l4, udp_port, ip.first_fragment)?;
        l4 += UDP_HLEN;
    }
    // Check the chunk header's bounds before the IP total length: the other way round, LLVM
    // deduces this check from that one and drops it, and the verifier, which cannot make that
    // deduction, then rejects the header read.
    let Some(hdr) = ptr_at::<[u8; HEADER_LEN]>(ctx, l4) else {
        return Err(Counter::Truncated.into());
    };
    let hdr = unsafe { *hdr };
    // The frame may be longer than the IP packet (Ethernet padding) but never shorter. Its
    // length counts every fragment; `data_end` only ends the first.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    if ip.end > frame_len {
        return Err(Counter::Truncated.into());
    }
    let max_payload = unsafe { ptr::read_volatile(&MAX_PAYLOAD) } as usize;
    let payload_len = classify::header(&hdr, ip.end - l4, max_payload)?;

    classify::answerable(ip.transport, src_port)?;
    let src = unsafe { (*header).src_addr };
    if unsafe { (*header).family } != FAMILY_IPV4 {
        classify::ipv6_source(&src)?;
    }
    // Either family's allowlist: with it on, a source of a family without prefixes finds
    // nothing in its (empty) trie, and is refused.
    if unsafe { ptr::read_volatile(&ALLOWLIST_ON) } != 0 {
        let found = if unsafe { (*header).family } == FAMILY_IPV4 {
            let a = [src[0], src[1], src[2], src[3]];
            ALLOWLIST.get(Key::new(32, u32::from_ne_bytes(a))).is_some()
        } else {
            ALLOWLIST6.get(Key::new(128, src)).is_some()
        };
        if !found {
            return Err(Counter::NotAllowed.into());
        }
    }

    // Copy into this CPU's scratch record and check the checksum there: reading packet memory byte
    // by byte in a loop does not pass the verifier (LLVM drops the per-byte bounds checks it
    // needs), while the record is plain memory of a size the verifier knows. Only a packet that
    // passes goes into the ring buffer, so junk never takes ring space or wakes userspace.
    let rec = unsafe { ptr::addr_of_mut!((*scratch).rec) };
    // The verifier must see 1 <= len <= MAX_PACKET_LEN at the helper call. LLVM tends to mask the
    // length (`&= 0xffff`), which erases the lower bound; laundering it through black_box as a
    // u64 and checking both ends right before the call makes the bounds stick.
    let len = black_box((HEADER_LEN + payload_len) as u64);
    if len > MAX_PACKET_LEN as u64 {
        return Err(Counter::BadLength.into());
    }
    let len = black_box(len);
    if len == 0 {
        return Err(Counter::Truncated.into());
    }
    // The rest of the record's header (the IP layer wrote the addresses and the family).
    unsafe {
        (*header).packet_len = len as u16;
        (*header).transport = ip.transport.ring_value();
        (*header).src_port = src_port;
        (*header)._reserved = 0;
        (*header).rx_queue = ctx.rx_queue_index();
    }
    let packet = unsafe { ptr::addr_of_mut!((*rec).packet) } as *mut u8;
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx, l4 as u32, packet as *mut _, len as u32) };
    if copied != 0 {
        return Err(Counter::Truncated.into());
    }
    let expected = classify::carried_checksum(&hdr);
    // The checksum is defined with its own field as zero.
    unsafe { ptr::write_unaligned(packet.add(field::CHECKSUM.start) as *mut u32, 0) };
    let packet_start = unsafe { (scratch as *const u8).add(RECORD_HEADER_LEN) };
    if checksum_of(packet_start, len as usize) != expected {
        return Err(Counter::BadChecksum.into());
    }
    // Last, the session of a sealed packet (a forged one costs userspace no AEAD open). Read
    // from the header as copied into the record (plain memory, HEADER_LEN bytes always there):
    // read from `hdr`, which then stays live through the checksum loop, the verifier walks
    // about 100 more instructions.
    let copied_hdr = unsafe { &*(packet as *const [u8; HEADER_LEN]) };
    classify::session(copied_hdr, |sid| SESSIONS.get_ptr(sid).is_some())?;
    // When it came, for the receiver's acks (`RecordHeader::arrived_us`): microseconds, the
    // clock's low 32 bits. Only a packet that goes into the ring pays for the reading.
    unsafe { (*header).arrived_us = (bpf_ktime_get_ns() / 1000) as u32 };
    // Into the ring, as long as the packet is: header and packet, not the whole 4 KiB record.
    let total = black_box(RECORD_HEADER_LEN as u64 + len);
    if total > RECORD_LEN as u64 {
        return Err(Counter::BadLength.into());
    }
    let total = black_box(total);
    if total == 0 {
        return Err(Counter::Truncated.into());
    }
    // A reader that drains batch after batch finds this record on its next round: waking it
    // would cost an interrupt (irq_work, a self-IPI: in a VM an exit) on this CPU, on veth the
    // sender's, for nothing. Otherwise the kernel decides (it wakes a reader that caught up).
    let busy = READER_BUSY.get(0).is_some_and(|b| *b != 0);
    let flags = if busy { BPF_RB_NO_WAKEUP as u64 } else { 0 };
    let rc =
        unsafe { bpf_ringbuf_output(ptr::addr_of!(CHUNKS) as *mut _, rec as *mut _, total, flags) };
    if rc != 0 {
        return Err(Counter::RingFull.into());
    }
    Ok(())
}

/// The IPv4 layer at `l3`: the fixed header's checks (`classify::ipv4`); options are skipped.
#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    header: *mut RecordHeader,
    l3: usize,
    protocol: u8,
    udp_port: u16,
) -> Result<IpLayer, Verdict> {
    let Some(h) = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, l3) else {
        return Err(Verdict::Pass);
    };
    let ip = classify::ipv4(unsafe { &*h }, protocol, udp_port)?;
    unsafe {
        (*header).src_addr = v4_in_16(ip.src);
        (*header).dst_addr = v4_in_16(ip.dst);
        (*header).family = FAMILY_IPV4;
    }
    Ok(IpLayer {
        l4: l3 + ip.header_len,
        end: l3 + ip.total_len,
        transport: ip.transport,
        first_fragment: ip.first_fragment,
    })
}

/// An IPv4 address in a record's 16-byte address field.
#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// The IPv6 layer at `l3`: the fixed header (`classify::ipv6`), then the extension headers,
/// at most `MAX_EXT_HEADERS` of them, until the upper-layer header (the other `classify`
/// steps, in the order `classify::ip_packet` takes them).
#[inline(always)]
fn ipv6(
    ctx: &XdpContext,
    scratch: *mut Scratch,
    l3: usize,
    protocol: u8,
    udp_port: u16,
) -> Result<IpLayer, Verdict> {
    let Some(h) = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3) else {
        return Err(Verdict::Pass);
    };
    let ip = classify::ipv6(unsafe { &*h })?;
    let header = unsafe { ptr::addr_of_mut!((*scratch).rec.header) };
    // Before the walk: written after it, the copies would be made once per way out of it.
    unsafe {
        ptr::write_volatile(ptr::addr_of_mut!((*header).src_addr), ip.src);
        ptr::write_volatile(ptr::addr_of_mut!((*header).dst_addr), ip.dst);
        (*header).family = FAMILY_IPV6;
    }
    let base = l3 + IPV6_HLEN;
    let mut nh = ip.next_header;
    let mut walked = 0usize;
    let mut n = 0usize;
    // The walk stops at the first header that is not one to step over. A Fragment header is
    // handled after the loop, past `forget`, so that the verifier walks that code once rather
    // than once per iteration.
    let next = loop {
        let next = classify::next_header(nh, protocol, udp_port)?;
        if next != Next::Ext {
            break next;
        }
        if n == MAX_EXT_HEADERS {
            return Err(Counter::ExtHeaders.into());
        }
        let Some(e) = ptr_at::<[u8; 2]>(ctx, base + walked) else {
            return Err(Counter::Truncated.into());
        };
        (nh, walked) = classify::ext_header(unsafe { &*e }, walked, ip.payload_len)?;
        n += 1;
    };
    // Each iteration's way out leaves `walked` a different range (see `forget`).
    let walked = forget(scratch, walked, MAX_EXT_BYTES)?;
    let Next::Upper(transport) = next else {
        // The Fragment header, like any extension header, must lie within the payload length
        // (Ethernet padding after the packet is not one).
        if walked + IPV6_FRAG_HLEN > ip.payload_len {
            return Err(Counter::Truncated.into());
        }
        let Some(f) = ptr_at::<[u8; IPV6_FRAG_HLEN]>(ctx, base + walked) else {
            return Err(Counter::Truncated.into());
        };
        classify::fragment(unsafe { &*f }, protocol, udp_port)?;
        // A first fragment of UDP: chunk's if its port is.
        if walked + IPV6_FRAG_HLEN + UDP_HLEN > ip.payload_len {
            return Err(Verdict::Pass);
        }
        let at = base + walked + IPV6_FRAG_HLEN;
        let Some(u) = ptr_at::<[u8; UDP_HLEN]>(ctx, at) else {
            return Err(Verdict::Pass);
        };
        return Err(match classify::udp(unsafe { &*u }, 0, udp_port, true) {
            Err(v) => v,
            Ok(_) => Verdict::Pass,
        });
    };
    classify::ipv6_upper(transport, walked, ip.payload_len)?;
    Ok(IpLayer {
        l4: base + walked,
        end: base + ip.payload_len,
        transport,
        first_fragment: false,
    })
}

/// The most bytes of extension headers the walk steps over: each at most 2048.
const MAX_EXT_BYTES: u64 = (MAX_EXT_HEADERS * 2048) as u64;

/// The largest offset of an upper-layer header: Ethernet with a VLAN tag, IPv6 and the most
/// extension headers walked, at their longest (IPv4 with options ends well before).
const MAX_L4: u64 = (ETH_HLEN + 4 + IPV6_HLEN + MAX_EXT_HEADERS * 2048) as u64;

/// `v` as a number the verifier knows only to be at most `max` (which it is). An offset added
/// to a packet pointer is one the verifier tracks precisely, and every way through the parser
/// (IPv4, IPv6 after 0 to 8 extension headers, VLAN or not) leaves it a different range: kept,
/// it would make the verifier walk everything after the parser once per way (about 800
/// instructions each). Through map memory, which it does not track (the stack it does, so
/// `black_box` would not do), they all come out alike.
#[inline(always)]
fn forget(scratch: *mut Scratch, v: usize, max: u64) -> Result<usize, Verdict> {
    let slot = unsafe { ptr::addr_of_mut!((*scratch).forget) };
    unsafe { ptr::write_volatile(slot, v as u64) };
    let v = unsafe { ptr::read_volatile(slot) };
    if v > max {
        // Never: it was at most `max` going in.
        return Err(Counter::Truncated.into());
    }
    Ok(v as usize)
}

/// The checksum (XXH64's low 32 bits, `chunk_common::checksum`) of the first `len` bytes of a
/// record's packet: 32-byte stripes in four lanes, then the tail. Records are 8-byte aligned and
/// so is the packet inside (after a 16-byte header), so every read is an aligned load.
///
/// Shaped for the verifier, which walks a bounded loop one iteration at a time: where the
/// stripes end and how long the tail is are computed before the loop, and the loop runs on a
/// laundered copy of its end. Leaving it, nothing the loop touched is still live, so the tail
/// is verified once rather than once per possible exit (the byte-at-a-time CRC's layout cost
/// 288 000 verified instructions at 4 KiB, too many for jumbo frames).
#[inline(always)]
fn checksum_of(p: *const u8, len: usize) -> u32 {
    let word = |i: usize| u64::from_le(unsafe { ptr::read(p.add(i) as *const u64) });
    let stripes = len & !31;
    let tail = len & 31;
    let mut h = if len >= 32 {
        // A fresh value, not a copy of `stripes`: the verifier links copies and would narrow
        // `stripes` along with the loop's bound at every exit.
        let end = black_box(len) & !31;
        let mut lanes = Lanes::new();
        let mut i = 0usize;
        while i < end && i + 32 <= MAX_PACKET_LEN {
            lanes.stripe([word(i), word(i + 8), word(i + 16), word(i + 24)]);
            i += 32;
        }
        lanes.converge()
    } else {
        checksum::SHORT_START
    };
    h = checksum::add_len(h, len as u64);
    // `stripes` is at most MAX_PACKET_LEN and the tail under 32 bytes: inside the slack.
    let t = unsafe { p.add(stripes) };
    let mut j = 0usize;
    while j + 8 <= tail {
        h = checksum::tail8(
            h,
            u64::from_le(unsafe { ptr::read(t.add(j) as *const u64) }),
        );
        j += 8;
    }
    if j + 4 <= tail {
        h = checksum::tail4(
            h,
            u32::from_le(unsafe { ptr::read(t.add(j) as *const u32) }),
        );
        j += 4;
    }
    while j < tail {
        h = checksum::tail1(h, unsafe { *t.add(j) });
        j += 1;
    }
    checksum::finish(h)
}

const _: () = assert!(MAX_PACKET_LEN + 31 <= RECORD_LEN - RECORD_HEADER_LEN + TAIL_SLACK);

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so this is never loaded.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
