//! Base64 for OTA chunks.
//!
//! Encoding: standard alphabet with `=` padding, as the reference sends. Decoding accepts
//! padded and unpadded input in the standard or the URL-safe alphabet, mixed as the reference
//! allows (it maps `-`/`_` to 62/63 too), and rejects any other character with its position.
//! The reference's quirks (an extra 0x00 byte for unpadded input of length 2 mod 4, `,`/`.` as
//! aliases, invalid characters and misplaced `=` decoded as zero bits) are deliberately not
//! copied (spec §14, docs/compatibility/proto.md).

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const DECODE_CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, DECODE_CONFIG);

/// Why base64 text could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base64Error(base64::DecodeError);

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            base64::DecodeError::InvalidByte(pos, b) if b.is_ascii_graphic() => {
                write!(
                    f,
                    "invalid base64 character '{}' (0x{b:02x}) at offset {pos}",
                    b as char
                )
            }
            base64::DecodeError::InvalidByte(pos, b) => {
                write!(f, "invalid base64 byte 0x{b:02x} at offset {pos}")
            }
            base64::DecodeError::InvalidLength(len) => {
                write!(
                    f,
                    "invalid base64 length: {len} symbols leave a lone character that encodes no byte"
                )
            }
            base64::DecodeError::InvalidLastSymbol(pos, b) => {
                write!(f, "invalid last base64 symbol 0x{b:02x} at offset {pos}")
            }
            base64::DecodeError::InvalidPadding => write!(f, "invalid base64 padding"),
        }
    }
}

impl core::error::Error for Base64Error {}

/// Standard base64 with padding.
pub fn encode(data: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

/// Decodes standard or URL-safe base64 (or a mix of both), padded or not.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    // URL-safe characters map one to one onto the standard ones, so error offsets still
    // point into the caller's text.
    let text: Cow<'_, [u8]> = if text.iter().any(|&b| b == b'-' || b == b'_') {
        Cow::Owned(
            text.iter()
                .map(|&b| match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    other => other,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    };
    STANDARD.decode(&text).map_err(Base64Error)
}

/// Length of the base64 text for `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_alphabets() {
        assert_eq!(encode(b"\x01\x02\x03hello"), b"AQIDaGVsbG8=");
        assert_eq!(decode(b"AQIDaGVsbG8=").unwrap(), b"\x01\x02\x03hello");
        assert_eq!(decode(b"AQIDaGVsbG8").unwrap(), b"\x01\x02\x03hello");
        assert_eq!(decode(b"-_8=").unwrap(), decode(b"+/8=").unwrap());
        assert!(decode(b"AQ*D").is_err());
        assert_eq!(decode(b"-_+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(
            alloc::format!("{}", decode(b"QUJD\nRA=").unwrap_err()),
            "invalid base64 byte 0x0a at offset 4"
        );
    }
}
