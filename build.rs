// `sqlx::migrate!()` embeds migrations/ at compile time: rebuild when a migration is added or
// changed (what sqlx's documentation asks of crates that embed them).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
