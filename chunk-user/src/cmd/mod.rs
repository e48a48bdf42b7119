//! The `chunk` subcommands, one module each. Each has an `Args` struct (clap) and a `run`.

pub mod aead_cost;
pub mod keygen;
pub mod listen;
mod prefetch;
pub mod probe;
pub mod recv;
pub mod send;
pub mod sim;
pub mod stats;
pub mod tree;
pub mod xdp_cost;

use std::net::{IpAddr, ToSocketAddrs};

/// Where a sending command sends: `--to HOST`, the family it may resolve to, and the transport.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// The receiving host (where `chunk recv` runs): an IPv4 or IPv6 address, or a host name.
    #[arg(long, value_name = "HOST")]
    pub to: String,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Send in UDP datagrams to this port of the receiver (which needs `--udp PORT` too),
    /// rather than straight over IP: for paths through a NAT, or firewalls and cloud security
    /// groups that pass only TCP, UDP and ICMP.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub udp: Option<u16>,
    /// The IP protocol number (IPv6 next header) chunk packets use without --udp.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL,
          value_parser = crate::net::rx::parse_protocol)]
    pub protocol: u8,
}

impl TargetArgs {
    /// The receiver's address (resolved) and how to reach it.
    pub fn resolve(&self) -> anyhow::Result<(IpAddr, crate::net::raw::Transport)> {
        let to = resolve(&self.to, self.family)?;
        let transport = match self.udp {
            Some(port) => crate::net::raw::Transport::Udp(port),
            None => crate::net::raw::Transport::Ip(self.protocol),
        };
        Ok((to, transport))
    }
}

/// Which address family `--to` may resolve to.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct FamilyArgs {
    /// Use IPv4 only (when the host name has addresses of both families).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

/// `--to HOST`: an IPv4 or IPv6 address, or a host name, resolved to its first address of an
/// allowed family (in the resolver's order, which prefers what the host can reach, RFC 6724).
pub fn resolve(host: &str, family: FamilyArgs) -> anyhow::Result<IpAddr> {
    let want = |a: &IpAddr| !(family.ipv4 && a.is_ipv6() || family.ipv6 && a.is_ipv4());
    // A literal, with or without brackets, is taken as it is.
    if let Ok(a) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        let a = a.to_canonical();
        anyhow::ensure!(
            want(&a),
            "{host} is an {} address, but {} was asked for",
            if a.is_ipv6() { "IPv6" } else { "IPv4" },
            if family.ipv4 { "IPv4" } else { "IPv6" }
        );
        return Ok(a);
    }
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
        .map(|a| a.ip().to_canonical())
        .collect();
    addrs.iter().copied().find(want).ok_or_else(|| {
        anyhow::anyhow!(
            "{host} has no {} address (it resolves to {addrs:?})",
            if family.ipv4 { "IPv4" } else { "IPv6" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_to_themselves_and_families_are_enforced() {
        let any = FamilyArgs::default();
        let v4 = FamilyArgs {
            ipv4: true,
            ipv6: false,
        };
        let v6 = FamilyArgs {
            ipv4: false,
            ipv6: true,
        };
        assert_eq!(
            resolve("198.18.0.2", any).unwrap(),
            "198.18.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve("[2001:2::2]", v6).unwrap(),
            "2001:2::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve("::ffff:198.18.0.2", v4).unwrap(),
            "198.18.0.2".parse::<IpAddr>().unwrap()
        );
        assert!(resolve("2001:2::2", v4).is_err());
        assert!(resolve("198.18.0.2", v6).is_err());
        // `localhost` resolves from /etc/hosts, without a network.
        assert!(resolve("localhost", v4).unwrap().is_loopback());
        assert!(resolve("no-such-host.invalid", any).is_err());
    }
}
