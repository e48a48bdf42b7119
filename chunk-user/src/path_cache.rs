//! The sender's memory of the paths it has sent over (`chunk send`'s path cache): per
//! destination, the bottleneck bandwidth and minimum RTT the last transfer measured, and when,
//! so that the next transfer there starts from them ([`proto::PathEstimate`], checked against
//! the offer's round trip before use; see [`proto::cc`]) instead of a startup from 32 chunks. The
//! same idea as Linux's `tcp_metrics` and QUIC's careful resume (draft-ietf-tsvwg-careful-resume).
//!
//! The file is JSON (`{"version":1,"paths":{"198.18.0.2 ip/253":{…}}}`), at
//! `$CHUNK_PATH_CACHE`, else `$XDG_STATE_HOME/chunk/paths.json`, else
//! `~/.local/state/chunk/paths.json` (root's too: per user, like `known_hosts`, so no user reads
//! or writes another's; `--path-cache FILE` chooses another, `--no-path-cache` or an empty
//! `$CHUNK_PATH_CACHE` turns it off). It is rewritten whole, through a temporary file renamed
//! over it, so a reader never sees half of it; two senders finishing at once may lose one's
//! update, never the file. An entry older than [`MAX_AGE`] is ignored (a path's capacity is a
//! thing of the hour, not of the week), and at most [`MAX_ENTRIES`] are kept, the newest. A file
//! that cannot be read or parsed is ignored (logged at debug level) and replaced by the next
//! write: the cache can make a send start faster, never fail it.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{net::raw::Transport, proto::PathEstimate};

/// How long an entry is used after the transfer that measured it.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Most destinations remembered; the oldest go first.
pub const MAX_ENTRIES: usize = 1024;
/// The file format's version; another is ignored.
const VERSION: u32 = 1;
/// An entry from further in the future than this (a clock set back) is not trusted.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    paths: BTreeMap<String, Entry>,
}

/// One destination's measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// Bottleneck bandwidth, bits per second of chunk packets.
    bandwidth_bps: u64,
    /// Minimum round-trip time, microseconds.
    min_rtt_us: u64,
    /// When it was measured (the transfer's end), seconds since the Unix epoch.
    at: u64,
}

/// The cache in one file.
#[derive(Clone, Debug)]
pub struct PathCache {
    file: PathBuf,
}

