//! File-backed firmware I/O for Linux nodes: [`FileSource`] serves an image file to the mesh,
//! [`FileSink`] receives images into a directory and [`FileStore`] remembers what the node runs
//! and which chunks of a transfer it holds, so a restarted `pmesh node` resumes.
//!
//! The contracts are `pmesh_ota::io`'s (see `docs/ota.md`): every `write_at`, `mark_chunk` and
//! record update is durable (fsync'd) before it returns; records are replaced atomically
//! (temp file, fsync, rename, fsync of the directory); a crash at any point leaves either the
//! old or the new state, never a torn one.
//!
//! One directory per node (`--ota-dir`), locked while a node uses it:
//!
//! ```text
//! DIR/lock                      held (flock) by the running node
//! DIR/incoming/partial.bin      the image being received (sparse until complete)
//! DIR/incoming/partial.json     its declared size and generation
//! DIR/incoming/staging.bin      scratch for classic compressed chunks that arrive early
//! DIR/transfer.json             the transfer in progress: the offer verbatim, chunk count, generation
//! DIR/transfer.log              one 8-byte record per chunk written (index, !index), appended
//! DIR/images/<name>.bin         committed images, <name> = <role>-<hardware>-<sha256[..16]>
//! DIR/images/<name>.json        what was installed: role, hardware, version, sha256, md5, size, time
//! DIR/current.bin               symlink to the committed image (the one to "boot")
//! DIR/current.json              the installed image record (the reference's /ota_fw.json)
//! ```
//!
//! "Installing" on a Linux host means exactly this: the verified image is committed to
//! `images/`, `current.bin` points at it and `current.json` records it. Nothing replaces the
//! running program; what happens next (flash an attached device, restart a service) is up to
//! the operator's hook (`pmesh node --ota-exec`).
//!
//! Why the generation: `FileSink::begin` gives every new partial image a new generation number
//! before touching its bytes, and `FileStore::begin_transfer` records the generation it
//! belongs to. A transfer record whose generation is not the partial image's (a crash between
//! the sink's `begin` and the store's `begin_transfer`) is ignored, so a chunk bitmap is never
//! applied to another image's bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pmesh_ota::codec::{Md5Hasher, Sha256Hasher};
use pmesh_ota::{
    ChunkBitmap, FirmwareSink, FirmwareSource, InstalledImage, IoError, OtaStore, TransferRecord,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Default largest image a node takes (`--ota-max-size`): 64 MiB.
pub const DEFAULT_CAPACITY: u64 = 64 * 1024 * 1024;

fn device(what: &str, path: &Path, e: &io::Error) -> IoError {
    IoError::Device(format!("{what} {}: {e}", path.display()))
}

// --- source ------------------------------------------------------------------------------

/// An image file served to the mesh (the distributor side). The length is taken when the file
/// is opened; a file that shrinks afterwards makes reads fail instead of serving other bytes.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSource {
    /// Opens `path` for serving.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        let path = path.as_ref().to_path_buf();
        // Checked before opening too: opening a FIFO blocks until a writer appears.
        if !std::fs::metadata(&path)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok(FileSource {
            len: meta.len(),
            file,
            path,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FirmwareSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
        if offset > self.len {
            return Err(IoError::OutOfRange {
                offset,
                len: buf.len() as u64,
                limit: self.len,
            });
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.file
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| device("cannot read", &self.path, &e))?;
        Ok(n)
    }
}

// --- the directory -------------------------------------------------------------------------

/// Paths inside an OTA directory, and the lock that keeps a second node out of it.
#[derive(Debug)]
struct Layout {
    root: PathBuf,
    _lock: File,
}

impl Layout {
    fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }
    fn partial(&self) -> PathBuf {
        self.root.join("incoming/partial.bin")
    }
    fn partial_meta(&self) -> PathBuf {
        self.root.join("incoming/partial.json")
    }
    fn staging(&self) -> PathBuf {
        self.root.join("incoming/staging.bin")
    }
    fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    fn transfer_meta(&self) -> PathBuf {
        self.root.join("transfer.json")
    }
    fn transfer_log(&self) -> PathBuf {
        self.root.join("transfer.log")
    }
    fn current_meta(&self) -> PathBuf {
        self.root.join("current.json")
    }
    /// Anti-rollback: the highest signed sequence confirmed per (role, hardware).
    fn sequences(&self) -> PathBuf {
        self.root.join("sequences.json")
    }
    fn current_link(&self) -> PathBuf {
        self.root.join("current.bin")
    }

    /// The partial image's record, if readable.
    fn read_partial_meta(&self) -> Option<PartialMeta> {
        read_json(&self.partial_meta())
    }
}

