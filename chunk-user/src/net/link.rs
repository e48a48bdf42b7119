//! What the kernel says about an interface, over rtnetlink: its index, which XDP program (if
//! any) is attached to it, and for the sender's packet socket the route to a host, its next
//! hop's Ethernet address and the interface's MTU. The answer is the kernel's own, so it holds
//! whoever attached the program (chunk, `ip link`, another loader) and from any mount namespace.

use std::{ffi::CString, io, mem::size_of};

/// `IFLA_XDP` and its nested attributes (linux/if_link.h).
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_DRV_PROG_ID: u16 = 7;
const IFLA_XDP_HW_PROG_ID: u16 = 8;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// An XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub prog_id: u32,
    /// "driver", "skb", "hardware" or "multi".
    pub mode: &'static str,
}

/// The interface's index, or `None` if there is no such interface.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// The XDP program attached to interface `ifindex`, if any.
pub fn xdp_attached(ifindex: u32) -> io::Result<Option<Attached>> {
    let reply = get_link(ifindex)?;
    Ok(parse_xdp(&reply[IFINFOMSG_LEN..]))
}

/// Opens a netlink socket of `family` (0: NETLINK_ROUTE) and sends it one request: `ty` with
/// `flags` (besides NLM_F_REQUEST), a fixed header `body`, then `attrs`.
fn send_request(
    family: u32,
    ty: u16,
    flags: u16,
    body: &[u8],
    attrs: &[(u16, &[u8])],
) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
    let protocol = std::num::NonZeroU32::new(family).map(rustix::net::Protocol::from_raw);
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        protocol,
    )?;
    let mut msg = vec![0u8; size_of::<libc::nlmsghdr>()];
    msg.extend_from_slice(body);
    for (t, v) in attrs {
        msg.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        msg.extend_from_slice(&t.to_ne_bytes());
        msg.extend_from_slice(v);
        msg.resize((msg.len() + 3) & !3, 0);
    }
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&ty.to_ne_bytes());
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    rustix::net::send(&sock, &msg, SendFlags::empty())?;
    Ok(sock)
}

/// Sends one rtnetlink request (`ty`, a fixed header `body`, then `attrs`) and returns the
/// reply's type and payload (what follows its `nlmsghdr`). An error reply is the error.
fn request(ty: u16, body: &[u8], attrs: &[(u16, &[u8])]) -> io::Result<(u16, Vec<u8>)> {
    use rustix::net::RecvFlags;
    let sock = send_request(0, ty, 0, body, attrs)?;
    let hdr_len = size_of::<libc::nlmsghdr>();
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty())?;
    buf.truncate(n);
    if buf.len() < hdr_len {
        return Err(io::Error::other("short netlink reply"));
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let code = buf
            .get(16..20)
            .map_or(0, |c| i32::from_ne_bytes(c.try_into().unwrap()));
        return Err(io::Error::from_raw_os_error(-code));
    }
    let len = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
    Ok((ty, buf[hdr_len.min(len)..len].to_vec()))
}

/// Sends RTM_GETLINK for one interface and returns the reply's payload (the `ifinfomsg`, then
/// its attributes).
fn get_link(ifindex: u32) -> io::Result<Vec<u8>> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut ifi = [0u8; 16];
    ifi[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let (ty, reply) = request(libc::RTM_GETLINK, &ifi, &[])?;
    if ty != libc::RTM_NEWLINK || reply.len() < IFINFOMSG_LEN {
        return Err(io::Error::other("unexpected netlink reply"));
    }
    Ok(reply)
}

const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const IFLA_MTU: u16 = 4;
const IFLA_ADDRESS: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_VIA: u16 = 18;
const RTAX_MTU: u16 = 2;
const RTAX_HOPLIMIT: u16 = 10;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose link-layer address can be used (`NUD_VALID`): reachable, stale,
/// delay, probe, noarp, permanent. Not incomplete or failed.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
const ARPHRD_ETHER: u16 = 1;

