//! Base64 for OTA chunks.
//!
//! Encoding: standard alphabet with `=` padding, as the reference sends. Decoding accepts
//! padded and unpadded input in the standard or the URL-safe alphabet (the reference also maps
//! `-`/`_` to 62/63) and rejects any other character with its position. The reference's
//! quirks (an extra 0x00 byte for unpadded input of length 2 mod 4, `,`/`.` as aliases,
//! invalid characters decoded as zero bits) are deliberately not copied (spec §14).

use alloc::vec::Vec;
use core::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const DECODE_CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, DECODE_CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, DECODE_CONFIG);

/// Why base64 text could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base64Error(base64::DecodeError);

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            base64::DecodeError::InvalidByte(pos, b) => {
                write!(f, "invalid base64 character 0x{b:02x} at offset {pos}")
            }
            base64::DecodeError::InvalidLength(len) => {
                write!(f, "invalid base64 length {len} (1 mod 4)")
            }
            base64::DecodeError::InvalidLastSymbol(pos, b) => {
                write!(f, "invalid last base64 symbol 0x{b:02x} at offset {pos}")
            }
            base64::DecodeError::InvalidPadding => write!(f, "invalid base64 padding"),
        }
    }
}

/// Standard base64 with padding.
pub fn encode(data: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

/// Decodes standard or URL-safe base64, padded or not.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let url_safe = text.iter().any(|&b| b == b'-' || b == b'_');
    let engine = if url_safe { &URL_SAFE } else { &STANDARD };
    engine.decode(text).map_err(Base64Error)
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
    }
}