/// `incoming/partial.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    len: Option<u64>,
    generation: u64,
}

/// `transfer.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TransferMeta {
    offer: String,
    chunks: u32,
    generation: Option<u64>,
}

/// `current.json` and `images/<name>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Role the image was installed for.
    pub role: String,
    /// Hardware it was installed for.
    pub hardware: String,
    /// Version text from the offer (pmesh manifests), empty if none.
    pub version: String,
    /// SHA-256 of the image (hex).
    pub sha256: String,
    /// MD5 as the offer announced it (classic: of the served bytes; pmesh: of the image).
    pub md5: String,
    /// Image bytes.
    pub size: u64,
    /// The image file, relative to the OTA directory.
    pub file: String,
    /// When it was installed (seconds since the Unix epoch).
    pub installed_at: u64,
}

/// The file name (without extension) of a committed image: `<role>-<hardware>-<sha256[..16]>`,
/// every character outside `[A-Za-z0-9._]` replaced by `_`.
pub fn image_name(role: &str, hardware: &str, sha256: &str) -> String {
    let clean = |s: &str| -> String {
        let s: String = s
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if s.is_empty() || s.starts_with('.') {
            format!("_{s}")
        } else {
            s
        }
    };
    let hash: String = sha256.chars().take(16).collect();
    format!("{}-{}-{}", clean(role), clean(hardware), clean(&hash))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read OTA record; ignoring it");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "damaged OTA record; ignoring it");
            None
        }
    }
}

/// Makes a directory entry change (create, rename, remove) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn write_json_atomic<T: Serialize>(path: &Path, v: &T) -> Result<(), IoError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| IoError::Device(e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|e| device("cannot write", path, &e))
}

/// Removes a file; a missing file is fine.
fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens (creating it if needed) an OTA directory for a node of `role` on `hardware` that takes
/// images up to `capacity` bytes, and locks it: a second node on the same directory gets an
/// error instead of corrupting the first one's transfer.
pub fn open_dir(
    dir: impl AsRef<Path>,
    role: &str,
    hardware: &str,
    capacity: u64,
) -> io::Result<(FileSink, FileStore)> {
    let root = dir.as_ref().to_path_buf();
    fs::create_dir_all(root.join("incoming"))?;
    fs::create_dir_all(root.join("images"))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("lock"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another pmesh node; give each node its own --ota-dir",
                    root.display()
                ),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let layout = Arc::new(Layout { root, _lock: lock });
    let store = FileStore::load(layout.clone())?;
    let sink = FileSink {
        dir: Some(layout),
        capacity,
        role: role.to_owned(),
        hardware: hardware.to_owned(),
        open: None,
        staging: None,
        verified: None,
        committed: None,
    };
    Ok((sink, store))
}

// --- sink ----------------------------------------------------------------------------------

#[derive(Debug)]
struct Partial {
    file: File,
    meta: PartialMeta,
}

/// Hashes of a verified image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verified {
    len: u64,
    sha256: String,
}

/// Receives images into an OTA directory (see the module docs for the layout). Every
/// `write_at` is on disk (fdatasync) before it returns.
#[derive(Debug)]
pub struct FileSink {
    dir: Option<Arc<Layout>>,
    capacity: u64,
    role: String,
    hardware: String,
    open: Option<Partial>,
    staging: Option<File>,
    verified: Option<Verified>,
    committed: Option<PathBuf>,
}

impl FileSink {
    /// A sink that takes nothing (capacity 0): for nodes that only relay and distribute.
    pub fn disabled() -> FileSink {
        FileSink {
            dir: None,
            capacity: 0,
            role: String::new(),
            hardware: String::new(),
            open: None,
            staging: None,
            verified: None,
            committed: None,
        }
    }

    /// The OTA directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref().map(|l| l.root.as_path())
    }

    /// The image file committed last by this sink (absolute path), if any.
    pub fn last_committed(&self) -> Option<&Path> {
        self.committed.as_deref()
    }

    fn layout(&self) -> Result<&Layout, IoError> {
        self.dir.as_deref().ok_or(IoError::Unsupported)
    }

    fn partial(&mut self) -> Result<&mut Partial, IoError> {
        self.open
            .as_mut()
            .ok_or(IoError::BadState("no image begun"))
    }

    fn limit(&self) -> Result<u64, IoError> {
        match &self.open {
            Some(p) => Ok(p.meta.len.unwrap_or(self.capacity)),
            None => Err(IoError::BadState("no image begun")),
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), IoError> {
        let limit = self.limit()?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(IoError::OutOfRange {
                offset,
                len: len as u64,
                limit,
            }),
        }
    }

    /// Reads `len` bytes of the partial image and hashes them.
    fn hash_partial(&mut self, len: u64) -> Result<(String, String), IoError> {
        let mut sha = Sha256Hasher::default();
        let mut md5 = Md5Hasher::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            self.read_at(at, &mut buf[..n])?;
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
            at += n as u64;
        }
        Ok((sha.finish_hex(), md5.finish_hex()))
    }

    fn remove_partial(&mut self) -> io::Result<()> {
        self.open = None;
        self.staging = None;
        self.verified = None;
        let Some(l) = self.dir.clone() else {
            return Ok(());
        };
        // The record first: without it, a leftover partial.bin is never resumed.
        remove(&l.partial_meta())?;
        remove(&l.partial())?;
        remove(&l.staging())?;
        sync_dir(&l.incoming())
    }
}

