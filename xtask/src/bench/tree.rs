//! The tree cases (`--cases tree,tree-loss1`, issue 17): many small files against one large
//! one. Made once per benchmark in its work directory (in memory): 10 000 files of 4 KiB of
//! pseudo-random bytes in 100 directories, and apart one 40 MiB file. chunk (XDP), `tar c | nc`
//! and rsync (to a daemon) each send both, on the LAN link the other cases use, clean and at
//! 1 % loss each way; the rounds rotate the tools as they do for the other cases.
//!
//! Every run starts from an empty receive directory, and what arrived is checked whole: a
//! BLAKE3 over the sorted (path, content) list of the received files against the sent one's
//! ([`digest`]). A run cut off at [`super::tools::nc::CUT_OFF`] (chunk's too, in these cases)
//! is measured by the files that arrived whole, each of them checked ([`whole_files`]), and
//! marked. Figures per tool and case: files/s and MB/s for the tree, MB/s for the large file,
//! medians over the rounds; the goals compare them ([`super::goals`]).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    Bench, Case,
    run::{Outcome, Run},
    stats::median,
    tools::{self, Tool, Transfer},
};

/// The tree: `DIRS` directories of `FILES_PER_DIR` files of `FILE_SIZE` bytes.
const DIRS: u32 = 100;
const FILES_PER_DIR: u32 = 100;
const FILE_SIZE: usize = 4096;
/// The large file, MiB.
const BIG_MIB: u64 = 40;

/// The tools of the tree cases, in the order of the first round.
pub const TOOLS: [Tool; 3] = [Tool::ChunkXdp, Tool::TarNc, Tool::Rsync];

/// What a tree case sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Payload {
    /// The 10 000 files of 4 KiB.
    Files,
    /// The one 40 MiB file.
    Big,
}

impl Payload {
    pub const ALL: [Payload; 2] = [Payload::Files, Payload::Big];

    pub fn name(self) -> &'static str {
        match self {
            Payload::Files => "files",
            Payload::Big => "big",
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What was sent: where, how many files and bytes, the directories, the digest.
pub struct Sent {
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// Directories, the top one included (0 for a file).
    pub dirs: u64,
    pub digest: [u8; 32],
}

impl Sent {
    /// What chunk's receiver counts as transfers for it: each file and each directory.
    fn transfers(&self) -> u64 {
        self.files + self.dirs
    }
}

/// Both payloads, made once per benchmark.
pub struct Data {
    pub files: Sent,
    pub big: Sent,
}

impl Data {
    /// Writes the tree and the large file into `work`.
    pub fn make(work: &Path) -> Result<Data> {
        eprintln!(
            "bench: generating {} files of {} KiB and a {BIG_MIB} MiB file",
            DIRS * FILES_PER_DIR,
            FILE_SIZE / 1024
        );
        let root = work.join("tree");
        write_tree(&root, DIRS, FILES_PER_DIR, FILE_SIZE)?;
        let big = work.join("big.bin");
        crate::demo::generate(&big, BIG_MIB << 20)?;
        let sent = |path: PathBuf, dirs| -> Result<Sent> {
            let (files, bytes, digest) = digest(&path)?;
            Ok(Sent {
                path,
                files,
                bytes,
                dirs,
                digest,
            })
        };
        Ok(Data {
            files: sent(root, u64::from(DIRS) + 1)?,
            big: sent(big, 0)?,
        })
    }

    pub fn get(&self, p: Payload) -> &Sent {
        match p {
            Payload::Files => &self.files,
            Payload::Big => &self.big,
        }
    }
}

/// Writes `dirs` directories `dNNN` of `per_dir` files `fNNN` of `size` pseudo-random bytes
/// under `root` (replaced), each file its own bytes.
fn write_tree(root: &Path, dirs: u32, per_dir: u32, size: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(root);
    let mut buf = vec![0u8; size.next_multiple_of(8)];
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..per_dir {
            // xorshift64, seeded per file (never 0).
            let mut x = (u64::from(d) << 32 | u64::from(f)) ^ 0x9E37_79B9_7F4A_7C15;
            for w in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            std::fs::File::create(dir.join(format!("f{f:03}")))?.write_all(&buf[..size])?;
        }
    }
    Ok(())
}

/// The regular files at and below `root`, by their path from `root`'s parent (so that a tree
/// and its copy elsewhere compare), sorted; anything but files and directories is an error.
fn files(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let base = root.parent().context("a parent directory")?;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        } else if m.is_file() {
            out.push((p.strip_prefix(base)?.to_path_buf(), p));
        } else {
            bail!("{} is neither a file nor a directory", p.display());
        }
    }
    out.sort();
    Ok(out)
}

