//! Open groups by due time, in 10 ms buckets: pushing and taking are O(1) on
//! memory that stays in cache, where a binary heap over every open trace cost a
//! cache miss per level (measured: a third of the engine's time). The caller
//! checks each entry's exact due time, so nothing finishes early or late.
//!
//! Nearly every span pushes an entry, and the spans of one batch share a due
//! bucket: the bucket pushed last stays out of the map (`hot`), so the usual push
//! is a compare and a `Vec::push` instead of a tree search.

use std::collections::BTreeMap;

const BUCKET_NS: u64 = 10_000_000;

/// Entries are `(group, generation)`; a stale one is recognised by the caller.
#[derive(Default)]
pub(super) struct DueQueue {
    buckets: BTreeMap<u64, Vec<(u32, u32)>>,
    /// The bucket pushed to last, and its entries (not in `buckets`).
    hot: Option<(u64, Vec<(u32, u32)>)>,
    spare: Vec<Vec<(u32, u32)>>,
}

impl DueQueue {
    pub(super) fn push(&mut self, due_ns: u64, group: u32, generation: u32) {
        let bucket = due_ns / BUCKET_NS;
        if let Some((hot, entries)) = &mut self.hot
            && *hot == bucket
        {
            entries.push((group, generation));
            return;
        }
        self.cool();
        let mut entries = self.spare.pop().unwrap_or_default();
        entries.push((group, generation));
        self.hot = Some((bucket, entries));
    }

    /// Moves the hot bucket into the map.
    fn cool(&mut self) {
        if let Some((bucket, mut entries)) = self.hot.take() {
            let spare = &mut self.spare;
            let slot = self
                .buckets
                .entry(bucket)
                .or_insert_with(|| spare.pop().unwrap_or_default());
            if slot.is_empty() {
                std::mem::swap(slot, &mut entries);
                self.recycle(entries);
            } else {
                slot.append(&mut entries);
                self.recycle(entries);
            }
        }
    }

    /// The first bucket that may hold an entry due at `now_ns` (the caller puts
    /// back those not due yet, after it has taken all it wants).
    pub(super) fn take_due(&mut self, now_ns: u64) -> Option<Vec<(u32, u32)>> {
        if self
            .hot
            .as_ref()
            .is_some_and(|(b, _)| b.saturating_mul(BUCKET_NS) <= now_ns)
        {
            self.cool();
        }
        let (&bucket, _) = self.buckets.first_key_value()?;
        if bucket.saturating_mul(BUCKET_NS) > now_ns {
            return None;
        }
        self.buckets.remove(&bucket)
    }

    /// Hands a taken bucket back for reuse.
    pub(super) fn recycle(&mut self, mut bucket: Vec<(u32, u32)>) {
        bucket.clear();
        if self.spare.len() < 64 {
            self.spare.push(bucket);
        }
    }
}