impl FirmwareSink for FileSink {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn begin(&mut self, len: Option<u64>) -> Result<(), IoError> {
        let l = self.dir.clone().ok_or(IoError::Unsupported)?;
        if let Some(len) = len
            && len > self.capacity
        {
            return Err(IoError::OutOfRange {
                offset: 0,
                len,
                limit: self.capacity,
            });
        }
        self.open = None;
        self.staging = None;
        self.verified = None;
        // A new generation before any byte changes: a transfer record of the old image no
        // longer matches, so its bitmap is never applied to these bytes.
        let generation = match l.read_partial_meta() {
            Some(m) => m.generation.wrapping_add(1),
            None => unix_now() << 16,
        };
        let meta = PartialMeta { len, generation };
        write_json_atomic(&l.partial_meta(), &meta)?;
        let path = l.partial();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| device("cannot create", &path, &e))?;
        remove(&l.staging()).map_err(|e| device("cannot remove", &l.staging(), &e))?;
        sync_dir(&l.incoming()).map_err(|e| device("cannot sync", &l.incoming(), &e))?;
        self.open = Some(Partial { file, meta });
        Ok(())
    }

    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError> {
        let l = self.dir.clone().ok_or(IoError::Unsupported)?;
        let meta = l
            .read_partial_meta()
            .ok_or(IoError::BadState("no partial image"))?;
        if meta.len != len {
            return Err(IoError::BadState("partial image has another size"));
        }
        let path = l.partial();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| device("cannot open", &path, &e))?;
        let size = file
            .metadata()
            .map_err(|e| device("cannot stat", &path, &e))?
            .len();
        if size > len.unwrap_or(self.capacity) {
            return Err(IoError::BadState("partial image is larger than declared"));
        }
        self.open = Some(Partial { file, meta });
        self.verified = None;
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.check_range(offset, data.len())?;
        let path = self.layout()?.partial();
        let p = self.partial()?;
        p.file
            .write_all_at(data, offset)
            .and_then(|()| p.file.sync_data())
            .map_err(|e| device("cannot write", &path, &e))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_range(offset, buf.len())?;
        let path = self.layout()?.partial();
        let p = self.partial()?;
        // Bytes past the end of the file were never written; the sink contract leaves them
        // unspecified, and a file reads them as zero.
        let mut done = 0;
        while done < buf.len() {
            match p.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(device("cannot read", &path, &e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn verify(&mut self, len: u64) -> Result<(), IoError> {
        let limit = self.limit()?;
        if len > limit {
            return Err(IoError::OutOfRange {
                offset: 0,
                len,
                limit,
            });
        }
        let path = self.layout()?.partial();
        let p = self.partial()?;
        p.file
            .set_len(len)
            .and_then(|()| p.file.sync_all())
            .map_err(|e| device("cannot truncate", &path, &e))?;
        let (sha256, _md5) = self.hash_partial(len)?;
        self.verified = Some(Verified { len, sha256 });
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IoError> {
        let l = self.dir.clone().ok_or(IoError::Unsupported)?;
        if self.open.is_none() {
            return Err(IoError::BadState("commit without an image"));
        }
        let v = self
            .verified
            .clone()
            .ok_or(IoError::BadState("commit before verify"))?;
        let name = image_name(&self.role, &self.hardware, &v.sha256);
        let target = l.images().join(format!("{name}.bin"));
        let io = |what: &str, p: &Path, r: io::Result<()>| r.map_err(|e| device(what, p, &e));
        io(
            "cannot move the image to",
            &target,
            fs::rename(l.partial(), &target),
        )?;
        io("cannot sync", &l.images(), sync_dir(&l.images()))?;
        // "Boot" pointer: current.bin -> images/<name>.bin, swapped atomically.
        let link_tmp = l.root.join("current.bin.tmp");
        let _ = remove(&link_tmp);
        io(
            "cannot create",
            &link_tmp,
            std::os::unix::fs::symlink(Path::new("images").join(format!("{name}.bin")), &link_tmp),
        )?;
        io(
            "cannot replace",
            &l.current_link(),
            fs::rename(&link_tmp, l.current_link()),
        )?;
        io("cannot sync", &l.root, sync_dir(&l.root))?;
        io("cannot clean up", &l.incoming(), self.remove_partial())?;
        self.committed = Some(target);
        Ok(())
    }

    fn abort(&mut self) {
        if let Err(e) = self.remove_partial() {
            warn!(error = %e, "cannot remove the partial OTA image");
        }
    }

    fn has_staging(&self) -> bool {
        self.dir.is_some()
    }

    fn stage_write(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let path = self.layout()?.staging();
        if offset.saturating_add(data.len() as u64) > self.capacity {
            return Err(IoError::OutOfRange {
                offset,
                len: data.len() as u64,
                limit: self.capacity,
            });
        }
        if self.staging.is_none() {
            // Scratch space: classic compressed transfers restart after a reboot anyway, so
            // staged bytes need no fsync.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| device("cannot create", &path, &e))?;
            self.staging = Some(f);
        }
        let f = self.staging.as_ref().ok_or(IoError::Unsupported)?;
        f.write_all_at(data, offset)
            .map_err(|e| device("cannot write", &path, &e))
    }

    fn stage_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let path = self.layout()?.staging();
        let f = self
            .staging
            .as_ref()
            .ok_or(IoError::BadState("nothing staged"))?;
        f.read_exact_at(buf, offset)
            .map_err(|e| device("cannot read", &path, &e))
    }
}

// --- store ---------------------------------------------------------------------------------

/// One record of `transfer.log`: the chunk index and its complement, so a torn or zeroed tail
/// is recognised.
const LOG_RECORD: usize = 8;

fn log_record(i: u32) -> [u8; LOG_RECORD] {
    let mut r = [0u8; LOG_RECORD];
    r[..4].copy_from_slice(&i.to_le_bytes());
    r[4..].copy_from_slice(&(!i).to_le_bytes());
    r
}

#[derive(Debug)]
struct Transfer {
    offer: Vec<u8>,
    have: ChunkBitmap,
    generation: Option<u64>,
    log: File,
}

/// Remembers, in an OTA directory, the image this node runs (`current.json`) and the transfer
/// in progress (`transfer.json` + an append-only chunk log). Every update is durable when it
/// returns `Ok`.
#[derive(Debug)]
pub struct FileStore {
    dir: Option<Arc<Layout>>,
    current: Option<InstalledImage>,
    transfer: Option<Transfer>,
    /// Confirmed signed-firmware sequences (`sequences.json`).
    sequences: Vec<SequenceRecord>,
    /// Damaged or stale records found when loading (for logs and tests).
    discarded: Vec<String>,
}

/// One line of `sequences.json`: the highest sequence confirmed for a class.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SequenceRecord {
    role: String,
    hardware: String,
    sequence: u64,
}

impl FileStore {
    /// A store that remembers nothing: for nodes that only relay and distribute.
    pub fn disabled() -> FileStore {
        FileStore {
            dir: None,
            current: None,
            transfer: None,
            sequences: Vec::new(),
            discarded: Vec::new(),
        }
    }

    fn load(l: Arc<Layout>) -> io::Result<FileStore> {
        let mut discarded = Vec::new();
        let current = read_json::<ImageRecord>(&l.current_meta()).map(|r| InstalledImage {
            role: r.role,
            hardware: r.hardware,
            md5: r.md5,
            sha256: r.sha256,
            version: r.version,
        });
        let transfer = match read_json::<TransferMeta>(&l.transfer_meta()) {
            None => {
                if l.transfer_meta().exists() {
                    discarded.push("transfer.json is damaged".to_owned());
                }
                None
            }
            Some(m) if m.chunks == 0 || m.chunks > (1 << 20) => {
                discarded.push(format!("transfer.json has {} chunks", m.chunks));
                None
            }
            Some(m) => {
                let path = l.transfer_log();
                let log = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                let bytes = fs::read(&path)?;
                let mut have = ChunkBitmap::new(m.chunks);
                let mut valid = 0;
                for rec in bytes.chunks_exact(LOG_RECORD) {
                    let i = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
                    let not_i = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
                    if not_i != !i || i >= m.chunks {
                        break;
                    }
                    have.set(i);
                    valid += LOG_RECORD;
                }
                if valid < bytes.len() {
                    // A torn tail (crash mid-append): keep the valid prefix, so new records
                    // are appended where the reader will find them.
                    discarded.push(format!(
                        "transfer.log: {} bytes after the last valid record",
                        bytes.len() - valid
                    ));
                    log.set_len(valid as u64)?;
                    log.sync_all()?;
                }
                Some(Transfer {
                    offer: m.offer.into_bytes(),
                    have,
                    generation: m.generation,
                    log,
                })
            }
        };
        let sequences = read_json::<Vec<SequenceRecord>>(&l.sequences());
        if sequences.is_none() && l.sequences().exists() {
            // Refuse to start without it rather than lose rollback protection silently.
            return Err(io::Error::other(format!(
                "{} is damaged: restore it or remove it knowingly (anti-rollback counters)",
                l.sequences().display()
            )));
        }
        for d in &discarded {
            warn!(dir = %l.root.display(), what = %d, "OTA store: discarded a damaged record");
        }
        Ok(FileStore {
            dir: Some(l),
            current,
            transfer,
            sequences: sequences.unwrap_or_default(),
            discarded,
        })
    }

    /// Damaged records found when the directory was opened.
    pub fn discarded(&self) -> &[String] {
        &self.discarded
    }

    /// The OTA directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref().map(|l| l.root.as_path())
    }

    /// The recorded image file of the current image, if the directory has one.
    pub fn current_file(&self) -> Option<PathBuf> {
        let l = self.dir.as_deref()?;
        let rec: ImageRecord = read_json(&l.current_meta())?;
        Some(l.root.join(rec.file))
    }

    fn layout(&self) -> Result<&Layout, IoError> {
        self.dir.as_deref().ok_or(IoError::Unsupported)
    }
}

