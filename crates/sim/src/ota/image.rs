//! The image a simulated rollout distributes: a file (a real compiled binary gives honest
//! compression ratios) or a synthetic firmware-like image.

use std::io::Read;
use std::path::Path;

use pmesh_ota::MemorySource;

use super::scenario::{DEFAULT_IMAGE_BYTES, OtaScenario};

/// Most bytes an image file may give a simulation (64 MiB: 64 times painlessMesh's largest
/// images; the simulator keeps every node's copy in memory).
pub const MAX_FILE_IMAGE_BYTES: u64 = 64 << 20;

/// An image ready to offer.
#[derive(Clone, Debug)]
pub struct Image {
    /// The bytes (clones share them).
    pub source: MemorySource,
    /// Where they came from, for reports (`"synthetic firmware (seed 1)"`,
    /// `"/usr/bin/pmesh (first 1048576 of 14000000 bytes)"`).
    pub description: String,
}

impl Image {
    /// Image bytes.
    pub fn len(&self) -> u64 {
        self.source.bytes().len() as u64
    }

    /// True for an empty image (never offered: an offer refuses it).
    pub fn is_empty(&self) -> bool {
        self.source.bytes().is_empty()
    }

    /// Loads what `ota` names; `seed` makes the synthetic image.
    pub fn load(ota: &OtaScenario, seed: u64) -> Result<Image, String> {
        match ota.image_path()? {
            Some(path) => {
                let limit = ota.image_bytes.map(|b| b.0).or_else(|| {
                    (ota.image.as_deref() == Some("self")).then_some(DEFAULT_IMAGE_BYTES)
                });
                Image::from_file(&path, limit)
            }
            None => {
                let len = ota.image_bytes.map_or(DEFAULT_IMAGE_BYTES, |b| b.0);
                Ok(Image {
                    source: MemorySource::new(synthetic_firmware(len as usize, seed)),
                    description: format!("synthetic firmware ({len} bytes, seed {seed})"),
                })
            }
        }
    }

    /// The first `limit` bytes of a file (all of it without a limit), at most
    /// [`MAX_FILE_IMAGE_BYTES`]: a device such as `/dev/zero` is refused, not read forever.
    pub fn from_file(path: &Path, limit: Option<u64>) -> Result<Image, String> {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("opening image {}: {e}", path.display()))?;
        let total = file
            .metadata()
            .map_err(|e| format!("reading image {}: {e}", path.display()))?
            .len();
        let mut bytes = Vec::new();
        // One byte past the cap tells a file that is too large from one that fits exactly.
        let want = limit.unwrap_or(u64::MAX).min(MAX_FILE_IMAGE_BYTES + 1);
        file.take(want)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading image {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_FILE_IMAGE_BYTES {
            return Err(format!(
                "image {} is larger than {MAX_FILE_IMAGE_BYTES} bytes: give ota.image_bytes (--ota-image-bytes) to use its first bytes",
                path.display()
            ));
        }
        if bytes.is_empty() {
            return Err(format!("image {} is empty", path.display()));
        }
        if let Some(l) = limit
            && (bytes.len() as u64) < l
        {
            return Err(format!(
                "image {} has {} bytes, fewer than the {l} asked for",
                path.display(),
                bytes.len()
            ));
        }
        let description = if (bytes.len() as u64) < total {
            format!(
                "{} (first {} of {total} bytes)",
                path.display(),
                bytes.len()
            )
        } else {
            format!("{} ({total} bytes)", path.display())
        };
        Ok(Image {
            source: MemorySource::new(bytes),
            description,
        })
    }
}

/// A deterministic image that looks like firmware to a compressor: runs of "instructions"
/// drawn with a skewed distribution from a small dictionary of 32-bit words, stretches of
/// high-entropy bytes (tables, compressed assets) and padding. DEFLATE makes it about half
/// its size, as it does compiled code. Prefer a real binary (`image = "self"`) for figures.
pub fn synthetic_firmware(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: enough for test data, and keeps the simulator free of RNG dependencies.
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let dict: Vec<u32> = (0..1024).map(|_| next() as u32).collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        let run = 16 + (r >> 8) as usize % 240;
        match r % 100 {
            0..=69 => {
                for _ in 0..run {
                    let x = next();
                    // Skewed: small indexes are far more frequent.
                    let idx = ((x % 1024) * ((x >> 10) % 1024) / 1024) as usize;
                    out.extend_from_slice(&dict[idx].to_le_bytes());
                }
            }
            70..=89 => {
                for _ in 0..run {
                    out.extend_from_slice(&next().to_le_bytes()[..4]);
                }
            }
            _ => out.extend(std::iter::repeat_n(
                if r & 1 == 0 { 0 } else { 0xff },
                run * 4,
            )),
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_image_is_deterministic_and_compresses_like_code() {
        let a = synthetic_firmware(256 * 1024, 7);
        assert_eq!(a, synthetic_firmware(256 * 1024, 7));
        assert_ne!(a, synthetic_firmware(256 * 1024, 8));
        assert_eq!(a.len(), 256 * 1024);
        let z = pmesh_ota::codec::gzip(&a);
        let ratio = z.len() as f64 / a.len() as f64;
        assert!((0.3..0.8).contains(&ratio), "gzip ratio {ratio}");
    }

    #[test]
    fn file_images_are_cut_and_described() {
        let ota = OtaScenario {
            image: Some("self".into()),
            image_bytes: Some(super::super::scenario::ByteSize(4096)),
            ..OtaScenario::default()
        };
        let img = Image::load(&ota, 1).unwrap();
        assert_eq!(img.len(), 4096);
        assert!(
            img.description.contains("first 4096 of"),
            "{}",
            img.description
        );
        let missing = Image::from_file(Path::new("/nonexistent/fw.bin"), None).unwrap_err();
        assert!(missing.contains("/nonexistent/fw.bin"), "{missing}");
        let too_much = Image::from_file(&std::env::current_exe().unwrap(), Some(u64::MAX / 4));
        assert!(too_much.unwrap_err().contains("fewer than"));
    }
}