/// The files, bytes and digest of the file or tree at `root`: BLAKE3 over each file's path
/// (from `root`'s parent), length and content, in the order of their paths.
pub fn digest(root: &Path) -> Result<(u64, u64, [u8; 32])> {
    use std::os::unix::ffi::OsStrExt;
    let mut h = blake3::Hasher::new();
    let (mut n, mut bytes) = (0, 0);
    for (rel, path) in files(root)? {
        let data = std::fs::read(&path)?;
        let name = rel.as_os_str().as_bytes();
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
        n += 1;
        bytes += data.len() as u64;
    }
    Ok((n, bytes, *h.finalize().as_bytes()))
}

/// After a cut-off: the files of `sent` that arrived whole at `got` (the same path below its
/// parent), and their bytes. A file still shorter than the sent one is on its way and does not
/// count; one as long but with other bytes, or longer, is an error. Files the sender has not
/// (a tool's temporary files) do not count.
pub fn whole_files(sent: &Path, got: &Path) -> Result<(u64, u64)> {
    let got_base = got.parent().context("a parent directory")?;
    let (mut n, mut bytes) = (0, 0);
    for (rel, path) in files(sent)? {
        let there = got_base.join(&rel);
        let Ok(m) = std::fs::symlink_metadata(&there) else {
            continue;
        };
        let want = std::fs::read(&path)?;
        if !m.is_file() || m.len() < want.len() as u64 {
            continue;
        }
        if std::fs::read(&there)? != want {
            bail!("{} arrived with other bytes", rel.display());
        }
        n += 1;
        bytes += want.len() as u64;
    }
    Ok((n, bytes))
}

/// One transfer of a tree case.
pub struct TreeRun {
    pub payload: Payload,
    /// The files that arrived whole (all of them, unless cut off).
    pub files: u64,
    pub run: Run,
}

impl TreeRun {
    fn cut_off(&self) -> bool {
        self.run.partial_bytes.is_some()
    }

    /// Files per second of the transfer.
    fn files_per_s(&self) -> f64 {
        self.run.per_second(self.files)
    }
}

