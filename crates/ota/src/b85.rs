//! Base85 text for chunk data in pmesh's own frames: 5 characters per 4 bytes (1.25×, against
//! base64's 1.33×), using the Z85 alphabet, which has no `"` or `\`, so the text goes into a
//! JSON string verbatim and the frame stays valid, NUL-free, printable-ASCII JSON that stock
//! nodes relay unchanged.
//!
//! Hand-written (about 60 lines) because the crates we found either need std (`z85`) or only
//! take inputs whose length is a multiple of 4; chunks have any length. A tail of `n` bytes
//! (1–3) is written as `n + 1` characters, the way Ascii85 does.

use alloc::vec::Vec;
use core::fmt;

const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

const fn decode_table() -> [u8; 256] {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 85 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
}

const DECODE: [u8; 256] = decode_table();

/// Why base85 text could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B85Error {
    /// A character outside the alphabet, at this offset.
    InvalidChar(usize),
    /// A single character left over at the end (a tail needs at least two).
    BadLength,
    /// A group encodes a value above 2^32−1, at this offset.
    Overflow(usize),
}

impl fmt::Display for B85Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            B85Error::InvalidChar(at) => write!(f, "invalid base85 character at offset {at}"),
            B85Error::BadLength => f.write_str("invalid base85 length (1 mod 5)"),
            B85Error::Overflow(at) => write!(f, "base85 group at offset {at} overflows 32 bits"),
        }
    }
}

/// Length of the text for `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n / 4 * 5 + if n.is_multiple_of(4) { 0 } else { n % 4 + 1 }
}

/// Appends the base85 text of `data` to `out`.
pub fn encode_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(encoded_len(data.len()));
    for group in data.chunks(4) {
        let mut word = [0u8; 4];
        word[..group.len()].copy_from_slice(group);
        let mut v = u32::from_be_bytes(word);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = ALPHABET[(v % 85) as usize];
            v /= 85;
        }
        out.extend_from_slice(&digits[..group.len() + 1]);
    }
}

/// The base85 text of `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(data, &mut out);
    out
}

/// Decodes base85 text.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, B85Error> {
    if text.len() % 5 == 1 {
        return Err(B85Error::BadLength);
    }
    let mut out = Vec::with_capacity(text.len() / 5 * 4 + 4);
    for (g, group) in text.chunks(5).enumerate() {
        let mut v: u64 = 0;
        for i in 0..5 {
            // A short tail is padded with the highest digit, so truncation rounds back.
            let d = match group.get(i) {
                Some(&c) => match DECODE[c as usize] {
                    0xff => return Err(B85Error::InvalidChar(g * 5 + i)),
                    d => d,
                },
                None => 84,
            };
            v = v * 85 + u64::from(d);
        }
        if v > u64::from(u32::MAX) {
            return Err(B85Error::Overflow(g * 5));
        }
        out.extend_from_slice(&(v as u32).to_be_bytes()[..group.len() - 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_tail_length() {
        let data: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x80]).collect();
        for n in 0..data.len() {
            let text = encode(&data[..n]);
            assert_eq!(text.len(), encoded_len(n));
            assert!(!text.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20));
            assert_eq!(decode(&text).unwrap(), &data[..n], "n={n}");
        }
    }

    #[test]
    fn known_vector_and_errors() {
        // The Z85 specification's example: 86 4F D2 6F B5 59 F7 5B -> "HelloWorld".
        assert_eq!(
            encode(&[0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]),
            b"HelloWorld"
        );
        assert_eq!(decode(b"Hello\"orld"), Err(B85Error::InvalidChar(5)));
        assert_eq!(decode(b"Hello1"), Err(B85Error::BadLength));
        assert_eq!(decode(b"#####"), Err(B85Error::Overflow(0)));
    }
}
