//! [`VecMap`]: an ordered map kept as a sorted `Vec`, for the small maps the state holds once per
//! lock or session (a lock's holders: one for an exclusive lock, at most
//! `HOLDERS_PER_LOCK_MAX`; a session's labels, holds and recent outcomes).
//!
//! A `BTreeMap` allocates a whole leaf node (room for 11 entries) for its first entry: for a
//! lock's single holder that was about 1 KB, two thirds of the memory a held lock cost
//! (`holdfast-bench scale`, 1M held locks). A `Vec` holds exactly its entries.
//!
//! Iteration is in key order, as with a `BTreeMap`, and the serde form is the same (a map), so
//! snapshot bytes and digests are unchanged.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    /// Sorted by key, keys unique.
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn new() -> Self {
        VecMap::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the replaced value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                // Grow by one, not by doubling: most of these maps hold one entry for life.
                self.entries.reserve_exact(1);
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        let (_, value) = self.entries.remove(i);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(value)
    }

    /// Removes and returns the entry with the smallest key.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        if self.entries.is_empty() {
            return None;
        }
        let first = self.entries.remove(0);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(first)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// Later entries win over earlier ones with the same key, as with a `BTreeMap`.
impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: equal keys stay in arrival order, and the last of each run is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept.shrink_to_fit();
        VecMap { entries: kept }
    }
}

impl<K: Ord, V> std::ops::Index<&K> for VecMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for key in VecMap")
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with keys in strictly increasing order")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // The size hint comes from the input: cap what it may reserve.
                let mut entries: Vec<(K, V)> =
                    Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<K, V>()? {
                    if entries.last().is_some_and(|(last, _)| *last >= k) {
                        // Every encoder of ours writes keys in order; anything else is a
                        // damaged or foreign snapshot.
                        return Err(serde::de::Error::custom(
                            "map keys are not in strictly increasing order",
                        ));
                    }
                    entries.push((k, v));
                }
                entries.shrink_to_fit();
                Ok(VecMap { entries })
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::VecMap;

    #[test]
    fn behaves_like_a_btree_map_and_encodes_the_same() {
        let mut ours = VecMap::new();
        let mut reference = BTreeMap::new();
        // A fixed pseudo-random walk of inserts, replacements and removals.
        let mut x: u64 = 7;
        for _ in 0..2_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (x >> 33) % 50;
            if (x >> 20).is_multiple_of(3) {
                assert_eq!(ours.remove(&key), reference.remove(&key));
            } else {
                assert_eq!(ours.insert(key, x), reference.insert(key, x));
            }
            assert_eq!(ours.len(), reference.len());
            assert_eq!(ours.get(&key), reference.get(&key));
            assert_eq!(ours.contains_key(&key), reference.contains_key(&key));
        }
        assert!(ours.iter().eq(reference.iter()));
        let config = bincode::config::standard();
        let a = bincode::serde::encode_to_vec(&ours, config).unwrap();
        let b = bincode::serde::encode_to_vec(&reference, config).unwrap();
        assert_eq!(a, b, "same bytes as a BTreeMap");
        let (back, _): (VecMap<u64, u64>, _) =
            bincode::serde::decode_from_slice(&a, config).unwrap();
        assert_eq!(back, ours);
    }

    #[test]
    fn refuses_keys_out_of_order() {
        let config = bincode::config::standard();
        let pairs: Vec<(u64, u64)> = vec![(2, 0), (1, 0)];
        // A map and a sequence of pairs encode alike in bincode.
        let bytes = bincode::serde::encode_to_vec(&pairs, config).unwrap();
        let decoded: Result<(VecMap<u64, u64>, usize), _> =
            bincode::serde::decode_from_slice(&bytes, config);
        assert!(decoded.is_err());
    }
}
