//! The Redis commands each layout sends for one key, as an ACL names them (`memory|usage`), kept
//! beside the code that queues them ([`super::Layout::queue_probe`], [`super::Layout::queue_fetch`],
//! [`crate::redis::langgraph`]): `sweeper grants` prints them, and tests/grants.rs sweeps as a
//! user allowed exactly these, so a command added there and not here fails a test.

use super::Layout;

impl Layout {
    /// What reading a key of this layout may send: the probe (TYPE, size), the read or the
    /// fetch, the sample of a value too large to keep, and TYPE of a key of another type.
    pub fn acl_commands(self) -> Vec<&'static str> {
        let mut out = vec!["type"];
        out.extend_from_slice(match self {
            Layout::Json => &["strlen", "getrange", "get"][..],
            Layout::Hash | Layout::RawHash => &["memory|usage", "hgetall", "hkeys"],
            Layout::List | Layout::RawList => &["memory|usage", "lrange"],
            Layout::ReJson => &["memory|usage", "json.get", "json.objkeys"],
            Layout::LangGraph => &["ft.search", "get", "json.get", "json.objkeys"],
            Layout::Auto => &[],
        });
        if self == Layout::Auto {
            for l in [Layout::Json, Layout::Hash, Layout::List, Layout::ReJson] {
                out.extend(l.acl_commands());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reads_what_every_layout_it_may_meet_reads() {
        let auto = Layout::Auto.acl_commands();
        for l in [Layout::Json, Layout::Hash, Layout::List, Layout::ReJson] {
            assert!(l.acl_commands().iter().all(|c| auto.contains(c)), "{l:?}");
        }
        assert_eq!(
            Layout::Json.acl_commands(),
            ["get", "getrange", "strlen", "type"]
        );
    }
}
