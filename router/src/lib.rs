//! The ConcordKV router: a region cache filled from PD and request routing to
//! region leaders with retries, used both as the Rust client library and by
//! the stateless `concord-router` proxy.
