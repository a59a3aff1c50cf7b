//! Logging never floods a sweep: a warning about one key is logged for the first few keys of a
//! kind, then counted.

mod common;

use common::runs::{assert_exit, n, summary};
use common::*;

/// Keys that expire before they are read, and checkpoints rejected, are warned of one by one for
/// the first ten of each kind, then in one line each that says how many more there were; the
/// summary counts them all.
#[tokio::test]
async fn per_key_warnings_show_the_first_ten_keys_of_a_kind_then_count_the_rest() {
    let env = TestEnv::migrated("logs_per_key").await;
    for i in 0..35 {
        env.set_raw(&format!("bad{i:02}"), "not json", SOON).await;
    }
    env.set("good", &doc(None, &["a"]), SOON).await;
    let out = env.sweeper(&["run", "--output", "json"]);
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(n(&s, "rejected"), 35, "{s}");
    let err = stderr(&out);
    let each = err
        .lines()
        .filter(|l| l.contains("checkpoint rejected: set aside"))
        .count();
    assert_eq!(each, 10, "{err}");
    assert!(
        err.contains("25 more checkpoints rejected than were logged"),
        "{err}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await,
        35,
        "every reject is kept whatever was logged"
    );
}
