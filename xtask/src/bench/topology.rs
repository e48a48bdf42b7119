//! The benchmark's hosts and the router's nftables rules: `chunk_tests::Routed` (sender —
//! router — receiver) plus the junk sender behind the router (198.18.3.1 and 2001:2:0:3::1, link
//! `veth-j` — `xj`),
//! so that the router can count the flood by interface; the loss rule every tool sees; the
//! counters of junk and UDP packets forwarded and of the packets its veths sent each way; and
//! the flood itself.

use std::time::Duration;

use anyhow::Result;
use chunk_tests::{Daemon, Netns, Routed, VethEnd, veth_pair};

use super::tools::chunk::{Transport, UDP_PORT};

/// The router's ends of the links to the receiver and to the sender (`chunk_tests::Routed` names
/// them so).
const ROUTER_TO_RECEIVER: &str = "xr";
const ROUTER_TO_SENDER: &str = "xs";

pub struct Net {
    pub routed: Routed,
    pub junk: Netns,
}

impl Net {
    /// The four namespaces, every link with `mtu`, and the router's counters.
    pub fn new(mtu: u32) -> Result<Net> {
        let routed = Routed::with_mtu("bench", Some(mtu))?;
        let junk = Netns::new("bench-j")?;
        veth_pair(
            VethEnd::new(&junk, "veth-j")
                .addr("198.18.3.1/24")
                .addr6("2001:2:0:3::1/64"),
            VethEnd::new(&routed.router, "xj")
                .addr("198.18.3.254/24")
                .addr6("2001:2:0:3::fe/64"),
            Some(mtu),
        )?;
        junk.ip(&["route", "add", "198.18.0.0/15", "via", "198.18.3.254"])?;
        junk.ip(&["-6", "route", "add", "2001:2::/48", "via", "2001:2:0:3::fe"])?;
        let net = Net { routed, junk };
        net.nft(
            "count",
            "table inet bench_count {\n  chain forward {\n    \
             type filter hook forward priority -10; policy accept;\n    \
             iifname \"xj\" counter comment \"junk\"\n    \
             iifname \"xs\" meta l4proto udp counter comment \"udp_to_receiver\"\n  }\n}\n",
        )?;
        Ok(net)
    }

    /// Loads an nftables script into the router.
    fn nft(&self, name: &str, script: &str) -> Result<()> {
        let path =
            std::env::temp_dir().join(format!("chunk-bench-{}-{name}.nft", std::process::id()));
        std::fs::write(&path, script)?;
        let r = chunk_tests::run(self.routed.router.command("nft").arg("-f").arg(&path));
        let _ = std::fs::remove_file(&path);
        r.map(|_| ())
    }

    /// Drops `percent` % of every packet (IPv4 or IPv6) the router forwards, each way, whatever
    /// its protocol: the same loss for every tool and transport.
    ///
    /// Per packet on the wire: veth passes TCP's segmentation-offload packets (tens of kilobytes,
    /// dozens of segments) through the router whole, so one drop there would be a burst of
    /// dozens of lost segments, which no real link does to TCP (a NIC segments before the wire).
    /// With loss on, the hosts' links carry one segment per packet (`gso_max_segs 1`).
    pub fn set_loss(&self, percent: u32) -> Result<()> {
        let _ = self
            .routed
            .router
            .exec("nft", &["delete", "table", "inet", "bench_loss"]);
        let segs = if percent == 0 { "65535" } else { "1" };
        for (host, dev) in [
            (&self.routed.sender, self.routed.sender_if),
            (&self.routed.receiver, self.routed.receiver_if),
        ] {
            host.ip(&["link", "set", "dev", dev, "gso_max_segs", segs])?;
        }
        if percent == 0 {
            return Ok(());
        }
        self.nft(
            "loss",
            &format!(
                "table inet bench_loss {{\n  chain forward {{\n    \
                 type filter hook forward priority 0; policy accept;\n    \
                 numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
            ),
        )
    }

    /// The router's counters (before the loss rule): junk packets forwarded, UDP packets from
    /// the sender towards the receiver.
    pub fn counters(&self) -> (u64, u64) {
        let out = self
            .routed
            .router
            .exec("nft", &["list", "table", "inet", "bench_count"])
            .unwrap_or_default();
        let get = |comment: &str| {
            out.lines()
                .find(|l| l.contains(&format!("comment \"{comment}\"")))
                .and_then(|l| {
                    l.split_whitespace()
                        .skip_while(|w| *w != "packets")
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                })
                .unwrap_or(0)
        };
        (get("junk"), get("udp_to_receiver"))
    }

    /// Packets the router has sent on its veth towards the receiver (`xr`: the data, and in a
    /// flood the junk too) and towards the sender (`xs`: the acks), from the interfaces' own
    /// counters; `None` if they cannot be read. `ip netns exec` mounts the namespace's own
    /// `/sys`, so one `cat` reads both.
    pub fn link_packets(&self) -> Option<(u64, u64)> {
        let r = &self.routed;
        let path = |dev: &str| format!("/sys/class/net/{dev}/statistics/tx_packets");
        let (to_receiver, to_sender) = (path(ROUTER_TO_RECEIVER), path(ROUTER_TO_SENDER));
        let out = r.router.exec("cat", &[&to_receiver, &to_sender]).ok()?;
        let mut n = out.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some((n.next()??, n.next()??))
    }

    /// A junk flood from the junk sender: corrupt chunks and foreign packets (chunk's IP
    /// protocol or UDP port, another magic) of full size, as fast as `chunk probe` sends, until
    /// dropped; in the family and transport of the tool under test (`transport`), so that the
    /// receiver's checks see the junk that tool's packets meet.
    pub fn flood(&self, bin: &str, mtu: u32, transport: Transport) -> Result<Daemon> {
        let mut c = self.junk.command(bin);
        let to = if transport.ipv6 {
            self.routed.receiver_addr6.to_string()
        } else {
            self.routed.receiver_addr.to_string()
        };
        // The largest chunk the link carries: the MTU less the IP, UDP and chunk headers.
        let headers = if transport.ipv6 { 40 } else { 20 }
            + if transport.udp { 8 } else { 0 }
            + chunk_common::wire::HEADER_LEN as u32;
        let size = (mtu - headers).to_string();
        c.args([
            "probe",
            "--to",
            &to,
            "--count",
            "0",
            "--corrupt",
            "2000000000",
            "--foreign",
            "2000000000",
            "--size",
            &size,
        ]);
        if transport.udp {
            c.args(["--udp", UDP_PORT]);
        }
        let d = Daemon::spawn(c, "junk flood")?;
        // Let it reach its full rate before the transfer starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(d)
    }
}
