//! The sender's packet socket (chunk-user/src/net/packet_tx.rs): straight over IP on an Ethernet
//! route, chunk packets leave through an AF_PACKET socket with an IP header chunk writes, not
//! through the kernel's IP output path. Real transfers between namespaces: on one link and
//! through a router (the next hop is then the gateway), over IPv4 and IPv6; the raw socket
//! alone with `--no-packet-socket`, an IPsec policy or a routing rule for chunk's protocol; and a host whose own netfilter rewrites chunk's packets,
//! where the packet socket's trial fails and the raw socket carries the transfer.

mod common;

use std::net::IpAddr;

use chunk_tests::{Routed, TwoHosts};
use common::*;

const SIZE: usize = 8 << 20;

/// Sends one 8 MiB file from `sender` to `to`; checks it arrived exact and returns the
/// sender's packet counts (packets, of which through the packet socket), its log (stderr)
/// and the chunks it sent again.
fn counts(
    sender: &chunk_tests::Netns,
    receiver: &chunk_tests::Netns,
    receiver_if: &str,
    to: IpAddr,
    send_extra: &[&str],
    recv_extra: &[&str],
) -> (u64, u64, String, u64) {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "p.bin", SIZE, 31);
    let recv = Recv::start(
        receiver,
        receiver_if,
        out.path(),
        &[&["--exit-after", "1"], recv_extra].concat(),
    );
    let (o, json) = send(sender, to, &[&file], send_extra);
    assert_sent(&o, &json, 1);
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("p.bin")));
    let packets = json["packets_sent"].as_u64().unwrap();
    let link = json["link_packets"].as_u64().unwrap();
    assert!(packets >= (SIZE / 1480) as u64, "{json}");
    assert!(link <= packets, "{json}");
    // One message per packet either way: no segmentation offload straight over IP.
    assert_eq!(json["send_messages"].as_u64().unwrap(), packets, "{json}");
    let again = json["files"][0]["retransmitted"].as_u64().unwrap();
    (
        packets,
        link,
        String::from_utf8_lossy(&o.stderr).into_owned(),
        again,
    )
}

#[test]
fn on_one_link_the_data_goes_through_the_packet_socket() {
    let hosts = TwoHosts::new("pkt1", 1500).unwrap();
    for to in [
        IpAddr::from(hosts.receiver_addr),
        IpAddr::from(hosts.receiver_addr6),
    ] {
        let (packets, link, ..) = counts(
            &hosts.sender,
            &hosts.receiver,
            hosts.receiver_if,
            to,
            &[],
            &[],
        );
        // The first few packets may go before the neighbour is known; then every one.
        assert!(link * 10 >= packets * 9, "{to}: {link} of {packets}");
        let (packets, link, ..) = counts(
            &hosts.sender,
            &hosts.receiver,
            hosts.receiver_if,
            to,
            &["--no-packet-socket"],
            &[],
        );
        assert_eq!(link, 0, "{to}: {link} of {packets}");
    }
}

#[test]
fn through_a_router_the_frames_go_to_the_gateway() {
    let net = Routed::new("pktr").unwrap();
    for to in [
        IpAddr::from(net.receiver_addr),
        IpAddr::from(net.receiver_addr6),
    ] {
        let (packets, link, ..) = counts(&net.sender, &net.receiver, net.receiver_if, to, &[], &[]);
        assert!(link * 10 >= packets * 9, "{to}: {link} of {packets}");
    }
}

/// The sender's host rewrites the source of chunk's packets (a source NAT in its own
/// postrouting hook), and the receiver admits only the rewritten source. Packets of the packet
/// socket skip that hook, keep the original source and die in the receiver's kernel: no answer
/// comes to them, the trial fails within its second, and the raw socket (whose packets the NAT
/// rewrites) carries the whole file.
#[test]
fn a_source_nat_on_the_sender_host_fails_the_trial_and_the_raw_socket_carries_on() {
    let net = Routed::new("pktnat").unwrap();
    net.sender
        .ip(&["addr", "add", "198.18.1.2/24", "dev", net.sender_if])
        .unwrap();
    let script = format!(
        "table ip chunk_snat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip protocol {} snat to 198.18.1.2
  }}
}}
",
        chunk_common::DEFAULT_IP_PROTOCOL
    );
    let mut nft = net.sender.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let (packets, link, log, _) = counts(
        &net.sender,
        &net.receiver,
        net.receiver_if,
        IpAddr::from(net.receiver_addr),
        &[],
        &["--allow", "198.18.1.2/32"],
    );
    // The packet socket was tried (the first batch went through the raw socket, the offer,
    // which the NAT rewrote and the receiver took), failed, and said so; what went through it
    // was lost and sent again through the raw socket.
    eprintln!("source NAT on the sender: {link} of {packets} packets through the packet socket");
    assert!(link > 0, "{link} of {packets}");
    assert!(link * 2 < packets, "{link} of {packets}");
    assert!(
        log.contains("no answer to packets sent through the packet socket"),
        "{log}"
    );
}

