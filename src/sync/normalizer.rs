//! The one thread a pass normalizes records on.
//!
//! Normalizing a phone number matches `phonenumber`'s patterns, and what a thread matches with
//! stays with that thread: each thread compiles its own set of patterns
//! (`domain::phone::matches_at_start`), and `regex` keeps a search cache per pattern and
//! thread. Spread over tokio's blocking threads (which come and go) and its workers, the
//! library's caches alone grew to about 15 MB of a 50,000-contact backfill's 51 MB heap peak.
//! On one long-lived thread there is one set (docs/performance.md, "Round 4").

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The thread's queue, started on first use and kept for the life of the process.
fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("normalize".to_owned())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .expect("starting the normalize thread");
        tx
    })
}

/// Run `job` on the normalize thread, after the jobs queued before it. The result comes back
/// through the returned future; a panic in `job` goes on in whoever awaits it, and the thread
/// lives on. Dropping the future does not stop the job, only discards its result.
pub fn spawn<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Normalizing<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        crate::failpoint::hold_point("normalize.job");
        // Nobody waiting any more is not an error: the result is simply not wanted.
        let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
    });
    queue()
        .send(job)
        .expect("the normalize thread runs for the life of the process");
    Normalizing(rx)
}

/// The result of a job given to [`spawn`], once the normalize thread has run it.
pub struct Normalizing<T>(oneshot::Receiver<std::thread::Result<T>>);

impl<T> Normalizing<T> {
    /// Wait until the job has run, without its result (or its panic): for a job whose result
    /// is no longer wanted but whose captures should not outlive the wait.
    pub async fn finished(self) {
        let _ = self.0.await;
    }
}

impl<T> Future for Normalizing<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx).map(|sent| {
            match sent.expect("the normalize thread answers every job it takes") {
                Ok(value) => value,
                Err(panic) => resume_unwind(panic),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_thread_that_outlives_a_panic() {
        let first = spawn(|| std::thread::current().id());
        let panicked = tokio::spawn(spawn(|| -> u32 { panic!("a bad job") }));
        let second = spawn(|| std::thread::current().id());
        let (first, second) = (first.await, second.await);
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
        assert!(panicked.await.unwrap_err().is_panic());
        assert_eq!(spawn(|| 7).await, 7);
    }
}
