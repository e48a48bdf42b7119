//! A link that misbehaves on purpose: sender — bridge — receiver, where the bridge (a thread of
//! the test process inside a middle namespace) copies Ethernet frames between its two veth ends
//! through AF_PACKET sockets and, for chunk packets only, duplicates, reorders and corrupts them
//! at seeded random. `tc netem` does not exist on this kernel, so this is chunk's own netem.
//!
//! It is also a delay line, for every frame whatever its protocol, each direction on its own: a
//! bottleneck of `rate_bps` with a drop-tail queue of `queue_bytes` (a frame that finds the queue
//! full is dropped), then a one-way `delay` plus up to `jitter` (frames keep their order), and
//! random loss, independent (`loss`) or in bursts (a Gilbert–Elliott chain: from the good state
//! to the bad one with probability `burst.0` per slot of the link, back with `burst.1`; every
//! frame is lost in the bad state; see [`BURST_SLOT_BYTES`]). Its ceiling is that of one userspace thread copying frames: a few hundred
//! thousand frames per second, far above the rates the tests ask of it.
//!
//! Both hosts are in one subnet (198.18.3.0/24); the bridge has no addresses and forwards every
//! frame verbatim, except for the impairments; ARP and IPv6 neighbour discovery pass at once,
//! unimpaired (a host resolves its next hop on its own LAN, not across the long path).

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Netns, VethEnd, veth_pair};

/// What the bridge does to chunk packets, each an independent probability in 0..=1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairments {
    pub duplicate: f64,
    /// Hold a packet back and release it after the next few.
    pub reorder: f64,
    /// Flip one bit of the chunk header or payload (the receiver's checksum check must catch it).
    pub corrupt: f64,
    pub seed: u64,
    /// The IP protocol chunk uses.
    pub protocol: u8,
    /// The delay line, applied to every frame in each direction (see the module comment).
    pub delay: Duration,
    pub jitter: Duration,
    /// Bits per second of the bottleneck; 0: no rate limit and no queue.
    pub rate_bps: u64,
    /// Bytes the bottleneck's queue holds (0 with a rate: one bandwidth-delay product of the
    /// round trip, at least 64 KiB).
    pub queue_bytes: u64,
    /// Probability that a frame is lost, in the good state of the burst chain.
    pub loss: f64,
    /// Gilbert–Elliott burst loss: (good → bad, bad → good) per slot of the link (per frame
    /// without a rate; see [`BURST_SLOT_BYTES`]).
    pub burst: Option<(f64, f64)>,
    /// Count the bytes each flow delivers towards the receiver ([`ImpairStats::flows`]).
    pub count_flows: bool,
}

