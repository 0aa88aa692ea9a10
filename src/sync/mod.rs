//! The engine: the pull pass over the source, and the loop that runs it every poll interval.

mod engine;
mod outbox;
mod pass;
mod push;

pub use engine::{BackfillReport, Engine, EngineError, SHUTDOWN_GRACE, SourceHealth};
pub use outbox::refresh_plans;
pub use pass::{PassOutcome, PassRun, Preview, PreviewCounts, Puller, SyncError};
pub use push::{PushStats, Pusher};
