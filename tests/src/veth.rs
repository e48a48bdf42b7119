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
            mac: None,
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
        end.ns.ip(&["link", "set", end.ifname, "up"])?;
    }
    Ok(())
}