impl OtaStore for FileStore {
    fn current_image(&self) -> Option<InstalledImage> {
        self.current.clone()
    }

    fn confirmed_sequence(&self, role: &str, hardware: &str) -> Option<u64> {
        self.sequences
            .iter()
            .find(|r| r.role == role && r.hardware == hardware)
            .map(|r| r.sequence)
    }

    fn set_confirmed_sequence(
        &mut self,
        role: &str,
        hardware: &str,
        sequence: u64,
    ) -> Result<(), IoError> {
        let mut next = self.sequences.clone();
        match next
            .iter_mut()
            .find(|r| r.role == role && r.hardware == hardware)
        {
            Some(r) => r.sequence = r.sequence.max(sequence),
            None => next.push(SequenceRecord {
                role: role.into(),
                hardware: hardware.into(),
                sequence,
            }),
        }
        write_json_atomic(&self.layout()?.sequences(), &next)?;
        self.sequences = next;
        Ok(())
    }

    fn set_current_image(&mut self, image: &InstalledImage) -> Result<(), IoError> {
        let l = self.layout()?;
        let name = image_name(&image.role, &image.hardware, &image.sha256);
        let file = format!("images/{name}.bin");
        let size = fs::metadata(l.root.join(&file)).map_or(0, |m| m.len());
        let rec = ImageRecord {
            role: image.role.clone(),
            hardware: image.hardware.clone(),
            version: image.version.clone(),
            sha256: image.sha256.clone(),
            md5: image.md5.clone(),
            size,
            file,
            installed_at: unix_now(),
        };
        write_json_atomic(&l.images().join(format!("{name}.json")), &rec)?;
        write_json_atomic(&l.current_meta(), &rec)?;
        self.current = Some(image.clone());
        Ok(())
    }

