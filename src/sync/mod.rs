//! The engine: the pull pass over the source (cursor, classifier, writer or dry run), the
//! pushers, and the loop that runs them every poll interval.

mod classify;
mod cursor;
mod engine;
mod normalizer;
mod outbox;
mod pass;
mod preview;
mod push;
mod writer;

pub use engine::{BackfillReport, Engine, EngineError, SHUTDOWN_GRACE, SourceHealth};
pub use outbox::refresh_plans;
pub use pass::{PassOutcome, PassProgress, PassRun, Puller, SyncError};
pub use preview::{Preview, PreviewCounts};
pub use push::{PushStats, Pusher};
