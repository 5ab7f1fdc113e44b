//! Collections that keep the state digest current as `apply` changes them.
//!
//! The digest is a multiset hash: every record (a session, a lock, a pending deadline, a
//! policy's versions, a binding) hashes on its own to `H(tag ‖ key ‖ value)` (SHA-256 of the
//! record's canonical bincode encoding, `tag` naming its collection), and a collection keeps
//! the sum of its records' hashes modulo 2^256. Adding a record adds its hash; removing it
//! subtracts it; changing it subtracts the old hash and adds the new. So the sum depends only
//! on which records the state holds, never on the order history built them in, and `apply`
//! keeps it current in O(records it touched), not O(state).
//!
//! Why a sum is safe here: the digest detects replicas that diverged through a bug, not an
//! adversary forging states. Two different record sets have sums that differ by a non-empty
//! signed sum of SHA-256 outputs; modelling SHA-256 as a random function, that difference is
//! uniform over 2^256 values, so equal digests of different states happen with probability
//! 2^-256 per comparison. (Against an adversary who chooses records, additive hashes need a
//! much larger modulus — Wagner's generalised birthday attack; see LtHash — but nobody outside
//! the replicas chooses which of two divergent states a replica holds.)
//!
//! How a change is tracked: [`Records::get_mut`], `insert` and `remove` note the key and the
//! record's hash *before* its first change in the current entry; [`Records::settle`] (run at
//! the end of every `apply`) hashes the touched records as they are now and updates the sum.
//! A record changed many times in one entry is hashed twice in all. Reads go through `Deref`
//! to the underlying ordered map, so no read can change a record behind the digest's back.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound::{Excluded, Unbounded};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sum of record hashes modulo 2^256, as four little-endian 64-bit limbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sum([u64; 4]);

impl Sum {
    pub(crate) fn add(&mut self, hash: &Sum) {
        let mut carry = false;
        for (limb, &other) in self.0.iter_mut().zip(&hash.0) {
            let (partial, overflow_a) = limb.overflowing_add(other);
            let (total, overflow_b) = partial.overflowing_add(u64::from(carry));
            *limb = total;
            carry = overflow_a || overflow_b;
        }
    }

    pub(crate) fn sub(&mut self, hash: &Sum) {
        let mut borrow = false;
        for (limb, &other) in self.0.iter_mut().zip(&hash.0) {
            let (partial, underflow_a) = limb.overflowing_sub(other);
            let (total, underflow_b) = partial.overflowing_sub(u64::from(borrow));
            *limb = total;
            borrow = underflow_a || underflow_b;
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        bytes
    }
}

/// `H(tag ‖ key ‖ value)`: SHA-256 of the tag byte and the bincode encodings (the snapshot's
/// encoding) of key and value. Keys encode length-prefixed or fixed-width, so the split between
/// key and value bytes is unambiguous.
pub(crate) fn record_hash<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    tag: u8,
    key: &K,
    value: &V,
) -> Sum {
    let mut hasher = Sha256::new();
    hasher.update([tag]);
    let config = bincode::config::standard();
    bincode::serde::encode_into_std_write(key, &mut hasher, config).expect("record key encodes");
    bincode::serde::encode_into_std_write(value, &mut hasher, config)
        .expect("record value encodes");
    let digest: [u8; 32] = hasher.finalize().into();
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(digest.chunks_exact(8)) {
        *limb = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    Sum(limbs)
}

/// How a record enters the digest: by default its whole encoding. A record whose large
/// parts are digest records of their own (a session's holds, waits and recent outcomes, see
/// `State::session_part`) hashes only the rest, so changing one part costs O(1), not
/// O(record).
pub(crate) trait Record: Serialize {
    fn digest_form(&self) -> impl Serialize + '_ {
        self
    }
}

impl Record for () {}

/// An ordered map of digest records tagged `TAG`, with the sum of their hashes. Serialized as
/// the plain map (the snapshot bytes are unchanged by the tracking). A map of `()` values is
/// a set, encoded as one.
pub(crate) struct Records<K, V, const TAG: u8> {
    map: BTreeMap<K, V>,
    sum: Sum,
    /// Keys changed in the current entry, with their record's hash before the first change
    /// (None: the key was absent). Empty between entries.
    touched: BTreeMap<K, Option<Sum>>,
    /// While a snapshot is written a chunk at a time: what it has written and the frozen
    /// values of records changed since.
    frozen: Option<Frozen<K, V>>,
}

