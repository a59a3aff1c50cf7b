//! `--redis-cluster` on a real 3-primary Redis Cluster on loopback: every due key persisted
//! exactly once; a primary killed mid-sweep fails the run (exit 3) and the next run, after the
//! node is back, loses nothing; a slot caught half-migrated is read through MOVED and ASK; N
//! shards add up to one run, each reading only the primaries and slots it owns.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::servers::PrivateCluster;
use common::*;
use serde_json::Value;
use sweeper::shard::{Shard, key_slot};

const KEYS: usize = 30_000;
const DUE: usize = KEYS / 2;

/// Calls of each command on the node since its statistics were reset (`INFO commandstats`).
async fn calls(port: u16) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut node_conn(port).await)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .next()?
                .strip_prefix("calls=")?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// 30k keys spread over every slot: the first half due, the second not.
async fn seed_30k(cluster: &PrivateCluster, env: &TestEnv) {
    let ids: Vec<String> = (0..KEYS).map(|i| format!("c{i:05}")).collect();
    seed_cluster(cluster, env, &ids[..DUE], 120_000).await;
    seed_cluster(cluster, env, &ids[DUE..], 3_600_000).await;
}

fn cluster_run(env: &TestEnv, urls: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = env.command();
    cmd.env("REDIS_URL", urls)
        .env("SWEEPER_REDIS_CLUSTER", "true")
        .args(["run", "--output", "json", "--match", &env.pattern()])
        .args(args);
    cmd.output().unwrap()
}

fn summary(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a summary ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// Every due key stored once, with its three messages, and nothing else.
async fn all_due_stored_once(env: &TestEnv) {
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        DUE as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id >= 'c15000'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM messages").await,
        3 * DUE as i64
    );
}

