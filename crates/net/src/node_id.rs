//! Where a node's id comes from when none is given: the reference derives it from the WiFi
//! MAC (spec §2: the last four bytes, big-endian); a host without a usable MAC gets a random
//! id that is persisted so it survives restarts.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The reference's derivation: `mac[2]<<24 | mac[3]<<16 | mac[4]<<8 | mac[5]`.
pub fn from_mac(mac: [u8; 6]) -> u32 {
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// How an id was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdSource {
    /// From the MAC of this network interface.
    Mac {
        /// Interface name.
        interface: String,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// A random id stored in this file (created on first use).
    Persisted(PathBuf),
}

impl fmt::Display for IdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSource::Mac { interface, mac } => {
                let m = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                write!(f, "MAC {m} of {interface}")
            }
            IdSource::Persisted(p) => write!(f, "random id persisted in {}", p.display()),
        }
    }
}

/// The MAC of this host's first physical network interface (by name), if any has a usable one.
/// Interfaces with a `device` link under `/sys/class/net` are physical; virtual ones (bridges,
/// veth, docker) are used only when there is no physical one.
pub fn host_mac() -> Option<(String, [u8; 6])> {
    let mut physical = Vec::new();
    let mut virtual_ = Vec::new();
    for entry in fs::read_dir("/sys/class/net").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path().join("address")) else {
            continue;
        };
        let Some(mac) = parse_mac(&text) else {
            continue;
        };
        if from_mac(mac) == 0 || mac == [0xff; 6] {
            continue;
        }
        if entry.path().join("device").exists() {
            physical.push((name, mac))
        } else {
            virtual_.push((name, mac))
        }
    }
    physical.sort();
    virtual_.sort();
    physical.into_iter().chain(virtual_).next()
}

/// Where the persisted random id lives: `$XDG_STATE_HOME/pmesh/node-id`, else
/// `~/.local/state/pmesh/node-id`, else `/var/lib/pmesh/node-id`.
pub fn default_id_file() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("pmesh/node-id");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/state/pmesh/node-id");
    }
    PathBuf::from("/var/lib/pmesh/node-id")
}

/// Reads the id stored in `path`, or creates the file with a new random non-zero id.
pub fn persisted_random(path: &Path) -> io::Result<u32> {
    match fs::read_to_string(path) {
        Ok(text) => {
            return text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} does not hold a node id (1..=4294967295)",
                            path.display()
                        ),
                    )
                });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = loop {
        let mut b = [0u8; 4];
        fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let id = u32::from_be_bytes(b);
        if id != 0 {
            break id;
        }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, format!("{id}\n"))?;
    Ok(id)
}

/// The reference's choice: the MAC-derived id, else a persisted random one in `id_file`.
pub fn derive(id_file: &Path) -> io::Result<(u32, IdSource)> {
    if let Some((interface, mac)) = host_mac() {
        return Ok((from_mac(mac), IdSource::Mac { interface, mac }));
    }
    Ok((
        persisted_random(id_file)?,
        IdSource::Persisted(id_file.to_path_buf()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_like_the_reference() {
        // tcp::encodeNodeId: last four bytes, big-endian.
        let mac = parse_mac("24:6f:28:e8:ec:03").unwrap();
        assert_eq!(from_mac(mac), 0x28e8_ec03);
        assert_eq!(from_mac(mac), 686_353_411);
    }

    #[test]
    fn rejects_malformed_macs() {
        assert_eq!(parse_mac("24:6f:28:e8:ec"), None);
        assert_eq!(parse_mac("24:6f:28:e8:ec:03:11"), None);
        assert_eq!(parse_mac("zz:6f:28:e8:ec:03"), None);
        assert_eq!(
            parse_mac("24-6F-28-E8-EC-03\n"),
            Some([0x24, 0x6f, 0x28, 0xe8, 0xec, 0x03])
        );
    }

    #[test]
    fn persisted_id_is_stable_and_validated() {
        let dir = std::env::temp_dir().join(format!("pmesh-net-id-{}", std::process::id()));
        let path = dir.join("sub/node-id");
        let a = persisted_random(&path).unwrap();
        let b = persisted_random(&path).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, 0);
        fs::write(&path, "0\n").unwrap();
        assert!(persisted_random(&path).is_err());
        fs::write(&path, "not a number").unwrap();
        assert!(persisted_random(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
