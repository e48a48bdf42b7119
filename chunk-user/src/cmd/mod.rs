//! The `chunk` subcommands, one module each. Each has an `Args` struct (clap) and a `run`.

pub mod listen;
pub mod probe;
pub mod recv;
pub mod send;
pub mod sim;
pub mod stats;
pub mod xdp_cost;

use std::net::{IpAddr, ToSocketAddrs};

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
