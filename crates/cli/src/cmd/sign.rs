//! Offline signing: `pmesh key gen`, `pmesh ota sign` and `pmesh ota verify` (issue 13).
//!
//! Keys are text: a secret key file holds one line `pmesh-ed25519-secret <hex seed>` and is
//! created with mode 0600 (never overwritten without `--force`); a public key is one line
//! `pmesh-ed25519-pub <hex>`, written next to it as `FILE.pub` and printed. The gateway and the
//! nodes only ever see public keys. The bundle format is in docs/ota.md ("Signed firmware").

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use pmesh_ota::signed::bundle::BundleSpec;
use pmesh_ota::signed::{Bundle, SigningKey, TrustedKey};
use serde_json::json;

use crate::cmd::node::parse_duration;

/// `pmesh key` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 signing key: FILE (mode 0600) and FILE.pub; prints the public key.
    Gen(GenArgs),
    /// Print the public key line of a secret key file.
    Pub(PubArgs),
}

/// Arguments of `pmesh key gen`.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Where to write the secret key.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Arguments of `pmesh key pub`.
#[derive(Debug, clap::Args)]
pub struct PubArgs {
    /// The secret key file.
    #[arg(value_name = "FILE")]
    key: PathBuf,
}

/// Arguments of `pmesh ota sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The firmware image.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The secret key file (`pmesh key gen`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Role of the nodes the image is for (class id).
    #[arg(long)]
    role: String,
    /// Hardware of the nodes the image is for (class id).
    #[arg(long)]
    hardware: String,
    /// Version text (for humans; ordering comes from --sequence).
    #[arg(long, value_name = "TEXT")]
    fw_version: String,
    /// Anti-rollback sequence: nodes refuse anything below what they confirmed.
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// Expiry: Unix seconds, or `+DURATION` from now (`+720h`).
    #[arg(long, value_name = "T")]
    expires: Option<String>,
    /// Chunks travel deflated, cut into spans that each deflate to about --chunk-size bytes
    /// (the pmesh protocol's compressed mode; the span table is signed, the digests cover
    /// image bytes). A compressed bundle is always pushed compressed.
    #[arg(long)]
    compressed: bool,
    /// Bytes per chunk (each chunk gets its own digest) [default: 4096 image bytes, or with
    /// --compressed at most 3072 DEFLATE bytes].
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// The bundle to write [default: FILE.pmb].
    #[arg(long, short, value_name = "BUNDLE")]
    out: Option<PathBuf>,
}

/// Arguments of `pmesh ota verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// A trusted public key: a file of key lines, or the line itself. Repeat for more keys.
    #[arg(long, value_name = "PUB", required = true)]
    trusted: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `pmesh key ...`.
pub fn run_key(c: KeyCommand) -> anyhow::Result<ExitCode> {
    match c {
        KeyCommand::Gen(a) => key_gen(&a),
        KeyCommand::Pub(a) => {
            println!("{}", read_secret(&a.key)?.public().to_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key_gen(a: &GenArgs) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = SigningKey::from_seed(seed);
    let public = key.public().to_text();
    write_new(&a.out, 0o600, &key.to_text(), a.force)?;
    write_new(&pub_path(&a.out), 0o644, &public, a.force)?;
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

fn pub_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Creates `path` with `mode` (the mode applies from creation on, so a secret is never
/// readable by others, not even briefly).
fn write_new(path: &Path, mode: u32, line: &str, force: bool) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("{} (use --force to replace)", path.display()))?;
    writeln!(f, "{line}")?;
    f.sync_all()?;
    Ok(())
}

fn read_secret(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    SigningKey::from_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Trusted keys from `--trusted` values: files of key lines (`#` comments and blank lines
/// skipped), or key lines given directly.
pub fn read_trusted(values: &[String]) -> anyhow::Result<Vec<TrustedKey>> {
    pmesh_config::read_trusted(&pmesh_config::SystemHost, values)
}

/// Now in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_expiry(t: &str) -> anyhow::Result<u64> {
    match t.strip_prefix('+') {
        Some(d) => Ok(unix_now() + parse_duration(d)?.as_secs()),
        None => t
            .parse()
            .with_context(|| format!("--expires {t}: Unix seconds or +DURATION")),
    }
}

/// Runs `pmesh ota sign`.
pub fn sign(a: SignArgs) -> anyhow::Result<ExitCode> {
    let key = read_secret(&a.key)?;
    let image = fs::read(&a.file).with_context(|| format!("{}", a.file.display()))?;
    let spec = BundleSpec {
        role: &a.role,
        hardware: &a.hardware,
        version: &a.fw_version,
        sequence: a.sequence,
        chunk_size: a.chunk_size.unwrap_or(if a.compressed {
            pmesh_ota::offer::PMESH_COMPRESSED_CHUNK
        } else {
            pmesh_ota::offer::PMESH_CHUNK
        }),
        compressed: a.compressed,
        expires: a.expires.as_deref().map(parse_expiry).transpose()?,
    };
    let bundle =
        Bundle::build(&key, &image, &spec).map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    let out = a.out.unwrap_or_else(|| {
        let mut p = a.file.as_os_str().to_owned();
        p.push(".pmb");
        PathBuf::from(p)
    });
    let tmp = out.with_extension("pmb.tmp");
    fs::write(&tmp, &bundle)
        .and_then(|()| fs::rename(&tmp, &out))
        .with_context(|| format!("{}", out.display()))?;
    println!(
        "{}: {} bytes, image {} bytes, key {}",
        out.display(),
        bundle.len(),
        image.len(),
        key.public().to_text()
    );
    Ok(ExitCode::SUCCESS)
}

/// The manifest as JSON (what `verify` and the gateway print).
pub fn manifest_json(b: &Bundle<'_>) -> serde_json::Value {
    let m = &b.manifest.body;
    json!({
        "role": m.role, "hardware": m.hardware, "version": m.version, "sequence": m.sequence,
        "size": m.size, "sha256": pmesh_ota::codec::hex(&m.sha256),
        "compression": if m.compression.is_deflate() { "deflate" } else { "none" },
        "chunkSize": m.chunk_size, "chunks": m.chunk_count, "pages": m.page_count(),
        "pagesRoot": pmesh_ota::codec::hex(&m.pages_root), "keyId": pmesh_ota::codec::hex(&m.key_id.0),
        "expires": m.expires, "manifestBytes": b.manifest.bytes.len(),
    })
}

/// Runs `pmesh ota verify`: exit 0 and the manifest, or exit 1 and the refusal.
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = read_trusted(&a.trusted)?;
    let bytes = fs::read(&a.bundle).with_context(|| format!("{}", a.bundle.display()))?;
    let verdict = Bundle::parse(&bytes).and_then(|b| b.verify(&keys, Some(unix_now())).map(|_| b));
    match (verdict, a.json) {
        (Ok(b), true) => println!("{}", json!({"ok": true, "manifest": manifest_json(&b)})),
        (Ok(b), false) => {
            println!("verified: {}", a.bundle.display());
            if let Some(o) = manifest_json(&b).as_object() {
                for (k, v) in o {
                    println!("  {k}: {v}");
                }
            }
        }
        (Err(e), true) => {
            println!(
                "{}",
                json!({"ok": false, "refused": e.code(), "reason": e.to_string()})
            );
            return Ok(ExitCode::from(1));
        }
        (Err(e), false) => {
            println!("refused: {}: {e}", e.code());
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
