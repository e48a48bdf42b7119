//! Identities: X25519 key pairs (`chunk keygen`), the receiver's authorized senders
//! (`--authorized-keys`) and the sender's remembered receivers (known hosts).
//!
//! Formats (docs/SECURITY.md, "Keys"):
//! - a **private key file** holds, after any `#` comment lines, the 32-byte X25519 private key
//!   in standard base64 (44 characters); it must not be readable or writable by group or others
//!   (mode 0600 or stricter), as ssh requires of its keys;
//! - a **public key line** is `chunk-x25519 <base64 of the 32-byte public key> [comment]`;
//! - an **authorized-keys file** holds one public key line per sender; `#` lines and blank lines
//!   are ignored;
//! - a **known-hosts file** holds `<peer> chunk-x25519 <base64>` lines, the peer as `chunk send
//!   --to` resolved it (`198.18.0.2`, `2001:2::2`, or `[2001:2::2]:47000` over UDP).

use std::{
    fmt,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};

/// The word a public key line starts with.
pub const KEY_TYPE: &str = "chunk-x25519";

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    /// `chunk-x25519 <base64>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_TYPE} {}", B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// From `chunk-x25519 <base64> [comment]`, or the bare base64.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let mut words = text.split_whitespace();
        let first = words.next().ok_or("an empty key")?;
        let b64 = if first == KEY_TYPE {
            words
                .next()
                .ok_or("`chunk-x25519` without a key after it")?
        } else {
            first
        };
        decode32(b64).map(PublicKey).ok_or_else(|| {
            format!("`{b64}` is not a chunk public key (chunk-x25519 and 44 characters of base64)")
        })
    }
}

fn decode32(b64: &str) -> Option<[u8; 32]> {
    B64.decode(b64).ok()?.try_into().ok()
}

