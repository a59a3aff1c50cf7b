//! The only code that speaks Redis: a node's connection ([`node`]), a cluster's primaries and
//! the routing of per-key commands ([`cluster`]), how fast they talk ([`pace`]), certificates
//! ([`tls`]), how a conversation is stored under its key ([`layout`]), Redis glob patterns
//! ([`glob`]), LangGraph threads read whole ([`langgraph`]), and the primary a Redis Sentinel
//! names ([`sentinel`]). It never uses KEYS.

pub mod cluster;
pub mod glob;
pub mod langgraph;
pub mod layout;
pub mod node;
pub mod pace;
pub mod read;
pub mod sentinel;
pub mod slots;
pub mod tls;

pub use cluster::Nodes;
pub use node::display_key;