/// Where the kernel sends a packet for one destination: the route's interface and next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The outgoing interface.
    pub ifindex: u32,
    /// The gateway, or `None` when the destination is on the link.
    pub gateway: Option<std::net::IpAddr>,
    /// The source address the route prefers.
    pub source: Option<std::net::IpAddr>,
    /// The route's own MTU, when it has one: a path MTU learnt from ICMP ("fragmentation
    /// needed", "packet too big"), or one set on the route (`ip route ... mtu N`).
    pub mtu: Option<u32>,
    /// The route's own hop limit (`ip route ... hoplimit N`), when it has one.
    pub hop_limit: Option<u8>,
}

impl Route {
    /// The neighbour the packet goes to on the link: the gateway, else the destination.
    pub fn next_hop(&self, dst: std::net::IpAddr) -> std::net::IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

fn ip_bytes(a: std::net::IpAddr) -> Vec<u8> {
    match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_of(v: &[u8]) -> Option<std::net::IpAddr> {
    match v.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?).into()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?).into()),
        _ => None,
    }
}

/// The unicast route from `src` to `dst` for packets of IP protocol `protocol` (`ip route get
/// DST from SRC ipproto P`, so that policy routing by protocol holds); `None` when the
/// destination is local, a broadcast, multicast, unreachable, or reached otherwise than through
/// one interface and a plain gateway (an IPv6 next hop for an IPv4 route, say), or when a
/// routing rule selects packets of `protocol`.
pub fn route_to(
    dst: std::net::IpAddr,
    src: Option<std::net::IpAddr>,
    protocol: u8,
) -> io::Result<Option<Route>> {
    let family = if dst.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let bits = if dst.is_ipv6() { 128u8 } else { 32 };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut rtm = [0u8; RTMSG_LEN];
    rtm[0] = family as u8;
    rtm[1] = bits;
    let dst_b = ip_bytes(dst);
    let src_b = src.filter(|s| s.is_ipv6() == dst.is_ipv6()).map(ip_bytes);
    let mut attrs: Vec<(u16, &[u8])> = vec![(RTA_DST, &dst_b)];
    if let Some(s) = &src_b {
        rtm[2] = bits;
        attrs.push((RTA_SRC, s));
    }
    let (ty, reply) = request(libc::RTM_GETROUTE, &rtm, &attrs)?;
    if ty != libc::RTM_NEWROUTE {
        return Err(io::Error::other("unexpected netlink reply"));
    }
    // The kernel's route lookup takes a protocol only for TCP, UDP and ICMP: a routing rule
    // that selects chunk's protocol (`ip rule add ipproto 253 ...`) would route its packets
    // otherwise than the answer above, so then there is no answer.
    if rule_selects_protocol(dst.is_ipv6(), protocol)? {
        return Ok(None);
    }
    Ok(parse_route(&reply))
}

fn parse_route(reply: &[u8]) -> Option<Route> {
    if reply.len() < RTMSG_LEN || reply[7] != RTN_UNICAST {
        return None;
    }
    let mut route = Route {
        ifindex: 0,
        gateway: None,
        source: None,
        mtu: None,
        hop_limit: None,
    };
    for (t, v) in attrs(&reply[RTMSG_LEN..]) {
        match t {
            RTA_OIF => route.ifindex = u32_of(v)?,
            RTA_GATEWAY => route.gateway = Some(ip_of(v)?),
            RTA_PREFSRC => route.source = Some(ip_of(v)?),
            RTA_METRICS => {
                let metric = |which| {
                    attrs(v)
                        .find(|(t, _)| *t == which)
                        .and_then(|(_, m)| u32_of(m))
                        .filter(|&m| m > 0)
                };
                route.mtu = metric(RTAX_MTU);
                route.hop_limit = metric(RTAX_HOPLIMIT).map(|h| h.min(255) as u8);
            }
            // A next hop of another family: not one this sender resolves.
            RTA_VIA => return None,
            _ => {}
        }
    }
    (route.ifindex != 0).then_some(route)
}

