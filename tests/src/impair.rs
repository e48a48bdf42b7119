//! A link that misbehaves on purpose: sender — bridge — receiver, where the bridge (a thread of
//! the test process inside a middle namespace) copies Ethernet frames between its two veth ends
//! through AF_PACKET sockets and, for chunk packets only, duplicates, reorders and corrupts them
//! at seeded random. `tc netem` does not exist on this kernel, so this is chunk's own netem.
//!
//! Both hosts are in one subnet (198.18.3.0/24); the bridge has no addresses and forwards every
//! frame (ARP included) verbatim, except for the impairments.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Result, bail};

use crate::{Netns, VethEnd, veth_pair};

/// What the bridge does to chunk packets, each an independent probability in 0..=1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairments {
    pub duplicate: f64,
    /// Hold a packet back and release it after the next few.
    pub reorder: f64,
    /// Flip one bit of the chunk header or payload (the receiver's CRC check must catch it).
    pub corrupt: f64,
    pub seed: u64,
    /// The IP protocol chunk uses.
    pub protocol: u8,
}

/// What the bridge did, for assertions.
#[derive(Debug, Default)]
pub struct ImpairStats {
    pub forwarded: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub corrupted: AtomicU64,
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

    fn send(&self, frame: &[u8]) {
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
                return;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::ENOBUFS) && e != Some(libc::EAGAIN) {
                return; // a real link would drop it too
            }
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
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
    while !stop.load(Ordering::Relaxed) {
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
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, 5) };
        if rc == 0 {
            // Quiet: release what was held, as a late packet.
            for (dir, h) in held.iter_mut().enumerate() {
                if let Some((f, _)) = h.take() {
                    ends[1 - dir].send(&f);
                }
            }
            continue;
        }
        for dir in 0..2 {
            let (from, to) = (&ends[dir], &ends[1 - dir]);
            for _ in 0..256 {
                let Some(n) = from.recv(&mut buf) else { break };
                let frame = &mut buf[..n];
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
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
                    to.send(frame);
                    if rng.chance(imp.duplicate) {
                        to.send(frame);
                        stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    to.send(frame);
                }
                if let Some((f, left)) = &mut held[dir] {
                    *left -= 1;
                    if *left == 0 {
                        to.send(f);
                        held[dir] = None;
                    }
                }
            }
        }
    }
    Ok(())
}
