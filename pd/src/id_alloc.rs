//! The cluster-wide id allocator. Ids are handed out from a batch whose end
//! is persisted before any id of it is issued; after a restart allocation
//! resumes past the persisted end, so no id is ever issued twice.

use crate::error::{PdServerError, Result};
use crate::storage::MetaStorage;

/// Allocates unique, increasing, non-zero ids.
pub struct IdAllocator {
    /// The last id issued (or skipped after a restart).
    last: u64,
    /// The persisted high-water mark: every id up to it may have been issued.
    end: u64,
    batch: u64,
}

impl IdAllocator {
    /// Resumes from the high-water mark in `storage`, reserving `batch` ids
    /// per disk write.
    pub fn load(storage: &MetaStorage, batch: u64) -> Result<Self> {
        if batch == 0 {
            return Err(PdServerError::Config("id batch size must be > 0".into()));
        }
        let end = storage.load_alloc_id()?;
        Ok(IdAllocator {
            last: end,
            end,
            batch,
        })
    }

    /// Issues `count` consecutive ids; returns the first.
    pub fn alloc(&mut self, storage: &MetaStorage, count: u64) -> Result<u64> {
        if count == 0 {
            return Err(PdServerError::InvalidArgument("asked for zero ids".into()));
        }
        let last = self
            .last
            .checked_add(count)
            .ok_or_else(|| PdServerError::InvalidArgument("id space exhausted".into()))?;
        if last > self.end {
            let new_end = last.saturating_add(self.batch);
            storage.save_alloc_id(new_end)?;
            self.end = new_end;
        }
        let first = self.last + 1;
        self.last = last;
        Ok(first)
    }

    /// The persisted high-water mark.
    pub fn high_water_mark(&self) -> u64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reissued_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut issued = Vec::new();
        {
            let storage = MetaStorage::open(dir.path()).unwrap();
            let mut ids = IdAllocator::load(&storage, 10).unwrap();
            for _ in 0..25 {
                issued.push(ids.alloc(&storage, 1).unwrap());
            }
            // A batch that crosses the persisted end.
            let first = ids.alloc(&storage, 8).unwrap();
            issued.extend(first..first + 8);
            assert!(ids.high_water_mark() >= first + 7);
        }
        let storage = MetaStorage::open(dir.path()).unwrap();
        let mut ids = IdAllocator::load(&storage, 10).unwrap();
        let after = ids.alloc(&storage, 1).unwrap();
        assert!(issued.iter().all(|&id| id < after), "{after} reissued");
        assert_eq!(issued[0], 1);
        let mut sorted = issued.clone();
        sorted.dedup();
        assert_eq!(sorted, issued, "ids increase without duplicates");
    }

    #[test]
    fn zero_count_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MetaStorage::open(dir.path()).unwrap();
        let mut ids = IdAllocator::load(&storage, 10).unwrap();
        assert!(ids.alloc(&storage, 0).is_err());
    }
}
