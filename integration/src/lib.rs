//! ConcordKV's multi-process and chaos tests: they run the real binaries,
//! kill them, cut their links and check that no acknowledged write is lost.
