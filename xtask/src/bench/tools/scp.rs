//! scp: OpenSSH's `sshd` of the bench's own in the receiver's namespace (its own config, a
//! throwaway host key, one throwaway client key authorized, listening only on the receiver's
//! test address), and `scp` to it from the sender's namespace with OpenSSH's defaults: its
//! default cipher, and (OpenSSH 9) the SFTP protocol, which sshd serves in-process
//! (`internal-sftp`, no shell and no rc files). `scp` returns once the server has closed the
//! file. TCP underneath, so cut off and measured like nc at [`super::nc::CUT_OFF`];
//! retransmissions are the sender namespace's `TcpRetransSegs`. The cipher negotiated is read
//! from `scp -v` and named in the results.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use chunk_tests::Daemon;

use super::{
    Server, Transfer,
    nc::{retransmitted_since, send_or_cut_off, tcp_retransmissions},
    wait_listening,
};
use crate::bench::{
    accounting::{TimeFiles, timed},
    run::Run,
};

/// The port sshd listens on (on the receiver's test address only).
const PORT: &str = "22022";

/// Debian's sshd: it must be started by its absolute path (it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";

/// sshd's privilege-separation directory, which it refuses to start without.
const PRIVSEP_DIR: &str = "/run/sshd";

/// What to say when sshd is missing.
pub const HOW_TO_GET_SSHD: &str = "sshd is not installed: `cargo xtask setup` installs it (Debian's openssh-server, \
     its system service left off), or `apt-get install openssh-server`";

/// One benchmark's sshd configuration and throwaway keys, made once in the work directory.
pub struct Ssh {
    config: PathBuf,
    client_key: PathBuf,
    log: PathBuf,
    addr: Ipv4Addr,
}

/// Makes an ed25519 key pair with no passphrase at `path` (and `path.pub`).
fn keygen(path: &Path, comment: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let _ = std::fs::remove_file(&pub_path);
    crate::cmd_output(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    )
    .map(|_| ())
}

/// sshd's configuration: only the bench's client key, as root, on `addr` only; nothing that
/// reads the machine's own configuration (no PAM, no user rc files).
fn sshd_config(addr: Ipv4Addr, host_key: &Path, authorized_keys: &Path) -> String {
    format!(
        "# The benchmark's own sshd (cargo xtask bench, tool scp): one transfer, then stopped.\n\
         ListenAddress {addr}\n\
         Port {PORT}\n\
         HostKey {}\n\
         PidFile none\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         AuthorizedKeysFile {}\n\
         StrictModes no\n\
         PermitUserRC no\n\
         UseDNS no\n\
         X11Forwarding no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         PrintMotd no\n\
         Subsystem sftp internal-sftp\n",
        host_key.display(),
        authorized_keys.display()
    )
}

impl Ssh {
    /// Whether this machine has what the tool needs; if not, why not and how to get it.
    pub fn missing() -> Option<String> {
        if !Path::new(SSHD).is_file() {
            return Some(HOW_TO_GET_SSHD.into());
        }
        ["scp", "ssh-keygen"]
            .into_iter()
            .find(|c| !crate::setup::on_path(c))
            .map(|c| format!("{c} is not installed: `apt-get install openssh-client`"))
    }

    /// The keys and sshd's configuration in `dir`, checked with `sshd -t`; sshd will listen
    /// on `addr` (the receiver's).
    pub fn prepare(dir: &Path, addr: Ipv4Addr) -> Result<Ssh> {
        std::fs::create_dir_all(dir)?;
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key, "chunk-bench-host").context("the host key")?;
        keygen(&client_key, "chunk-bench-client").context("the client key")?;
        let authorized_keys = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_ed25519.pub"), &authorized_keys)?;
        let config = dir.join("sshd_config");
        std::fs::write(&config, sshd_config(addr, &host_key, &authorized_keys))?;
        if !Path::new(PRIVSEP_DIR).is_dir() {
            // Debian's tmpfiles.d makes it at boot, where the service runs.
            std::fs::create_dir_all(PRIVSEP_DIR)?;
        }
        crate::cmd_output(Command::new(SSHD).arg("-t").arg("-f").arg(&config))
            .context("sshd -t rejects the bench's configuration")?;
        Ok(Ssh {
            config,
            client_key,
            log: dir.join("sshd.log"),
            addr,
        })
    }

    /// sshd's last log lines, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// The cipher `ssh -v` says it negotiated (client to server).
