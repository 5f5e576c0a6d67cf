//! What the OTA plugin reports to the application, and why it refuses offers.

use alloc::string::String;
use core::fmt;

use crate::codec::CodecError;
use crate::io::{InstalledImage, IoError};

/// Which protocol a transfer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// painlessMesh OTA (types 10/11/12), per-node pulls.
    ClassicUnicast,
    /// painlessMesh OTA in broadcast mode (Data flooded to the whole mesh).
    ClassicBroadcast,
    /// pmesh's own protocol (types 710–716): pipelined push along the tree.
    Pmesh,
}

impl Mode {
    /// `unicast`, `broadcast` or `pmesh`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::ClassicUnicast => "unicast",
            Mode::ClassicBroadcast => "broadcast",
            Mode::Pmesh => "pmesh",
        }
    }

    /// The inverse of [`Mode::name`].
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::ClassicUnicast, Mode::ClassicBroadcast, Mode::Pmesh]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Identifies a transfer: the pmesh rollout id, or for classic OTA the first 32 bits of the MD5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId {
    /// The protocol.
    pub mode: Mode,
    /// The id.
    pub id: u32,
}

impl TransferId {
    /// The id of a classic transfer of this MD5 (hex); 0 if it is not hex.
    pub fn classic(md5: &str, broadcast: bool) -> Self {
        let id = md5
            .get(..8)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        TransferId {
            mode: if broadcast {
                Mode::ClassicBroadcast
            } else {
                Mode::ClassicUnicast
            },
            id,
        }
    }
}

/// Why a node does not take (or finish) an offered image. Every refusal is reported once per
/// offer as [`OtaEvent::Refused`] or [`OtaEvent::Failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The offer is for another role.
    WrongRole {
        /// Offered.
        offered: String,
        /// This node's.
        mine: String,
    },
    /// The offer is for other hardware.
    WrongHardware {
        /// Offered.
        offered: String,
        /// This node's.
        mine: String,
    },
    /// This node already runs the image (and the offer is not forced).
    AlreadyCurrent,
    /// The image is larger than this node can take.
    TooLarge {
        /// Image bytes.
        size: u64,
        /// The sink's capacity.
        capacity: u64,
    },
    /// The offer names a compression this node does not implement.
    UnknownCompression(String),
    /// The offer is malformed (inconsistent sizes, bad hash text, ...).
    BadOffer(&'static str),
    /// The written image does not have the announced hash.
    HashMismatch {
        /// Announced (hex).
        expected: String,
        /// Computed over what was written (hex).
        actual: String,
    },
    /// Another transfer is using the sink.
    Busy,
    /// The firmware sink or the store failed.
    Io(IoError),
    /// The compressed stream is bad.
    Codec(CodecError),
    /// Signed firmware: the offer is not trusted (feature `signature`; `code` is one of
    /// `pmesh_ota::signed::TrustError::code`: `unsigned`, `unknown_key`, `bad_signature`,
    /// `rollback`, `expired`, `wrong_class`, `malformed`, ...).
    Untrusted {
        /// The trust refusal's code.
        code: &'static str,
        /// Its description.
        reason: String,
    },
}

impl Refusal {
    /// A short machine-readable name (`wrong_role`, `hash_mismatch`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::WrongRole { .. } => "wrong_role",
            Refusal::WrongHardware { .. } => "wrong_hardware",
            Refusal::AlreadyCurrent => "already_current",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::UnknownCompression(_) => "unknown_compression",
            Refusal::BadOffer(_) => "bad_offer",
            Refusal::HashMismatch { .. } => "hash_mismatch",
            Refusal::Busy => "busy",
            Refusal::Io(_) => "io",
            Refusal::Codec(_) => "codec",
            Refusal::Untrusted { code, .. } => code,
        }
    }

    /// The wire number used in pmesh progress reports.
    pub fn wire_code(&self) -> u8 {
        match self {
            Refusal::WrongRole { .. } => 1,
            Refusal::WrongHardware { .. } => 2,
            Refusal::AlreadyCurrent => 3,
            Refusal::TooLarge { .. } => 4,
            Refusal::UnknownCompression(_) => 5,
            Refusal::BadOffer(_) => 6,
            Refusal::HashMismatch { .. } => 7,
            Refusal::Busy => 8,
            Refusal::Io(_) => 9,
            Refusal::Codec(_) => 10,
            Refusal::Untrusted { .. } => 11,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WrongRole { offered, mine } => {
                write!(f, "image is for role {offered:?}, this node is {mine:?}")
            }
            Refusal::WrongHardware { offered, mine } => {
                write!(
                    f,
                    "image is for hardware {offered:?}, this node is {mine:?}"
                )
            }
            Refusal::AlreadyCurrent => {
                f.write_str("this node already runs the image (offer not forced)")
            }
            Refusal::TooLarge { size, capacity } => {
                write!(
                    f,
                    "image of {size} bytes exceeds this node's {capacity}-byte firmware slot"
                )
            }
            Refusal::UnknownCompression(c) => write!(f, "unknown compression {c:?}"),
            Refusal::BadOffer(why) => write!(f, "malformed offer: {why}"),
            Refusal::HashMismatch { expected, actual } => {
                write!(
                    f,
                    "hash mismatch: announced {expected}, written image has {actual}"
                )
            }
            Refusal::Busy => f.write_str("another transfer is in progress"),
            Refusal::Io(e) => write!(f, "firmware storage: {e}"),
            Refusal::Codec(e) => write!(f, "compressed image: {e}"),
            Refusal::Untrusted { code, reason } => {
                write!(f, "untrusted firmware ({code}): {reason}")
            }
        }
    }
}

