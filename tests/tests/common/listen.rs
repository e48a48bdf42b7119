//! The receive path's side of the kernel tests: a `chunk listen --dump` in the receiver
//! namespace, and hand-built frames or chunk packets from the sender's.

use std::{sync::mpsc::Receiver, time::Duration};

use chunk_common::wire::{self, Message, Repr};
use chunk_tests::{Daemon, FrameSender, TwoHosts, wait_for_line};
use serde_json::Value;

use super::chunk_bin;

/// A running `chunk listen` in the receiver namespace.
pub struct Listener {
    daemon: Daemon,
    lines: Receiver<String>,
}

impl Listener {
    pub fn start(hosts: &TwoHosts, extra: &[&str]) -> Listener {
        let mut cmd = hosts.receiver.command(&chunk_bin());
        cmd.args(["listen", "--iface", hosts.receiver_if, "--json", "--dump"])
            .args(extra);
        let mut daemon = Daemon::spawn(cmd, "chunk listen").expect("start chunk listen");
        let (_, lines) = wait_for_line(daemon.stdout().unwrap(), Duration::from_secs(30), |l| {
            l.starts_with("attached")
        })
        .expect("chunk listen attached");
        Listener { daemon, lines }
    }

    /// Stops the listener; returns the dumped packets and the final summary.
    pub fn stop(self) -> (Vec<Value>, Value) {
        // Let the last packets cross the veth and the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        self.daemon.signal(libc::SIGTERM);
        let status = self
            .daemon
            .wait(Duration::from_secs(10))
            .expect("listener exits");
        assert!(status.success(), "chunk listen failed: {status}");
        let lines: Vec<Value> = self
            .lines
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let (summary, dumps) = lines.split_last().expect("a summary line");
        assert!(
            summary.get("counters").is_some(),
            "last line is the summary: {summary}"
        );
        (dumps.to_vec(), summary.clone())
    }
}

pub fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
}

/// Asserts every counter: those named with their values, all others zero, except `passed`,
/// which the stack's own chatter (IPv6 router solicitations, ...) may bump and is checked only
/// when named.
pub fn assert_counters(summary: &Value, expected: &[(&str, u64)]) {
    for c in chunk_common::counters::Counter::ALL {
        let got = counter(summary, c.name());
        match expected.iter().find(|(n, _)| *n == c.name()) {
            Some((_, want)) => assert_eq!(got, *want, "counter {}: {summary}", c.name()),
            None if c.name() == "passed" => {}
            None => assert_eq!(got, 0, "counter {}: {summary}", c.name()),
        }
    }
}

/// A packet `chunk listen --dump` printed is byte for byte the one sent, except for the checksum
/// field, which the kernel zeroes while checking it.
pub fn assert_dump_is(dump: &Value, sent: &[u8]) {
    let mut expect = sent.to_vec();
    expect[wire::field::CHECKSUM].fill(0);
    let hex: String = expect.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(dump["hex"], hex.as_str());
}

/// A valid packet of envelope type `msg_type` (`wire::envelope`) for session `sid`, with `body`
/// as its payload (the receive path does not look into it).
pub fn envelope_packet(msg_type: u8, sid: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; wire::HEADER_LEN + body.len()];
    buf[wire::field::MSG_TYPE] = msg_type;
    let mut p = wire::Packet::new_unchecked(&mut buf[..]);
    p.set_magic(wire::MAGIC);
    p.set_version(wire::VERSION);
    p.set_payload_len(body.len() as u16);
    p.set_transfer_id(sid);
    p.set_seq(1);
    p.payload_mut().copy_from_slice(body);
    p.fill_checksum();
    buf
}

pub fn data_packet(tid: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let repr = Repr {
        transfer_id: tid,
        seq,
        flags: wire::flags::MORE_CHUNKS,
        message: Message::Data { payload },
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).unwrap();
    buf
}

/// Sends hand-built Ethernet frames from the sender's end of the link (AF_PACKET).
pub fn send_frames(hosts: &TwoHosts, frames: &[Vec<u8>]) {
    let ifname = hosts.sender_if;
    hosts
        .sender
        .enter(|| {
            let tx = FrameSender::new(ifname).expect("AF_PACKET socket");
            for f in frames {
                tx.send(f).expect("send frame");
            }
        })
        .unwrap();
}