fn cipher(stderr: &str) -> Option<String> {
    let rest = stderr
        .lines()
        .find_map(|l| l.split_once("kex: client->server cipher: "))?
        .1;
    rest.split_whitespace().next().map(str::to_string)
}

pub fn run(t: &Transfer, ssh: &Ssh, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let name = t.file.file_name().expect("a file name");
    let dest = t.out_dir.join(name);
    let _ = std::fs::remove_file(&ssh.log);
    let mut rc = timed(&net.receiver, &times.recv, SSHD);
    rc.args(["-D", "-E"])
        .arg(&ssh.log)
        .arg("-f")
        .arg(&ssh.config);
    let mut server = Server::new(Daemon::spawn(rc, "sshd")?);
    wait_listening(&net.receiver, PORT)
        .with_context(|| format!("sshd did not start: {}", ssh.log_tail()))?;
    let before = tcp_retransmissions(&net.sender);
    let mut sc = timed(&net.sender, &times.send, "scp");
    sc.args(["-v", "-F", "/dev/null", "-i"])
        .arg(&ssh.client_key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-P",
            PORT,
        ])
        .arg(t.file)
        .arg(format!("root@{}:{}/", ssh.addr, t.out_dir.display()));
    // Cut off: what arrived in the time allowed is the figure (the file's first bytes).
    let stop = |s: &mut Server| drop(s.stop(Duration::from_secs(5)));
    let Some((out, mark, _)) = send_or_cut_off(sc, t, run, (&dest, &times), &mut server, stop)?
    else {
        return Ok(());
    };
    // scp returns once the server has closed the file: everything has arrived.
    mark.stop(t.net, run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    run.cipher = cipher(&stderr);
    // sshd's own exit status (it is stopped by a signal) says nothing about the transfer.
    server.stop(Duration::from_secs(10))?;
    times.read_into(run);
    run.retransmissions = retransmitted_since(before, &net.sender);
    if !out.status.success() {
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debug")).collect();
        bail!(
            "scp failed ({}): {}; sshd: {}",
            out.status,
            errors.join(" | "),
            ssh.log_tail()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cipher_is_read_from_ssh_v_and_the_config_keeps_to_the_test_address() {
        let stderr = "debug1: kex: algorithm: sntrup761x25519-sha512@openssh.com\n\
                      debug1: kex: host key algorithm: ssh-ed25519\n\
                      debug1: kex: server->client cipher: chacha20-poly1305@openssh.com MAC: \
                      <implicit> compression: none\n\
                      debug1: kex: client->server cipher: chacha20-poly1305@openssh.com MAC: \
                      <implicit> compression: none\n";
        assert_eq!(
            cipher(stderr).as_deref(),
            Some("chacha20-poly1305@openssh.com")
        );
        assert_eq!(cipher("debug1: Connecting to 198.18.2.1"), None);
        let c = sshd_config(
            Ipv4Addr::new(198, 18, 2, 1),
            Path::new("/w/host"),
            Path::new("/w/ak"),
        );
        for line in [
            "ListenAddress 198.18.2.1",
            "Port 22022",
            "HostKey /w/host",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "AuthorizedKeysFile /w/ak",
            "PasswordAuthentication no",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from\n{c}");
        }
        // No cipher is chosen: OpenSSH's default is what is measured.
        assert!(!c.contains("Ciphers"));
    }
}
