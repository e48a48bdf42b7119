//! What chunk tells other processes, as serde types that write and read the same definitions
//! (the tests too): the state file a receiver keeps for `chunk stats`, the event lines of
//! `chunk recv --json`, and the summary of `chunk send --json`. A field renamed here is renamed
//! for every reader; nothing is assembled by string keys.

use chunk_common::counters::Counter;
use serde::{Deserialize, Serialize};

use crate::net::{rx::Counters, xdp::ProgInfo};
use crate::proto::{Event, Peer, ReceiverStats};

impl Serialize for Counters {
    /// `{"passed": 3, "accepted": 10, ...}`, one entry per [`Counter`], by its name.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(Counter::ALL.len()))?;
        for c in Counter::ALL {
            m.serialize_entry(c.name(), &self.get(c))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Counters {
    /// The map [`Serialize`] writes; unknown names are ignored and missing ones are 0, so a
    /// reader and a writer one counter apart still agree on the rest.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::HashMap::<String, u64>::deserialize(d)?;
        let mut c = Counters::default();
        for k in Counter::ALL {
            c.0[k as usize] = map.get(k.name()).copied().unwrap_or(0);
        }
        Ok(c)
    }
}

/// The receive path as `chunk stats` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceivePath {
    pub iface: String,
    /// "driver" or "skb" (XDP), or "socket".
    pub mode: String,
    pub prog: Option<ProgInfo>,
    pub pinned: Option<String>,
    pub counters: Counters,
}

/// The limits a receiver was started with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub max_size: u64,
    pub max_transfers: usize,
    pub max_per_source: usize,
    pub max_state_kib: usize,
    pub idle_timeout_s: f64,
    pub max_payload: u16,
    pub ring_bytes: u32,
    pub allow: Vec<String>,
    pub psk: bool,
    /// Encrypted sessions are answered (`--key` or `--psk-file`).
    #[serde(default)]
    pub encryption: bool,
    #[serde(default)]
    pub require_encryption: bool,
    pub overwrite: bool,
    /// The UDP port chunk packets in UDP are taken on (`--udp`), if any.
    #[serde(default)]
    pub udp_port: Option<u16>,
}

/// Packets the receive driver saw and what became of those the core never saw.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntakeCounts {
    /// Chunk packets the receive path handed over.
    pub packets: u64,
    /// Malformed bodies (header, lengths and checksum were fine).
    pub unparsable: u64,
    /// Refused by the pre-shared key's check.
    pub auth_rejected: u64,
    /// Sealed offers outside the timestamp window.
    pub stale_offers: u64,
    /// Answers the kernel would not send.
    pub ack_send_errors: u64,
    /// Encrypted sessions open now.
    #[serde(default)]
    pub sessions_open: u64,
    /// Handshakes and sealed packets.
    #[serde(default)]
    pub sessions: crate::crypto::session::SessionCounts,
}

/// `/run/chunk/<iface key>.json`: what a running receiver (`chunk recv`, or just `chunk listen`)
/// publishes every second for `chunk stats`. The receiver's own parts are absent for
/// `chunk listen`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    pub pid: u32,
    pub started_unix_ms: u64,
    pub receive_path: ReceivePath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverState>,
}

/// The part of [`StateFile`] only `chunk recv` has.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceiverState {
    pub updated_unix_ms: u64,
    pub out: String,
    pub limits: Limits,
    pub transfers_open: usize,
    pub core: ReceiverStats,
    pub intake: IntakeCounts,
}

/// One line of `chunk recv --json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RecvEvent {
    /// Attached and listening.
    Ready {
        iface: String,
        mode: String,
        out: String,
    },
    Started {
        src: Peer,
        transfer_id: u32,
        name: String,
        size: u64,
        chunks: u32,
        resumed_chunks: u64,
        /// A stream (`chunk send -`): its size and chunk count are known only at its end.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    },
    Finished {
        src: Peer,
        transfer_id: u32,
        name: String,
        size: u64,
        seconds: f64,
        goodput_mb_s: f64,
        verified: bool,
        chunks_received: u64,
        duplicates: u64,
        out_of_order: u64,
        resumed_chunks: u64,
        /// The bundle it came in with other small files (docs/PROTOCOL.md, "Bundles"); the
        /// bundle's chunk figures are told with its first file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<String>,
    },
    Refused {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: String,
        message: String,
    },
    Failed {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: String,
        message: String,
    },
    Cancelled {
        src: Peer,
        transfer_id: u32,
        name: String,
        reason: String,
        message: String,
    },
    Superseded {
        src: Peer,
        old_transfer_id: u32,
        transfer_id: u32,
        name: String,
    },
    Idle {
        src: Peer,
        transfer_id: u32,
        name: String,
        chunks_have: u64,
        chunks: u32,
    },
    /// The receiver stopped: why, and its totals.
    Exit {
        reason: String,
        counters: Counters,
        transfers_finished: u64,
        /// Files verified and in place (a bundle's members each).
        #[serde(default)]
        files_finished: u64,
        chunks_written: u64,
        duplicates: u64,
        unknown_transfer: u64,
        #[serde(flatten)]
        intake: IntakeCounts,
        bad_records: u64,
    },
}

