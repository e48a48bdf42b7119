//! `chunk aead-cost`: how fast this machine seals packets with each AEAD, and each
//! implementation, chunk could use (docs/SECURITY.md, "AEAD choice"), one core, as JSON lines.

use std::time::Instant;

use aes_gcm::{
    Aes256Gcm,
    aead::{AeadInPlace, KeyInit},
};
use anyhow::Result;
use chacha20poly1305::ChaCha20Poly1305;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

#[derive(clap::Args)]
pub struct AeadCostArgs {
    /// Packet sizes (plaintext bytes) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1416,8000")]
    pub sizes: Vec<usize>,
    /// Packets per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub packets: u64,
}

fn measure(packets: u64, size: usize, mut seal: impl FnMut(u64, &mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; size];
    // Warm up, then time.
    for i in 0..packets / 10 {
        seal(i, &mut buf);
    }
    let t = Instant::now();
    for i in 0..packets {
        seal(i, &mut buf);
    }
    t.elapsed().as_secs_f64()
}

pub fn run(args: AeadCostArgs) -> Result<()> {
    let key = [7u8; 32];
    let aes = Aes256Gcm::new(&key.into());
    let chacha = ChaCha20Poly1305::new(&key.into());
    let ring_key = |alg| LessSafeKey::new(UnboundKey::new(alg, &key).expect("32 bytes"));
    let (ring_aes, ring_chacha) = (ring_key(&AES_256_GCM), ring_key(&CHACHA20_POLY1305));
    let ad = [0u8; 20];
    let ring_seal = |k: &LessSafeKey, i: u64, b: &mut [u8]| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&i.to_be_bytes());
        std::hint::black_box(
            k.seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&ad), b)
                .ok(),
        );
    };
    for &size in &args.sizes {
        let results = [
            (
                "ring aes-256-gcm (chunk's)",
                measure(args.packets, size, |i, b| ring_seal(&ring_aes, i, b)),
            ),
            (
                "ring chacha20-poly1305",
                measure(args.packets, size, |i, b| ring_seal(&ring_chacha, i, b)),
            ),
            (
                "RustCrypto aes-256-gcm",
                measure(args.packets, size, |i, b| {
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&i.to_be_bytes());
                    std::hint::black_box(aes.encrypt_in_place_detached(&n.into(), &ad, b).ok());
                }),
            ),
            (
                "RustCrypto chacha20-poly1305",
                measure(args.packets, size, |i, b| {
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&i.to_le_bytes());
                    std::hint::black_box(chacha.encrypt_in_place_detached(&n.into(), &ad, b).ok());
                }),
            ),
        ];
        for (aead, secs) in results {
            println!(
                "{}",
                serde_json::json!({
                    "aead": aead,
                    "bytes": size,
                    "ns_per_packet": secs * 1e9 / args.packets as f64,
                    "gb_per_s": args.packets as f64 * size as f64 / secs / 1e9,
                })
            );
        }
    }
    Ok(())
}
