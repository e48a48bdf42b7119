//! Loads chunk's XDP program, configures it, attaches it to an interface, and reads its counters.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramError, Xdp, xdp::XdpMode},
};
use aya_log::EbpfLogger;
use chunk_common::{counters::Counter, ring::MAX_PAYLOAD_LEN, xdp as names};
use serde::Serialize;

use super::{
    link, paths,
    rx::{Counters, Prefix},
    session_filter::SessionFilter,
};
use thiserror::Error;

/// How to attach: native (driver) mode, generic (SKB) mode, or native with SKB as the fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Auto,
    Driver,
    Skb,
}

/// What to load and how.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    pub iface: String,
    pub mode: AttachMode,
    pub protocol: u8,
    /// Payloads longer than this are dropped (`bad_length`); at most [`MAX_PAYLOAD_LEN`].
    pub max_payload: u16,
    /// Source prefixes allowed to send (either family); empty allows every source.
    pub allow: Vec<Prefix>,
    /// The UDP port chunk packets in UDP arrive on (`--udp`); 0: none.
    pub udp_port: u16,
    /// Ring-buffer bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Log every packet the program drops, with the reason, through aya-log (slow: debugging).
    pub log_drops: bool,
    /// Pin the maps under [`paths::pin_dir`] for `bpftool`.
    pub pin: bool,
}

impl XdpConfig {
    pub fn new(iface: &str) -> Self {
        XdpConfig {
            iface: iface.to_string(),
            mode: AttachMode::Auto,
            protocol: chunk_common::DEFAULT_IP_PROTOCOL,
            max_payload: MAX_PAYLOAD_LEN as u16,
            allow: Vec::new(),
            udp_port: 0,
            ring_bytes: names::RING_DEFAULT_BYTES,
            log_drops: false,
            pin: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("attaching XDP needs root (CAP_NET_ADMIN and CAP_BPF); run as root")]
    NotRoot,
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    #[error(
        "another XDP program (id {prog_id}, {name:?}, {mode} mode) is attached to {iface}; \
         chunk will not replace it. If it is a leftover, `ip link set dev {iface} xdp off` \
         removes it"
    )]
    Busy {
        iface: String,
        prog_id: u32,
        name: String,
        mode: &'static str,
    },
    #[error("asking the kernel about {iface}: {source}")]
    Query {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("loading the XDP program failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel's verifier rejected the XDP program:\n{0}")]
    Verifier(String),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("XDP map {0} is missing from the program object")]
    MissingMap(&'static str),
    #[error("XDP map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Reads the program's per-CPU counter map, summed over CPUs.
pub(crate) fn read_counters(
    map: &PerCpuArray<MapData, u64>,
) -> Result<Counters, aya::maps::MapError> {
    let mut out = Counters::default();
    for c in Counter::ALL {
        out.0[c as usize] = map.get(&(c as u32), 0)?.iter().sum();
    }
    Ok(out)
}

/// The XDP program, loaded and attached. Dropping it detaches the program.
pub struct XdpReceiver {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    mode: &'static str,
    iface: String,
    info: ProgInfo,
    pinned: Option<PathBuf>,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

/// What the kernel says about the loaded program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProgInfo {
    pub prog_id: u32,
    /// Instructions the verifier processed when it loaded the program.
    pub verified_insns: Option<u32>,
    pub counters_map_id: u32,
}

/// The name of loaded program `id`, or "?".
fn prog_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Driver => "driver",
        XdpMode::Skb => "skb",
        XdpMode::Hardware => "hardware",
        XdpMode::Default => "default",
    }
}

