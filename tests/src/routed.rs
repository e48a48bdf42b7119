//! Three hosts in a line, sender — router — receiver, so that the router can impair what
//! crosses it (nftables loss in its forward hook hits every send path, both ways; XDP on the
//! receiver runs before netfilter, so loss must be made before the receiver).

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{Netns, VethEnd, run, veth_pair};

/// `sender` 198.18.1.1 — `router` 198.18.1.254 / 198.18.2.254 — `receiver` 198.18.2.1.
#[derive(Debug)]
pub struct Routed {
    pub sender: Netns,
    pub router: Netns,
    pub receiver: Netns,
    pub sender_if: &'static str,
    pub receiver_if: &'static str,
    pub sender_addr: Ipv4Addr,
    pub receiver_addr: Ipv4Addr,
}

impl Routed {
    pub fn new(tag: &str) -> Result<Self> {
        Self::with_mtu(tag, None)
    }

    /// As [`Routed::new`], with `mtu` on every link (the kernel's 1500 if none).
    pub fn with_mtu(tag: &str, mtu: Option<u32>) -> Result<Self> {
        let t = Routed {
            sender: Netns::new(&format!("{tag}-s"))?,
            router: Netns::new(&format!("{tag}-x"))?,
            receiver: Netns::new(&format!("{tag}-r"))?,
            sender_if: "veth-s",
            receiver_if: "veth-r",
            sender_addr: Ipv4Addr::new(198, 18, 1, 1),
            receiver_addr: Ipv4Addr::new(198, 18, 2, 1),
        };
        let links = [
            (
                &t.sender,
                t.sender_if,
                "198.18.1.1/24",
                "xs",
                "198.18.1.254/24",
            ),
            (
                &t.receiver,
                t.receiver_if,
                "198.18.2.1/24",
                "xr",
                "198.18.2.254/24",
            ),
        ];
        for (host, host_if, host_addr, router_if, router_addr) in links {
            veth_pair(
                VethEnd::new(host, host_if).addr(host_addr),
                VethEnd::new(&t.router, router_if).addr(router_addr),
                mtu,
            )?;
            let gw = router_addr.split('/').next().expect("an address");
            host.ip(&["route", "add", "198.18.0.0/15", "via", gw])?;
        }
        t.router
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(t)
    }

    /// Drops `percent` % of chunk packets (IP protocol `protocol`) the router forwards, in each
    /// direction independently.
    pub fn set_loss(&self, protocol: u8, percent: u32) -> Result<()> {
        let script = format!(
            "table inet chunk_loss {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    meta l4proto {protocol} numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
        );
        let _ = self
            .router
            .exec("nft", &["delete", "table", "inet", "chunk_loss"]);
        let path = std::env::temp_dir().join(format!(
            "chunk-loss-{}-{}.nft",
            std::process::id(),
            self.router.name()
        ));
        std::fs::write(&path, script)?;
        let r = run(self
            .router
            .command("nft")
            .args(["-f", &path.to_string_lossy()]));
        let _ = std::fs::remove_file(&path);
        r.map(|_| ())
    }

    /// Packets the loss rule has dropped so far.
    pub fn dropped(&self) -> Result<u64> {
        let out = self
            .router
            .exec("nft", &["list", "table", "inet", "chunk_loss"])?;
        let n = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(n)
    }
}
