//! The one way the harness joins two namespaces: a veth pair, each end optionally with an address
//! and a fixed MAC, both with the same MTU, both up. Every topology ([`crate::TwoHosts`],
//! [`crate::Routed`], [`crate::Bridged`], the benchmark's junk sender) builds its links with
//! [`veth_pair`], so a link is made the same way everywhere.

use anyhow::Result;

use crate::{Netns, mac};

/// One end of a veth pair: which namespace it lives in, its name, and what it is given.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub ns: &'a Netns,
    pub ifname: &'a str,
    /// `ADDRESS/PREFIX`; none for an end that only carries frames (a bridge port).
    pub addr: Option<&'a str>,
    /// An IPv6 `ADDRESS/PREFIX` as well (in 2001:2::/48), added without duplicate address
    /// detection so that it works at once.
    pub addr6: Option<&'a str>,
    /// A fixed MAC address (tests that build Ethernet frames by hand need to know it); none
    /// lets the kernel pick one.
    pub mac: Option<[u8; 6]>,
}

impl<'a> VethEnd<'a> {
    /// The end `ifname` in `ns`, with no address and a kernel-chosen MAC.
    pub fn new(ns: &'a Netns, ifname: &'a str) -> Self {
        VethEnd {
            ns,
            ifname,
            addr: None,
            addr6: None,
            mac: None,
        }
    }

    /// Gives the end an IPv6 address too, `ADDRESS/PREFIX`.
    pub fn addr6(self, addr6: &'a str) -> Self {
        VethEnd {
            addr6: Some(addr6),
            ..self
        }
    }

    /// Gives the end an address, `ADDRESS/PREFIX`.
    pub fn addr(self, addr: &'a str) -> Self {
        VethEnd {
            addr: Some(addr),
            ..self
        }
    }

    /// Gives the end a fixed MAC address.
    pub fn mac(self, mac: [u8; 6]) -> Self {
        VethEnd {
            mac: Some(mac),
            ..self
        }
    }
}

/// Creates the veth pair `a` — `b` (from `a`'s namespace, the peer moved into `b`'s), with `mtu`
/// on both ends (the kernel's 1500 if none), then gives each end its address and sets it up,
/// `a` first.
pub fn veth_pair(a: VethEnd, b: VethEnd, mtu: Option<u32>) -> Result<()> {
    let mtu = mtu.map(|m| m.to_string());
    // `ip link add NAME [address MAC] [mtu N] type veth peer name PEER [address MAC] [mtu N] netns NS`
    let end_args = |end: &VethEnd| -> Vec<String> {
        let mut v = vec![end.ifname.to_string()];
        if let Some(m) = &end.mac {
            v.extend(["address".into(), mac(m)]);
        }
        if let Some(m) = &mtu {
            v.extend(["mtu".into(), m.clone()]);
        }
        v
    };
    let mut args: Vec<String> = vec!["link".into(), "add".into()];
    args.extend(end_args(&a));
    args.extend(["type", "veth", "peer", "name"].map(String::from));
    args.extend(end_args(&b));
    args.extend(["netns".into(), b.ns.name().to_string()]);
    a.ns.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    for end in [a, b] {
        if let Some(addr) = end.addr {
            end.ns.ip(&["addr", "add", addr, "dev", end.ifname])?;
        }
        if let Some(addr) = end.addr6 {
            end.ns
                .ip(&["-6", "addr", "add", addr, "dev", end.ifname, "nodad"])?;
        }
        end.ns.ip(&["link", "set", end.ifname, "up"])?;
    }
    Ok(())
}

/// Turns off transmit checksum offload on `ifname` in `ns` (the ethtool ioctl, as `ethtool -K
/// IF tx off` does; the tool itself is not installed here), so the kernel fills in TCP and
/// UDP checksums before the frame leaves. Needed where frames are copied through AF_PACKET
/// (the impairment bridge): an offloaded checksum is still a partial sum when the copy is
/// taken, and the far host would drop the frame as corrupt.
pub fn tx_checksum_off(ns: &crate::Netns, ifname: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    /// `ETHTOOL_STXCSUM` from linux/ethtool.h.
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let name = ifname.to_string();
    ns.enter(move || -> Result<()> {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= ifr.ifr_name.len() {
            anyhow::bail!("interface name {name} too long");
        }
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        if rc != 0 {
            anyhow::bail!(
                "ETHTOOL_STXCSUM off on {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}