impl XdpReceiver {
    /// Loads the embedded program with `cfg`'s settings and attaches it to `cfg.iface`.
    pub fn attach(cfg: &XdpConfig) -> Result<Self, XdpError> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(XdpError::NotRoot);
        }
        let ifindex = link::ifindex(&cfg.iface)
            .ok_or_else(|| XdpError::NoSuchInterface(cfg.iface.clone()))?;
        // Ask first: aya would replace or fail obscurely, and the user deserves to know what
        // holds the interface.
        if let Some(a) = link::xdp_attached(ifindex).map_err(|source| XdpError::Query {
            iface: cfg.iface.clone(),
            source,
        })? {
            return Err(XdpError::Busy {
                iface: cfg.iface.clone(),
                prog_id: a.prog_id,
                name: prog_name(a.prog_id),
                mode: a.mode,
            });
        }
        let mut ebpf = load(cfg)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM_NAME)
            .expect("the object has the chunk program")
            .try_into()
            .expect("the chunk program is XDP");
        let modes: &[XdpMode] = match cfg.mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Driver => &[XdpMode::Driver],
            AttachMode::Skb => &[XdpMode::Skb],
        };
        let mut attached = None;
        let mut last_err = None;
        for &m in modes {
            match prog.attach(&cfg.iface, m) {
                Ok(_) => {
                    attached = Some(m);
                    break;
                }
                Err(e) => {
                    tracing::debug!(mode = mode_name(m), error = %e, "XDP attach failed");
                    last_err = Some((m, e));
                }
            }
        }
        let Some(mode) = attached else {
            let (m, source) = last_err.expect("at least one mode was tried");
            return Err(XdpError::Attach {
                iface: cfg.iface.clone(),
                mode: mode_name(m),
                source,
            });
        };
        let pinfo = prog.info().ok();
        let logger = if cfg.log_drops {
            match EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "XDP drop logging is unavailable");
                    None
                }
            }
        } else {
            None
        };
        let pinned = if cfg.pin {
            pin_maps(&ebpf, &cfg.iface)
        } else {
            None
        };

        let counters_map_id = match ebpf.map(names::MAP_COUNTERS) {
            Some(aya::maps::Map::PerCpuArray(m)) => m.info().map_or(0, |i| i.id()),
            _ => 0,
        };
        let counters_map = ebpf
            .take_map(names::MAP_COUNTERS)
            .ok_or(XdpError::MissingMap(names::MAP_COUNTERS))?;
        let counters = PerCpuArray::try_from(counters_map).map_err(|source| XdpError::Map {
            name: names::MAP_COUNTERS,
            source,
        })?;
        let info = ProgInfo {
            prog_id: pinfo.as_ref().map_or(0, |p| p.id()),
            verified_insns: pinfo.as_ref().and_then(|p| p.verified_instruction_count()),
            counters_map_id,
        };
        Ok(XdpReceiver {
            ebpf,
            counters,
            mode: mode_name(mode),
            iface: cfg.iface.clone(),
            info,
            pinned,
            logger,
        })
    }

    /// The kernel's ids for the program and its counters, and the verifier's instruction count.
    pub fn info(&self) -> ProgInfo {
        self.info
    }

    /// Where the maps are pinned, if they are.
    pub fn pinned(&self) -> Option<&Path> {
        self.pinned.as_deref()
    }

    /// The aya-log reader, when drop logging is on: make its fd readable-driven and `flush` it.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// "driver" or "skb": how the program ended up attached.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn counters(&self) -> Result<Counters, XdpError> {
        read_counters(&self.counters).map_err(|source| XdpError::Map {
            name: names::MAP_COUNTERS,
            source,
        })
    }

    /// Takes the reader-busy flag (once; see `chunk_common::xdp::MAP_READER_BUSY`).
    pub fn take_reader_busy(&mut self) -> Result<Array<MapData, u32>, XdpError> {
        let map = self
            .ebpf
            .take_map(names::MAP_READER_BUSY)
            .ok_or(XdpError::MissingMap(names::MAP_READER_BUSY))?;
        Array::try_from(map).map_err(|source| XdpError::Map {
            name: names::MAP_READER_BUSY,
            source,
        })
    }

    /// Takes the map of open sessions (once; see `chunk_common::xdp::MAP_SESSIONS`), as the
    /// filter that keeps it.
    pub fn take_sessions(&mut self) -> Result<SessionFilter, XdpError> {
        take_sessions(&mut self.ebpf)
    }

    /// Takes the ring buffer of accepted chunks (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, XdpError> {
        let map = self
            .ebpf
            .take_map(names::MAP_CHUNKS)
            .ok_or(XdpError::MissingMap(names::MAP_CHUNKS))?;
        RingBuf::try_from(map).map_err(|source| XdpError::Map {
            name: names::MAP_CHUNKS,
            source,
        })
    }
}

/// Loads the embedded program with `cfg`'s settings (globals, ring size, allowlist) and has the
/// verifier check it, without attaching it anywhere.
pub fn load(cfg: &XdpConfig) -> Result<Ebpf, XdpError> {
    if cfg.max_payload as usize > MAX_PAYLOAD_LEN || cfg.max_payload == 0 {
        return Err(XdpError::Config(format!(
            "max payload {} is outside 1..={MAX_PAYLOAD_LEN}",
            cfg.max_payload
        )));
    }
    if !cfg.ring_bytes.is_power_of_two() || cfg.ring_bytes < 4096 {
        return Err(XdpError::Config(format!(
            "ring buffer size {} is not a power of two of at least 4096",
            cfg.ring_bytes
        )));
    }
    let allow_on: u8 = (!cfg.allow.is_empty()).into();
    let log_drops: u8 = cfg.log_drops.into();
    let mut ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_PROTOCOL, &cfg.protocol, true)
        .override_global(names::GLOBAL_MAX_PAYLOAD, &cfg.max_payload, true)
        .override_global(names::GLOBAL_UDP_PORT, &cfg.udp_port, true)
        .override_global(names::GLOBAL_ALLOWLIST_ON, &allow_on, true)
        .override_global(names::GLOBAL_LOG_DROPS, &log_drops, true)
        .map_max_entries(names::MAP_CHUNKS, cfg.ring_bytes)
        .load(crate::XDP_OBJECT)
        .map_err(XdpError::Load)?;

    // Each family's prefixes in its own trie. The kernel does not map an IPv4-mapped IPv6
    // source (::ffff:a.b.c.d, which has no business on the wire) to IPv4: with the allowlist
    // on, it is refused unless an IPv6 prefix covers it.
    insert_prefixes(
        &mut ebpf,
        names::MAP_ALLOWLIST,
        cfg.allow.iter().filter_map(|p| match p {
            Prefix::V4(p) => Some((p.prefix_len(), u32::from_ne_bytes(p.addr().octets()))),
            Prefix::V6(_) => None,
        }),
    )?;
    insert_prefixes(
        &mut ebpf,
        names::MAP_ALLOWLIST6,
        cfg.allow.iter().filter_map(|p| match p {
            Prefix::V4(_) => None,
            Prefix::V6(p) => Some((p.prefix_len(), p.addr().octets())),
        }),
    )?;

    let prog: &mut Xdp = ebpf
        .program_mut(names::PROGRAM_NAME)
        .expect("the object has the chunk program")
        .try_into()
        .expect("the chunk program is XDP");
    prog.load().map_err(|e| match e {
        ProgramError::LoadError { verifier_log, .. } => {
            XdpError::Verifier(verifier_log.to_string())
        }
        other => XdpError::Verifier(other.to_string()),
    })?;
    Ok(ebpf)
}

