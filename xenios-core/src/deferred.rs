//! Work a request hands over to run once its answer is out: the audit row's hand-over to
//! the writer and the access-log line.
//!
//! Both wake another thread (the audit writer's runtime, the log writer). Done before the
//! answer, at low load those wake-ups and the line's formatting held every answer back
//! (`scripts/bench-llm.sh` at 20 req/s: added p50 about 0.51 ms, 0.46 ms with both
//! deferred). [`after_answer`] spawns the work as a task: on the serving thread's runtime
//! it waits behind the connection's task, and hyper writes a response in the same poll
//! that receives it, so the work runs after the write.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` once the current task yields, on a current-thread Tokio runtime (each of
/// `xenios-server`'s serving threads runs one, and so does `xenios-worker`, where an LLM
/// job's audit row goes out once the job's task yields); anywhere else (a multi-thread
/// runtime, no runtime) at once, where a spawned task could wake another worker thread and
/// would run in no known order with the caller's next steps.
///
/// `work` runs exactly once, even when the runtime shuts down before the task ran: then it
/// runs as the task is dropped. Code that must see the work done first awaits
/// [`run_pending`].
pub fn after_answer(work: impl FnOnce() + Send + 'static) {
    let work = RunOnDrop(Some(work));
    match Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::CurrentThread => {
            // The join handle is dropped: the task runs detached.
            drop(runtime.spawn(async move { drop(work) }));
        }
        _ => drop(work),
    }
}

/// Lets the work this runtime's tasks handed over with [`after_answer`] run before the
/// caller goes on: on a current-thread runtime, yielding puts the caller behind every task
/// already spawned. [`crate::db::audit::AuditWriter::flush`] awaits it, and so does a
/// serving thread before it reports that it has stopped (the final flush runs on another
/// runtime).
pub async fn run_pending() {
    tokio::task::yield_now().await;
}

/// Runs its closure when dropped: whether the task holding it ran or was cancelled.
struct RunOnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for RunOnDrop<F> {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            work();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        (runs, move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn runs_after_the_current_task_yields_not_before() {
        let (runs, work) = counter();
        after_answer(work);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "ran before the task yielded"
        );
        run_pending().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "did not run once the task yielded"
        );
    }

    #[test]
    fn runs_once_when_the_runtime_shuts_down_before_the_task_ran() {
        let (runs, work) = counter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move { after_answer(work) });
        assert_eq!(runs.load(Ordering::SeqCst), 0, "block_on never yielded");
        drop(runtime);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "lost at shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_once_on_a_multi_thread_runtime() {
        let (runs, work) = counter();
        after_answer(work);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn runs_at_once_outside_a_runtime() {
        let (runs, work) = counter();
        after_answer(work);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
