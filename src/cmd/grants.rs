//! `sweeper grants COMMAND`: what a command needs, from one place: the Redis ACL rule of the
//! commands it sends (by layout, cluster, shard and `--save-idle`: [`Layout::acl_commands`]) and
//! the PostgreSQL statements that give its role the rights it uses and no more. docs/deploying.md
//! shows this output; tests/grants.rs runs each command as a user given exactly it.

use crate::cli::{GlobalOpts, GrantFor, GrantsArgs};
use crate::error::{Result, exit};
use crate::mapping::RedisType;
use crate::redis::layout::Layout;

/// Every sweep's own commands, whatever the layout: the walk, the TTLs, protection, and the
/// connection's checks (`PING`; `INFO` for the pace, evictions and the cluster check).
const SWEEP: &[&str] = &["ping", "info", "scan", "pttl", "pexpire"];

pub fn execute(g: &GlobalOpts, a: &GrantsArgs) -> Result<u8> {
    let mapping = super::formats::resolve(&a.layout)?;
    let layout = match &mapping {
        Some(m) => super::formats::layout(m),
        None => a.layout.format.into(),
    };
    let mut pattern = super::formats::pattern(a.layout.format, mapping.as_ref(), &a.pattern)?;
    if let (Layout::LangGraph, Some(at)) = (layout, pattern.find("checkpoint_latest")) {
        // A thread is due by its checkpoint_latest: key and read from its checkpoint: and
        // checkpoint_write: keys, under the same prefix.
        pattern = format!("{}checkpoint*", &pattern[..at]);
    }
    let mut out = String::new();
    let redis = redis_commands(a, layout, mapping.as_ref().map(|m| m.redis_type), g);
    if redis.is_empty() {
        out.push_str(&format!(
            "# Redis: none (`sweeper {}` does not connect to it)\n",
            a.command.name()
        ));
    } else {
        let rule: Vec<String> = redis.iter().map(|c| format!("+{c}")).collect();
        out.push_str(&format!(
            "# Redis, as an administrator (PASSWORD: the user's own):\nACL SETUSER {} reset on >PASSWORD ~{pattern} {}\n",
            a.redis_user,
            rule.join(" ")
        ));
    }
    out.push_str(&postgres(g, a, layout == Layout::LangGraph));
    super::print(&out)?;
    Ok(exit::OK)
}

/// The Redis commands of `a.command` with these settings, sorted.
fn redis_commands(
    a: &GrantsArgs,
    layout: Layout,
    mapped: Option<RedisType>,
    g: &GlobalOpts,
) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = match a.command {
        GrantFor::Migrate | GrantFor::Status | GrantFor::Prune => return Vec::new(),
        GrantFor::Forget => {
            // The live keys of the conversations or users named, found as a sweep reads them,
            // then unlinked.
            let mut c = vec!["ping", "info", "scan", "pttl", "unlink"];
            c.extend(layout.acl_commands());
            c
        }
        GrantFor::Run | GrantFor::Daemon => {
            let mut c = SWEEP.to_vec();
            c.extend(layout.acl_commands());
            if a.save_idle.is_some() {
                c.push("object|idletime");
            }
            c
        }
        GrantFor::Inspect => {
            // Every key's type and size (the json probe), the samples read as a sweep would.
            let mut c = vec!["ping", "info", "scan", "pttl"];
            c.extend(Layout::Json.acl_commands());
            c.extend(layout.acl_commands());
            c
        }
        GrantFor::Restore => {
            let mut c = vec!["ping", "info", "pttl"];
            match mapped {
                // A checkpoint document goes back with one SET (NX unless --force).
                None => c.push("set"),
                // A chat library's keys go back whole: the old value replaced in one transaction.
                Some(t) => c.extend([
                    "multi",
                    "del",
                    "pexpire",
                    "exec",
                    match t {
                        RedisType::String => "set",
                        RedisType::Json => "json.set",
                        RedisType::List => "rpush",
                        RedisType::Hash => "hset",
                    },
                ]),
            }
            c
        }
    };
    if g.redis_cluster {
        out.extend(["cluster|slots", "asking"]);
        if a.shard.is_some() || a.shards.is_some() {
            out.extend([
                "cluster|nodes",
                "cluster|countkeysinslot",
                "cluster|getkeysinslot",
            ]);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The PostgreSQL statements: an administrator's (the schema, a role granted to another), then
/// the schema owner's grants. No role setting: sweeper sets its search_path in each transaction.
fn postgres(g: &GlobalOpts, a: &GrantsArgs, langgraph: bool) -> String {
    let schema = g.schema.name();
    let role = a
        .role
        .clone()
        .unwrap_or_else(|| a.command.role().to_string());
    let admin = "# PostgreSQL, as an administrator (the database's owner or a superuser):\n";
    let owner = "# PostgreSQL, as the schema's owner, after `sweeper migrate`:\n";
    match a.command {
        GrantFor::Inspect => {
            "# PostgreSQL: none (`sweeper inspect` does not connect to it)\n".into()
        }
        GrantFor::Migrate => {
            format!("{admin}CREATE SCHEMA {schema} AUTHORIZATION {role};\n")
        }
        GrantFor::Run | GrantFor::Daemon => {
            let mut s = format!(
                "{owner}GRANT USAGE ON SCHEMA {schema} TO {role};\n\
                 GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role};\n\
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};\n\
                 GRANT EXECUTE ON FUNCTION {schema}.sweeper_extend_message_partitions() TO {role};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE ON TABLES TO {role};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO {role};\n"
            );
            if langgraph {
                s.push_str(&format!(
                    "# PostgreSQL, as the owner of LangGraph's tables (in public):\n\
                     GRANT SELECT, INSERT, UPDATE ON checkpoints, checkpoint_blobs, checkpoint_writes TO {role};\n\
                     GRANT SELECT ON checkpoint_migrations TO {role};\n"
                ));
            }
            s
        }
        // Read only, and a receipt for each restore (an auditor asks who read).
        GrantFor::Restore | GrantFor::Status => format!(
            "{owner}GRANT USAGE ON SCHEMA {schema} TO {role};\n\
             GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};\n\
             GRANT INSERT ON {schema}.erasures TO {role};\n\
             ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role};\n"
        ),
        // What a sweep may do, and the only DELETE (a sweep's role has none); a prune empties
        // and drops message_rows' old partitions through functions that do it as the owner,
        // only them (the role gets no TRUNCATE).
        GrantFor::Forget | GrantFor::Prune => format!(
            "{admin}GRANT {run} TO {role};\n{owner}\
             GRANT DELETE ON {schema}.conversations, {schema}.conversation_ids, {schema}.message_rows, {schema}.sweep_rejects TO {role};\n\
             GRANT EXECUTE ON FUNCTION {schema}.sweeper_prune_message_partition(bigint, timestamptz, real), \
             {schema}.sweeper_forget_pruned_ids(integer), {schema}.sweeper_close_open_range(), {schema}.sweeper_drop_empty_message_partitions() TO {role};\n",
            run = GrantFor::Run.role()
        ),
    }
}
