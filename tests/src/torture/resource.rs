//! The fenced resource the workload writes to (owned by the harness): per lock an append-only
//! list that accepts a write only if its token is at least the highest it has seen.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::history::Append;

#[derive(Default)]
pub struct FencedResource {
    lists: Mutex<BTreeMap<String, Vec<Append>>>,
}

impl FencedResource {
    /// Appends if `token` is not older than the newest accepted one; returns whether it did.
    pub fn append(&self, lock: &str, append: Append) -> bool {
        let mut lists = self.lists.lock().expect("resource lock");
        let list = lists.entry(lock.to_owned()).or_default();
        if list.last().is_some_and(|last| append.token < last.token) {
            return false;
        }
        list.push(append);
        true
    }

    pub fn contents(&self) -> BTreeMap<String, Vec<Append>> {
        self.lists.lock().expect("resource lock").clone()
    }
}