/// Sends `payload` with `tool` in `case` into a fresh receive directory and checks it.
pub fn run(b: &Bench, data: &Data, tool: Tool, case: Case, round: u32, p: Payload) -> TreeRun {
    let sent = data.get(p);
    let mut r = TreeRun {
        payload: p,
        files: 0,
        run: Run::new(tool, case, round),
    };
    let out_dir = b.work.join("recv");
    let result = (|| {
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir)?;
        let t = Transfer {
            net: &b.net,
            bin: &b.bin,
            work: &b.work,
            file: &sent.path,
            transfers: sent.transfers(),
            out_dir: &out_dir,
            mtu: b.args.mtu,
            timeout: std::time::Duration::from_secs(b.args.timeout_s),
            chunk_cut_off: Some(tools::nc::CUT_OFF),
            keys: None,
            ssh: None,
        };
        tools::run(tool, &t, &mut r.run)?;
        let got = out_dir.join(sent.path.file_name().expect("a file name"));
        if r.run.partial_bytes.is_some() {
            let (files, bytes) = whole_files(&sent.path, &got)?;
            if files == 0 {
                bail!("cut off after {:.0} s with no file whole", r.run.seconds);
            }
            (r.files, r.run.partial_bytes) = (files, Some(bytes));
            return Ok(());
        }
        let (files, bytes, d) = digest(&got).context("the received tree")?;
        if d != sent.digest {
            bail!(
                "the received {} differ from the ones sent ({files} files, {bytes} bytes; sent \
                 {}, {})",
                if p == Payload::Files { "files" } else { "file" },
                sent.files,
                sent.bytes
            );
        }
        r.files = files;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&out_dir);
    r.run.outcome = match result {
        Ok(()) => Outcome::Measured,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    r
}

/// Prints one run's figures (or why there are none) as it ends.
pub fn log(r: &TreeRun, data: &Data) {
    let (round, case, tool, p) = (
        r.run.round,
        r.run.case.name(),
        r.run.tool.name(),
        r.payload.name(),
    );
    let files_per_s = match r.payload {
        Payload::Files => format!("{:>6.0} files/s", r.files_per_s()),
        Payload::Big => String::new(),
    };
    match &r.run.outcome {
        Outcome::Measured => eprintln!(
            "bench: round {round} {case:<10} {tool:<9} {p:<5} {files_per_s:>14} {:>7.1} MB/s  \
             {} files in {:.2} s{}  cpu send {:.2} s recv {:.2} s  retx {:?}",
            r.run.goodput(data.get(r.payload).bytes),
            r.files,
            r.run.seconds,
            if r.cut_off() { " (cut off)" } else { "" },
            r.run.send_cpu,
            r.run.recv_cpu,
            r.run.retransmissions
        ),
        o => eprintln!(
            "bench: round {round} {case:<10} {tool:<9} {p:<5} {}",
            o.error().unwrap_or_default()
        ),
    }
}

/// The medians of one tool, case and payload (the field names are results.json's).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TreeSummary {
    pub ok: usize,
    pub runs: usize,
    /// Measured runs that were cut off (measured by the files that arrived whole).
    pub cut_off: usize,
    pub files_per_s: Option<f64>,
    #[serde(rename = "goodput_mb_s")]
    pub goodput: Option<f64>,
    pub send_cpu_s: Option<f64>,
    pub recv_cpu_s: Option<f64>,
    pub retransmissions: Option<f64>,
    pub errors: Vec<String>,
}

/// The summaries, by case, tool and payload.
pub type Sums = BTreeMap<(Case, Tool, Payload), TreeSummary>;

/// The goodput median of one tool in one case for one payload.
pub fn goodput(sums: &Sums, case: Case, tool: Tool, p: Payload) -> Option<f64> {
    sums.get(&(case, tool, p)).and_then(|s| s.goodput)
}

pub fn summarize(runs: &[TreeRun], data: &Data) -> Sums {
    let mut groups: BTreeMap<(Case, Tool, Payload), Vec<&TreeRun>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.run.case, r.run.tool, r.payload))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let ok: Vec<&TreeRun> = rs
                .iter()
                .copied()
                .filter(|r| r.run.outcome.is_measured())
                .collect();
            let m = |f: &dyn Fn(&TreeRun) -> Option<f64>| {
                median(ok.iter().filter_map(|r| f(r)).collect())
            };
            let s = TreeSummary {
                ok: ok.len(),
                runs: rs.len(),
                cut_off: ok.iter().filter(|r| r.cut_off()).count(),
                files_per_s: m(&|r| Some(r.files_per_s())),
                goodput: m(&|r| Some(r.run.goodput(data.get(r.payload).bytes))),
                // A cut-off sender is killed with its `time`: no CPU figures.
                send_cpu_s: m(&|r| (!r.cut_off()).then_some(r.run.send_cpu)),
                recv_cpu_s: m(&|r| (!r.cut_off()).then_some(r.run.recv_cpu)),
                retransmissions: m(&|r| r.run.retransmissions.map(|n| n as f64)),
                errors: rs.iter().filter_map(|r| r.run.outcome.error()).collect(),
            };
            (k, s)
        })
        .collect()
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.prec$}"))
}