impl RecvEvent {
    /// Whether the event ends a file's transfer (for `--exit-after`): finished (each file of a
    /// bundle has its own), refused, failed or cancelled.
    pub fn ends_a_file(&self) -> bool {
        matches!(
            self,
            RecvEvent::Finished { .. }
                | RecvEvent::Refused { .. }
                | RecvEvent::Failed { .. }
                | RecvEvent::Cancelled { .. }
        )
    }
}

impl From<&Event> for RecvEvent {
    fn from(ev: &Event) -> Self {
        match ev.clone() {
            Event::Started {
                src,
                transfer_id,
                name,
                size,
                chunk_count,
                resumed_chunks,
                stream,
            } => RecvEvent::Started {
                src,
                transfer_id,
                name,
                size,
                chunks: chunk_count,
                resumed_chunks,
                stream,
            },
            Event::Finished {
                src,
                transfer_id,
                name,
                size,
                duration,
                verified,
                chunks_received,
                duplicates,
                out_of_order,
                resumed_chunks,
                bundle,
            } => {
                let seconds = duration.as_secs_f64();
                RecvEvent::Finished {
                    src,
                    transfer_id,
                    name,
                    size,
                    seconds,
                    goodput_mb_s: size as f64 / seconds.max(1e-9) / 1e6,
                    verified,
                    chunks_received,
                    duplicates,
                    out_of_order,
                    resumed_chunks,
                    bundle,
                }
            }
            Event::Refused {
                src,
                transfer_id,
                name,
                reason,
                message,
            } => RecvEvent::Refused {
                src,
                transfer_id,
                name,
                reason: reason.as_str().into(),
                message,
            },
            Event::Failed {
                src,
                transfer_id,
                name,
                reason,
                message,
            } => RecvEvent::Failed {
                src,
                transfer_id,
                name,
                reason: reason.as_str().into(),
                message,
            },
            Event::Cancelled {
                src,
                transfer_id,
                name,
                reason,
                message,
            } => RecvEvent::Cancelled {
                src,
                transfer_id,
                name,
                reason: reason.as_str().into(),
                message,
            },
            Event::Superseded {
                src,
                old_transfer_id,
                transfer_id,
                name,
            } => RecvEvent::Superseded {
                src,
                old_transfer_id,
                transfer_id,
                name,
            },
            Event::Idle {
                src,
                transfer_id,
                name,
                chunks_have,
                chunk_count,
            } => RecvEvent::Idle {
                src,
                transfer_id,
                name,
                chunks_have,
                chunks: chunk_count,
            },
        }
    }
}

/// One file's result in `chunk send --json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FileReport {
    pub file: String,
    pub name: String,
    pub size: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    /// File bytes per second over the whole transfer (offer to verdict), in MB/s (10^6).
    pub goodput_mb_s: f64,
    pub chunks: u32,
    pub chunks_sent: u64,
    pub retransmitted: u64,
    /// RTO expiries: times no ack came for a whole retransmission timeout and the oldest chunks
    /// went again (a bundle's, told with its first file).
    #[serde(default)]
    pub rtos: u64,
    /// Chunks the receiver already had (resume).
    pub resumed: u64,
    pub hash: String,
    /// The sender's smoothed round-trip time at the end, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtt_ms: Option<f64>,
    /// It went in a bundle with other small files (docs/PROTOCOL.md, "Bundles"): `seconds`
    /// are the bundle's, `chunks` the bundle's chunks that hold its bytes, `resumed` those the
    /// receiver already had (the file was there), and `retransmitted` the bundle's, told with
    /// its first file only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bundled: bool,
}

