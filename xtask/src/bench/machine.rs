//! What the benchmark ran on, at the top of results.md and results.json, so that results from
//! two machines can be told apart and compared: the CPU, how many, the kernel, the commit and
//! the date, and the TCP congestion control that nc's sender used (a new namespace inherits the
//! host's, and it changes TCP's goodput under loss more than anything chunk does).

use std::process::Command;

use chunk_tests::Netns;
use serde::Serialize;

use super::tools::Tool;

/// The machine header (the field names are results.json's).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// `/proc/cpuinfo`'s first "model name".
    pub cpu_model: String,
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `git rev-parse --short HEAD` of the workspace.
    pub commit: String,
    /// The work tree had uncommitted changes to tracked files: the commit is not all that ran.
    pub dirty: bool,
    /// When the runs started (the namespaces made, the file generated), UTC, ISO 8601.
    pub date: String,
    /// `/proc/sys/net/ipv4/tcp_congestion_control` in the sender's namespace.
    pub tcp_congestion_control: Option<String>,
    /// The cipher OpenSSH negotiated with its defaults (scp's runs, `scp -v`), once one ran.
    pub ssh_cipher: Option<String>,
}

impl Machine {
    /// Reads the header; `sender` is the namespace nc sends from. What cannot be read is left
    /// empty rather than failing the benchmark.
    pub fn read(sender: &Netns) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(String::new, |(_, v)| v.trim().to_string());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        // The same string as `uname -r`.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(crate::workspace_root())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        // /proc/sys/net shows the namespace of the process that reads it.
        let tcp_congestion_control = sender
            .exec("cat", &["/proc/sys/net/ipv4/tcp_congestion_control"])
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Machine {
            cpu_model,
            cpus,
            kernel,
            commit,
            dirty,
            date,
            tcp_congestion_control,
            ssh_cipher: None,
        }
    }

    /// The tool's name in results.md and the chart: nc's says which TCP it was, scp's which
    /// cipher.
    pub fn label(&self, tool: Tool) -> String {
        match (tool, &self.tcp_congestion_control, &self.ssh_cipher) {
            (Tool::Nc, Some(cc), _) => format!("nc (TCP {cc})"),
            (Tool::Scp, _, Some(cipher)) => format!("scp ({cipher})"),
            _ => tool.name().to_string(),
        }
    }

    /// One line for results.md.
    pub fn markdown(&self) -> String {
        let or_unknown = |s: &str| {
            if s.is_empty() {
                "?".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "Machine: {}, {} CPUs, kernel {}; commit {}{}; {}; nc's TCP congestion control \
             (sender namespace): {}{}.\n",
            or_unknown(&self.cpu_model),
            self.cpus,
            or_unknown(&self.kernel),
            or_unknown(&self.commit),
            if self.dirty {
                " with uncommitted changes"
            } else {
                ""
            },
            or_unknown(&self.date),
            self.tcp_congestion_control.as_deref().unwrap_or("?"),
            self.ssh_cipher
                .as_deref()
                .map(|c| format!("; scp's cipher (OpenSSH's default): {c}"))
                .unwrap_or_default(),
        )
    }
}
