//! Logging that cannot flood a sweep: per-key warnings logged for the first few keys of a run
//! only ([`per_key`]).

pub mod per_key;
