//! Stand-ins of the three remote APIs, faithful to the APIs as docs/apis/ describes them, served
//! over real HTTP on loopback for tests, benches, the `demo` feature and the `contact-sync-sim`
//! binary. They can inject faults.

pub mod dolphins;
pub mod engagelab;
pub mod omi;
pub mod server;
pub mod stack;
