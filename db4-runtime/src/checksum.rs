//! The crate's one checksum: CRC-32/IEEE (the zlib, PNG and Ethernet CRC), through `crc32fast`.
//!
//! Checksums are stored next to the data they cover (batch store entries today), so this
//! function must never change what it returns: a different CRC would make every stored blob
//! read as corrupt.

/// CRC-32/IEEE of the concatenation of `parts`, without building the concatenation.
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::crc32;

    /// The textbook bit-at-a-time CRC-32/IEEE, to pin the crate's checksum to it.
    fn reference(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn known_answers() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
        assert_eq!(crc32(&[b""]), 0);
        assert_eq!(crc32(&[b"The quick brown fox jumps over the lazy dog"]), 0x414F_A339);
    }

    #[test]
    fn parts_checksum_as_their_concatenation() {
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"", b"123", b"", b"456789", b""]), 0xCBF4_3926);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let whole = crc32(&[&data]);
        for cut in [0, 1, 7, 500, 999, 1000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32(&[a, b]), whole, "cut at {cut}");
        }
        let (a, rest) = data.split_at(3);
        let (b, c) = rest.split_at(600);
        assert_eq!(crc32(&[a, b, c]), whole);
    }

    #[test]
    fn matches_the_bitwise_definition() {
        let mut data = Vec::new();
        let mut x = 1u32;
        for len in 0..300 {
            assert_eq!(crc32(&[&data]), reference(&data), "length {len}");
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            data.push((x >> 24) as u8);
        }
    }
}