/// The Ethernet address of neighbour `addr` on interface `ifindex`, when the kernel holds a
/// usable one (reachable, stale, delay, probe, permanent); `None` when it has none (not yet
/// resolved, or failed).
pub fn neighbour_mac(ifindex: u32, addr: std::net::IpAddr) -> io::Result<Option<[u8; 6]>> {
    // struct ndmsg: family, pad1, pad2 (u16), ifindex (i32), state (u16), flags, type.
    let mut ndm = [0u8; NDMSG_LEN];
    ndm[0] = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    } as u8;
    ndm[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let dst = ip_bytes(addr);
    match request(libc::RTM_GETNEIGH, &ndm, &[(NDA_DST, &dst)]) {
        Ok((ty, reply)) if ty == libc::RTM_NEWNEIGH => Ok(parse_neighbour(&reply)),
        Ok(_) => Err(io::Error::other("unexpected netlink reply")),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_neighbour(reply: &[u8]) -> Option<[u8; 6]> {
    let state = u16::from_ne_bytes(reply.get(8..10)?.try_into().ok()?);
    if state & NUD_VALID == 0 {
        return None;
    }
    let (_, mac) = attrs(reply.get(NDMSG_LEN..)?).find(|(t, _)| *t == NDA_LLADDR)?;
    <[u8; 6]>::try_from(mac).ok()
}

/// Sends a netlink dump request (`ty`, fixed header `body`) on a socket of netlink `family`
/// and returns whether any message of the dump satisfies `found` (its type and payload); stops
/// reading at the first that does.
fn dump_any(
    family: u32,
    ty: u16,
    body: &[u8],
    found: impl Fn(u16, &[u8]) -> bool,
) -> io::Result<bool> {
    use rustix::net::RecvFlags;
    let sock = send_request(family, ty, libc::NLM_F_DUMP as u16, body, &[])?;
    let hdr_len = size_of::<libc::nlmsghdr>();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, _) = rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty())?;
        let mut rest = &buf[..n];
        if rest.is_empty() {
            return Err(io::Error::other("netlink dump ended early"));
        }
        while rest.len() >= hdr_len {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let t = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < hdr_len || len > rest.len() {
                return Err(io::Error::other("malformed netlink message"));
            }
            if t == libc::NLMSG_DONE as u16 {
                return Ok(false);
            }
            if t == libc::NLMSG_ERROR as u16 {
                let code = rest
                    .get(16..20)
                    .map_or(0, |c| i32::from_ne_bytes(c.try_into().unwrap()));
                return Err(io::Error::from_raw_os_error(-code));
            }
            if found(t, &rest[hdr_len..len]) {
                return Ok(true);
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
}

/// Whether the kernel holds any IPsec (xfrm) policy: packets that skip the IP output path
/// would skip it too. A kernel without xfrm's netlink interface has none that a current IKE
/// daemon could have installed; any other error is the caller's to treat as "maybe".
pub fn has_xfrm_policy() -> io::Result<bool> {
    const NETLINK_XFRM: u32 = 6;
    const XFRM_MSG_NEWPOLICY: u16 = 0x13;
    const XFRM_MSG_GETPOLICY: u16 = 0x15;
    match dump_any(NETLINK_XFRM, XFRM_MSG_GETPOLICY, &[], |t, _| {
        t == XFRM_MSG_NEWPOLICY
    }) {
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => Ok(false),
        r => r,
    }
}

/// Whether a routing rule of the family selects packets by IP protocol `protocol`.
fn rule_selects_protocol(v6: bool, protocol: u8) -> io::Result<bool> {
    const FRA_IP_PROTO: u16 = 22;
    const FIB_RULE_HDR_LEN: usize = 12;
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let mut hdr = [0u8; FIB_RULE_HDR_LEN];
    hdr[0] = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    dump_any(0, libc::RTM_GETRULE, &hdr, |t, payload| {
        t == libc::RTM_NEWRULE
            && payload.get(FIB_RULE_HDR_LEN..).is_some_and(|a| {
                attrs(a).any(|(at, v)| at == FRA_IP_PROTO && v.first() == Some(&protocol))
            })
    })
}

/// An interface's own IPv6 hop limit (`net.ipv6.conf.IFACE.hop_limit`, which router
/// advertisements set), if it can be read.
pub fn ipv6_interface_hop_limit(ifindex: u32) -> Option<u8> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_str()
        .ok()?;
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/hop_limit"))
        .ok()?
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|&h| h > 0)
}

