//! Every RocksDB tuning knob the store sets, in one place.

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options};

use super::ALL_CFS;

/// Engine settings a store operator may change.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Size of the block cache shared by all column families.
    pub block_cache_bytes: usize,
    /// Memtable size per column family before it is flushed.
    pub write_buffer_bytes: usize,
    /// Flush and compaction threads; defaults to the machine's cores.
    pub max_background_jobs: i32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            max_background_jobs: cores.clamp(2, 8) as i32,
        }
    }
}

/// Database options and the column family descriptors to open with.
pub(super) fn build(config: &EngineConfig) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(config.max_background_jobs);
    db.set_bytes_per_sync(1 << 20);
    db.set_keep_log_file_num(4);
    db.set_max_total_wal_size(512 << 20);
    // Reuse obsolete WAL files instead of creating new ones: an fsync that
    // overwrites allocated blocks leaves the file's size alone, so the
    // filesystem skips a journal commit (on ext4 here: about 0.21 → 0.15 ms
    // per small synced append). Each record names its file's number, so
    // recovery stops at the old records a reused file still holds.
    db.set_recycle_log_file_num(4);

    // One cache for every column family, so memory use is bounded per store.
    let cache = Cache::new_lru_cache(config.block_cache_bytes);
    let cfs = ALL_CFS
        .iter()
        .map(|name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf.set_write_buffer_size(config.write_buffer_bytes);
            cf.set_compression_type(DBCompressionType::Lz4);
            cf.set_level_compaction_dynamic_level_bytes(true);
            ColumnFamilyDescriptor::new(*name, cf)
        })
        .collect();
    (db, cfs)
}
