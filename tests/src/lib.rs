//! The network-namespace harness for chunk's end-to-end tests, demo and benchmarks.
//!
//! [`Netns`] creates a namespace and deletes it when dropped, also when a test fails or panics;
//! [`veth_pair`] joins two of them, and every topology is built with it: [`TwoHosts`] (one
//! link), [`Routed`] (through a router), [`Bridged`] (through an impairing bridge). Addresses are
//! always in 198.18.0.0/15 (the benchmarking range), and traffic never leaves namespaces this
//! harness made. [`Daemon`] kills and reaps a background process when dropped, so namespaces are
//! never left busy; [`spawn_recv`] is the one way to start `chunk recv` and wait until it is
//! ready (the tests, `cargo xtask demo` and `cargo xtask bench` all use it).
//!
//! Everything here shells out to `ip` (iproute2): it is what an operator would type, and it keeps
//! the harness free of netlink plumbing.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub mod impair;
pub mod recv;
pub mod routed;
pub mod veth;
pub use impair::{Bridged, Impairments};
pub use recv::{READY_TIMEOUT, ReadyRecv, spawn_recv};
pub use routed::Routed;
pub use veth::{VethEnd, veth_pair};

/// Every namespace this harness creates starts with this, then the creating process's pid.
pub const NETNS_PREFIX: &str = "chunk-";

/// Runs a command and fails with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip ARGS...` in the current namespace.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Whether this process can create namespaces and attach XDP programs.
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `chunk-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace. chunk's path cache is off in it
    /// (an empty `CHUNK_PATH_CACHE`): a send that started from what an earlier test or
    /// benchmark run measured would depend on the order they ran in. A caller that wants it
    /// sets the variable to a file of its own.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c.env("CHUNK_PATH_CACHE", "");
        c
    }

    /// Runs `ip ARGS...` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `program ARGS...` inside this namespace; returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that has joined this namespace, so sockets it opens live here.
    pub fn enter<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "setns into {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth ends inside it (and so their peers).
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes namespaces left behind by harness processes that no longer run (killed with -9, say).
/// Namespaces of running processes are left alone, so concurrent runs do not disturb each other.
pub fn sweep_stale_namespaces() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

/// A background process, killed and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    what: String,
}

impl Daemon {
    /// Spawns `cmd` with stdout piped (see [`Daemon::wait_for_line`]) and stderr inherited.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(Daemon {
            child: Some(child),
            what: what.to_string(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Takes the process's stdout, for reading lines from it.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Sends a signal (SIGTERM, SIGINT, SIGKILL, ...) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the process to exit, up to `timeout`; kills it if it does not.
    pub fn wait(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads lines from `reader` until one satisfies `pred`, or `timeout` passes (checked between
/// lines; the reader is read on a helper thread so a silent process cannot hang the test).
pub fn wait_for_line(
    reader: ChildStdout,
    timeout: Duration,
    mut pred: impl FnMut(&str) -> bool + Send + 'static,
) -> Result<(String, std::sync::mpsc::Receiver<String>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return Ok((line, rx)),
            Ok(_) => continue,
            Err(_) => bail!("no matching line within {timeout:?}"),
        }
    }
}

/// Two hosts (namespaces) joined by one veth pair: `sender` 198.18.0.1 and 2001:2::1, `receiver`
/// 198.18.0.2 and 2001:2::2 (dual stack), with fixed MAC addresses so tests can build Ethernet
/// frames by hand.
#[derive(Debug)]
pub struct TwoHosts {
    pub sender: Netns,
    pub receiver: Netns,
    pub sender_if: &'static str,
    pub receiver_if: &'static str,
    pub sender_addr: Ipv4Addr,
    pub receiver_addr: Ipv4Addr,
    pub sender_addr6: Ipv6Addr,
    pub receiver_addr6: Ipv6Addr,
    pub sender_mac: [u8; 6],
    pub receiver_mac: [u8; 6],
}

impl TwoHosts {
    /// Creates the namespaces and the link, with the given MTU.
    pub fn new(tag: &str, mtu: u32) -> Result<Self> {
        let sender = Netns::new(&format!("{tag}-s"))?;
        let receiver = Netns::new(&format!("{tag}-r"))?;
        let hosts = TwoHosts {
            sender,
            receiver,
            sender_if: "veth-s",
            receiver_if: "veth-r",
            sender_addr: Ipv4Addr::new(198, 18, 0, 1),
            receiver_addr: Ipv4Addr::new(198, 18, 0, 2),
            sender_addr6: Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1),
            receiver_addr6: Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
            sender_mac: [0x02, 0xc4, 0x6b, 0, 0, 1],
            receiver_mac: [0x02, 0xc4, 0x6b, 0, 0, 2],
        };
        let (sender_addr, receiver_addr) = (
            format!("{}/24", hosts.sender_addr),
            format!("{}/24", hosts.receiver_addr),
        );
        let (sender_addr6, receiver_addr6) = (
            format!("{}/64", hosts.sender_addr6),
            format!("{}/64", hosts.receiver_addr6),
        );
        veth_pair(
            VethEnd::new(&hosts.sender, hosts.sender_if)
                .addr(&sender_addr)
                .addr6(&sender_addr6)
                .mac(hosts.sender_mac),
            VethEnd::new(&hosts.receiver, hosts.receiver_if)
                .addr(&receiver_addr)
                .addr6(&receiver_addr6)
                .mac(hosts.receiver_mac),
            Some(mtu),
        )?;
        // Static neighbours: no ARP or neighbour-discovery round before the first packet, and
        // no such noise in counters.
        let pairs = [
            (
                &hosts.sender,
                hosts.sender_if,
                hosts.receiver_mac,
                hosts.receiver_addr.to_string(),
            ),
            (
                &hosts.sender,
                hosts.sender_if,
                hosts.receiver_mac,
                hosts.receiver_addr6.to_string(),
            ),
            (
                &hosts.receiver,
                hosts.receiver_if,
                hosts.sender_mac,
                hosts.sender_addr.to_string(),
            ),
            (
                &hosts.receiver,
                hosts.receiver_if,
                hosts.sender_mac,
                hosts.sender_addr6.to_string(),
            ),
        ];
        for (ns, ifname, peer_mac, addr) in pairs {
            ns.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac(&peer_mac),
                "dev",
                ifname,
                "nud",
                "permanent",
            ])?;
        }
        Ok(hosts)
    }

    /// Packets the veth pair itself has dropped between the hosts so far: the sender side's
    /// transmit drops (the receiving end's queue was full because its core, which runs the XDP
    /// program, fell behind for a moment) plus the receiver side's receive drops.
    pub fn link_drops(&self) -> Result<u64> {
        let read = |ns: &Netns, ifname: &str, stat: &str| -> Result<u64> {
            let path = format!("/sys/class/net/{ifname}/statistics/{stat}");
            let text = ns.exec("cat", &[&path])?;
            text.trim()
                .parse()
                .with_context(|| format!("{path} in {}: {text:?}", ns.name()))
        };
        Ok(read(&self.sender, self.sender_if, "tx_dropped")?
            + read(&self.receiver, self.receiver_if, "rx_dropped")?)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends hand-built Ethernet frames out of an interface (AF_PACKET), for tests that need frames
/// no ordinary socket would produce: bad IP lengths, fragments, VLAN tags, options.
pub struct FrameSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl FrameSender {
    /// Opens the socket in the calling thread's namespace (call it inside [`Netns::enter`]).
    pub fn new(ifname: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname)?;
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
        }
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        Ok(FrameSender {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            ifindex,
        })
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!("sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}