/// What the bridge did, for assertions.
#[derive(Debug, Default)]
pub struct ImpairStats {
    pub forwarded: AtomicU64,
    /// Lost at random or in a burst.
    pub lost: AtomicU64,
    /// Dropped because the bottleneck's queue was full.
    pub queue_drops: AtomicU64,
    /// The deepest the bottleneck's queue got, bytes.
    pub peak_queue_bytes: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub corrupted: AtomicU64,
    /// The same, and more, for each direction on its own: [`TO_RECEIVER`] and [`TO_SENDER`].
    pub dirs: [DirStats; 2],
    /// With [`Impairments::count_flows`]: the wire bytes each flow delivered towards the
    /// receiver, by [`flow_key`].
    pub flows: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

/// [`ImpairStats::dirs`]' index of the direction sender → receiver.
pub const TO_RECEIVER: usize = 0;
/// [`ImpairStats::dirs`]' index of the direction receiver → sender.
pub const TO_SENDER: usize = 1;

/// What one direction of the bridge did.
#[derive(Debug, Default)]
pub struct DirStats {
    /// Frames that left the delay line at the far end.
    pub delivered: AtomicU64,
    /// Their bytes as the bottleneck counts them: the frame plus 24 bytes of preamble, gap and
    /// FCS ([`WIRE_OVERHEAD`]).
    pub delivered_wire_bytes: AtomicU64,
    pub lost: AtomicU64,
    pub queue_drops: AtomicU64,
    pub peak_queue_bytes: AtomicU64,
    /// The queue's depth after the latest frame joined it.
    pub queue_bytes: AtomicU64,
}

/// Bytes a frame costs on the wire beyond its own: preamble and start delimiter (8),
/// inter-frame gap (12) and FCS (4).
pub const WIRE_OVERHEAD: u64 = 24;

/// The burst chain's clock on a rate-limited line: it moves once per slot, the time a full frame
/// of a 1500-byte MTU takes on the wire (1538 bytes) at the line's rate, and at least once per
/// frame. A burst is a stretch of the link's time, as a fade or a collision is, and hits every
/// frame in it: a direction busy with a full link's frames sees bursts of `1 / burst.1` frames,
/// one that carries a frame now and then (acks, a handshake) sees each about as often as the
/// loss rate says. Moved per frame instead, a burst that began on such a direction stayed for
/// its next few frames however far apart they were: seconds of a handshake's backoff.
pub const BURST_SLOT_BYTES: u64 = 1538;

/// The probability that a Gilbert–Elliott chain (good → bad `to_bad`, bad → good `to_good` per
/// step) is in its bad state `steps` steps after being in `bad`: the stationary share
/// `to_bad / (to_bad + to_good)` plus the start's difference from it, decaying by
/// `1 − to_bad − to_good` a step. The simulator has the same function (in chunk-user's
/// `proto::sim`, which this harness does not depend on): the two must move their chains alike
/// for the benchmark's real and simulated figures to agree.
pub fn burst_chain_bad(bad: bool, (to_bad, to_good): (f64, f64), steps: u64) -> f64 {
    let sum = to_bad + to_good;
    if sum <= 0.0 {
        return if bad { 1.0 } else { 0.0 };
    }
    let stationary = to_bad / sum;
    let lambda = 1.0 - sum;
    let odd = steps % 2 == 1;
    let decay = lambda.abs().powf(steps as f64) * if lambda < 0.0 && odd { -1.0 } else { 1.0 };
    (stationary + (f64::from(u8::from(bad)) - stationary) * decay).clamp(0.0, 1.0)
}

/// A flow's key for [`ImpairStats::flows`]: the IP protocol in the top byte and, below it,
/// the TCP or UDP ports (source, destination), or a chunk packet's transfer id; 0 for a frame
/// that is not IPv4.
pub fn flow_key(frame: &[u8], chunk_protocol: u8) -> u64 {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return 0;
    }
    let proto = frame[14 + 9];
    let l4 = 14 + (frame[14] & 0x0f) as usize * 4;
    let word = |at: usize| {
        frame
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let id = if proto == chunk_protocol {
        word(l4 + 8)
    } else if proto == libc::IPPROTO_TCP as u8 || proto == libc::IPPROTO_UDP as u8 {
        word(l4)
    } else {
        0
    };
    (u64::from(proto) << 56) | u64::from(id)
}

/// `sender` 198.18.3.1 — bridge — `receiver` 198.18.3.2.
pub struct Bridged {
    pub sender: Netns,
    pub receiver: Netns,
    pub sender_if: &'static str,
    pub receiver_if: &'static str,
    pub sender_addr: Ipv4Addr,
    pub receiver_addr: Ipv4Addr,
    pub stats: Arc<ImpairStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    // Dropped last: the namespaces outlive the thread.
    bridge: Netns,
}

impl Bridged {
    pub fn new(tag: &str, imp: Impairments) -> Result<Self> {
        let sender = Netns::new(&format!("{tag}-s"))?;
        let bridge = Netns::new(&format!("{tag}-b"))?;
        let receiver = Netns::new(&format!("{tag}-r"))?;
        for (host, host_if, addr, br_if) in [
            (&sender, "veth-s", "198.18.3.1/24", "bx-s"),
            (&receiver, "veth-r", "198.18.3.2/24", "bx-r"),
        ] {
            veth_pair(
                VethEnd::new(host, host_if).addr(addr),
                VethEnd::new(&bridge, br_if),
                None,
            )?;
            // One segment per frame: the bridge forwards frames of the link's MTU, and TCP's
            // segmentation-offload packets (tens of kilobytes) would not fit the far veth.
            // And whole checksums: the bridge's copy of an offloaded one is a partial sum.
            host.ip(&["link", "set", "dev", host_if, "gso_max_segs", "1"])?;
            crate::veth::tx_checksum_off(host, host_if)?;
        }
        let stats = Arc::new(ImpairStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let ns_path = format!("/run/netns/{}", bridge.name());
        let (st, sp) = (stats.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<()> {
            let f = std::fs::File::open(&ns_path)?;
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = ready_tx.send(Err(format!("setns: {e}")));
                bail!("setns: {e}");
            }
            let ends = match (Port::open("bx-s"), Port::open("bx-r")) {
                (Ok(a), Ok(b)) => [a, b],
                (Err(e), _) | (_, Err(e)) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(()));
            run_bridge(&ends, imp, &st, &sp)
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("bridge: {e}"),
            Err(_) => bail!("bridge thread died"),
        }
        Ok(Bridged {
            sender,
            receiver,
            sender_if: "veth-s",
            receiver_if: "veth-r",
            sender_addr: Ipv4Addr::new(198, 18, 3, 1),
            receiver_addr: Ipv4Addr::new(198, 18, 3, 2),
            stats,
            stop,
            thread: Some(thread),
            bridge,
        })
    }

    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }
}

impl Drop for Bridged {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One AF_PACKET socket bound to one interface.
struct Port {
    fd: OwnedFd,
    ifindex: i32,
}

impl Port {
    fn open(ifname: &str) -> Result<Port> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname)?;
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("bind to {ifname}: {}", std::io::Error::last_os_error());
        }
        for (opt, v) in [(libc::SO_RCVBUF, 8 << 20), (libc::SO_SNDBUF, 8 << 20)] {
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const i32).cast(),
                    4,
                )
            };
        }
        Ok(Port { fd, ifindex })
    }

    /// A frame that arrived on this interface (not one we sent out of it).
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(n as usize);
        }
    }

    /// Sends `frame` out of this interface; false when the kernel would not take it.
    fn send(&self, frame: &[u8]) -> bool {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..1000 {
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc >= 0 {
                return true;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::ENOBUFS) && e != Some(libc::EAGAIN) {
                return false; // a real link would drop it too
            }
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        false
    }
}