/// An Ethernet interface's MTU; `None` for an interface of another kind (loopback, tunnels,
/// WireGuard, InfiniBand): their frames have no Ethernet header.
pub fn ethernet_mtu(ifindex: u32) -> io::Result<Option<u32>> {
    let reply = get_link(ifindex)?;
    Ok(parse_ethernet_mtu(&reply))
}

fn parse_ethernet_mtu(reply: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(reply.get(2..4)?.try_into().ok()?);
    if kind != ARPHRD_ETHER {
        return None;
    }
    let attrs_of = || attrs(&reply[IFINFOMSG_LEN..]);
    // An Ethernet address of 6 bytes, and the MTU.
    attrs_of().find(|(t, v)| *t == IFLA_ADDRESS && v.len() == 6)?;
    attrs_of()
        .find(|(t, _)| *t == IFLA_MTU)
        .and_then(|(_, v)| u32_of(v))
}

/// Iterates `(type, value)` over a run of netlink attributes, stopping at the first malformed
/// one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, value))
    })
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Reads `IFLA_XDP` out of a link's attributes.
fn parse_xdp(link_attrs: &[u8]) -> Option<Attached> {
    let (_, xdp) = attrs(link_attrs).find(|(t, _)| *t == IFLA_XDP)?;
    let mut mode = 0u8;
    let mut ids = [0u32; 4]; // any, skb, driver, hardware
    for (t, v) in attrs(xdp) {
        match t {
            IFLA_XDP_ATTACHED => mode = *v.first()?,
            IFLA_XDP_PROG_ID => ids[0] = u32_of(v)?,
            IFLA_XDP_SKB_PROG_ID => ids[1] = u32_of(v)?,
            IFLA_XDP_DRV_PROG_ID => ids[2] = u32_of(v)?,
            IFLA_XDP_HW_PROG_ID => ids[3] = u32_of(v)?,
            _ => {}
        }
    }
    let (mode, prog_id) = match mode {
        0 => return None,
        1 => ("driver", ids[0]),
        2 => ("skb", ids[0]),
        3 => ("hardware", ids[0]),
        // Several at once: report one of them.
        _ => ("multi", ids.into_iter().find(|&i| i != 0).unwrap_or(0)),
    };
    Some(Attached { prog_id, mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn finds_the_attached_program() {
        let mut xdp = attr(IFLA_XDP_ATTACHED, &[2]);
        xdp.extend(attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        let mut link = attr(3, b"veth0\0"); // IFLA_IFNAME
        // NLA_F_NESTED set on IFLA_XDP, as the kernel sends it.
        link.extend(attr(IFLA_XDP | 0x8000, &xdp));
        assert_eq!(
            parse_xdp(&link),
            Some(Attached {
                prog_id: 77,
                mode: "skb"
            })
        );
    }

    #[test]
    fn nothing_attached_and_garbage_are_none() {
        let link = attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[0]));
        assert_eq!(parse_xdp(&link), None);
        assert_eq!(parse_xdp(&[0xff, 0xff, 1]), None);
        assert_eq!(parse_xdp(&[]), None);
    }

    #[test]
    fn a_route_reply_gives_interface_gateway_source_and_path_mtu() {
        // rtmsg: AF_INET, /32, table main, type unicast.
        let mut reply = vec![
            libc::AF_INET as u8,
            32,
            0,
            0,
            254,
            0,
            0,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        reply.extend(attr(RTA_DST, &[198, 18, 2, 1]));
        reply.extend(attr(RTA_OIF, &7u32.to_ne_bytes()));
        reply.extend(attr(RTA_GATEWAY, &[198, 18, 1, 254]));
        reply.extend(attr(RTA_PREFSRC, &[198, 18, 1, 1]));
        // A path MTU learnt from ICMP, nested as the kernel sends it.
        reply.extend(attr(
            RTA_METRICS | 0x8000,
            &attr(RTAX_MTU, &1400u32.to_ne_bytes()),
        ));
        let route = parse_route(&reply).unwrap();
        assert_eq!(route.ifindex, 7);
        assert_eq!(route.gateway, Some("198.18.1.254".parse().unwrap()));
        assert_eq!(route.source, Some("198.18.1.1".parse().unwrap()));
        assert_eq!(route.mtu, Some(1400));
        assert_eq!(
            route.next_hop("198.18.2.1".parse().unwrap()),
            route.gateway.unwrap()
        );
        // A local route is no route out.
        reply[7] = 2; // RTN_LOCAL
        assert_eq!(parse_route(&reply), None);
    }

    #[test]
    fn a_neighbour_is_used_only_in_a_valid_state() {
        let mut reply = vec![0u8; NDMSG_LEN];
        reply[0] = libc::AF_INET as u8;
        reply.extend(attr(NDA_DST, &[198, 18, 1, 254]));
        reply.extend(attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 9]));
        for (state, usable) in [
            (0x01u16, false), // incomplete
            (0x02, true),     // reachable
            (0x04, true),     // stale
            (0x20, false),    // failed
            (0x80, true),     // permanent
        ] {
            reply[8..10].copy_from_slice(&state.to_ne_bytes());
            assert_eq!(
                parse_neighbour(&reply),
                usable.then_some([2, 0, 0, 0, 0, 9]),
                "state {state:#x}"
            );
        }
    }

    #[test]
    fn only_ethernet_interfaces_give_an_mtu() {
        let mut reply = vec![0u8; IFINFOMSG_LEN];
        reply[2..4].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        reply.extend(attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]));
        reply.extend(attr(IFLA_MTU, &9000u32.to_ne_bytes()));
        assert_eq!(parse_ethernet_mtu(&reply), Some(9000));
        reply[2..4].copy_from_slice(&772u16.to_ne_bytes()); // ARPHRD_LOOPBACK
        assert_eq!(parse_ethernet_mtu(&reply), None);
        reply[2..4].copy_from_slice(&65534u16.to_ne_bytes()); // ARPHRD_NONE (WireGuard)
        assert_eq!(parse_ethernet_mtu(&reply), None);
    }

    #[test]
    fn the_route_to_a_local_address_is_not_a_way_out() {
        // In the test's own namespace: 127.0.0.1 is local.
        assert_eq!(
            route_to("127.0.0.1".parse().unwrap(), None, 253).unwrap(),
            None
        );
    }

    /// The dump completes (a whole multipart answer read to its end) or, without
    /// CAP_NET_ADMIN, fails: never claims "none" it could not check. That a policy is found is
    /// tested with a real one in tests/tests/packet_socket.rs.
    #[test]
    fn the_xfrm_policy_dump_completes() {
        match has_xfrm_policy() {
            Ok(any) => assert!(!any || std::path::Path::new("/proc/net/xfrm_stat").exists()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn loopback_answers() {
        // Every network namespace has `lo` as index 1; the query must work without privileges.
        let a = xdp_attached(ifindex("lo").expect("lo exists"));
        assert!(a.is_ok(), "{a:?}");
    }
}
