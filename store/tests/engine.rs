//! Engine tests against a real RocksDB in a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use concord_store::engine::{
    Engine, EngineConfig, EngineError, Reader, ALL_CFS, CF_DEFAULT, CF_RAFT, CF_WRITE,
};

fn open(dir: &Path) -> Engine {
    Engine::open(dir, &EngineConfig::default()).expect("open engine")
}

fn put(engine: &Engine, cf: &str, key: &[u8], value: &[u8]) {
    let mut wb = engine.write_batch();
    wb.put_cf(cf, key, value).unwrap();
    engine.write(wb, false).unwrap();
}

fn collect(
    reader: &impl Reader,
    cf: &str,
    start: &[u8],
    end: &[u8],
    reverse: bool,
) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    reader
        .scan_cf(cf, start, end, reverse, |k, _| {
            keys.push(k.to_vec());
            true
        })
        .unwrap();
    keys
}

#[test]
fn every_column_family_is_separate_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for cf in ALL_CFS {
        put(&engine, cf, b"k", cf.as_bytes());
    }
    for cf in ALL_CFS {
        assert_eq!(
            engine.get_cf(cf, b"k").unwrap().as_deref(),
            Some(cf.as_bytes())
        );
    }
    let mut wb = engine.write_batch();
    wb.delete_cf(CF_WRITE, b"k").unwrap();
    engine.write(wb, false).unwrap();
    assert_eq!(engine.get_cf(CF_WRITE, b"k").unwrap(), None);
    assert!(engine.get_cf(CF_DEFAULT, b"k").unwrap().is_some());
    assert!(matches!(
        engine.get_cf("nope", b"k"),
        Err(EngineError::UnknownCf(_))
    ));
    let mut wb = engine.write_batch();
    assert!(matches!(
        wb.put_cf("nope", b"k", b"v"),
        Err(EngineError::UnknownCf(_))
    ));
}

#[test]
fn a_batch_is_visible_all_at_once_or_not_at_all() {
    const KEYS: usize = 16;
    const GENERATIONS: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for gen in 1..=GENERATIONS {
                let mut wb = engine.write_batch();
                for i in 0..KEYS {
                    // Spread each batch over two column families.
                    let cf = if i % 2 == 0 { CF_DEFAULT } else { CF_RAFT };
                    wb.put_cf(cf, format!("key{i:02}").as_bytes(), &gen.to_be_bytes())
                        .unwrap();
                }
                engine.write(wb, false).unwrap();
            }
        })
    };
    let mut seen_last = false;
    while !seen_last {
        let snap = engine.snapshot();
        let gens: Vec<Option<Vec<u8>>> = (0..KEYS)
            .map(|i| {
                let cf = if i % 2 == 0 { CF_DEFAULT } else { CF_RAFT };
                snap.get_cf(cf, format!("key{i:02}").as_bytes()).unwrap()
            })
            .collect();
        assert!(
            gens.windows(2).all(|w| w[0] == w[1]),
            "torn batch: {gens:?}"
        );
        seen_last = gens[0].as_deref() == Some(&GENERATIONS.to_be_bytes()[..]);
    }
    writer.join().unwrap();
}

