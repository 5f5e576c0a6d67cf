//! # pmesh-fwdir
//!
//! The firmware directory: the one directory a gateway reads firmware from when something
//! remote names a file (an MQTT `ota/start` with `image_path`, later signed bundles and the web
//! UI). A remote client only ever gives a *name*; [`FirmwareDir::resolve`] turns it into a
//! path inside the directory or refuses it with a [`FirmwareError`], and
//! [`FirmwareDir::read`] reads it with the size bound enforced while reading.
//!
//! The rules, in order:
//!
//! 1. the name is relative, not empty, without `..` and without NUL ([`check_name`], no IO:
//!    the existence of files outside the directory is never probed);
//! 2. the name is resolved (symlinks followed) and must stay inside the directory: a symlink
//!    inside may point to another file inside, never out;
//! 3. only regular files: no directory, FIFO, socket or device (`/dev/zero` reads forever);
//! 4. the file is opened without following a last-moment symlink and without blocking on a
//!    FIFO swapped in after the checks; the opened file is checked again (regular, and on
//!    Linux its real path from `/proc/self/fd` inside the directory), so a rename race between
//!    the check and the open cannot lead outside;
//! 5. at most `max_bytes` are read, whatever the file's metadata said.
//!
//! Plain `std` (blocking): call it from `spawn_blocking` in async code.

#![warn(missing_docs)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// A firmware directory, resolved to its canonical path when opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareDir {
    root: PathBuf,
}

/// What kind of file a name resolved to, when it is not a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device (`/dev/zero`, a tty).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Other,
}

impl FileKind {
    fn of(t: std::fs::FileType) -> FileKind {
        if t.is_dir() {
            FileKind::Directory
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else {
            FileKind::Other
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a regular file",
        }
    }
}

/// Why a name was refused or could not be read.
#[derive(Debug)]
pub enum FirmwareError {
    /// The name is empty.
    EmptyName,
    /// The name is absolute: names are relative to the firmware directory.
    Absolute,
    /// The name has a `..` component.
    ParentComponent,
    /// The name holds a NUL byte.
    NulByte,
    /// Nothing by that name in the directory (or a link to nothing).
    NotFound,
    /// The name resolves outside the directory (a symlink pointing out of it).
    OutsideDirectory,
    /// Not a regular file.
    NotRegularFile(FileKind),
    /// Larger than the limit; `size` when the file's metadata already said so.
    TooLarge {
        /// The size the metadata gave, if that is how it was found.
        size: Option<u64>,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Another IO error (permission denied, ...).
    Io(io::Error),
}

impl FirmwareError {
    /// A short stable name for counters and logs (`not_found`, `outside_directory`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            FirmwareError::EmptyName => "empty_name",
            FirmwareError::Absolute => "absolute",
            FirmwareError::ParentComponent => "parent_component",
            FirmwareError::NulByte => "nul_byte",
            FirmwareError::NotFound => "not_found",
            FirmwareError::OutsideDirectory => "outside_directory",
            FirmwareError::NotRegularFile(_) => "not_regular_file",
            FirmwareError::TooLarge { .. } => "too_large",
            FirmwareError::Io(_) => "io",
        }
    }
}

impl fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirmwareError::EmptyName => f.write_str("empty name"),
            FirmwareError::Absolute => {
                f.write_str("absolute path: give a name relative to the firmware directory")
            }
            FirmwareError::ParentComponent => {
                f.write_str("'..' is not allowed: names stay inside the firmware directory")
            }
            FirmwareError::NulByte => f.write_str("the name holds a NUL byte"),
            FirmwareError::NotFound => f.write_str("no such file in the firmware directory"),
            FirmwareError::OutsideDirectory => {
                f.write_str("resolves outside the firmware directory (a symlink pointing out)")
            }
            FirmwareError::NotRegularFile(k) => {
                write!(f, "{}: only regular files are read", k.describe())
            }
            FirmwareError::TooLarge {
                size: Some(s),
                limit,
            } => write!(f, "{s} bytes, over the {limit}-byte limit"),
            FirmwareError::TooLarge { size: None, limit } => {
                write!(f, "more than the {limit}-byte limit")
            }
            FirmwareError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FirmwareError {}