/// results.md's section on the tree cases: one row per case and tool.
pub fn markdown(cases: &[Case], rounds: u32, sums: &Sums, runs: &[TreeRun]) -> String {
    let mut o = format!(
        "\nTrees: {} files of {} KiB in {DIRS} directories, and apart one {BIG_MIB} MiB file, \
         each into an empty directory, checked whole (BLAKE3 over the sorted paths and \
         contents); median of {rounds} rounds. MB/s = file bytes / time until everything is at \
         the receiver (chunk: confirmed to the sender). A run is cut off after {} s and then \
         measured by the files that arrived whole (marked *). CPU: seconds per transfer, \
         `/usr/bin/time` of each side (tar | nc: both commands of each side's pipeline; rsync: \
         the daemon and its connection process), of the runs not cut off. chunk's receiver \
         runs with `RUST_LOG=warn` here (no log line per file, as tar and rsync print none).\n\n\
         | case | tool | files/s | files MB/s | {BIG_MIB} MiB file MB/s \
         | sender CPU s (files) | receiver CPU s (files) | ok (files, file) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        DIRS * FILES_PER_DIR,
        FILE_SIZE / 1024,
        tools::nc::CUT_OFF.as_secs()
    );
    for &case in cases.iter().filter(|c| c.is_tree()) {
        for tool in TOOLS {
            let (Some(f), Some(b)) = (
                sums.get(&(case, tool, Payload::Files)),
                sums.get(&(case, tool, Payload::Big)),
            ) else {
                continue;
            };
            let mark = |s: &TreeSummary| if s.cut_off > 0 { "*" } else { "" };
            o.push_str(&format!(
                "| {} | {} | {}{} | {}{} | {}{} | {} | {} | {}/{}, {}/{} |\n",
                case.name(),
                tool.name(),
                fmt(f.files_per_s, 0),
                mark(f),
                fmt(f.goodput, 1),
                mark(f),
                fmt(b.goodput, 1),
                mark(b),
                fmt(f.send_cpu_s, 2),
                fmt(f.recv_cpu_s, 2),
                f.ok,
                f.runs,
                b.ok,
                b.runs
            ));
        }
    }
    let cut: Vec<String> = runs
        .iter()
        .filter(|r| r.cut_off() && r.run.outcome.is_measured())
        .map(|r| {
            format!(
                "{} {} {} round {} ({} files in {:.0} s)",
                r.run.case.name(),
                r.run.tool.name(),
                r.payload.name(),
                r.run.round,
                r.files,
                r.run.seconds
            )
        })
        .collect();
    if !cut.is_empty() {
        o.push_str(&format!("\n* Cut off: {}.\n", cut.join("; ")));
    }
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let e = r.run.outcome.error()?;
            Some(format!(
                "- {}/{}/{} round {}: {e}",
                r.run.case.name(),
                r.run.tool.name(),
                r.payload.name(),
                r.run.round
            ))
        })
        .collect();
    if !failed.is_empty() {
        o.push_str(&format!("\nFailed tree runs:\n\n{}\n", failed.join("\n")));
    }
    o
}

/// What the tree cases found, for both reports.
#[derive(Clone, Copy)]
pub struct Trees<'a> {
    pub data: &'a Data,
    pub sums: &'a Sums,
    pub runs: &'a [TreeRun],
}

/// results.json's `tree`.
#[derive(Serialize)]
pub struct Json {
    files: u64,
    file_bytes: u64,
    big_bytes: u64,
    cut_off_s: u64,
    summary: Vec<SummaryJson>,
    runs: Vec<RunJson>,
}

#[derive(Serialize)]
struct SummaryJson {
    case: Case,
    tool: Tool,
    payload: Payload,
    #[serde(flatten)]
    summary: TreeSummary,
}

#[derive(Serialize)]
struct RunJson {
    case: Case,
    tool: Tool,
    payload: Payload,
    round: u32,
    ok: bool,
    error: Option<String>,
    cut_off: bool,
    seconds: f64,
    files: u64,
    files_per_s: Option<f64>,
    goodput_mb_s: Option<f64>,
    send_cpu_s: f64,
    recv_cpu_s: f64,
    retransmissions: Option<u64>,
}

