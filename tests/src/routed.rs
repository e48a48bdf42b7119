//! Three hosts in a line, sender — router — receiver, so that the router can impair what
//! crosses it (nftables loss in its forward hook hits every send path, both ways; XDP on the
//! receiver runs before netfilter, so loss must be made before the receiver).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use crate::{Netns, VethEnd, run, veth_pair};

/// `sender` 198.18.1.1 — `router` 198.18.1.254 / 198.18.2.254 — `receiver` 198.18.2.1, and
/// the same in IPv6: 2001:2:0:1::1 — 2001:2:0:1::fe / 2001:2:0:2::fe — 2001:2:0:2::1.
#[derive(Debug)]
pub struct Routed {
    pub sender: Netns,
    pub router: Netns,
    pub receiver: Netns,
    pub sender_if: &'static str,
    pub receiver_if: &'static str,
    pub sender_addr: Ipv4Addr,
    pub receiver_addr: Ipv4Addr,
    pub sender_addr6: Ipv6Addr,
    pub receiver_addr6: Ipv6Addr,
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
            sender_addr6: Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1),
            receiver_addr6: Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1),
        };
        let links = [
            (
                &t.sender,
                t.sender_if,
                ["198.18.1.1/24", "2001:2:0:1::1/64"],
                "xs",
                ["198.18.1.254/24", "2001:2:0:1::fe/64"],
            ),
            (
                &t.receiver,
                t.receiver_if,
                ["198.18.2.1/24", "2001:2:0:2::1/64"],
                "xr",
                ["198.18.2.254/24", "2001:2:0:2::fe/64"],
            ),
        ];
        for (host, host_if, [host_addr, host_addr6], router_if, [router_addr, router_addr6]) in
            links
        {
            veth_pair(
                VethEnd::new(host, host_if)
                    .addr(host_addr)
                    .addr6(host_addr6),
                VethEnd::new(&t.router, router_if)
                    .addr(router_addr)
                    .addr6(router_addr6),
                mtu,
            )?;
            let gw = router_addr.split('/').next().expect("an address");
            host.ip(&["route", "add", "198.18.0.0/15", "via", gw])?;
            let gw6 = router_addr6.split('/').next().expect("an address");
            host.ip(&["-6", "route", "add", "2001:2::/48", "via", gw6])?;
        }
        t.router
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        t.router
            .exec("sysctl", &["-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(t)
    }

    /// Drops `percent` % of chunk packets (IP protocol `protocol`, IPv4 and IPv6) the router
    /// forwards, in each direction independently.
    pub fn set_loss(&self, protocol: u8, percent: u32) -> Result<()> {
        self.set_loss_of(&[format!("meta l4proto {protocol}")], percent)
    }

    /// Drops `percent` % of the UDP datagrams to or from `port` (chunk over UDP) the router
    /// forwards, in each direction independently.
    pub fn set_udp_loss(&self, port: u16, percent: u32) -> Result<()> {
        self.set_loss_of(
            &[format!("udp dport {port}"), format!("udp sport {port}")],
            percent,
        )
    }

    /// Drops `percent` % of the packets each of the nftables `matches` selects (a packet that
    /// two select gets two chances).
    ///
    /// The hosts' links then carry one packet per buffer (`gso_max_segs 1`), as a wire does:
    /// between namespaces a segmentation-offload buffer (TCP's, or chunk's runs of UDP
    /// datagrams) would otherwise cross the router whole, and one rule verdict would drop tens
    /// of packets at once.
    fn set_loss_of(&self, matches: &[String], percent: u32) -> Result<()> {
        for (host, dev) in [
            (&self.sender, self.sender_if),
            (&self.receiver, self.receiver_if),
        ] {
            host.ip(&["link", "set", "dev", dev, "gso_max_segs", "1"])?;
        }
        let rules: String = matches
            .iter()
            .map(|m| format!("    {m} numgen random mod 100 < {percent} counter drop\n"))
            .collect();
        let script = format!(
            "table inet chunk_loss {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        self.load_table("chunk_loss", &script)
    }

    /// Replaces the router's nftables table `inet NAME` with `script`.
    fn load_table(&self, name: &str, script: &str) -> Result<()> {
        let _ = self.router.exec("nft", &["delete", "table", "inet", name]);
        let path = std::env::temp_dir().join(format!(
            "{name}-{}-{}.nft",
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

    /// Packets the loss rules have dropped so far.
    pub fn dropped(&self) -> Result<u64> {
        let out = self
            .router
            .exec("nft", &["list", "table", "inet", "chunk_loss"])?;
        Ok(packets_counted(&out))
    }

    /// Makes the router a masquerading NAT for the sender's side, as a home router or a cloud's
    /// NAT gateway is: what the sender sends towards the receiver leaves with the router's
    /// address (and, for UDP, a port of the router's choosing), and the router forwards only
    /// TCP, UDP and ICMP, as such boxes and security groups commonly do, dropping other IP
    /// protocols (counted: [`Routed::nat_dropped`]).
    pub fn set_nat(&self) -> Result<()> {
        let script = "table inet chunk_nat {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    meta l4proto { tcp, udp, icmp, ipv6-icmp } accept
    counter drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname \"xs\" oifname \"xr\" masquerade random
  }
}
";
        self.load_table("chunk_nat", script)
    }

    /// Packets the NAT's filter dropped (protocols other than TCP, UDP and ICMP).
    pub fn nat_dropped(&self) -> Result<u64> {
        let out = self
            .router
            .exec("nft", &["list", "chain", "inet", "chunk_nat", "forward"])?;
        Ok(packets_counted(&out))
    }
}

/// The sum of the `counter packets N` of an `nft list` output.
fn packets_counted(listing: &str) -> u64 {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum()
}