/// A small `tbf` queue on the sender's interface: while it is full the kernel takes no more of
/// the packet socket's packets (`sendmmsg` stops short, or fails with `ENOBUFS`), where it
/// dropped the raw socket's unseen. The sender waits for room (at most 10 ms at a time, then
/// the raw socket), never stalls, and the file arrives exact; the same send through the raw
/// socket shows that the queue did overflow.
#[test]
fn a_full_queue_at_the_interface_neither_stalls_nor_loses_the_file() {
    let hosts = TwoHosts::new("pktq", 1500).unwrap();
    hosts
        .sender
        .exec(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                hosts.sender_if,
                "root",
                "tbf",
                "rate",
                "200mbit",
                "burst",
                "16kb",
                "limit",
                "16kb",
            ],
        )
        .unwrap();
    let to = IpAddr::from(hosts.receiver_addr);
    let run = |extra: &[&str]| {
        counts(
            &hosts.sender,
            &hosts.receiver,
            hosts.receiver_if,
            to,
            &[&["--timeout", "20"], extra].concat(),
            &[],
        )
    };
    let (packets, link, _, again) = run(&[]);
    let (_, raw_link, _, raw_again) = run(&["--no-packet-socket"]);
    eprintln!(
        "full queue: {link} of {packets} packets through the packet socket, {again} sent \
         again; through the raw socket {raw_again}"
    );
    assert!(link * 10 >= packets * 9, "{link} of {packets}");
    assert_eq!(raw_link, 0);
    // The queue overflowed: the raw socket's packets were lost there and sent again; the
    // packet socket's waited for room.
    assert!(raw_again > 0, "the queue never overflowed");
    assert!(again < raw_again, "{again} against {raw_again}");
}

/// An IPsec (xfrm) policy on the sending host: the packet socket would skip the xfrm output
/// path, so the sender keeps to the raw socket, whose packets the policy sees. (The policy here
/// allows without protecting, so the transfer still goes through.)
#[test]
fn an_ipsec_policy_keeps_the_raw_socket() {
    let hosts = TwoHosts::new("pktxfrm", 1500).unwrap();
    let proto = chunk_common::DEFAULT_IP_PROTOCOL.to_string();
    hosts
        .sender
        .ip(&[
            "xfrm",
            "policy",
            "add",
            "src",
            "198.18.0.1/32",
            "dst",
            "198.18.0.2/32",
            "proto",
            &proto,
            "dir",
            "out",
            "action",
            "allow",
        ])
        .unwrap();
    let (packets, link, ..) = counts(
        &hosts.sender,
        &hosts.receiver,
        hosts.receiver_if,
        IpAddr::from(hosts.receiver_addr),
        &[],
        &[],
    );
    assert_eq!(link, 0, "{link} of {packets}");
}

/// A routing rule that selects chunk's IP protocol: the kernel's route lookup cannot be asked
/// for that protocol, so the sender cannot know the route its packets take, and keeps to the
/// raw socket, whose packets the rule routes.
#[test]
fn a_routing_rule_for_chunks_protocol_keeps_the_raw_socket() {
    let hosts = TwoHosts::new("pktrule", 1500).unwrap();
    hosts
        .sender
        .ip(&[
            "route",
            "add",
            "198.18.0.0/24",
            "dev",
            hosts.sender_if,
            "table",
            "100",
        ])
        .unwrap();
    hosts
        .sender
        .ip(&[
            "rule",
            "add",
            "ipproto",
            &chunk_common::DEFAULT_IP_PROTOCOL.to_string(),
            "table",
            "100",
        ])
        .unwrap();
    let (packets, link, ..) = counts(
        &hosts.sender,
        &hosts.receiver,
        hosts.receiver_if,
        IpAddr::from(hosts.receiver_addr),
        &[],
        &[],
    );
    assert_eq!(link, 0, "{link} of {packets}");
}
