//! `chunk keygen --out FILE`: a new X25519 key pair for encrypted transfers.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::crypto::SecretKey;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The private key file to write (mode 0600); the public key goes to FILE.pub.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// A comment after the public key (who or where it is). Default: user@host.
    #[arg(long)]
    pub comment: Option<String>,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let comment = args.comment.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("{user}@{host}")
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = SecretKey::generate();
    let pub_path = key
        .write(&args.out, &comment, args.force)
        .context("writing the key")?;
    eprintln!(
        "private key: {} (keep it secret)\npublic key:  {} (give it to the other side: a \
         receiver's --authorized-keys, or a sender's --receiver-key)",
        args.out.display(),
        pub_path.display()
    );
    println!("{} {comment}", key.public());
    Ok(())
}