/// xorshift64*: seeded, reproducible, good enough to pick impairments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Offset of the IPv4 payload if `frame` is an unfragmented-or-not IPv4 packet of `protocol`.
fn chunk_payload(frame: &[u8], protocol: u8) -> Option<usize> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != protocol {
        return None;
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    (frame.len() > 14 + ihl).then_some(14 + ihl)
}

/// One direction of the delay line.
#[derive(Default)]
struct Line {
    /// Frames on their way, in order: when each leaves the line, and the frame.
    frames: VecDeque<(Instant, Vec<u8>)>,
    /// Frames still in the bottleneck's queue: when each has been sent, and its bytes.
    queue: VecDeque<(Instant, u64)>,
    queued: u64,
    /// When the bottleneck is free again.
    busy_until: Option<Instant>,
    /// The burst chain is in its bad state.
    bad: bool,
    /// The burst chain's clock: when the line's first frame came, and the latest slot (since
    /// then) a frame came in.
    chain_start: Option<Instant>,
    chain_slot: u64,
}

impl Line {
    /// Moves the burst chain to `now` (see [`BURST_SLOT_BYTES`]) with one draw.
    fn step_chain(&mut self, now: Instant, imp: &Impairments, rng: &mut Rng) {
        let Some(chain) = imp.burst else {
            return;
        };
        let slot = (BURST_SLOT_BYTES * 8 * 1_000_000_000).checked_div(imp.rate_bps);
        let steps = if let Some(slot) = slot {
            let slot_ns = slot.max(1);
            let start = *self.chain_start.get_or_insert(now);
            let due = (now.duration_since(start).as_nanos() / u128::from(slot_ns)) as u64;
            // The slots since the last frame's, or one step for a frame in the same slot (a
            // frame's own step is not owed back by the frames after it).
            let steps = due.saturating_sub(self.chain_slot).max(1);
            self.chain_slot = self.chain_slot.max(due);
            steps
        } else {
            1
        };
        self.bad = rng.chance(burst_chain_bad(self.bad, chain, steps));
    }

    /// Bytes still waiting in the bottleneck's queue at `now`.
    fn queued_bytes(&mut self, now: Instant) -> u64 {
        while let Some(&(done, len)) = self.queue.front() {
            if done > now {
                break;
            }
            self.queue.pop_front();
            self.queued -= len;
        }
        self.queued
    }
}

