//! The storage engine: ONE RocksDB instance per store, shared by every region.
//!
//! Column families: [`CF_DEFAULT`], [`CF_LOCK`] and [`CF_WRITE`] hold data
//! (see [`crate::keys`] for how keys are laid out) and [`CF_RAFT`] holds raft
//! logs and local states. Writes go through a [`WriteBatch`], atomically and
//! optionally synced; reads come from the live engine or from a consistent
//! [`Snapshot`], both through [`Reader`].

mod options;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    DBRawIteratorWithThreadMode, ReadOptions, ReadTier, SnapshotWithThreadMode, WriteOptions, DB,
};

pub use options::EngineConfig;

/// Raw KV values and, later, transaction data.
pub const CF_DEFAULT: &str = "default";
/// Transaction locks.
pub const CF_LOCK: &str = "lock";
/// Transaction commit records.
pub const CF_WRITE: &str = "write";
/// Raft logs and local (metadata) states.
pub const CF_RAFT: &str = "raft";
/// Every column family of the engine.
pub const ALL_CFS: [&str; 4] = [CF_DEFAULT, CF_LOCK, CF_WRITE, CF_RAFT];
/// The column families that hold region data (everything but raft state).
pub const DATA_CFS: [&str; 3] = [CF_DEFAULT, CF_LOCK, CF_WRITE];

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another process (or another engine in this one) has the directory open.
    #[error("data directory {0} is in use by another process (its RocksDB LOCK is held)")]
    DirectoryInUse(PathBuf),
    /// A column family name that is not one of [`ALL_CFS`].
    #[error("unknown column family {0:?}")]
    UnknownCf(String),
    /// Any other RocksDB failure.
    #[error("rocksdb error: {0}")]
    RocksDb(#[from] rocksdb::Error),
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Approximate size and key count of a key range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeStats {
    /// Bytes of keys and values.
    pub size: u64,
    /// Number of entries.
    pub keys: u64,
}

impl std::ops::Add for RangeStats {
    type Output = RangeStats;

    fn add(self, other: RangeStats) -> RangeStats {
        RangeStats {
            size: self.size + other.size,
            keys: self.keys + other.keys,
        }
    }
}

/// The store's one RocksDB instance. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the engine in `path`.
    pub fn open(path: &Path, config: &EngineConfig) -> Result<Engine> {
        let (opts, cfs) = options::build(config);
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            // RocksDB reports a held LOCK file as an IO error mentioning it.
            if e.to_string().contains("lock") || e.to_string().contains("LOCK") {
                EngineError::DirectoryInUse(path.to_path_buf())
            } else {
                EngineError::RocksDb(e)
            }
        })?;
        Ok(Engine {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// The directory the engine lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An empty write batch for this engine.
    pub fn write_batch(&self) -> WriteBatch {
        WriteBatch {
            inner: rocksdb::WriteBatch::default(),
            db: self.db.clone(),
        }
    }

    /// Applies `batch` atomically. With `sync`, returns only after the WAL
    /// is on disk, so the write survives a crash of the process or machine.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch.inner, &opts)?;
        Ok(())
    }

    /// A consistent point-in-time view of the whole engine.
    pub fn snapshot(&self) -> Snapshot {
        let snap = self.db.snapshot();
        // SAFETY: the snapshot borrows the database, which `Snapshot` keeps
        // alive through its own `Arc`; the field order of `Snapshot` drops the
        // snapshot before that `Arc`.
        let snap: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(snap) };
        Snapshot {
            snap,
            db: self.db.clone(),
        }
    }

    /// Approximate size and key count of `[start, end)` in `cf`: the SST
    /// files' share ([`Engine::file_stats`]) plus the memtable entries,
    /// counted exactly (a scan of the range's memtable entries).
    pub fn approximate_range_stats(
        &self,
        cf: &str,
        start: &[u8],
        end: &[u8],
    ) -> Result<RangeStats> {
        Ok(self.file_stats(cf, start, end)? + self.memtable_stats(cf, start, end)?)
    }

    /// Size and key count of `[start, end)` in `cf`'s SST files, from the
    /// files' metadata (sizes as stored, compressed): files inside the range
    /// count whole, files straddling a bound count half.
    pub fn file_stats(&self, cf: &str, start: &[u8], end: &[u8]) -> Result<RangeStats> {
        let mut stats = RangeStats::default();
        for file in self.db.live_files()? {
            if file.column_family_name != cf {
                continue;
            }
            let (Some(first), Some(last)) = (file.start_key.as_deref(), file.end_key.as_deref())
            else {
                continue;
            };
            if last < start || first >= end {
                continue;
            }
            let share = if first >= start && last < end { 1 } else { 2 };
            stats.size += file.size as u64 / share;
            stats.keys += file.num_entries / share;
        }
        Ok(stats)
    }

    /// A range's memtable entries, counted exactly (a scan).
    fn memtable_stats(&self, cf: &str, start: &[u8], end: &[u8]) -> Result<RangeStats> {
        let mut stats = RangeStats::default();
        let mut opts = ReadOptions::default();
        opts.set_read_tier(ReadTier::Memtable);
        scan_with(&self.db, cf, opts, start, end, false, |k, v| {
            stats.size += (k.len() + v.len()) as u64;
            stats.keys += 1;
            true
        })?;
        Ok(stats)
    }

    /// Bytes and entries in all of `cf`'s memtables, from RocksDB's
    /// counters (no scan). The bytes include the memtables' own overhead.
    pub fn memtable_totals(&self, cf: &str) -> Result<RangeStats> {
        let handle = cf_handle(&self.db, cf)?;
        let property = |name: &str| -> Result<u64> {
            Ok(self.db.property_int_value_cf(handle, name)?.unwrap_or(0))
        };
        Ok(RangeStats {
            size: property("rocksdb.cur-size-all-mem-tables")?,
            keys: property("rocksdb.num-entries-active-mem-table")?
                + property("rocksdb.num-entries-imm-mem-tables")?,
        })
    }

    /// Flushes the memtables of every column family to SST files.
    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(cf_handle(&self.db, cf)?)?;
        }
        Ok(())
    }
}