/// The lexical rules alone (no filesystem access): `name` is not empty, relative, without
/// `..` and without NUL. Returns it as a path.
pub fn check_name(name: &str) -> Result<&Path, FirmwareError> {
    if name.is_empty() {
        return Err(FirmwareError::EmptyName);
    }
    if name.contains('\0') {
        return Err(FirmwareError::NulByte);
    }
    let path = Path::new(name);
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(FirmwareError::ParentComponent),
            Component::RootDir | Component::Prefix(_) => return Err(FirmwareError::Absolute),
        }
    }
    Ok(path)
}

fn io_error(e: io::Error) -> FirmwareError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => FirmwareError::NotFound,
        _ => FirmwareError::Io(e),
    }
}

impl FirmwareDir {
    /// The directory at `path` (resolved now; it must exist and be a directory).
    pub fn open(path: impl AsRef<Path>) -> io::Result<FirmwareDir> {
        let path = path.as_ref();
        let root = std::fs::canonicalize(path)?;
        if !std::fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(FirmwareDir { root })
    }

    /// The directory's canonical path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Resolves `name` to the canonical path of a file inside the directory (rules 1 and 2 of
    /// the crate docs). The result may still be anything but a regular file.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, FirmwareError> {
        let rel = check_name(name)?;
        let canonical = std::fs::canonicalize(self.root.join(rel)).map_err(io_error)?;
        if !canonical.starts_with(&self.root) {
            return Err(FirmwareError::OutsideDirectory);
        }
        Ok(canonical)
    }

    /// Opens `name` for reading after every check of the crate docs (rules 1-4); returns the
    /// file and its size as the open file reports it.
    pub fn open_file(&self, name: &str) -> Result<(File, u64), FirmwareError> {
        let path = self.resolve(name)?;
        let kind = std::fs::symlink_metadata(&path)
            .map_err(io_error)?
            .file_type();
        if !kind.is_file() {
            return Err(FirmwareError::NotRegularFile(FileKind::of(kind)));
        }
        // The path was checked; what is opened may have been swapped since. O_NOFOLLOW: a
        // last component turned into a symlink fails (ELOOP); O_NONBLOCK: a FIFO swapped in
        // does not block the open. Both are re-checked on the open file below.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error)?;
        let meta = file.metadata().map_err(FirmwareError::Io)?;
        if !meta.file_type().is_file() {
            return Err(FirmwareError::NotRegularFile(FileKind::of(
                meta.file_type(),
            )));
        }
        self.check_opened(&file)?;
        Ok((file, meta.len()))
    }

    /// The opened file's real path (Linux: `/proc/self/fd/N`) must be inside the directory:
    /// a directory above the file renamed or replaced by a symlink between `resolve` and the
    /// open is caught here. Without `/proc` the resolve-time check stands alone.
    fn check_opened(&self, file: &File) -> Result<(), FirmwareError> {
        use std::os::fd::AsRawFd;
        match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) if !real.starts_with(&self.root) => Err(FirmwareError::OutsideDirectory),
            _ => Ok(()),
        }
    }

    /// Reads `name` whole, at most `max_bytes` (rule 5: a file larger than its metadata
    /// said, or growing, is cut at `max_bytes + 1` and refused).
    pub fn read(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, FirmwareError> {
        let (file, len) = self.open_file(name)?;
        if len > max_bytes {
            return Err(FirmwareError::TooLarge {
                size: Some(len),
                limit: max_bytes,
            });
        }
        let mut image = Vec::with_capacity(len as usize);
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut image)
            .map_err(FirmwareError::Io)?;
        if image.len() as u64 > max_bytes {
            return Err(FirmwareError::TooLarge {
                size: None,
                limit: max_bytes,
            });
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch tree: `<tmp>/fw` (the firmware directory) and `<tmp>/secret.bin` beside it.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("pmesh-fwdir-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("fw/sub")).unwrap();
            std::fs::write(d.join("secret.bin"), b"secret").unwrap();
            std::fs::write(d.join("fw/image.bin"), b"firmware").unwrap();
            std::fs::write(d.join("fw/sub/nested.bin"), b"nested").unwrap();
            Scratch(d)
        }

        fn dir(&self) -> FirmwareDir {
            FirmwareDir::open(self.0.join("fw")).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_are_relative_without_parent_components() {
        assert!(matches!(check_name(""), Err(FirmwareError::EmptyName)));
        assert!(matches!(
            check_name("/dev/zero"),
            Err(FirmwareError::Absolute)
        ));
        for bad in ["../../etc/shadow", "a/../b", "..", "sub/.."] {
            assert!(
                matches!(check_name(bad), Err(FirmwareError::ParentComponent)),
                "{bad}"
            );
        }
        assert!(matches!(check_name("a\0b"), Err(FirmwareError::NulByte)));
        for good in ["fw.bin", "./fw.bin", "esp32/fw.bin", "..fw", "fw..bin"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn regular_files_inside_are_read() {
        let s = Scratch::new("ok");
        let d = s.dir();
        assert_eq!(d.read("image.bin", 100).unwrap(), b"firmware");
        assert_eq!(d.read("./sub/nested.bin", 100).unwrap(), b"nested");
        symlink("image.bin", s.0.join("fw/current")).unwrap();
        assert_eq!(
            d.read("current", 100).unwrap(),
            b"firmware",
            "a link inside"
        );
        assert_eq!(d.path(), std::fs::canonicalize(s.0.join("fw")).unwrap());
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let s = Scratch::new("refused");
        let d = s.dir();
        symlink("../secret.bin", s.0.join("fw/escape")).unwrap();
        symlink("/dev/zero", s.0.join("fw/zero")).unwrap();
        symlink(s.0.join("secret.bin"), s.0.join("fw/absolute-link")).unwrap();
        symlink("nowhere", s.0.join("fw/dangling")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(s.0.join("fw/pipe"))
            .status()
            .unwrap();
        assert!(fifo.success(), "mkfifo");
        let cases: [(&str, &str); 10] = [
            ("/dev/zero", "absolute"),
            ("../../etc/shadow", "parent_component"),
            ("../secret.bin", "parent_component"),
            ("escape", "outside_directory"),
            ("zero", "outside_directory"),
            ("absolute-link", "outside_directory"),
            ("dangling", "not_found"),
            ("missing.bin", "not_found"),
            ("sub", "not_regular_file"),
            ("pipe", "not_regular_file"),
        ];
        for (name, want) in cases {
            let e = d.read(name, 1 << 20).unwrap_err();
            assert_eq!(e.kind(), want, "{name}: {e}");
        }
        assert!(matches!(
            d.read("pipe", 1).unwrap_err(),
            FirmwareError::NotRegularFile(FileKind::Fifo)
        ));
        assert!(matches!(
            d.read("sub", 1).unwrap_err(),
            FirmwareError::NotRegularFile(FileKind::Directory)
        ));
    }

    #[test]
    fn the_size_bound_holds_without_reading_the_file() {
        let s = Scratch::new("large");
        let d = s.dir();
        // A sparse 1 GiB file: refused from its size, nothing read.
        let f = File::create(s.0.join("fw/huge.bin")).unwrap();
        f.set_len(1 << 30).unwrap();
        let e = d.read("huge.bin", 16 << 20).unwrap_err();
        assert!(
            matches!(e, FirmwareError::TooLarge { size: Some(s), limit } if s == 1 << 30 && limit == 16 << 20),
            "{e}"
        );
        assert_eq!(
            d.read("image.bin", 8).unwrap(),
            b"firmware",
            "exactly the limit"
        );
        assert!(matches!(
            d.read("image.bin", 7).unwrap_err(),
            FirmwareError::TooLarge { .. }
        ));
    }

    #[test]
    fn the_directory_itself_must_exist_and_be_a_directory() {
        let s = Scratch::new("open");
        assert!(FirmwareDir::open(s.0.join("nope")).is_err());
        assert!(FirmwareDir::open(s.0.join("secret.bin")).is_err());
    }
}