impl Json {
    pub fn new(Trees { data, sums, runs }: Trees) -> Json {
        Json {
            files: data.files.files,
            file_bytes: data.files.bytes,
            big_bytes: data.big.bytes,
            cut_off_s: tools::nc::CUT_OFF.as_secs(),
            summary: sums
                .iter()
                .map(|(&(case, tool, payload), s)| SummaryJson {
                    case,
                    tool,
                    payload,
                    summary: s.clone(),
                })
                .collect(),
            runs: runs
                .iter()
                .map(|r| {
                    let ok = r.run.outcome.is_measured();
                    RunJson {
                        case: r.run.case,
                        tool: r.run.tool,
                        payload: r.payload,
                        round: r.run.round,
                        ok,
                        error: r.run.outcome.error(),
                        cut_off: r.cut_off(),
                        seconds: r.run.seconds,
                        files: r.files,
                        files_per_s: ok.then(|| r.files_per_s()),
                        goodput_mb_s: ok.then(|| r.run.goodput(data.get(r.payload).bytes)),
                        send_cpu_s: r.run.send_cpu,
                        recv_cpu_s: r.run.recv_cpu,
                        retransmissions: r.run.retransmissions,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A directory of its own under target/bench-test, removed when dropped.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Scratch {
            let p = crate::workspace_root()
                .join("target/bench-test")
                .join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Made-up data: what the summaries and the goals need of it (the sizes).
    pub fn data() -> Data {
        let sent = |files, bytes| Sent {
            path: PathBuf::from("/nonexistent"),
            files,
            bytes,
            dirs: 0,
            digest: [0; 32],
        };
        Data {
            files: sent(10_000, 10_000 * 4096),
            big: sent(1, 40 << 20),
        }
    }

    /// A measured run of `tool` in `case` moving `p` in `seconds`.
    pub fn run(case: Case, tool: Tool, p: Payload, round: u32, seconds: f64) -> TreeRun {
        let mut run = Run::new(tool, case, round);
        run.outcome = Outcome::Measured;
        run.seconds = seconds;
        TreeRun {
            payload: p,
            files: if p == Payload::Files { 10_000 } else { 1 },
            run,
        }
    }

    #[test]
    fn a_copy_has_the_same_digest_and_any_change_shows() {
        let s = Scratch::new("tree-digest");
        let (a, b) = (s.0.join("a/tree"), s.0.join("b/tree"));
        write_tree(&a, 3, 4, 100).unwrap();
        write_tree(&b, 3, 4, 100).unwrap();
        let (n, bytes, d) = digest(&a).unwrap();
        assert_eq!((n, bytes), (12, 1200));
        assert_eq!(digest(&b).unwrap().2, d);
        // Every file has its own bytes.
        let f = |t: &Path, d: u32, f: u32| std::fs::read(t.join(format!("d{d:03}/f{f:03}")));
        assert_ne!(f(&a, 0, 0).unwrap(), f(&a, 0, 1).unwrap());
        assert_ne!(f(&a, 0, 0).unwrap(), f(&a, 1, 0).unwrap());
        // One byte changed, one file renamed, one file more: each another digest.
        let mut x = f(&b, 2, 3).unwrap();
        x[50] ^= 1;
        std::fs::write(b.join("d002/f003"), &x).unwrap();
        assert_ne!(digest(&b).unwrap().2, d);
        write_tree(&b, 3, 4, 100).unwrap();
        std::fs::rename(b.join("d001/f000"), b.join("d001/g000")).unwrap();
        assert_ne!(digest(&b).unwrap().2, d);
        write_tree(&b, 3, 4, 100).unwrap();
        std::fs::write(b.join("extra"), b"").unwrap();
        assert_ne!(digest(&b).unwrap().2, d);
        // A single file is its own one-entry list, named by its file name.
        std::fs::write(s.0.join("a/one"), b"xyz").unwrap();
        std::fs::write(s.0.join("b/one"), b"xyz").unwrap();
        assert_eq!(
            digest(&s.0.join("a/one")).unwrap(),
            digest(&s.0.join("b/one")).unwrap()
        );
        assert_eq!(digest(&s.0.join("a/one")).unwrap().0, 1);
    }

    #[test]
    fn after_a_cut_off_only_whole_and_exact_files_count() {
        let s = Scratch::new("tree-whole");
        let (a, b) = (s.0.join("a/tree"), s.0.join("b/tree"));
        write_tree(&a, 2, 3, 100).unwrap();
        std::fs::create_dir_all(b.join("d000")).unwrap();
        assert_eq!(whole_files(&a, &s.0.join("b/none")).unwrap(), (0, 0));
        let sent = |f: &str| std::fs::read(a.join(f)).unwrap();
        // Two whole, one on its way, a temporary file of the tool's.
        std::fs::write(b.join("d000/f000"), sent("d000/f000")).unwrap();
        std::fs::write(b.join("d000/f001"), sent("d000/f001")).unwrap();
        std::fs::write(b.join("d000/f002"), &sent("d000/f002")[..40]).unwrap();
        std::fs::write(b.join("d000/.f002.XyZ123"), b"partial").unwrap();
        assert_eq!(whole_files(&a, &b).unwrap(), (2, 200));
        // A file as long as the sent one but with other bytes is an error.
        let mut x = sent("d000/f002");
        x[0] ^= 1;
        std::fs::write(b.join("d000/f002"), &x).unwrap();
        assert!(whole_files(&a, &b).is_err());
    }

    #[test]
    fn summaries_take_medians_of_files_per_second_and_goodput() {
        let d = data();
        let mut runs: Vec<TreeRun> = [2.0, 1.0, 4.0]
            .iter()
            .enumerate()
            .map(|(i, &s)| run(Case::Tree, Tool::Rsync, Payload::Files, i as u32, s))
            .collect();
        // A cut-off run: 5 000 files in 45 s.
        let mut cut = run(Case::TreeLoss1, Tool::Rsync, Payload::Files, 0, 45.0);
        cut.files = 5_000;
        cut.run.partial_bytes = Some(5_000 * 4096);
        runs.push(cut);
        let mut failed = run(Case::TreeLoss1, Tool::Rsync, Payload::Files, 1, 1.0);
        failed.run.outcome = Outcome::Failed("boom".into());
        runs.push(failed);
        let sums = summarize(&runs, &d);
        let s = &sums[&(Case::Tree, Tool::Rsync, Payload::Files)];
        assert_eq!((s.ok, s.runs, s.cut_off), (3, 3, 0));
        assert_eq!(s.files_per_s, Some(5_000.0));
        assert!((s.goodput.unwrap() - 10_000.0 * 4096.0 / 2.0 / 1e6).abs() < 1e-9);
        let s = &sums[&(Case::TreeLoss1, Tool::Rsync, Payload::Files)];
        assert_eq!((s.ok, s.runs, s.cut_off), (1, 2, 1));
        assert!((s.files_per_s.unwrap() - 5_000.0 / 45.0).abs() < 1e-9);
        assert_eq!(s.errors, ["boom"]);
        // The table needs both payloads of a tool to show its row.
        runs.push(run(Case::TreeLoss1, Tool::Rsync, Payload::Big, 0, 2.0));
        let sums = summarize(&runs, &d);
        let md = markdown(&[Case::Clean, Case::TreeLoss1], 3, &sums, &runs);
        assert!(
            md.contains("| tree-loss1 | rsync | 111* | 0.5* | 21.0 | – | – | 1/2, 1/1 |"),
            "{md}"
        );
        assert!(!md.contains("| tree | rsync"), "{md}");
        assert!(
            md.contains("tree-loss1 rsync files round 0 (5000 files in 45 s)"),
            "{md}"
        );
        assert!(
            md.contains("- tree-loss1/rsync/files round 1: boom"),
            "{md}"
        );
        let trees = Trees {
            data: &d,
            sums: &sums,
            runs: &runs,
        };
        let v = serde_json::to_value(Json::new(trees)).unwrap();
        assert_eq!(v["summary"][0]["payload"], "files");
        assert_eq!(v["runs"][3]["cut_off"], true);
        assert!(v["runs"][4]["goodput_mb_s"].is_null());
    }
}