    fn load_transfer(&self) -> Option<TransferRecord> {
        let l = self.dir.as_deref()?;
        let t = self.transfer.as_ref()?;
        let partial = l.read_partial_meta().map(|m| m.generation);
        if t.generation != partial {
            warn!(
                recorded = ?t.generation,
                partial = ?partial,
                "OTA store: the recorded transfer belongs to another partial image; starting over"
            );
            return None;
        }
        Some(TransferRecord {
            offer: t.offer.clone(),
            have: t.have.clone(),
        })
    }

    fn begin_transfer(&mut self, offer: &[u8], chunks: u32) -> Result<(), IoError> {
        let l = self.dir.clone().ok_or(IoError::Unsupported)?;
        let offer_text = std::str::from_utf8(offer)
            .map_err(|_| IoError::Device("the offer is not UTF-8 text".into()))?
            .to_owned();
        let generation = l.read_partial_meta().map(|m| m.generation);
        // Empty the log before the new record exists: a crash in between leaves the old
        // record with no chunks (whose generation no longer matches anyway).
        self.transfer = None;
        let path = l.transfer_log();
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| device("cannot create", &path, &e))?;
        write_json_atomic(
            &l.transfer_meta(),
            &TransferMeta {
                offer: offer_text,
                chunks,
                generation,
            },
        )?;
        self.transfer = Some(Transfer {
            offer: offer.to_vec(),
            have: ChunkBitmap::new(chunks),
            generation,
            log,
        });
        Ok(())
    }

    fn mark_chunk(&mut self, index: u32) -> Result<(), IoError> {
        let path = self.layout()?.transfer_log();
        let t = self
            .transfer
            .as_mut()
            .ok_or(IoError::BadState("mark_chunk without a transfer"))?;
        if index >= t.have.len() {
            return Err(IoError::OutOfRange {
                offset: u64::from(index),
                len: 1,
                limit: u64::from(t.have.len()),
            });
        }
        if t.have.get(index) {
            return Ok(());
        }
        let end = t
            .log
            .metadata()
            .map_err(|e| device("cannot stat", &path, &e))?
            .len();
        t.log
            .write_all_at(&log_record(index), end)
            .and_then(|()| t.log.sync_data())
            .map_err(|e| device("cannot append to", &path, &e))?;
        t.have.set(index);
        Ok(())
    }

    fn clear_transfer(&mut self) -> Result<(), IoError> {
        self.transfer = None;
        let Some(l) = self.dir.as_deref() else {
            return Ok(());
        };
        let meta = l.transfer_meta();
        let removed = remove(&meta).map_err(|e| device("cannot remove", &meta, &e))?;
        if removed {
            sync_dir(&l.root).map_err(|e| device("cannot sync", &l.root, &e))?;
        }
        remove(&l.transfer_log()).map_err(|e| device("cannot remove", &l.transfer_log(), &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "pmesh-fw-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn open(t: &Tmp) -> (FileSink, FileStore) {
        open_dir(&t.0, "sensor", "ESP32", 1 << 20).unwrap()
    }

    #[test]
    fn confirmed_sequences_survive_a_restart_and_never_go_down() {
        let t = Tmp::new("seq");
        {
            let (_sink, mut store) = open(&t);
            assert_eq!(store.confirmed_sequence("sensor", "ESP32"), None);
            store.set_confirmed_sequence("sensor", "ESP32", 7).unwrap();
            store.set_confirmed_sequence("sensor", "ESP32", 3).unwrap();
            store.set_confirmed_sequence("relay", "ESP32", 1).unwrap();
        }
        let (_sink, store) = open(&t);
        assert_eq!(store.confirmed_sequence("sensor", "ESP32"), Some(7));
        assert_eq!(store.confirmed_sequence("relay", "ESP32"), Some(1));
        assert_eq!(store.confirmed_sequence("sensor", "ESP8266"), None);
        drop((_sink, store));
        // A damaged counter file stops the node instead of forgetting the counters.
        fs::write(t.0.join("sequences.json"), b"{not json").unwrap();
        assert!(open_dir(&t.0, "sensor", "ESP32", 1 << 20).is_err());
    }

    fn image(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    const OFFER: &[u8] = br#"{"type":711,"id":5}"#;

    #[test]
    fn source_serves_the_file() {
        let t = Tmp::new("src");
        fs::create_dir_all(&t.0).unwrap();
        let p = t.0.join("fw.bin");
        fs::write(&p, image(10_000)).unwrap();
        let mut s = FileSource::open(&p).unwrap();
        assert_eq!(s.len(), 10_000);
        let mut buf = [0u8; 4096];
        assert_eq!(s.read_at(8192, &mut buf).unwrap(), 10_000 - 8192);
        assert_eq!(&buf[..10_000 - 8192], &image(10_000)[8192..]);
        assert!(s.read_at(10_001, &mut buf).is_err());
        assert!(FileSource::open(&t.0).is_err(), "a directory is refused");
    }

    #[test]
    fn out_of_order_writes_verify_and_commit() {
        let t = Tmp::new("commit");
        let img = image(10_000);
        let (mut sink, mut store) = open(&t);
        sink.begin(Some(10_000)).unwrap();
        store.begin_transfer(OFFER, 3).unwrap();
        for i in [2u32, 0, 1] {
            let at = i as usize * 4096;
            let end = (at + 4096).min(img.len());
            sink.write_at(at as u64, &img[at..end]).unwrap();
            store.mark_chunk(i).unwrap();
        }
        let mut back = vec![0u8; 10_000];
        sink.read_at(0, &mut back).unwrap();
        assert_eq!(back, img);
        assert!(sink.write_at(9_000, &[0; 2000]).is_err(), "past the size");
        assert!(sink.commit().is_err(), "commit before verify");
        sink.verify(10_000).unwrap();
        sink.commit().unwrap();
        let sha = pmesh_ota::codec::sha256_hex(&img);
        let installed = InstalledImage {
            role: "sensor".into(),
            hardware: "ESP32".into(),
            md5: pmesh_ota::codec::md5_hex(&img),
            sha256: sha.clone(),
            version: "1.2".into(),
        };
        store.set_current_image(&installed).unwrap();
        store.clear_transfer().unwrap();
        let name = image_name("sensor", "ESP32", &sha);
        assert_eq!(
            fs::read(t.0.join(format!("images/{name}.bin"))).unwrap(),
            img
        );
        assert_eq!(fs::read(t.0.join("current.bin")).unwrap(), img, "symlink");
        assert!(!t.0.join("incoming/partial.bin").exists());
        assert!(!t.0.join("transfer.json").exists());
        let rec: ImageRecord = read_json(&t.0.join("current.json")).unwrap();
        assert_eq!((rec.size, rec.version.as_str()), (10_000, "1.2"));
        assert_eq!(store.current_file().unwrap(), t.0.join(&rec.file));
        drop((sink, store));
        let (_, store) = open(&t);
        assert_eq!(store.current_image(), Some(installed), "survives a restart");
        assert!(store.load_transfer().is_none());
    }

    #[test]
    fn a_restart_resumes_with_the_recorded_chunks() {
        let t = Tmp::new("resume");
        let img = image(12_288);
        let (mut sink, mut store) = open(&t);
        sink.begin(Some(12_288)).unwrap();
        store.begin_transfer(OFFER, 3).unwrap();
        sink.write_at(4096, &img[4096..8192]).unwrap();
        store.mark_chunk(1).unwrap();
        // Chunk 2 written but the process dies before mark_chunk.
        sink.write_at(8192, &img[8192..]).unwrap();
        drop((sink, store));

        let (mut sink, mut store) = open(&t);
        let rec = store.load_transfer().expect("transfer survives");
        assert_eq!(rec.offer, OFFER);
        assert_eq!((rec.have.count(), rec.have.get(1)), (1, true));
        assert!(sink.resume(Some(4096)).is_err(), "another size");
        sink.resume(Some(12_288)).unwrap();
        let mut back = vec![0u8; 4096];
        sink.read_at(4096, &mut back).unwrap();
        assert_eq!(back, &img[4096..8192]);
        // Written again after the reboot (same bytes), then the rest.
        sink.write_at(8192, &img[8192..]).unwrap();
        store.mark_chunk(2).unwrap();
        sink.write_at(0, &img[..4096]).unwrap();
        store.mark_chunk(0).unwrap();
        sink.verify(12_288).unwrap();
        let mut all = vec![0u8; 12_288];
        sink.read_at(0, &mut all).unwrap();
        assert_eq!(all, img);
    }

    #[test]
    fn a_torn_log_tail_keeps_the_valid_records() {
        let t = Tmp::new("torn");
        let (mut sink, mut store) = open(&t);
        sink.begin(Some(40_000)).unwrap();
        store.begin_transfer(OFFER, 10).unwrap();
        for i in [3, 4, 7] {
            store.mark_chunk(i).unwrap();
        }
        drop((sink, store));
        // A crash mid-append: half a record, then zeros (a length update without data).
        let mut log = OpenOptions::new()
            .append(true)
            .open(t.0.join("transfer.log"))
            .unwrap();
        log.write_all(&log_record(9)[..5]).unwrap();
        drop(log);
        let (_sink, mut store) = open(&t);
        assert_eq!(store.discarded().len(), 1);
        let have = store.load_transfer().unwrap().have;
        assert_eq!(have.count(), 3);
        assert!(have.get(3) && have.get(4) && have.get(7) && !have.get(9));
        // Appending continues after the valid prefix and reads back.
        store.mark_chunk(9).unwrap();
        drop(store);
        drop(_sink);
        let (_sink, store) = open(&t);
        assert!(store.discarded().is_empty());
        assert_eq!(store.load_transfer().unwrap().have.count(), 4);
    }

    #[test]
    fn zeroed_and_out_of_range_records_are_not_trusted() {
        let t = Tmp::new("zero");
        let (mut sink, mut store) = open(&t);
        sink.begin(Some(8192)).unwrap();
        store.begin_transfer(OFFER, 2).unwrap();
        store.mark_chunk(0).unwrap();
        drop((sink, store));
        let mut log = OpenOptions::new()
            .append(true)
            .open(t.0.join("transfer.log"))
            .unwrap();
        log.write_all(&[0u8; 8]).unwrap(); // zeros: index 0, complement 0: invalid
        log.write_all(&log_record(1)).unwrap(); // valid, but after the damage
        drop(log);
        let (_sink, store) = open(&t);
        assert_eq!(store.load_transfer().unwrap().have.count(), 1);
        fs::write(
            t.0.join("transfer.log"),
            [log_record(0), log_record(5)].concat(),
        )
        .unwrap();
        drop((_sink, store));
        let (_sink, store) = open(&t);
        let have = store.load_transfer().unwrap().have;
        assert_eq!(have.count(), 1, "index 5 is out of range for 2 chunks");
    }

    #[test]
    fn a_crash_between_begin_and_begin_transfer_never_mixes_images() {
        let t = Tmp::new("gen");
        let (mut sink, mut store) = open(&t);
        sink.begin(Some(8192)).unwrap();
        store.begin_transfer(OFFER, 2).unwrap();
        sink.write_at(0, &[1; 4096]).unwrap();
        store.mark_chunk(0).unwrap();
        // A new image of the same size begins; the process dies before begin_transfer.
        sink.begin(Some(8192)).unwrap();
        drop((sink, store));
        let (mut sink, store) = open(&t);
        assert!(
            store.load_transfer().is_none(),
            "the old bitmap must not describe the new partial image"
        );
        sink.resume(Some(8192)).unwrap();
        let mut b = [9u8; 16];
        sink.read_at(0, &mut b).unwrap();
        assert_eq!(b, [0; 16], "the new partial image is empty");
    }

    #[test]
    fn damaged_records_are_ignored_with_a_note() {
        let t = Tmp::new("damaged");
        fs::create_dir_all(&t.0).unwrap();
        fs::write(t.0.join("current.json"), b"{not json").unwrap();
        fs::write(t.0.join("transfer.json"), b"\x00\x01").unwrap();
        let (mut sink, mut store) = open(&t);
        assert!(store.current_image().is_none());
        assert!(store.load_transfer().is_none());
        assert_eq!(store.discarded().len(), 1);
        assert!(sink.resume(None).is_err(), "no partial image");
        // And the directory still works.
        sink.begin(None).unwrap();
        store.begin_transfer(OFFER, 4).unwrap();
        store.mark_chunk(3).unwrap();
        assert!(store.mark_chunk(4).is_err());
    }

    #[test]
    fn capacity_and_unknown_size() {
        let t = Tmp::new("cap");
        let (mut sink, _store) = open(&t);
        assert!(sink.begin(Some((1 << 20) + 1)).is_err());
        sink.begin(None).unwrap();
        sink.write_at((1 << 20) - 10, &[7; 10]).unwrap();
        assert!(sink.write_at((1 << 20) - 10, &[7; 11]).is_err());
        assert!(sink.write_at(u64::MAX, &[1]).is_err(), "no overflow");
        sink.write_at(40, &[9; 20]).unwrap();
        sink.verify(100).unwrap();
        let mut b = [1u8; 20];
        sink.read_at(40, &mut b).unwrap();
        assert_eq!(
            b, [9; 20],
            "written bytes read back after the truncation to 100"
        );
        sink.abort();
        assert!(!t.0.join("incoming/partial.bin").exists());
        assert!(sink.write_at(0, &[1]).is_err(), "nothing begun after abort");
    }

    #[test]
    fn staging_round_trips() {
        let t = Tmp::new("stage");
        let (mut sink, _store) = open(&t);
        sink.begin(None).unwrap();
        assert!(sink.has_staging());
        sink.stage_write(2048, b"later").unwrap();
        sink.stage_write(0, b"first").unwrap();
        let mut b = [0u8; 5];
        sink.stage_read(2048, &mut b).unwrap();
        assert_eq!(&b, b"later");
        assert!(sink.stage_read(4096, &mut b).is_err());
        sink.begin(None).unwrap();
        assert!(sink.stage_read(0, &mut b).is_err(), "begin clears staging");
    }

    #[test]
    fn one_node_per_directory() {
        let t = Tmp::new("lock");
        let first = open(&t);
        let err = open_dir(&t.0, "sensor", "ESP32", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        open(&t);
    }

    #[test]
    fn disabled_takes_nothing() {
        let mut sink = FileSink::disabled();
        let mut store = FileStore::disabled();
        assert_eq!(sink.capacity(), 0);
        assert!(sink.begin(Some(1)).is_err());
        assert!(store.begin_transfer(OFFER, 1).is_err());
        assert!(store.current_image().is_none() && store.load_transfer().is_none());
        assert!(store.clear_transfer().is_ok());
    }

    #[test]
    fn names_are_safe_file_names() {
        assert_eq!(
            image_name("sensor", "ESP32", "0123456789abcdef0123"),
            "sensor-ESP32-0123456789abcdef"
        );
        assert_eq!(image_name("../x", "a/b", ""), "_.._x-a_b-_");
        assert_eq!(image_name(".hidden", "hw", "ab"), "_.hidden-hw-ab");
    }
}
