//! Who a packet came from and where its answers go.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// A peer: an IP address of either family and, when chunk runs over UDP (`--udp`), the UDP port
/// the peer sends from (and hears answers on). Port 0 means chunk straight over IP, where there
/// are no ports; a UDP packet from port 0 cannot be answered and never makes a peer.
///
/// Shown as `198.18.0.1` or `2001:2::1` over IP, `198.18.0.1:40000` or `[2001:2::1]:40000` over
/// UDP, and parsed back from the same text (the JSON output uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer(SocketAddr);

impl Peer {
    /// A peer reached straight over IP. An IPv4-mapped IPv6 address is taken as the IPv4
    /// address it is, so one host is one peer.
    pub fn ip(ip: IpAddr) -> Self {
        Peer(SocketAddr::new(ip.to_canonical(), 0))
    }

    /// An IPv4 peer reached straight over IP (a `const` for tests and tables).
    pub const fn ipv4(ip: Ipv4Addr) -> Self {
        Peer(SocketAddr::V4(std::net::SocketAddrV4::new(ip, 0)))
    }

    /// A peer reached over UDP, from its source address and port (which must not be 0).
    pub fn udp(addr: SocketAddr) -> Self {
        debug_assert!(addr.port() != 0, "a UDP peer has a port");
        Peer(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    }

    pub fn addr(&self) -> IpAddr {
        self.0.ip()
    }

    /// The UDP port, for a peer over UDP.
    pub fn udp_port(&self) -> Option<u16> {
        (self.0.port() != 0).then_some(self.0.port())
    }

    /// The address and port to send to (port 0 over IP).
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
}

impl From<IpAddr> for Peer {
    fn from(ip: IpAddr) -> Self {
        Peer::ip(ip)
    }
}

impl From<Ipv4Addr> for Peer {
    fn from(ip: Ipv4Addr) -> Self {
        Peer::ip(ip.into())
    }
}

impl From<Ipv6Addr> for Peer {
    fn from(ip: Ipv6Addr) -> Self {
        Peer::ip(ip.into())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.udp_port() {
            None => self.0.ip().fmt(f),
            Some(_) => self.0.fmt(f),
        }
    }
}

impl FromStr for Peer {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Peer::ip(ip)),
            Err(_) => {
                let a = s.parse::<SocketAddr>()?;
                Ok(if a.port() == 0 {
                    Peer::ip(a.ip())
                } else {
                    Peer::udp(a)
                })
            }
        }
    }
}

impl serde::Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_print_and_parse_back() {
        for (peer, text) in [
            (Peer::from(Ipv4Addr::new(198, 18, 0, 1)), "198.18.0.1"),
            (Peer::ip("2001:2::1".parse().unwrap()), "2001:2::1"),
            (
                Peer::udp("198.18.0.1:40000".parse().unwrap()),
                "198.18.0.1:40000",
            ),
            (
                Peer::udp("[2001:2::1]:40000".parse().unwrap()),
                "[2001:2::1]:40000",
            ),
        ] {
            assert_eq!(peer.to_string(), text);
            assert_eq!(text.parse::<Peer>().unwrap(), peer);
            let json = serde_json::to_string(&peer).unwrap();
            assert_eq!(serde_json::from_str::<Peer>(&json).unwrap(), peer);
        }
        assert!("nonsense".parse::<Peer>().is_err());
    }

    #[test]
    fn a_mapped_address_is_the_ipv4_peer() {
        let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
        assert_eq!(Peer::ip(mapped), Peer::from(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(
            Peer::udp(SocketAddr::new(mapped, 9)).to_string(),
            "198.18.0.1:9"
        );
    }
}
