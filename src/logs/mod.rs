//! Logging that cannot stall or flood a sweep: per-key warnings logged for the first few keys of
//! a run only ([`per_key`]), and stderr written by a thread of its own through a bounded queue
//! ([`stderr`]). Speaks to nothing but stderr.

pub mod per_key;
pub mod stderr;