#[test]
fn snapshot_reads_ignore_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    put(&engine, CF_DEFAULT, b"a", b"1");
    put(&engine, CF_DEFAULT, b"b", b"1");
    let snap = engine.snapshot();
    put(&engine, CF_DEFAULT, b"a", b"2");
    put(&engine, CF_DEFAULT, b"c", b"2");
    let mut wb = engine.write_batch();
    wb.delete_cf(CF_DEFAULT, b"b").unwrap();
    engine.write(wb, false).unwrap();

    assert_eq!(
        snap.get_cf(CF_DEFAULT, b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        snap.get_cf(CF_DEFAULT, b"b").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(snap.get_cf(CF_DEFAULT, b"c").unwrap(), None);
    assert_eq!(
        collect(&snap, CF_DEFAULT, b"a", b"z", false),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        engine.get_cf(CF_DEFAULT, b"a").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    // The snapshot outlives the engine handle it came from.
    drop(engine);
    assert_eq!(
        snap.get_cf(CF_DEFAULT, b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn range_scans_honour_bounds_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for k in ["a", "b", "c", "d", "e"] {
        put(&engine, CF_DEFAULT, k.as_bytes(), b"v");
    }
    put(&engine, CF_WRITE, b"c", b"other cf");
    let keys = |v: &[&str]| v.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(
        collect(&engine, CF_DEFAULT, b"b", b"d", false),
        keys(&["b", "c"])
    );
    assert_eq!(
        collect(&engine, CF_DEFAULT, b"b", b"d", true),
        keys(&["c", "b"])
    );
    assert_eq!(
        collect(&engine, CF_DEFAULT, b"", b"\xff", true),
        keys(&["e", "d", "c", "b", "a"])
    );
    assert_eq!(
        collect(&engine, CF_DEFAULT, b"bb", b"dd", false),
        keys(&["c", "d"])
    );
    assert!(collect(&engine, CF_DEFAULT, b"d", b"b", false).is_empty());
    assert!(collect(&engine, CF_DEFAULT, b"c", b"c", true).is_empty());

    let mut first_two = Vec::new();
    engine
        .scan_cf(CF_DEFAULT, b"a", b"z", true, |k, _| {
            first_two.push(k.to_vec());
            first_two.len() < 2
        })
        .unwrap();
    assert_eq!(first_two, keys(&["e", "d"]));
}

#[test]
fn delete_range_removes_exactly_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for i in 0..100u32 {
        put(&engine, CF_DEFAULT, format!("k{i:03}").as_bytes(), b"v");
        put(&engine, CF_RAFT, format!("k{i:03}").as_bytes(), b"v");
    }
    let mut wb = engine.write_batch();
    wb.delete_range_cf(CF_DEFAULT, b"k010", b"k090").unwrap();
    engine.write(wb, false).unwrap();
    let left = collect(&engine, CF_DEFAULT, b"", b"\xff", false);
    assert_eq!(left.len(), 20);
    assert_eq!(left[9], b"k009".to_vec());
    assert_eq!(left[10], b"k090".to_vec());
    assert_eq!(collect(&engine, CF_RAFT, b"", b"\xff", false).len(), 100);
}

#[test]
fn approximate_size_grows_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let stats = |start: &[u8], end: &[u8]| {
        engine
            .approximate_range_stats(CF_DEFAULT, start, end)
            .unwrap()
    };
    assert_eq!(stats(b"a", b"b").keys, 0);
    // Incompressible values, so that file sizes reflect the data written.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut value = move || {
        (0..128)
            .flat_map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()
            })
            .collect::<Vec<u8>>()
    };
    let mut fill = |prefix: &str| {
        for i in 0..1000u32 {
            put(
                &engine,
                CF_DEFAULT,
                format!("{prefix}{i:04}").as_bytes(),
                &value(),
            );
        }
    };
    fill("a");
    let in_memtable = stats(b"a", b"b");
    assert_eq!(in_memtable.keys, 1000);
    assert!(in_memtable.size >= 1000 * 1024);
    let totals = engine.memtable_totals(CF_DEFAULT).unwrap();
    assert!(
        totals.keys >= 1000 && totals.size >= in_memtable.size,
        "{totals:?}"
    );
    engine.flush().unwrap();
    let flushed = stats(b"a", b"b");
    assert!(
        flushed.keys >= 500 && flushed.size > 100 * 1024,
        "{flushed:?}"
    );
    fill("b");
    let both = stats(b"a", b"c");
    assert!(
        both.size > flushed.size && both.keys > flushed.keys,
        "{both:?} vs {flushed:?}"
    );
    assert!(stats(b"x", b"y").size < flushed.size / 10);
}

/// The number in an `ack N` line of a child. libtest may print its own
/// text before the child's on the same line.
fn ack(line: &str) -> Option<u64> {
    line.rsplit_once("ack ")?.1.trim().parse().ok()
}

/// Runs the helper test `name` of this binary as a child process.
fn spawn_child(name: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CONCORD_TEST_ENGINE_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child test process")
}

fn child_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("CONCORD_TEST_ENGINE_DIR").map(Into::into)
}

