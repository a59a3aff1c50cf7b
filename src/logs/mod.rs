//! What the process writes on its standard streams, so that it cannot stall or flood a sweep:
//! per-key warnings logged for the first few keys of a run only ([`per_key`]); stderr and
//! stdout written by threads of their own through queues ([`queue`]): the logs bounded, lines
//! past it dropped and counted ([`stderr`]), the output whole ([`stdout`]). Speaks to nothing
//! but stderr and stdout.

pub mod per_key;
pub mod queue;
pub mod stderr;
pub mod stdout;