#[tokio::test]
async fn every_due_key_of_a_cluster_is_persisted_exactly_once() {
    let cluster = PrivateCluster::start(3);
    let env = TestEnv::with_cluster("cluster", &cluster).await;
    seed_30k(&cluster, &env).await;
    // Keys of another pattern, in slots of every shard: never counted, never read.
    let noise = TestEnv::with_cluster("cluster_noise", &cluster).await;
    let ids: Vec<String> = (0..300).map(|i| format!("n{i:03}")).collect();
    seed_cluster(&cluster, &noise, &ids, 120_000).await;
    let owner = slot_owners(&cluster).await;
    // The slots holding keys (of either pattern): the ones a shard reads by slot.
    let filled: std::collections::BTreeSet<u32> = (0..KEYS)
        .map(|i| env.key(&format!("c{i:05}")))
        .chain(ids.iter().map(|id| noise.key(id)))
        .map(|k| key_slot(k.as_bytes()) as u32)
        .collect();

    // One seed is enough: the primaries are discovered.
    let out = cluster_run(&env, &cluster.nodes[1].url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(
        (
            s["scanned"].as_u64(),
            s["due"].as_u64(),
            s["persisted"].as_u64()
        ),
        (Some(KEYS as u64), Some(DUE as u64), Some(DUE as u64)),
        "{s}"
    );
    all_due_stored_once(&env).await;
    let s = summary(&cluster_run(&env, &cluster.urls(), &[]));
    assert_eq!(
        (s["persisted"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(DUE as u64)),
        "{s}"
    );

    // Shards of the cluster add up to the whole, each reading only its primaries and slots.
    for n in [1u32, 3, 8] {
        let mut sharded = TestEnv::with_cluster(&format!("cluster_shards{n}"), &cluster).await;
        sharded.prefix = env.prefix.clone();
        let (mut scanned, mut persisted) = (0, 0);
        for i in 0..n {
            let shard = Shard::new(i, n).unwrap();
            for r in &cluster.nodes {
                let () = redis::cmd("CONFIG")
                    .arg("RESETSTAT")
                    .query_async(&mut node_conn(r.port).await)
                    .await
                    .unwrap();
            }
            let out = cluster_run(&sharded, &cluster.urls(), &["--shard", &shard.to_string()]);
            assert!(out.status.success(), "{}", stderr(&out));
            let s = summary(&out);
            scanned += s["scanned"].as_u64().unwrap();
            persisted += s["persisted"].as_u64().unwrap();
            for r in &cluster.nodes {
                let calls = calls(r.port).await;
                let held: Vec<u32> = (0..16384u32)
                    .filter(|s| owner[*s as usize] == r.port)
                    .collect();
                let mine = held.iter().filter(|s| shard.slots().contains(s)).count();
                let what = format!("shard {shard}, node {}: {calls:?}; {s}", r.port);
                let scans = calls.get("scan").copied().unwrap_or(0);
                let slot_reads = calls.get("cluster|getkeysinslot").copied().unwrap_or(0);
                if mine == 0 {
                    // Not one key command: the connection's PING, the seed's CLUSTER SLOTS, and
                    // CLUSTER NODES (which slots it imports).
                    assert!(
                        calls.keys().all(|c| [
                            "ping",
                            "cluster|slots",
                            "cluster|nodes",
                            "info",
                            "config|resetstat",
                        ]
                        .contains(&c.as_str())),
                        "{what}"
                    );
                } else if mine == held.len() {
                    assert!(scans > 0 && slot_reads == 0, "SCANned whole: {what}");
                } else {
                    // Each of its slots counted once, each holding keys read once.
                    let mine_filled = held
                        .iter()
                        .filter(|s| shard.slots().contains(s) && filled.contains(s))
                        .count() as u64;
                    assert_eq!(
                        (
                            scans,
                            calls.get("cluster|countkeysinslot").copied(),
                            slot_reads
                        ),
                        (0, Some(mine as u64), mine_filled),
                        "read by slot: {what}"
                    );
                }
            }
        }
        assert_eq!(
            (scanned, persisted),
            (KEYS as u64, DUE as u64),
            "{n} shards"
        );
        all_due_stored_once(&sharded).await;
    }

    // A cluster node swept as a single node would be a third of the keys: refused.
    let out = env.sweeper(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(error_line(&out).contains("--redis-cluster"));
}

#[tokio::test]
async fn a_primary_killed_mid_sweep_fails_the_run_and_the_next_run_loses_nothing() {
    let mut cluster = PrivateCluster::start(3);
    let env = TestEnv::with_cluster("cluster_kill", &cluster).await;
    seed_30k(&cluster, &env).await;

    // Primaries are swept in address order: kill the last one while the sweep, slowed down,
    // is still on the first ones.
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by_key(|&i| format!("127.0.0.1:{}", cluster.nodes[i].port));
    let last = order[2];
    let mut cmd = env.command();
    let child = cmd
        .env("REDIS_URL", cluster.urls())
        .args([
            "--redis-cluster",
            "run",
            "--output",
            "json",
            "--match",
            &env.pattern(),
        ])
        .args(["--max-redis-ops-per-sec", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nodes[last].kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.starts_with("sweeper: error: Redis at redis://127.0.0.1:"),
        "{line}"
    );
    let first = summary(&out);
    assert_eq!(first["status"], "failed", "{first}");
    let saved_first = first["persisted"].as_u64().unwrap();
    assert!(
        saved_first > 0 && saved_first < DUE as u64,
        "the batches read before the failure are saved: {first}"
    );

    cluster.nodes[last].up();
    cluster.wait_ok();
    let out = cluster_run(&env, &cluster.urls(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = summary(&out);
    // Exactly once: what the first run saved is unchanged now, the rest is saved now.
    assert_eq!(second["unchanged"].as_u64(), Some(saved_first), "{second}");
    assert_eq!(
        saved_first + second["persisted"].as_u64().unwrap(),
        DUE as u64,
        "{second}"
    );
    all_due_stored_once(&env).await;
}

#[tokio::test]
async fn a_slot_caught_half_migrated_is_read_through_moved_and_ask() {
    let cluster = PrivateCluster::start(3);
    let env = TestEnv::with_cluster("cluster_ask", &cluster).await;
    // 40 keys in one slot (a hash tag), and 200 elsewhere.
    let tagged: Vec<String> = (0..40).map(|i| format!("{{conv}}{i:02}")).collect();
    let others: Vec<String> = (0..200).map(|i| format!("o{i:03}")).collect();
    seed_cluster(&cluster, &env, &tagged, 120_000).await;
    seed_cluster(&cluster, &env, &others, 120_000).await;

    // Move the slot from its owner to another node, and stop halfway: half its keys on each
    // side, the source MIGRATING, the target IMPORTING.
    let slot = key_slot(env.key(&tagged[0]).as_bytes());
    let owner = slot_owners(&cluster).await[slot as usize];
    let target = cluster
        .nodes
        .iter()
        .map(|r| r.port)
        .find(|p| *p != owner)
        .unwrap();
    let id = |port| async move {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut node_conn(port).await)
            .await
            .unwrap();
        id
    };
    let (owner_id, target_id) = (id(owner).await, id(target).await);
    let () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&owner_id)
        .query_async(&mut node_conn(target).await)
        .await
        .unwrap();
    let () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&target_id)
        .query_async(&mut node_conn(owner).await)
        .await
        .unwrap();
    let moved: Vec<String> = tagged[..20].iter().map(|id| env.key(id)).collect();
    let _: redis::Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(target)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&moved)
        .query_async(&mut node_conn(owner).await)
        .await
        .unwrap();

    // A reader that learnt the slot map now, before the migration ends.
    let mut nodes = sweeper::redis::cluster::Nodes::connect(
        &cluster.urls(),
        &Default::default(),
        sweeper::config::Timeouts::default(),
        true,
    )
    .await
    .unwrap();
    let out = cluster_run(&env, &cluster.urls(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(
        (
            s["scanned"].as_u64(),
            s["persisted"].as_u64(),
            s["expired_before_read"].as_u64()
        ),
        (Some(240), Some(240), Some(0)),
        "{s}"
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 240);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 720);

    // Shards too: the one owning the slot reads it on the importing node as well.
    for n in [3u32, 8] {
        let mut sharded = TestEnv::with_cluster(&format!("cluster_ask{n}"), &cluster).await;
        sharded.prefix = env.prefix.clone();
        let persisted: u64 = (0..n)
            .map(|i| {
                let out = cluster_run(&sharded, &cluster.urls(), &["--shard", &format!("{i}/{n}")]);
                assert!(out.status.success(), "{}", stderr(&out));
                summary(&out)["persisted"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(persisted, 240, "{n} shards");
    }

    // The migration ends: the slot belongs to the target. The reader's map is stale: its reads
    // get MOVED, follow it, and refresh the map, so the next reads go straight to the target.
    let rest: Vec<String> = tagged[20..].iter().map(|id| env.key(id)).collect();
    let _: redis::Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(target)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&rest)
        .query_async(&mut node_conn(owner).await)
        .await
        .unwrap();
    for r in &cluster.nodes {
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target_id)
            .query_async(&mut node_conn(r.port).await)
            .await
            .unwrap();
    }
    let keys: Vec<Vec<u8>> = tagged.iter().map(|id| env.key(id).into_bytes()).collect();
    let before = nodes.round_trips();
    let ttls = nodes.pttls(&keys).await.unwrap();
    assert!(ttls.iter().all(|t| *t > 0), "{ttls:?}");
    let followed = nodes.round_trips() - before;
    assert!(
        followed >= 3,
        "PTTL, MOVED followed, map refreshed: {followed}"
    );
    let before = nodes.round_trips();
    assert!(nodes.pttls(&keys).await.unwrap().iter().all(|t| *t > 0));
    assert_eq!(nodes.round_trips() - before, 1, "straight to the new owner");
}

#[tokio::test]
async fn simulate_and_restore_write_each_key_to_the_node_owning_it() {
    let cluster = PrivateCluster::start(3);
    let env = TestEnv::with_cluster("cluster_write", &cluster).await;
    // Through one seed: a node refuses keys of slots it does not own (MOVED), so 300 keys
    // written means each went to its owner.
    let out = env
        .command()
        .env("REDIS_URL", cluster.nodes[0].url())
        .env("SWEEPER_REDIS_CLUSTER", "true")
        .args([
            "simulate",
            "--conversations",
            "300",
            "--ttl-spread",
            "1m..2m",
        ])
        .args(["--match-prefix", &env.prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for r in &cluster.nodes {
        let n: u64 = redis::cmd("DBSIZE")
            .query_async(&mut node_conn(r.port).await)
            .await
            .unwrap();
        assert!(n > 50, "every primary got its share: {n} on {}", r.port);
    }
    let s = summary(&cluster_run(&env, &cluster.urls(), &[]));
    assert_eq!(s["persisted"].as_u64(), Some(300), "{s}");

    // A conversation whose key lives on another node than the seed named: gone, then restored.
    let owner = slot_owners(&cluster).await;
    let id = "sim-1-0000007";
    let key = env.key(id);
    let home = owner[key_slot(key.as_bytes()) as usize];
    let seed = cluster.nodes.iter().find(|r| r.port != home).unwrap().url();
    let () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut node_conn(home).await)
        .await
        .unwrap();
    let restore = || {
        env.command()
            .env("REDIS_URL", &seed)
            .env("SWEEPER_REDIS_CLUSTER", "true")
            .args(["restore", "--conversation", id, "--output", "json"])
            .output()
            .unwrap()
    };
    let out = restore();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["key"], key.as_str());
    let mut home_conn = node_conn(home).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut home_conn)
        .await
        .unwrap();
    assert!(pttl > 29 * 60_000, "{pttl}");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut home_conn)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&value).unwrap()["messages"]
            .as_array()
            .map(|m| m.len() as u64),
        r["messages"].as_u64()
    );
    // Live now: not overwritten without --force.
    let out = restore();
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("is live in Redis"),
        "{}",
        stderr(&out)
    );
}