/// Reads shared by the live engine and its snapshots.
pub trait Reader {
    /// The value of `key` in `cf`, if any.
    fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the pairs of `[start, end)` in `cf` in key order (descending
    /// with `reverse`) until `f` returns false.
    fn scan_cf<F>(&self, cf: &str, start: &[u8], end: &[u8], reverse: bool, f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> bool;
}

impl Reader for Engine {
    fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(cf_handle(&self.db, cf)?, key)?)
    }

    fn scan_cf<F>(&self, cf: &str, start: &[u8], end: &[u8], reverse: bool, f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> bool,
    {
        scan_with(&self.db, cf, ReadOptions::default(), start, end, reverse, f)
    }
}

/// A consistent point-in-time view of the engine; later writes are invisible
/// to it. Owns a handle on the database, so it may outlive the [`Engine`].
pub struct Snapshot {
    // Dropped before `db`: see `Engine::snapshot`.
    snap: SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

// SAFETY: a RocksDB snapshot is an immutable sequence number, safe to read
// from any thread; the database itself is `Send + Sync`.
unsafe impl Send for Snapshot {}
// SAFETY: as above.
unsafe impl Sync for Snapshot {}

impl Snapshot {
    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.snap);
        opts
    }
}

impl Reader for Snapshot {
    fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let handle = cf_handle(&self.db, cf)?;
        Ok(self.db.get_cf_opt(handle, key, &self.read_options())?)
    }

    fn scan_cf<F>(&self, cf: &str, start: &[u8], end: &[u8], reverse: bool, f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> bool,
    {
        scan_with(&self.db, cf, self.read_options(), start, end, reverse, f)
    }
}

/// A set of writes applied atomically by [`Engine::write`].
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
    db: Arc<DB>,
}

impl WriteBatch {
    /// Sets `key` to `value` in `cf`.
    pub fn put_cf(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put_cf(cf_handle(&self.db, cf)?, key, value);
        Ok(())
    }

    /// Removes `key` from `cf`.
    pub fn delete_cf(&mut self, cf: &str, key: &[u8]) -> Result<()> {
        self.inner.delete_cf(cf_handle(&self.db, cf)?, key);
        Ok(())
    }

    /// Removes every key of `[start, end)` from `cf`.
    pub fn delete_range_cf(&mut self, cf: &str, start: &[u8], end: &[u8]) -> Result<()> {
        self.inner
            .delete_range_cf(cf_handle(&self.db, cf)?, start, end);
        Ok(())
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

fn cf_handle<'a>(db: &'a DB, cf: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(cf)
        .ok_or_else(|| EngineError::UnknownCf(cf.to_string()))
}

fn scan_with<F>(
    db: &DB,
    cf: &str,
    mut opts: ReadOptions,
    start: &[u8],
    end: &[u8],
    reverse: bool,
    mut f: F,
) -> Result<()>
where
    F: FnMut(&[u8], &[u8]) -> bool,
{
    if start >= end {
        return Ok(());
    }
    opts.set_iterate_lower_bound(start.to_vec());
    opts.set_iterate_upper_bound(end.to_vec());
    let mut iter: DBRawIteratorWithThreadMode<'_, DB> =
        db.raw_iterator_cf_opt(cf_handle(db, cf)?, opts);
    if reverse {
        iter.seek_to_last();
    } else {
        iter.seek_to_first();
    }
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        if !f(k, v) {
            return Ok(());
        }
        if reverse {
            iter.prev();
        } else {
            iter.next();
        }
    }
    iter.status()?;
    Ok(())
}
