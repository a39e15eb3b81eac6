//! Settings shared by the store's micro-benchmarks.

use std::time::Duration;

use criterion::Criterion;

/// Size of the user values the benchmarks write and encode.
pub const VALUE_SIZE: usize = 256;

/// Short runs, so that `cargo bench -p concord-store` takes a few minutes.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

/// The user key number `n`: fixed width, so keys sort by number.
pub fn user_key(n: u64) -> Vec<u8> {
    format!("key-{n:012}").into_bytes()
}