/// A snapshot's view of one collection as it was when the snapshot began (`Records::freeze`):
/// the records past `cursor` are the live ones except where `kept` holds their value at the
/// freeze (None: absent then). A record is copied into `kept` the first time it changes after
/// the freeze, and only if the snapshot has not written it yet.
struct Frozen<K, V> {
    len: usize,
    /// Whether the length is written.
    started: bool,
    written: usize,
    /// The last key written; None before the first.
    cursor: Option<K>,
    kept: BTreeMap<K, Option<V>>,
}

impl<K, V, const TAG: u8> Records<K, V, TAG>
where
    K: Ord + Clone + Serialize,
    V: Clone + Record,
{
    /// The record under `key`, for changing it; the digest sees the change at `settle`.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.touch_present(key)?;
        self.map.get_mut(key)
    }

    /// The record under `key`, inserted from `make` if absent, for changing it.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        self.touch(&key);
        self.map.entry(key).or_insert_with(make)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.touch(&key);
        self.map.insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.touch_present(key)?;
        self.map.remove(key)
    }

    /// `touch` for a key that may be absent (nothing then changes): None if it is.
    fn touch_present<Q>(&mut self, key: &Q) -> Option<()>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let owned = self.map.get_key_value(key)?.0.clone();
        self.touch(&owned);
        Some(())
    }

    /// Called before every change of the record under `key` (present or not).
    fn touch(&mut self, key: &K) {
        if let Some(frozen) = &mut self.frozen {
            let unwritten = frozen.cursor.as_ref().is_none_or(|cursor| key > cursor);
            if unwritten && !frozen.kept.contains_key(key) {
                frozen.kept.insert(key.clone(), self.map.get(key).cloned());
            }
        }
        if self.touched.contains_key(key) {
            return;
        }
        let before = (self.map.get(key)).map(|value| record_hash(TAG, key, &value.digest_form()));
        self.touched.insert(key.clone(), before);
    }

    /// Folds the changes since the last settle into the sum: O(touched records).
    pub(crate) fn settle(&mut self) {
        for (key, before) in std::mem::take(&mut self.touched) {
            if let Some(before) = before {
                self.sum.sub(&before);
            }
            if let Some(value) = self.map.get(&key) {
                self.sum.add(&record_hash(TAG, &key, &value.digest_form()));
            }
        }
    }

    /// Whether every change is folded into the sum (true between entries).
    pub(crate) fn is_settled(&self) -> bool {
        self.touched.is_empty()
    }

    /// The sum of the records' hashes, kept current by `settle`.
    pub(crate) fn sum(&self) -> Sum {
        debug_assert!(self.is_settled(), "digest read before settle");
        self.sum
    }

    /// The sum recomputed from every record: O(collection).
    pub(crate) fn recompute(&self) -> Sum {
        let mut sum = Sum::default();
        for (key, value) in &self.map {
            sum.add(&record_hash(TAG, key, &value.digest_form()));
        }
        sum
    }

    /// Starts a snapshot of the collection as it is now. O(1).
    pub(crate) fn freeze(&mut self) {
        self.frozen = Some(Frozen {
            len: self.map.len(),
            started: false,
            written: 0,
            cursor: None,
            kept: BTreeMap::new(),
        });
    }

    /// Whether a snapshot is being written.
    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Appends to `out` the bincode encoding of the collection as it was at `freeze`: the
    /// length first, then up to `*budget` records per call (counted off `budget`). Returns true
    /// once every record is written, and ends the freeze.
    ///
    /// # Panics
    /// If the collection is not frozen.
    pub(crate) fn write_frozen(&mut self, out: &mut Vec<u8>, budget: &mut usize) -> bool {
        let frozen = self
            .frozen
            .as_mut()
            .expect("writing an unfrozen collection");
        if !frozen.started {
            encode(&(frozen.len as u64), out);
            frozen.started = true;
        }
        let after = |cursor: &Option<K>| match cursor {
            Some(key) => (Excluded(key.clone()), Unbounded),
            None => (Unbounded, Unbounded),
        };
        let mut live = self.map.range(after(&frozen.cursor)).peekable();
        let mut kept = frozen.kept.range(after(&frozen.cursor)).peekable();
        let mut last = None;
        while *budget > 0 {
            // The next key of the frozen view: the smaller of the next live and next kept key;
            // a kept value replaces the live one under the same key.
            let (key, value) = match (live.peek(), kept.peek()) {
                (None, None) => break,
                (Some((live_key, _)), Some((kept_key, _))) if kept_key <= live_key => {
                    if kept_key == live_key {
                        live.next();
                    }
                    let (key, value) = kept.next().expect("peeked");
                    (key, value.as_ref())
                }
                (Some(_), _) => {
                    let (key, value) = live.next().expect("peeked");
                    (key, Some(value))
                }
                (None, Some(_)) => {
                    let (key, value) = kept.next().expect("peeked");
                    (key, value.as_ref())
                }
            };
            last = Some(key);
            if let Some(value) = value {
                encode(key, out);
                encode(value, out);
                frozen.written += 1;
                *budget -= 1;
            }
        }
        let done = live.peek().is_none() && kept.peek().is_none();
        if let Some(key) = last.cloned() {
            // Kept values at or before the cursor are written: drop them.
            frozen.kept = frozen.kept.split_off(&key);
            frozen.kept.remove(&key);
            frozen.cursor = Some(key);
        }
        if done {
            assert_eq!(
                frozen.written, frozen.len,
                "a frozen collection wrote another number of records than it had"
            );
            self.frozen = None;
        }
        done
    }
}

