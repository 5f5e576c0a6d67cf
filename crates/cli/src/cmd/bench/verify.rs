//! `pmesh bench verify`: what signed firmware costs a node's CPU on this machine — verifying
//! one manifest (ed25519), one digest page (its Merkle proof) and one chunk (SHA-256).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use pmesh_ota::signed::bundle::BundleSpec;
use pmesh_ota::signed::{Bundle, DigestPage, SigningKey, chunk_digest, verify_signature};

/// Arguments of `pmesh bench verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image size in bytes (random contents).
    #[arg(long, default_value_t = 1 << 20)]
    image: usize,
    /// Image bytes per chunk.
    #[arg(long, default_value_t = 4096)]
    chunk_size: u32,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 2000)]
    iterations: u32,
}

/// Mean microseconds per call of `f` over `n` calls.
fn time_us(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1))
}

/// Runs the benchmark.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut x: u32 = 1;
    let image: Vec<u8> = (0..a.image)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let key = SigningKey::from_seed([7; 32]);
    let spec = BundleSpec {
        role: "r",
        hardware: "h",
        version: "1",
        sequence: 1,
        chunk_size: a.chunk_size,
        compressed: false,
        expires: None,
    };
    let bytes = Bundle::build(&key, &image, &spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let b = Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = [key.public()];
    let m = &b.manifest.body;
    let (page, proof) = (b.page(0), b.page_proof(0));
    let n = a.iterations;
    let manifest_us = time_us(n, || {
        black_box(verify_signature(black_box(&b.manifest), &keys).is_ok());
    });
    let page_us = time_us(n, || {
        black_box(DigestPage::verify(m, 0, black_box(page), &proof).is_ok());
    });
    let chunk_us = time_us(n, || {
        black_box(chunk_digest(black_box(b.chunk(0))));
    });
    let bundle_ms = time_us(3, || {
        black_box(b.verify(&keys, None).is_ok());
    }) / 1000.0;
    println!(
        "signed firmware verification on this machine ({} B image, {} B chunks, {} pages, {n} iterations)",
        a.image,
        a.chunk_size,
        m.page_count()
    );
    println!(
        "  manifest (ed25519 over {} B)    {manifest_us:>9.1} µs",
        b.manifest.bytes.len() - 64
    );
    println!(
        "  digest page (proof of {} hashes) {page_us:>9.1} µs",
        proof.len()
    );
    println!(
        "  chunk (SHA-256 of {} B)        {chunk_us:>9.1} µs",
        b.chunk(0).len()
    );
    println!("  whole bundle (pmesh ota verify) {bundle_ms:>9.2} ms");
    Ok(ExitCode::SUCCESS)
}