/// The destination's key: the receiver's address and how packets reach it (a path in UDP to a
/// port may be another than straight over IP: a NAT, a firewall).
pub fn key(to: IpAddr, transport: Transport) -> String {
    match transport {
        Transport::Ip(protocol) => format!("{to} ip/{protocol}"),
        Transport::Udp(port) => format!("{to} udp/{port}"),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PathCache {
    pub fn new(file: PathBuf) -> Self {
        Self { file }
    }

    /// The default file (see the module docs); `None`: turned off by an empty
    /// `$CHUNK_PATH_CACHE`, or no home to keep it in.
    pub fn default_file() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CHUNK_PATH_CACHE") {
            return (!p.is_empty()).then(|| p.into());
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|p| Path::new(p).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| Path::new(&h).join(".local").join("state"))
            })?;
        Some(state.join("chunk").join("paths.json"))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Reads the file; missing, unreadable or malformed, it is empty (and says why at debug
    /// level).
    fn load(&self) -> CacheFile {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CacheFile::default(),
            Err(e) => {
                tracing::debug!(file = %self.file.display(), error = %e, "path cache unreadable: ignored");
                return CacheFile::default();
            }
        };
        match serde_json::from_slice::<CacheFile>(&bytes) {
            Ok(c) if c.version == VERSION => c,
            Ok(c) => {
                tracing::debug!(file = %self.file.display(), version = c.version, "path cache of another version: ignored");
                CacheFile::default()
            }
            Err(e) => {
                tracing::debug!(file = %self.file.display(), error = %e, "path cache malformed: ignored");
                CacheFile::default()
            }
        }
    }

    /// The estimate remembered for `key`, if measured within [`MAX_AGE`] before `now`.
    pub fn lookup(&self, key: &str, now: SystemTime) -> Option<PathEstimate> {
        let e = *self.load().paths.get(key)?;
        let now = unix_secs(now);
        let fresh =
            e.at <= now + CLOCK_SLACK.as_secs() && now.saturating_sub(e.at) <= MAX_AGE.as_secs();
        let sane = e.bandwidth_bps > 0 && e.min_rtt_us > 0;
        if !(fresh && sane) {
            tracing::debug!(key, ?e, "path cache entry stale or empty: not used");
            return None;
        }
        Some(PathEstimate {
            bandwidth: e.bandwidth_bps as f64 / 8.0,
            min_rtt: Duration::from_micros(e.min_rtt_us),
        })
    }

    /// Remembers `estimate` for `key`, measured at `now`: the file rewritten atomically, stale
    /// entries dropped, at most [`MAX_ENTRIES`] kept.
    pub fn record(&self, key: &str, estimate: PathEstimate, now: SystemTime) -> io::Result<()> {
        let mut c = self.load();
        c.version = VERSION;
        let now = unix_secs(now);
        c.paths.insert(
            key.to_owned(),
            Entry {
                bandwidth_bps: (estimate.bandwidth * 8.0) as u64,
                min_rtt_us: estimate.min_rtt.as_micros().min(u64::MAX as u128) as u64,
                at: now,
            },
        );
        c.paths.retain(|_, e| {
            e.at <= now + CLOCK_SLACK.as_secs() && now - e.at.min(now) <= MAX_AGE.as_secs()
        });
        if c.paths.len() > MAX_ENTRIES {
            let mut ages: Vec<u64> = c.paths.values().map(|e| e.at).collect();
            ages.sort_unstable_by(|a, b| b.cmp(a));
            let cut = ages[MAX_ENTRIES - 1];
            c.paths.retain(|_, e| e.at >= cut);
            while c.paths.len() > MAX_ENTRIES {
                let oldest = c
                    .paths
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(k, _)| k.clone())
                    .expect("not empty");
                c.paths.remove(&oldest);
            }
        }
        self.write(&c)
    }

    fn write(&self, c: &CacheFile) -> io::Result<()> {
        let dir = self
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = self
            .file
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(c)?)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(mbit: u64, rtt_ms: u64) -> PathEstimate {
        PathEstimate {
            bandwidth: mbit as f64 * 1e6 / 8.0,
            min_rtt: Duration::from_millis(rtt_ms),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn cache() -> (tempfile::TempDir, PathCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = PathCache::new(dir.path().join("state/chunk/paths.json"));
        (dir, c)
    }

    #[test]
    fn keys_name_the_address_and_the_transport() {
        let v4: IpAddr = "198.18.0.2".parse().unwrap();
        let v6: IpAddr = "2001:2::2".parse().unwrap();
        assert_eq!(key(v4, Transport::Ip(253)), "198.18.0.2 ip/253");
        assert_eq!(key(v6, Transport::Udp(47000)), "2001:2::2 udp/47000");
        assert_ne!(key(v4, Transport::Ip(253)), key(v4, Transport::Udp(253)));
    }

    #[test]
    fn an_estimate_reads_back_per_destination_until_it_expires() {
        let (_d, c) = cache();
        let t = 1_800_000_000;
        assert_eq!(c.lookup("a", at(t)), None, "no file yet");
        c.record("a", estimate(200, 300), at(t)).unwrap();
        c.record("b", estimate(50, 20), at(t + 10)).unwrap();
        assert_eq!(c.lookup("a", at(t + 60)), Some(estimate(200, 300)));
        assert_eq!(c.lookup("b", at(t + 60)), Some(estimate(50, 20)));
        assert_eq!(c.lookup("c", at(t + 60)), None);
        // An hour later it is still used; a second after that, not.
        assert!(c.lookup("a", at(t + 3600)).is_some());
        assert_eq!(c.lookup("a", at(t + 3601)), None);
        // From the future (the clock went back): not trusted.
        assert_eq!(c.lookup("a", at(t - 600)), None);
        // A newer measurement replaces the older; stale ones are dropped on writing.
        c.record("a", estimate(100, 310), at(t + 7200)).unwrap();
        assert_eq!(c.lookup("a", at(t + 7200)), Some(estimate(100, 310)));
        assert_eq!(c.load().paths.len(), 1, "b expired and was dropped");
    }

    #[test]
    fn a_bad_file_is_ignored_and_replaced() {
        let (_d, c) = cache();
        std::fs::create_dir_all(c.file().parent().unwrap()).unwrap();
        for junk in [
            &b"not json"[..],
            b"{\"version\":1,\"paths\":{\"a\":{\"bandwidth_bps\":-1}}}",
            b"{\"version\":99,\"paths\":{}}",
            b"",
        ] {
            std::fs::write(c.file(), junk).unwrap();
            assert_eq!(c.lookup("a", at(1000)), None);
        }
        c.record("a", estimate(10, 5), at(1000)).unwrap();
        assert_eq!(c.lookup("a", at(1000)), Some(estimate(10, 5)));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(c.file().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["paths.json"]);
        // A zero entry (hand-edited) is not an estimate.
        std::fs::write(
            c.file(),
            br#"{"version":1,"paths":{"a":{"bandwidth_bps":0,"min_rtt_us":100,"at":1000}}}"#,
        )
        .unwrap();
        assert_eq!(c.lookup("a", at(1000)), None);
    }

    #[test]
    fn an_unwritable_place_is_an_error_to_log_not_a_panic() {
        let (d, _) = cache();
        let blocker = d.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let c = PathCache::new(blocker.join("paths.json"));
        assert!(c.record("a", estimate(1, 1), at(1)).is_err());
        assert_eq!(c.lookup("a", at(1)), None);
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let (_d, c) = cache();
        let mut file = CacheFile {
            version: VERSION,
            paths: BTreeMap::new(),
        };
        for i in 0..MAX_ENTRIES as u64 + 10 {
            file.paths.insert(
                format!("k{i}"),
                Entry {
                    bandwidth_bps: 1000,
                    min_rtt_us: 1000,
                    at: 10_000 + i,
                },
            );
        }
        c.write(&file).unwrap();
        c.record("new", estimate(1, 1), at(11_100)).unwrap();
        let kept = c.load().paths;
        assert_eq!(kept.len(), MAX_ENTRIES);
        assert!(kept.contains_key("new"));
        assert!(!kept.contains_key("k0") && kept.contains_key(&format!("k{}", MAX_ENTRIES + 9)));
    }
}