/// Takes the map of open sessions out of a loaded program (once), as the filter that keeps it.
pub fn take_sessions(ebpf: &mut Ebpf) -> Result<SessionFilter, XdpError> {
    let map = ebpf
        .take_map(names::MAP_SESSIONS)
        .ok_or(XdpError::MissingMap(names::MAP_SESSIONS))?;
    let map = aya::maps::HashMap::try_from(map).map_err(|source| XdpError::Map {
        name: names::MAP_SESSIONS,
        source,
    })?;
    Ok(SessionFilter::kernel(map))
}

/// Puts `(prefix length, address)` pairs into the LPM trie `name`, whose key data is a `K`
/// (the address in network byte order).
fn insert_prefixes<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    prefixes: impl Iterator<Item = (u8, K)>,
) -> Result<(), XdpError> {
    let map = ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
    let mut trie: LpmTrie<_, K, u8> =
        LpmTrie::try_from(map).map_err(|source| XdpError::Map { name, source })?;
    for (len, addr) in prefixes {
        trie.insert(&Key::new(len.into(), addr), 1, 0)
            .map_err(|source| XdpError::Map { name, source })?;
    }
    Ok(())
}

impl Drop for XdpReceiver {
    fn drop(&mut self) {
        if let Some(dir) = &self.pinned {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Dropping `ebpf` then detaches the program.
    }
}

/// The maps `bpftool map dump pinned` is useful on.
const PINNED_MAPS: [&str; 3] = [
    names::MAP_COUNTERS,
    names::MAP_ALLOWLIST,
    names::MAP_ALLOWLIST6,
];

/// Pins the counters and the allowlists under [`paths::pin_dir`], replacing a dead receiver's
/// leftovers (no live one can hold this interface: the attach would have been refused). Pinning
/// is a convenience: failure is reported and otherwise ignored.
fn pin_maps(ebpf: &Ebpf, iface: &str) -> Option<PathBuf> {
    let dir = paths::pin_dir(iface);
    let result = (|| -> anyhow::Result<()> {
        use anyhow::Context;
        ensure_bpffs().context("mounting bpffs")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).context("removing leftover pins")?;
        }
        std::fs::create_dir_all(&dir).context("creating the pin directory")?;
        for name in PINNED_MAPS {
            let map = ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
            map.pin(dir.join(name.to_lowercase()))
                .with_context(|| format!("pinning {name}"))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = format!("{e:#}"), "could not pin the XDP maps");
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

/// Reads the counters of the chunk program attached to `iface` (a running receiver's, seen
/// from another process): finds the program through the kernel, then its counters map by name.
pub fn attached_counters(iface: &str) -> anyhow::Result<Option<(ProgInfo, Counters)>> {
    use anyhow::Context;
    let ifindex = link::ifindex(iface).with_context(|| format!("no interface named {iface:?}"))?;
    let Some(a) = link::xdp_attached(ifindex)? else {
        return Ok(None);
    };
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == a.prog_id)
        .with_context(|| format!("XDP program {} is gone", a.prog_id))?;
    if prog.name_as_str() != Some(names::PROGRAM_NAME) {
        anyhow::bail!(
            "the XDP program on {iface} is {:?} (id {}), not chunk's",
            prog.name_as_str().unwrap_or("?"),
            a.prog_id
        );
    }
    let map_info = prog
        .map_ids()?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| aya::maps::MapInfo::from_id(id).ok())
        .find(|m| m.name_as_str() == Some(names::MAP_COUNTERS))
        .context("the chunk program has no counters map")?;
    let map = MapData::from_id(map_info.id())?;
    let counters = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))?;
    let info = ProgInfo {
        prog_id: a.prog_id,
        verified_insns: prog.verified_instruction_count(),
        counters_map_id: map_info.id(),
    };
    Ok(Some((info, read_counters(&counters)?)))
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure bpffs is mounted at [`paths::BPFFS`], mounting it if not (as systemd does at boot; inside
/// `ip netns exec`, which remounts /sys, the mount is private to that command).
pub fn ensure_bpffs() -> std::io::Result<()> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/sys/fs/bpf";
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