/// The whole `chunk send --json` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SendSummary {
    pub to: String,
    pub files: Vec<FileReport>,
    pub failed: usize,
    /// Files not tried (the send was interrupted).
    pub skipped: usize,
    /// Bytes of the files verified.
    #[serde(default)]
    pub bytes: u64,
    /// What the PATHs held that is not sent (symbolic links, FIFOs, ...), with the reason.
    #[serde(default)]
    pub skipped_entries: Vec<crate::cmd::tree::Skipped>,
    /// Packets handed to the kernel (chunks, offers, hash messages, handshakes).
    #[serde(default)]
    pub packets_sent: u64,
    /// The messages they took: fewer than packets where runs of UDP datagrams went out as one
    /// segmentation-offload message.
    #[serde(default)]
    pub send_messages: u64,
    /// Packets of `packets_sent` that went through the packet socket (straight over IP on an
    /// Ethernet route) rather than the kernel's IP output path.
    #[serde(default)]
    pub link_packets: u64,
    /// The path cache: what was remembered of the path, what became of it, what was kept.
    /// Absent with `--no-path-cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathReport>,
}

/// `chunk send`'s path cache in its `--json` summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PathReport {
    /// The cache file.
    pub cache: String,
    /// A fresh estimate for this destination was found, and the send started from it
    /// (once the offer's round trip confirmed it).
    pub remembered: bool,
    /// What became of it: `validated` (the acks came back at the jump's rate), `retreated`
    /// (slower: the path changed), `rejected` (another round trip), `pending` (no round trip
    /// was measured cleanly before data went; treated as rejected), `jumping` (the send ended
    /// before its acks told). Absent when nothing was remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// A start with nothing remembered (or the estimate rejected), on a path long enough for
    /// Startup to take a second or more (round trips of about 126 ms and more), reads the
    /// bottleneck's rate from the spacing of its first round's chunks and jumps to half of it;
    /// what became of that jump, in the words of `resume`. Absent when it made none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_round: Option<String>,
    /// What this send measured and kept, bits per second and milliseconds; absent when it was
    /// too short to find the bottleneck (the entry, if any, stays as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_bandwidth_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_min_rtt_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_reads_back_as_written() {
        let mut counters = Counters::default();
        counters.0[Counter::BadChecksum as usize] = 7;
        let st = StateFile {
            pid: 42,
            started_unix_ms: 1,
            receive_path: ReceivePath {
                iface: "veth-r".into(),
                mode: "driver".into(),
                prog: Some(ProgInfo::default()),
                pinned: None,
                counters,
            },
            receiver: Some(ReceiverState {
                updated_unix_ms: 2,
                out: "/srv/in".into(),
                limits: Limits {
                    max_size: 1,
                    max_transfers: 2,
                    max_per_source: 3,
                    max_state_kib: 4,
                    idle_timeout_s: 5.0,
                    max_payload: 6,
                    ring_bytes: 7,
                    allow: vec!["198.18.0.0/15".into(), "2001:2::/48".into()],
                    psk: true,
                    encryption: true,
                    require_encryption: false,
                    overwrite: false,
                    udp_port: Some(47000),
                },
                transfers_open: 1,
                core: ReceiverStats::default(),
                intake: IntakeCounts::default(),
            }),
        };
        let text = serde_json::to_string(&st).unwrap();
        assert!(text.contains("\"bad_checksum\":7"), "{text}");
        assert_eq!(serde_json::from_str::<StateFile>(&text).unwrap(), st);
        // `chunk listen` writes no receiver part.
        let listen = StateFile {
            receiver: None,
            ..st
        };
        let text = serde_json::to_string(&listen).unwrap();
        assert!(!text.contains("receiver"), "{text}");
        assert_eq!(serde_json::from_str::<StateFile>(&text).unwrap(), listen);
    }

    #[test]
    fn events_are_tagged_lines() {
        let ev = RecvEvent::Refused {
            src: std::net::Ipv4Addr::new(198, 18, 0, 1).into(),
            transfer_id: 5,
            name: "a".into(),
            reason: "file exists".into(),
            message: "a exists".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "refused");
        assert_eq!(v["src"], "198.18.0.1");
        assert_eq!(serde_json::from_value::<RecvEvent>(v).unwrap(), ev);
        let exit = RecvEvent::Exit {
            reason: "done".into(),
            counters: Counters::default(),
            transfers_finished: 1,
            files_finished: 1,
            chunks_written: 2,
            duplicates: 0,
            unknown_transfer: 0,
            intake: IntakeCounts {
                packets: 9,
                ..IntakeCounts::default()
            },
            bad_records: 0,
        };
        let v = serde_json::to_value(&exit).unwrap();
        assert_eq!(v["packets"], 9, "intake counts sit at the top level: {v}");
        assert_eq!(serde_json::from_value::<RecvEvent>(v).unwrap(), exit);
    }
}