/// Writes keys from `first` on, one synced batch at a time, and prints each
/// key once its write has returned, until the parent kills the process.
fn write_synced_forever(engine: &Engine, first: u64) {
    for i in first.. {
        let mut wb = engine.write_batch();
        wb.put_cf(CF_DEFAULT, &i.to_be_bytes(), &i.to_le_bytes())
            .unwrap();
        wb.put_cf(CF_RAFT, &i.to_be_bytes(), b"meta").unwrap();
        engine.write(wb, true).unwrap();
        println!("ack {i}");
    }
}

/// Kills the child test `name` (SIGKILL) once it acknowledged 300 writes and
/// returns every key it acknowledged.
fn acked_before_sigkill(name: &str, dir: &Path) -> Vec<u64> {
    let mut child = spawn_child(name, dir);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = lines.next().expect("child stopped early").unwrap();
        acked.extend(ack(&line));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the child printed before it died was acknowledged too.
    acked.extend(lines.map_while(Result::ok).filter_map(|l| ack(&l)));
    acked
}

fn assert_all_present(engine: &Engine, acked: &[u64]) {
    for i in acked {
        assert_eq!(
            engine.get_cf(CF_DEFAULT, &i.to_be_bytes()).unwrap(),
            Some(i.to_le_bytes().to_vec()),
            "acknowledged write {i} lost"
        );
        assert!(engine.get_cf(CF_RAFT, &i.to_be_bytes()).unwrap().is_some());
    }
}

/// Child process: synced writes from a fresh engine until killed.
#[test]
#[ignore = "helper process of synced_writes_survive_sigkill"]
fn child_writes_synced_forever() {
    let Some(dir) = child_dir() else { return };
    write_synced_forever(&open(&dir), 0);
}

#[test]
fn synced_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked = acked_before_sigkill("child_writes_synced_forever", dir.path());
    assert_all_present(&open(dir.path()), &acked);
}

/// Bytes the recycled-WAL child writes before its first flush.
const OLD_WAL_BYTES: u64 = 4 << 20;

/// The length of the engine's newest WAL file in `dir`.
fn current_wal_len(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| {
            p.file_stem()
                .unwrap()
                .to_string_lossy()
                .parse::<u64>()
                .unwrap()
        })
        .expect("a WAL file");
    std::fs::metadata(newest).unwrap().len()
}

/// Child process: fills a WAL and flushes until the engine writes into that
/// WAL again, recycled (its tail still holds the old records), then writes
/// synced until killed.
#[test]
#[ignore = "helper process of synced_writes_into_a_recycled_wal_survive_sigkill"]
fn child_writes_synced_into_a_recycled_wal() {
    let Some(dir) = child_dir() else { return };
    let engine = open(&dir);
    let filler = vec![7u8; 64 << 10];
    for i in 0..OLD_WAL_BYTES / filler.len() as u64 {
        let mut wb = engine.write_batch();
        wb.put_cf(CF_WRITE, &i.to_be_bytes(), &filler).unwrap();
        engine.write(wb, true).unwrap();
    }
    // Each flush moves to a new WAL; once the first is obsolete, the next
    // switch reuses it.
    for _ in 0..10 {
        engine.flush().unwrap();
        if current_wal_len(&dir) >= OLD_WAL_BYTES {
            write_synced_forever(&engine, 1 << 32);
        }
        put(&engine, CF_WRITE, b"next wal", b"x");
    }
    panic!("the engine never recycled a WAL");
}

/// The WAL recycling the engine does for cheaper fsyncs (see
/// `engine::options`) must not cost acknowledged writes: recovery reads the
/// recycled file up to its new records' end, not into the old ones.
#[test]
fn synced_writes_into_a_recycled_wal_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked = acked_before_sigkill("child_writes_synced_into_a_recycled_wal", dir.path());
    assert_all_present(&open(dir.path()), &acked);
}

/// Child process: holds the engine open until the parent kills it.
#[test]
#[ignore = "helper process of a_held_directory_gives_a_clear_error"]
fn child_holds_engine_open() {
    let Some(dir) = child_dir() else { return };
    let _engine = open(&dir);
    println!("opened");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_held_directory_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("child_holds_engine_open", dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().ends_with("opened")),
        "child did not open the engine"
    );

    let err = Engine::open(dir.path(), &EngineConfig::default()).unwrap_err();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(err, EngineError::DirectoryInUse(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("in use"), "{message}");
    // Once the holder is gone the directory opens again.
    open(dir.path());
}
