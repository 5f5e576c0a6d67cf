//! Alteriom packages (spec §7), native or double-encoded inside the `msg` of types 8/9.

use crate::message::Envelope;

/// A decoded Alteriom package.
#[derive(Clone, Debug, PartialEq)]
pub enum Package {}

impl Package {
    /// Decodes a known package type, or None.
    pub fn decode(_env: &Envelope) -> Option<Package> {
        None
    }
}
