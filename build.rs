//! Rebuild when a migration is added: `sqlx::migrate!` (src/store/mod.rs) embeds the files of
//! `migrations/` at compile time, and Cargo does not otherwise see a new file there.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