/// An X25519 private key, with its public key.
#[derive(Clone)]
pub struct SecretKey {
    secret: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {})", self.public)
    }
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> SecretKey {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        SecretKey::from_bytes(secret)
    }

    pub fn from_bytes(secret: [u8; 32]) -> SecretKey {
        let public =
            PublicKey(curve25519_dalek::MontgomeryPoint::mul_base_clamped(secret).to_bytes());
        SecretKey { secret, public }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Reads a private key file; refuses one that group or others may read or write.
    pub fn load(path: &Path) -> io::Result<SecretKey> {
        let err = |kind, msg: String| io::Error::new(kind, format!("{}: {msg}", path.display()));
        let md = std::fs::metadata(path).map_err(|e| err(e.kind(), e.to_string()))?;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(
                io::ErrorKind::PermissionDenied,
                format!(
                    "private key file has mode {mode:03o}: others may read it. It must be \
                     private to its owner (chmod 600 {})",
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.kind(), e.to_string()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        if line.starts_with(KEY_TYPE) {
            return Err(err(
                io::ErrorKind::InvalidData,
                "this is a public key; give the private key file (without .pub)".into(),
            ));
        }
        decode32(line).map(SecretKey::from_bytes).ok_or_else(|| {
            err(
                io::ErrorKind::InvalidData,
                "not a chunk private key (44 characters of base64; `chunk keygen` writes one)"
                    .into(),
            )
        })
    }

    /// Writes the private key to `path` (created mode 0600, never replacing a file unless
    /// `force`) and the public key line to `path.pub`.
    pub fn write(&self, path: &Path, comment: &str, force: bool) -> io::Result<PathBuf> {
        let pub_path = pub_path(path);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).mode(0o600);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let with_path = |p: &Path, e: io::Error| {
            let hint = if e.kind() == io::ErrorKind::AlreadyExists {
                " (use --force to replace it)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("{}: {e}{hint}", p.display()))
        };
        if !force && pub_path.exists() {
            return Err(with_path(
                &pub_path,
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let mut f = opts.open(path).map_err(|e| with_path(path, e))?;
        // A replaced file keeps its old mode: make it private before the key goes in.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(
            f,
            "# chunk private key (X25519). Keep it secret. Its public key:\n# {} {comment}\n{}",
            self.public,
            B64.encode(self.secret)
        )?;
        f.sync_all()?;
        std::fs::write(&pub_path, format!("{} {comment}\n", self.public))
            .map_err(|e| with_path(&pub_path, e))?;
        Ok(pub_path)
    }
}

/// `path` with `.pub` appended.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// A public key given as the key itself or as a file holding it (its first key line).
pub fn public_key_arg(arg: &str) -> io::Result<PublicKey> {
    if let Ok(k) = PublicKey::parse(arg) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("`{arg}` is neither a public key (chunk-x25519 …) nor a readable file: {e}"),
        )
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    PublicKey::parse(line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{arg}: {e}")))
}

/// The senders a receiver admits, with their comments.
#[derive(Clone, Debug, Default)]
pub struct AuthorizedKeys(Vec<(PublicKey, String)>);

impl AuthorizedKeys {
    pub fn load(path: &Path) -> io::Result<AuthorizedKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    pub fn parse(text: &str) -> Result<AuthorizedKeys, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            let comment = line
                .split_whitespace()
                .skip(if line.starts_with(KEY_TYPE) { 2 } else { 1 })
                .collect::<Vec<_>>()
                .join(" ");
            keys.push((key, comment));
        }
        Ok(AuthorizedKeys(keys))
    }

    /// The key's comment, if it is authorized.
    pub fn get(&self, key: &PublicKey) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, c)| c.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the known-hosts file says of a receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Never seen: its key will be remembered.
    Unknown,
    /// Remembered with this key, on this line (1-based).
    Key(PublicKey, usize),
}

/// The sender's known-hosts file: the receiver keys it has seen, by peer.
#[derive(Clone, Debug)]
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    pub fn new(path: PathBuf) -> KnownHosts {
        KnownHosts { path }
    }

    /// `$CHUNK_KNOWN_HOSTS`, else `$XDG_CONFIG_HOME/chunk/known_hosts`, else
    /// `~/.config/chunk/known_hosts`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("CHUNK_KNOWN_HOSTS") {
            return p.into();
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("/root/.config"));
        config.join("chunk").join("known_hosts")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says of `host` (a missing file knows nobody).
    pub fn lookup(&self, host: &str) -> io::Result<Known> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Known::Unknown),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", self.path.display()),
                ));
            }
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((name, key)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            if name == host {
                let key = PublicKey::parse(key).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} line {}: {e}", self.path.display(), i + 1),
                    )
                })?;
                return Ok(Known::Key(key, i + 1));
            }
        }
        Ok(Known::Unknown)
    }

    /// Appends `host key` (creating the file and its directory).
    pub fn remember(&self, host: &str, key: &PublicKey) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&self.path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        writeln!(f, "{host} {key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_print_and_parse_back() {
        let k = SecretKey::from_bytes([9; 32]);
        let line = k.public().to_string();
        assert!(line.starts_with("chunk-x25519 "));
        assert_eq!(PublicKey::parse(&line).unwrap(), k.public());
        assert_eq!(
            PublicKey::parse(&format!("{line} a comment")).unwrap(),
            k.public()
        );
        assert_eq!(PublicKey::parse(&line[13..]).unwrap(), k.public());
        assert!(PublicKey::parse("chunk-x25519 AAAA").is_err());
        assert!(PublicKey::parse("").is_err());
    }

    /// RFC 7748 § 6.1: Alice's private key gives Alice's public key.
    #[test]
    fn the_public_key_is_x25519_of_the_base_point() {
        let hex = |s: &str| -> [u8; 32] {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
                .try_into()
                .unwrap()
        };
        let alice = SecretKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            alice.public().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn a_written_key_loads_back_and_a_readable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let k = SecretKey::generate();
        let pubp = k.write(&path, "me@host", false).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SecretKey::load(&path).unwrap().public(), k.public());
        assert_eq!(public_key_arg(pubp.to_str().unwrap()).unwrap(), k.public());
        // No silent replacement.
        assert!(k.write(&path, "", false).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretKey::load(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // The public file is not a private key.
        std::fs::set_permissions(&pubp, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SecretKey::load(&pubp).is_err());
    }

    #[test]
    fn authorized_keys_skip_comments_and_name_bad_lines() {
        let a = SecretKey::from_bytes([1; 32]).public();
        let b = SecretKey::from_bytes([2; 32]).public();
        let text = format!("# senders\n\n{a} alice laptop\n{b}\n");
        let keys = AuthorizedKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&a), Some("alice laptop"));
        assert_eq!(keys.get(&b), Some(""));
        assert_eq!(keys.get(&SecretKey::from_bytes([3; 32]).public()), None);
        let e = AuthorizedKeys::parse(&format!("{a}\nnonsense\n")).unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
    }

    #[test]
    fn known_hosts_remember_and_look_up() {
        let dir = tempfile::tempdir().unwrap();
        let kh = KnownHosts::new(dir.path().join("sub/known_hosts"));
        let a = SecretKey::from_bytes([1; 32]).public();
        let b = SecretKey::from_bytes([2; 32]).public();
        assert_eq!(kh.lookup("198.18.0.2").unwrap(), Known::Unknown);
        kh.remember("198.18.0.2", &a).unwrap();
        kh.remember("[2001:2::2]:47000", &b).unwrap();
        assert_eq!(kh.lookup("198.18.0.2").unwrap(), Known::Key(a, 1));
        assert_eq!(kh.lookup("[2001:2::2]:47000").unwrap(), Known::Key(b, 2));
        assert_eq!(kh.lookup("198.18.0.3").unwrap(), Known::Unknown);
    }
}