fn run_bridge(
    ends: &[Port; 2],
    imp: Impairments,
    stats: &ImpairStats,
    stop: &AtomicBool,
) -> Result<()> {
    let mut rng = Rng(imp.seed | 1);
    let mut buf = vec![0u8; 65536];
    // Per direction: a held-back frame and how many frames to let pass before it.
    let mut held: [Option<(Vec<u8>, u32)>; 2] = [None, None];
    let delays = !imp.delay.is_zero() || !imp.jitter.is_zero() || imp.rate_bps > 0;
    let queue_limit = match (imp.rate_bps, imp.queue_bytes) {
        (0, _) => u64::MAX,
        (rate, 0) => ((rate as f64 / 8.0 * 2.0 * imp.delay.as_secs_f64()) as u64).max(64 << 10),
        (_, q) => q,
    };
    let mut lines = [Line::default(), Line::default()];
    while !stop.load(Ordering::Relaxed) {
        // Frames due now leave; the wait is until the next one is due (or 5 ms).
        let now = Instant::now();
        let mut next_due = now + Duration::from_millis(5);
        for (dir, line) in lines.iter_mut().enumerate() {
            while line.frames.front().is_some_and(|(at, _)| *at <= now) {
                let (_, f) = line.frames.pop_front().expect("a frame is due");
                if ends[1 - dir].send(&f) {
                    delivered(stats, dir, &f, &imp);
                }
            }
            if let Some((at, _)) = line.frames.front() {
                next_due = next_due.min(*at);
            }
        }
        let wait = next_due.saturating_duration_since(now);
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: ends[0].fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ends[1].fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if rc == 0 {
            // Quiet: release what was held, as a late packet.
            for (dir, h) in held.iter_mut().enumerate() {
                if let Some((f, _)) = h.take()
                    && ends[1 - dir].send(&f)
                {
                    delivered(stats, dir, &f, &imp);
                }
            }
            continue;
        }
        for dir in 0..2 {
            let from = &ends[dir];
            for _ in 0..256 {
                let Some(n) = from.recv(&mut buf) else { break };
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                let mut out: Vec<Vec<u8>> = Vec::with_capacity(2);
                let frame = &mut buf[..n];
                if resolves_a_neighbour(frame) {
                    if ends[1 - dir].send(frame) {
                        delivered(stats, dir, frame, &imp);
                    }
                    continue;
                }
                if let Some(off) = chunk_payload(frame, imp.protocol) {
                    if rng.chance(imp.corrupt) {
                        let bit = rng.next() as usize % ((n - off) * 8);
                        frame[off + bit / 8] ^= 1 << (bit % 8);
                        stats.corrupted.fetch_add(1, Ordering::Relaxed);
                    }
                    if held[dir].is_none() && rng.chance(imp.reorder) {
                        held[dir] = Some((frame.to_vec(), 1 + (rng.next() % 4) as u32));
                        stats.reordered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out.push(frame.to_vec());
                    if rng.chance(imp.duplicate) {
                        out.push(frame.to_vec());
                        stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    out.push(frame.to_vec());
                }
                if let Some((f, left)) = &mut held[dir] {
                    *left -= 1;
                    if *left == 0 {
                        out.push(std::mem::take(f));
                        held[dir] = None;
                    }
                }
                for f in out {
                    line_in(
                        &mut lines[dir],
                        dir,
                        f,
                        &imp,
                        queue_limit,
                        &mut rng,
                        stats,
                        delays,
                        |f| {
                            if ends[1 - dir].send(f) {
                                delivered(stats, dir, f, &imp);
                            }
                        },
                    );
                }
            }
        }
    }
    Ok(())
}

/// ARP, and IPv6 neighbour discovery (ICMPv6 router and neighbour solicitations and
/// advertisements, redirects: types 133 to 137): the bridge passes them at once, unimpaired.
/// A host resolves its next hop across its own LAN; the long, lossy path begins past it. Through
/// the delay line, every first packet to a new neighbour waited a round trip of it on the
/// sending host (in the neighbour table's queue), which no real path costs.
fn resolves_a_neighbour(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => true,
        Some([0x86, 0xdd]) => {
            frame.get(14 + 6) == Some(&58)
                && frame.get(14 + 40).is_some_and(|t| (133..=137).contains(t))
        }
        _ => false,
    }
}

/// Counts a frame that left direction `dir` at the far end.
fn delivered(stats: &ImpairStats, dir: usize, frame: &[u8], imp: &Impairments) {
    let d = &stats.dirs[dir];
    let wire = frame.len() as u64 + WIRE_OVERHEAD;
    d.delivered.fetch_add(1, Ordering::Relaxed);
    d.delivered_wire_bytes.fetch_add(wire, Ordering::Relaxed);
    if imp.count_flows && dir == TO_RECEIVER {
        let mut flows = stats.flows.lock().unwrap_or_else(|p| p.into_inner());
        *flows.entry(flow_key(frame, imp.protocol)).or_default() += wire;
    }
}

/// One frame into a direction's delay line: lost, dropped by a full queue, sent at once (no
/// delay line configured), or queued to leave when the bottleneck and the delay let it.
#[allow(clippy::too_many_arguments)]
fn line_in(
    line: &mut Line,
    dir: usize,
    frame: Vec<u8>,
    imp: &Impairments,
    queue_limit: u64,
    rng: &mut Rng,
    stats: &ImpairStats,
    delays: bool,
    send_now: impl FnOnce(&[u8]),
) {
    let now = Instant::now();
    line.step_chain(now, imp, rng);
    if line.bad || rng.chance(imp.loss) {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        stats.dirs[dir].lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !delays {
        send_now(&frame);
        return;
    }
    let done = if imp.rate_bps > 0 {
        let queued = line.queued_bytes(now);
        if queued + frame.len() as u64 > queue_limit {
            stats.queue_drops.fetch_add(1, Ordering::Relaxed);
            stats.dirs[dir].queue_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let depth = queued + frame.len() as u64;
        stats.peak_queue_bytes.fetch_max(depth, Ordering::Relaxed);
        stats.dirs[dir]
            .peak_queue_bytes
            .fetch_max(depth, Ordering::Relaxed);
        stats.dirs[dir].queue_bytes.store(depth, Ordering::Relaxed);
        let bits = (frame.len() as u64 + WIRE_OVERHEAD) * 8;
        let start = line.busy_until.map_or(now, |b| b.max(now));
        let done = start + Duration::from_secs_f64(bits as f64 / imp.rate_bps as f64);
        line.busy_until = Some(done);
        line.queue.push_back((done, frame.len() as u64));
        line.queued += frame.len() as u64;
        done
    } else {
        now
    };
    let jitter = if imp.jitter.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(rng.next() % imp.jitter.as_nanos() as u64)
    };
    // Frames keep their order through the line: jitter never lets one overtake another.
    let at = (done + imp.delay + jitter).max(line.frames.back().map_or(now, |(a, _)| *a));
    line.frames.push_back((at, frame));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_chain_after_some_steps() {
        let chain = (0.0025, 0.25);
        let stationary = 0.0025 / 0.2525;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // One step is one transition.
        assert!(close(burst_chain_bad(true, chain, 1), 0.75));
        assert!(close(burst_chain_bad(false, chain, 1), 0.0025));
        // Two: bad → bad → bad or bad → good → bad.
        let two = 0.75 * 0.75 + 0.25 * 0.0025;
        assert!(close(burst_chain_bad(true, chain, 2), two));
        // Long after, the stationary share whatever the start.
        assert!(close(burst_chain_bad(true, chain, 10_000), stationary));
        assert!(close(burst_chain_bad(false, chain, 10_000), stationary));
        // A chain that never moves stays; one that always flips alternates.
        assert_eq!(burst_chain_bad(true, (0.0, 0.0), 5), 1.0);
        assert!(close(burst_chain_bad(true, (1.0, 1.0), 3), 0.0));
        assert!(close(burst_chain_bad(true, (1.0, 1.0), 4), 1.0));
    }

    /// Frames a slot apart see bursts of `1 / to_good` frames; frames far apart (an ack now and
    /// then) see independent losses at the same rate, not the bursts of the frames before.
    #[test]
    fn bursts_are_of_the_links_time() {
        let chain = (0.01, 0.25);
        let imp = Impairments {
            rate_bps: 100_000_000,
            burst: Some(chain),
            ..Impairments::default()
        };
        let slot = Duration::from_nanos(BURST_SLOT_BYTES * 8 * 10);
        let stationary = 0.01 / 0.26;
        for (gap, run_lo, run_hi) in [(slot, 3.6, 4.4), (slot * 1000, 1.0, 1.1)] {
            let mut line = Line::default();
            let mut rng = Rng(7);
            // A busy spell first, frames half a slot apart: the chain's clock keeps up with
            // the link's, so the sparse frames after it are far apart to the chain too.
            let mut t0 = Instant::now();
            for i in 0..10_000 {
                line.step_chain(t0 + slot / 2 * i, &imp, &mut rng);
            }
            // One step per frame, but the clock is the link's: 4999 slots, not 10 000.
            assert_eq!(line.chain_slot, 4_999);
            t0 += slot * 5_000 + gap;
            let (mut lost, mut runs, mut in_run) = (0u32, 0u32, false);
            const N: u32 = 200_000;
            for i in 0..N {
                line.step_chain(t0 + gap * i, &imp, &mut rng);
                if line.bad && !in_run {
                    runs += 1;
                }
                lost += u32::from(line.bad);
                in_run = line.bad;
            }
            let rate = f64::from(lost) / f64::from(N);
            assert!(
                (rate / stationary - 1.0).abs() < 0.1,
                "{gap:?}: rate {rate}"
            );
            let run = f64::from(lost) / f64::from(runs);
            assert!((run_lo..run_hi).contains(&run), "{gap:?}: runs of {run}");
        }
    }
}
