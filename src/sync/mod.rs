//! The engine: the pull pass over the source, and the loop that runs it every poll interval.

mod pass;

pub use pass::{PassOutcome, PassRun, Puller, SyncError};
