//! Bounded request queue and the worker thread that feeds batches to the engine.
//!
//! The engine runs on one dedicated OS thread (model work is blocking and must not stall the async runtime).
//! The worker takes the oldest waiting request, gives others `batch_window` to join, drops those already
//! cancelled or expired, and calls [`ChatEngine::generate`]. A panic inside the engine is caught: items that have
//! not produced text yet are retried one at a time so that only the request that triggers it fails
//! (vllm#6322, eullm#399: one bad request must not poison the server); the others get a 500.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{BatchItem, CancelFlag, ChatEngine, EngineError, Outcome, StopCause};

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

struct State {
    waiting: VecDeque<BatchItem>,
    /// Cancel flags of the batch the engine is running now (cancelled at the end of the shutdown grace).
    running: Vec<CancelFlag>,
    closing: bool,
    stop_worker: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    engine: Arc<dyn ChatEngine>,
    max_queue: usize,
    max_batch: usize,
    window: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic happened while it was held; the queue itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the queue and its worker.
pub struct Scheduler {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Start the worker thread.
    pub fn start(
        engine: Arc<dyn ChatEngine>,
        max_queue: usize,
        max_batch: usize,
        window: Duration,
    ) -> Self {
        let max_batch = max_batch.min(engine.max_batch_size()).max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                running: Vec::new(),
                closing: false,
                stop_worker: false,
            }),
            wake: Condvar::new(),
            engine,
            max_queue: max_queue.max(1),
            max_batch,
            window,
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("idefics-engine".into())
            .spawn(move || worker_loop(&worker_shared))
            .ok();
        if worker.is_none() {
            tracing::error!("could not start the engine worker thread; every request will fail");
        }
        Self {
            shared,
            worker: Mutex::new(worker),
        }
    }

    /// Queue one request (never blocks).
    pub fn submit(&self, item: BatchItem) -> Result<(), (SubmitError, Box<BatchItem>)> {
        let mut st = self.shared.lock();
        if st.closing {
            return Err((SubmitError::ShuttingDown, Box::new(item)));
        }
        if st.waiting.len() >= self.shared.max_queue {
            return Err((SubmitError::QueueFull, Box::new(item)));
        }
        st.waiting.push_back(item);
        drop(st);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Requests waiting for the engine.
    pub fn queue_len(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    pub fn max_queue(&self) -> usize {
        self.shared.max_queue
    }

    /// Refuse new requests; queued and running ones continue.
    pub fn close(&self) {
        self.shared.lock().closing = true;
    }

    /// End of the shutdown grace: fail every queued request and cancel the running batch.
    pub fn cancel_all(&self) {
        let mut st = self.shared.lock();
        st.closing = true;
        let waiting: Vec<BatchItem> = st.waiting.drain(..).collect();
        for flag in &st.running {
            flag.cancel_for_shutdown();
        }
        drop(st);
        for item in waiting {
            item.abort(Outcome::ShuttingDown);
        }
    }

    /// Stop the worker once the queue is empty and wait for it.
    pub fn join(&self) {
        self.shared.lock().stop_worker = true;
        self.shared.wake.notify_all();
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn worker_loop(shared: &Shared) {
    loop {
        let Some(batch) = next_batch(shared) else {
            return;
        };
        run_batch(shared, batch);
    }
}

/// Wait for work, then collect up to `max_batch` items (waiting at most `window` for latecomers).
fn next_batch(shared: &Shared) -> Option<Vec<BatchItem>> {
    let mut st = shared.lock();
    while st.waiting.is_empty() {
        if st.stop_worker {
            return None;
        }
        st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    let until = Instant::now() + shared.window;
    while st.waiting.len() < shared.max_batch && !st.stop_worker {
        let now = Instant::now();
        if now >= until {
            break;
        }
        st = shared
            .wake
            .wait_timeout(st, until - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    let n = st.waiting.len().min(shared.max_batch);
    let mut batch = Vec::with_capacity(n);
    for item in st.waiting.drain(..n) {
        // Requests whose client left, whose deadline passed, or that shutdown cancelled never reach the engine.
        match item.dropped_outcome() {
            Some(outcome) => item.abort(outcome),
            None => batch.push(item),
        }
    }
    st.running = batch.iter().map(|i| i.cancel.clone()).collect();
    Some(batch)
}

fn run_batch(shared: &Shared, mut batch: Vec<BatchItem>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| shared.engine.generate(&mut batch)));
    match result {
        Ok(results) if results.len() == n => {
            for (item, r) in batch.into_iter().zip(results) {
                item.finish(r);
            }
        }
        Ok(results) => {
            let msg = format!(
                "engine returned {} results for a batch of {n}",
                results.len()
            );
            tracing::error!("{msg}");
            for item in batch {
                item.finish(Err(EngineError::Internal(msg.clone())));
            }
        }
        Err(panic) => {
            let msg = panic_message(&panic);
            tracing::error!(batch = n, "engine panicked: {msg}");
            for item in batch {
                if n > 1 && !item.emitted_any && !item.is_cancelled() {
                    // Isolate the culprit: rerun alone.
                    run_batch(shared, vec![item]);
                } else {
                    item.finish(Err(EngineError::Internal(format!("engine failed: {msg}"))));
                }
            }
        }
    }
    shared.lock().running.clear();
    tracing::debug!(
        batch = n,
        ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
}

fn panic_message(p: &Box<dyn Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

impl BatchItem {
    /// Whether this item should be failed without running (and how).
    pub(crate) fn dropped_outcome(&self) -> Option<Outcome> {
        if self.cancel.is_cancelled() || self.tx.is_closed() {
            return Some(if self.is_shutdown() {
                Outcome::ShuttingDown
            } else {
                Outcome::Cancelled
            });
        }
        if Instant::now() >= self.deadline {
            return Some(Outcome::TimedOut);
        }
        None
    }

    fn is_shutdown(&self) -> bool {
        self.cause == StopCause::Shutdown || self.cancel.is_shutdown()
    }
}
