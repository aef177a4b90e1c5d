//! Scoped worker threads for training work that runs in parallel (micro-batches, SigLIP image groups).
//!
//! candle's backward walks the graph recursively, so a worker gets the stack headroom of a main thread and
//! more (std's default for spawned threads is 2 MiB).

use super::TrainError;

/// Stack of a worker thread (address space; only the touched pages cost memory).
pub(crate) const WORKER_STACK_BYTES: usize = 64 << 20;

/// `work(i)` for every `i` in `items`, each on its own scoped thread named `{name}-{i}`; the results in the
/// order of `items`. A single item runs on the calling thread. A panicking worker becomes an error.
pub(crate) fn run_scoped<T, F>(name: &str, items: &[usize], work: F) -> Vec<Result<T, TrainError>>
where
    T: Send,
    F: Fn(usize) -> Result<T, TrainError> + Sync,
{
    if let [only] = items {
        return vec![work(*only)];
    }
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|&i| {
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .stack_size(WORKER_STACK_BYTES)
                    .spawn_scoped(s, move || work(i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(TrainError::Invalid(format!("a {name} thread panicked")))
                }),
                Err(e) => Err(TrainError::Invalid(format!(
                    "could not start a {name} thread: {e}"
                ))),
            })
            .collect()
    })
}