/// The commands `sweeper grants` gives a sharded cluster sweep, as `+command` ACL rules
/// (docs/deploying.md shows them; tests/docs.rs checks each is listed there).
fn sharded_sweep_commands() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["grants", "run", "--redis-cluster", "--shard", "0/3"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let rule = text.lines().find(|l| l.starts_with("ACL SETUSER")).unwrap();
    rule.split_whitespace()
        .filter(|w| w.starts_with('+'))
        .map(str::to_string)
        .collect()
}

/// Creates `user` (password `pw`) on every node with `commands` on every key; ACLs are per node.
async fn acl_user(cluster: &PrivateCluster, user: &str, commands: &[String]) {
    for r in &cluster.nodes {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg(commands)
            .query_async(&mut node_conn(r.port).await)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_acl_user_with_the_commands_grants_prints_runs_a_sharded_sweep() {
    let cluster = PrivateCluster::start(3);
    let env = TestEnv::with_cluster("cluster_acl", &cluster).await;
    let ids: Vec<String> = (0..3000).map(|i| format!("a{i:04}")).collect();
    seed_cluster(&cluster, &env, &ids, 120_000).await;
    let as_user = |user: &str| {
        cluster
            .urls()
            .replace("redis://", &format!("redis://{user}:pw@"))
    };

    let commands = sharded_sweep_commands();
    assert!(commands.len() > 10, "{commands:?}");
    acl_user(&cluster, "sweeper", &commands).await;
    let mut persisted = 0;
    for i in 0..3 {
        let out = cluster_run(&env, &as_user("sweeper"), &["--shard", &format!("{i}/3")]);
        assert!(out.status.success(), "shard {i}/3: {}", stderr(&out));
        persisted += summary(&out)["persisted"].as_u64().unwrap();
    }
    assert_eq!(persisted, 3000);

    // One command fewer than documented (the slot reads' count): a shard that reads by slot (one
    // of 8 shares a primary with others) fails at once, exit 3, with Redis's reason, and stores
    // nothing. No password shows, of any seed.
    let fewer: Vec<String> = commands
        .into_iter()
        .filter(|c| c != "+cluster|countkeysinslot")
        .collect();
    acl_user(&cluster, "short", &fewer).await;
    let other = TestEnv::with_cluster("cluster_acl_short", &cluster).await;
    let mut other = other;
    other.prefix = env.prefix.clone();
    let out = cluster_run(&other, &as_user("short"), &["--shard", "1/8"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("no permissions"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(":pw@"), "{}", stderr(&out));
    assert_eq!(other.count("SELECT count(*) FROM conversations").await, 0);
}