impl<K, const TAG: u8> Records<K, (), TAG>
where
    K: Ord + Clone + Serialize,
{
    /// Adds `key` to the set; false if it was there.
    pub(crate) fn insert_key(&mut self, key: K) -> bool {
        self.insert(key, ()).is_none()
    }

    /// Removes `key` from the set; false if it was not there.
    pub(crate) fn remove_key(&mut self, key: &K) -> bool {
        self.remove(key).is_some()
    }
}

/// Appends the bincode encoding (the snapshot's) of `value`.
fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("snapshot record encodes");
}

impl<K, V, const TAG: u8> Deref for Records<K, V, TAG> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}

impl<'a, K, V, const TAG: u8> IntoIterator for &'a Records<K, V, TAG> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K, V, const TAG: u8> Default for Records<K, V, TAG> {
    fn default() -> Self {
        Records {
            map: BTreeMap::new(),
            sum: Sum::default(),
            touched: BTreeMap::new(),
            frozen: None,
        }
    }
}

/// A clone is not part of a snapshot being written.
impl<K: Clone, V: Clone, const TAG: u8> Clone for Records<K, V, TAG> {
    fn clone(&self) -> Self {
        Records {
            map: self.map.clone(),
            sum: self.sum,
            touched: self.touched.clone(),
            frozen: None,
        }
    }
}

impl<K: PartialEq, V: PartialEq, const TAG: u8> PartialEq for Records<K, V, TAG> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Eq, V: Eq, const TAG: u8> Eq for Records<K, V, TAG> {}

impl<K: fmt::Debug, V: fmt::Debug, const TAG: u8> fmt::Debug for Records<K, V, TAG> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

impl<K: Serialize, V: Serialize, const TAG: u8> Serialize for Records<K, V, TAG> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de, K, V, const TAG: u8> Deserialize<'de> for Records<K, V, TAG>
where
    K: Ord + Clone + Serialize + Deserialize<'de>,
    V: Clone + Record + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::deserialize(deserializer)?;
        let mut records = Records {
            map,
            ..Records::default()
        };
        records.sum = records.recompute();
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Record for u32 {}

    #[test]
    fn sum_adds_and_subtracts_modulo_2_256_with_carries() {
        let mut sum = Sum([u64::MAX, u64::MAX, 0, 0]);
        sum.add(&Sum([1, 0, 0, 0]));
        assert_eq!(sum, Sum([0, 0, 1, 0]));
        sum.sub(&Sum([1, 0, 0, 0]));
        assert_eq!(sum, Sum([u64::MAX, u64::MAX, 0, 0]));
        let mut wrap = Sum([u64::MAX; 4]);
        wrap.add(&Sum([1, 0, 0, 0]));
        assert_eq!(wrap, Sum::default());
        wrap.sub(&Sum([1, 0, 0, 0]));
        assert_eq!(wrap, Sum([u64::MAX; 4]));
    }

    #[test]
    fn order_of_history_does_not_change_the_sum() {
        let mut a: Records<String, u32, 9> = Records::default();
        let mut b: Records<String, u32, 9> = Records::default();
        for (key, value) in [("x", 1), ("y", 2), ("z", 3)] {
            a.insert(key.to_string(), value);
        }
        a.settle();
        for (key, value) in [("z", 3), ("w", 7), ("x", 5), ("y", 2)] {
            b.insert(key.to_string(), value);
            b.settle();
        }
        *b.get_mut("x").unwrap() = 1;
        b.remove("w");
        b.settle();
        assert_eq!(a, b);
        assert_eq!(a.sum(), b.sum());
        assert_eq!(a.sum(), a.recompute());
        *a.get_mut("y").unwrap() = 3;
        a.settle();
        assert_ne!(a.sum(), b.sum());
        assert_eq!(a.sum(), a.recompute());
    }
}