impl From<IoError> for Refusal {
    fn from(e: IoError) -> Self {
        Refusal::Io(e)
    }
}

impl From<CodecError> for Refusal {
    fn from(e: CodecError) -> Self {
        Refusal::Codec(e)
    }
}

/// Where a receiving node is in a rollout (reported to the distributor in pmesh mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Receiving chunks.
    Distribute,
    /// All chunks written and the hash checked: staged, waiting for the apply time.
    Verified,
    /// The image is committed; the node reboots into it.
    Applied,
    /// The node refused or failed (the code is [`Refusal::wire_code`]).
    Failed(u8),
}

impl Phase {
    /// The wire number (0 distribute, 1 verified, 2 applied, 100+code failed).
    pub fn wire(self) -> u32 {
        match self {
            Phase::Distribute => 0,
            Phase::Verified => 1,
            Phase::Applied => 2,
            Phase::Failed(code) => 100 + u32::from(code),
        }
    }

    /// The inverse of [`Phase::wire`].
    pub fn from_wire(v: u32) -> Option<Phase> {
        match v {
            0 => Some(Phase::Distribute),
            1 => Some(Phase::Verified),
            2 => Some(Phase::Applied),
            100..=355 => Some(Phase::Failed((v - 100) as u8)),
            _ => None,
        }
    }
}

/// Events of the OTA plugin (`pmesh_node::Event::Plugin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OtaEvent {
    // --- receiver side ---
    /// This node accepted an offer and starts (or resumes) receiving it.
    Accepted {
        /// The transfer.
        id: TransferId,
        /// Chunks in the image.
        chunks: u32,
        /// Chunks already held (resume), 0 for a fresh start.
        resumed_from: u32,
    },
    /// Receive progress, at most every 1 % (and at 100 %).
    Progress {
        /// The transfer.
        id: TransferId,
        /// Chunks held.
        done: u32,
        /// Chunks in the image.
        total: u32,
    },
    /// All chunks are written and the image's hash matches: staged.
    Verified {
        /// The transfer.
        id: TransferId,
    },
    /// The image is committed to the sink and recorded as current: reboot into it now.
    Installed {
        /// The transfer.
        id: TransferId,
        /// What was recorded in the store.
        image: InstalledImage,
    },
    /// An offer was refused (reported once per offer).
    Refused {
        /// The transfer.
        id: TransferId,
        /// Why.
        reason: Refusal,
    },
    /// A transfer in progress failed; nothing was committed.
    Failed {
        /// The transfer.
        id: TransferId,
        /// Why.
        reason: Refusal,
    },
    /// A reference-behaviour receiver would now call `ESP.restart()` (2 s after its last chunk).
    RebootRequested {
        /// The transfer.
        id: TransferId,
    },
    // --- distributor side ---
    /// A node reported its progress (pmesh mode; every ≤ 1 % step and every phase change).
    NodeProgress {
        /// The transfer.
        id: TransferId,
        /// The node.
        node: u32,
        /// Chunks it holds.
        done: u32,
        /// Chunks in the image.
        total: u32,
        /// Its phase.
        phase: Phase,
    },
    /// Every known target verified (or failed); the apply time was set if the policy says so.
    RolloutVerified {
        /// The transfer.
        id: TransferId,
        /// Targets verified.
        verified: u32,
        /// Targets failed.
        failed: u32,
        /// Mesh time at which nodes apply, if scheduled.
        apply_at: Option<u32>,
    },
    /// A classic offer sent its last announce.
    AnnouncesDone {
        /// The transfer.
        id: TransferId,
    },
    /// A classic push pass flooded its last chunk and settled (distributor side).
    PassDone {
        /// The transfer.
        id: TransferId,
        /// Passes so far (1 for the first).
        pass: u32,
        /// Nodes in the mesh for the whole pass.
        covered: u32,
        /// Nodes in the mesh now that no pass covered (another pass follows if any).
        uncovered: u32,
    },
}
