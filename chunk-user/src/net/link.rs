//! What the kernel says about an interface, over rtnetlink: its index, and which XDP program (if
//! any) is attached to it. The answer is the kernel's own, so it holds whoever attached the
//! program (chunk, `ip link`, another loader) and from any mount namespace.

use std::{ffi::CString, io, mem::size_of, os::fd::AsRawFd};

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
    Ok(parse_xdp(&reply))
}

#[repr(C)]
struct Request {
    nlh: libc::nlmsghdr,
    ifi: libc::ifinfomsg,
}

/// Sends RTM_GETLINK for one interface and returns the reply's attributes (after the
/// `ifinfomsg`).
fn get_link(ifindex: u32) -> io::Result<Vec<u8>> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req: Request = unsafe { std::mem::zeroed() };
    req.nlh.nlmsg_len = size_of::<Request>() as u32;
    req.nlh.nlmsg_type = libc::RTM_GETLINK;
    req.nlh.nlmsg_flags = libc::NLM_F_REQUEST as u16;
    req.nlh.nlmsg_seq = 1;
    req.ifi.ifi_family = libc::AF_UNSPEC as u8;
    req.ifi.ifi_index = ifindex as i32;
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&req as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let hdr_len = size_of::<libc::nlmsghdr>();
    if buf.len() < hdr_len {
        return Err(io::Error::other("short netlink reply"));
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        return Err(io::Error::from_raw_os_error(-code));
    }
    let len = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
    let start = hdr_len + size_of::<libc::ifinfomsg>();
    if ty != libc::RTM_NEWLINK || len < start {
        return Err(io::Error::other("unexpected netlink reply"));
    }
    Ok(buf[start..len].to_vec())
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
    fn loopback_answers() {
        // Every network namespace has `lo` as index 1; the query must work without privileges.
        let a = xdp_attached(ifindex("lo").expect("lo exists"));
        assert!(a.is_ok(), "{a:?}");
    }
}
