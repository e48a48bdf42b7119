//! A run: one transfer of one tool in one case, with the figures it produced and how it ended.

use super::{Case, Tool, wakeups::Wakeups};

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The file arrived, its hash matched: the figures count.
    Measured,
    /// The tool cannot run here, for this reason (a chunk binary without `--mode socket`).
    NotAvailable(String),
    /// The transfer or the hash check failed, with this message.
    Failed(String),
}

impl Outcome {
    pub fn is_measured(&self) -> bool {
        matches!(self, Outcome::Measured)
    }

    /// What the results say went wrong: `n/a: REASON` for a tool that is not available (the
    /// spelling results.json has always had), the message for a failure.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Measured => None,
            Outcome::NotAvailable(why) => Some(format!("n/a: {why}")),
            Outcome::Failed(e) => Some(e.clone()),
        }
    }
}

/// One transfer's figures. A failed run keeps what it measured before it failed.
#[derive(Clone, Debug)]
pub struct Run {
    pub tool: Tool,
    pub case: Case,
    pub round: u32,
    pub outcome: Outcome,
    pub seconds: f64,
    pub send_cpu: f64,
    pub recv_cpu: f64,
    /// User + system + interrupt CPU of the whole machine (both cores) during the transfer.
    pub machine_cpu: f64,
    pub send_rss_kib: u64,
    pub recv_rss_kib: u64,
    pub retransmissions: Option<u64>,
    /// Junk packets the router forwarded to the receiver, per second of the transfer.
    pub junk_pps: Option<f64>,
    /// Junk packets chunk's receive path counted and dropped (its own counters).
    pub junk_dropped: Option<u64>,
    /// Packets the router forwarded towards the receiver (the data; a flood's junk not counted).
    pub data_packets: Option<u64>,
    /// Packets the router forwarded towards the sender (acks, status).
    pub reverse_packets: Option<u64>,
    /// The whole machine's context switches and wakeup interrupts.
    pub wakeups: Option<Wakeups>,
    /// A transfer cut off at the timeout (TCP at 5 % loss each way takes many minutes for
    /// 512 MiB): the bytes that had arrived, all of them the file's, in `seconds`. Its goodput
    /// is theirs, a figure for a tool too slow to finish rather than no figure at all.
    pub partial_bytes: Option<u64>,
    /// The cipher the transfer used, where the tool negotiates one (scp: from `scp -v`).
    pub cipher: Option<String>,
}

impl Run {
    /// A run not yet made: no figures, and failed until it is measured.
    pub fn new(tool: Tool, case: Case, round: u32) -> Run {
        Run {
            tool,
            case,
            round,
            outcome: Outcome::Failed("not run".into()),
            seconds: 0.0,
            send_cpu: 0.0,
            recv_cpu: 0.0,
            machine_cpu: 0.0,
            send_rss_kib: 0,
            recv_rss_kib: 0,
            retransmissions: None,
            junk_pps: None,
            junk_dropped: None,
            data_packets: None,
            reverse_packets: None,
            wakeups: None,
            partial_bytes: None,
            cipher: None,
        }
    }

    /// MB/s for a file of `size` bytes (or for the bytes that arrived before a cut-off).
    pub fn goodput(&self, size: u64) -> f64 {
        self.partial_bytes.unwrap_or(size) as f64 / self.seconds.max(1e-9) / 1e6
    }

    /// `n` per second of the transfer.
    pub fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.seconds.max(1e-9)
    }

    /// `x` per data packet, if any were counted.
    pub fn per_data_packet(&self, x: f64) -> Option<f64> {
        self.data_packets.filter(|&n| n > 0).map(|n| x / n as f64)
    }
}
