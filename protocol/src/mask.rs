//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key; the same call masks and unmasks.

/// XORs `data` with `mask`, where `offset` is the position of `data[0]` in the
/// frame payload, so a payload can be (un)masked in any number of chunks.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let key = rotate_key(mask, offset);
    // Sixteen and eight are multiples of four, so every 16-byte and every
    // 8-byte word sees the same key word.
    let mut key_bytes = [0u8; 16];
    for (i, k) in key_bytes.iter_mut().enumerate() {
        *k = key[i % 4];
    }
    let key_wide = u128::from_ne_bytes(key_bytes);
    let mut blocks = data.chunks_exact_mut(64);
    // Four words per turn: an XOR to memory per 8 bytes, little else.
    for block in &mut blocks {
        for word in block.chunks_exact_mut(16) {
            let bytes: &mut [u8; 16] = word.try_into().expect("a 64-byte block holds 16-byte words");
            *bytes = (u128::from_ne_bytes(*bytes) ^ key_wide).to_ne_bytes();
        }
    }
    let key_word = key_wide as u64;
    let mut words = blocks.into_remainder().chunks_exact_mut(8);
    for word in &mut words {
        let bytes: &mut [u8; 8] = word.try_into().expect("chunks_exact_mut yields 8 bytes");
        *bytes = (u64::from_ne_bytes(*bytes) ^ key_word).to_ne_bytes();
    }
    // The tail starts at a multiple of 8 bytes from `data[0]`, so `key` still lines up.
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// The key as seen from payload position `offset`.
fn rotate_key(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut key = mask;
    key.rotate_left(offset % 4);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte ^= mask[(offset + i) % 4];
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 37 + 11) as u8).collect()
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: masked "Hello".
        let mut data = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn matches_naive_for_every_length_and_offset() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..200 {
            for offset in 0..8 {
                let mut fast = sample(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, mask, offset);
                naive_mask(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn unaligned_subslices() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let original = sample(80);
        for start in 0..8 {
            let mut fast = original.clone();
            let mut slow = original.clone();
            apply_mask(&mut fast[start..], mask, 0);
            naive_mask(&mut slow[start..], mask, 0);
            assert_eq!(fast, slow, "start {start}");
        }
    }

    proptest! {
        #[test]
        fn chunked_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..300),
                                mask in any::<[u8; 4]>(),
                                cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let mut whole = data.clone();
            naive_mask(&mut whole, mask, 0);

            let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut chunked = data.clone();
            for pair in points.windows(2) {
                apply_mask(&mut chunked[pair[0]..pair[1]], mask, pair[0]);
            }
            prop_assert_eq!(&chunked, &whole);

            apply_mask(&mut chunked, mask, 0);
            prop_assert_eq!(chunked, data);
        }
    }
}
