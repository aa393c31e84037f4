//! A read-only `key → u32` map for the encoder's hottest lookups (a piece's id by its
//! bytes as one or two integers; a pair's merge rank).
//!
//! Profiling the encoder on English prose showed most of a lookup in a `HashMap` to be
//! two cache misses: the control bytes, then the slot. Here a key and its value share
//! one 16-byte slot, found by a multiplicative hash and linear probing at a load of at
//! most one half, so a lookup is about one miss. The map is built once from the vocab
//! and never changes; text only reads it, so no input can lengthen a probe.

/// The value that marks an empty slot (token ids and ranks are below it).
const EMPTY: u32 = u32::MAX;

/// A key the map can hold: compared whole, and mixed into one word for the hash.
pub trait FlatKey: Copy + Eq + Default {
    fn mix(self) -> u64;
}

impl FlatKey for u64 {
    #[inline]
    fn mix(self) -> u64 {
        self
    }
}

/// 9 to 16 bytes as two little-endian words.
impl FlatKey for [u64; 2] {
    #[inline]
    fn mix(self) -> u64 {
        // the multiply spreads the second word's bits before they meet the first's
        self[0] ^ self[1].wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31)
    }
}

/// 16 bytes for a `u64` key (a slot never straddles a cache line), 32 for two words.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot<K> {
    key: K,
    value: u32,
}

pub struct FlatMap<K = u64> {
    slots: Box<[Slot<K>]>,
    /// 64 minus log2 of the number of slots: the hash keeps the top bits.
    shift: u32,
    len: usize,
}

impl<K: FlatKey> FlatMap<K> {
    /// A map of `entries`; for a key given twice the first value is kept. Entries whose
    /// value is `u32::MAX` are left out (no id or rank is that large).
    pub fn new(entries: impl IntoIterator<Item = (K, u32)>) -> Self {
        let entries: Vec<(K, u32)> = entries.into_iter().filter(|e| e.1 != EMPTY).collect();
        let slots_wanted = (entries.len() * 2).next_power_of_two().max(16);
        let empty = Slot {
            key: K::default(),
            value: EMPTY,
        };
        let mut map = Self {
            slots: vec![empty; slots_wanted].into_boxed_slice(),
            shift: 64 - slots_wanted.trailing_zeros(),
            len: 0,
        };
        let mask = slots_wanted - 1;
        for (key, value) in entries {
            let mut i = map.index(key);
            loop {
                let slot = &mut map.slots[i];
                if slot.value == EMPTY {
                    *slot = Slot { key, value };
                    map.len += 1;
                    break;
                }
                if slot.key == key {
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        map
    }

    #[inline]
    fn index(&self, key: K) -> usize {
        // Fibonacci hashing: the multiplication carries every key bit into the top ones
        (key.mix().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline]
    pub fn get(&self, key: K) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.index(key);
        // ends: at most half the slots are full
        loop {
            let slot = self.slots[i];
            if slot.value == EMPTY {
                return None;
            }
            if slot.key == key {
                return Some(slot.value);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hash_map() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut reference = HashMap::new();
        let mut entries = Vec::new();
        for i in 0..50_000u32 {
            // small keys, keys differing only in high bits, and random ones
            let key = match i % 3 {
                0 => u64::from(i),
                1 => u64::from(i) << 40,
                _ => next(),
            };
            entries.push((key, i));
            reference.entry(key).or_insert(i);
        }
        entries.push((0, 99)); // a repeated key: the first value stays
        entries.push((12345, EMPTY)); // left out
        let map = FlatMap::new(entries);
        assert_eq!(map.len(), reference.len());
        for (&key, &value) in &reference {
            assert_eq!(map.get(key), Some(value));
        }
        assert_eq!(map.get(0), Some(0));
        for _ in 0..50_000 {
            let key = next();
            assert_eq!(map.get(key), reference.get(&key).copied());
        }
        let empty = FlatMap::new(std::iter::empty());
        assert!(empty.is_empty() && empty.get(0).is_none());
    }
}
