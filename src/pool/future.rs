//! [`Future`]: the result of a task submitted with [`Pool::submit`](super::Pool::submit), and the
//! functions that wait on many: [`as_completed`] and [`wait`].
//!
//! No thread collects results in the background: whoever waits drives the pool (takes results
//! off the result queue, dispatches pending tasks, replaces dead workers), under the pool's lock.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::engine::{Chunk, PUMP_WAIT, Sink};
use super::{Shared, TaskError, WaitError};

/// A future's result cell.
pub(crate) struct FutureSink<R> {
    pub result: Option<Result<R, TaskError>>,
}

impl<R> Default for FutureSink<R> {
    fn default() -> Self {
        FutureSink { result: None }
    }
}

impl<R: Pod + Send> Sink for FutureSink<R> {
    fn chunk(&mut self, c: &Chunk<'_>) {
        super::for_each_item::<R>(c, |_, r| self.result = Some(r));
    }
    fn fail(&mut self, _first: usize, _count: usize, e: &TaskError) {
        self.result = Some(Err(e.clone()));
    }
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// The result of a task, to come. See [`Pool::submit`](super::Pool::submit).
///
/// Dropping a future does not cancel its task (use [`cancel`](Future::cancel)); the result is
/// then discarded.
pub struct Future<R> {
    shared: Arc<Shared>,
    job: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Future").field("job", &self.job).finish()
    }
}

impl<R: Pod + Send> Future<R> {
    pub(crate) fn new(shared: Arc<Shared>, job: usize) -> Future<R> {
        Future { shared, job, _r: PhantomData }
    }

    /// The result if the task has finished (`None` otherwise); drives the pool a little.
    fn poll(&self, wait: Duration) -> Result<Option<Result<R, TaskError>>, WaitError> {
        let mut e = self.shared.lock();
        if let Some(r) = e.sink::<FutureSink<R>>(self.job).and_then(|s| s.result.clone()) {
            return Ok(Some(r));
        }
        if e.sink::<FutureSink<R>>(self.job).is_none() {
            return Err(WaitError::Pool("the future's task is unknown to its pool".to_owned()));
        }
        match e.pump(wait) {
            Ok(_) => Ok(e.sink::<FutureSink<R>>(self.job).and_then(|s| s.result.clone())),
            Err(err) => Err(WaitError::Pool(err.to_string())),
        }
    }

    /// Waits for the result (Python's `result()`); may be called again.
    pub fn wait(&self) -> Result<R, TaskError> {
        loop {
            match self.poll(PUMP_WAIT) {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(e) => return Err(TaskError::Pool(e.to_string())),
            }
        }
    }

    /// Waits at most `timeout` for the result (never less); the task goes on after a timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<R, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(r) = self.poll(left.min(PUMP_WAIT))? {
                return r.map_err(WaitError::Task);
            }
            if Instant::now() >= deadline {
                return Err(WaitError::Timeout);
            }
        }
    }

    /// Whether the task has finished (or failed). Does not wait.
    pub fn is_done(&self) -> bool {
        matches!(self.poll(Duration::ZERO), Ok(Some(_)) | Err(_))
    }

    /// Cancels the task if no worker has started it; answers whether it did. A cancelled
    /// future's result is [`TaskError::Cancelled`].
    pub fn cancel(&self) -> bool {
        self.shared.lock().cancel(self.job)
    }
}

impl<R> Drop for Future<R> {
    fn drop(&mut self) {
        self.shared.lock().drop_job(self.job);
    }
}

/// Yields the futures in the order they finish (Python's `as_completed`). Each yielded future's
/// [`wait`](Future::wait) returns at once.
pub fn as_completed<R: Pod + Send>(futures: impl IntoIterator<Item = Future<R>>) -> AsCompleted<R> {
    let mut waiting: std::collections::HashMap<usize, Future<R>> = std::collections::HashMap::new();
    let mut foreign = Vec::new();
    let mut shared: Option<Arc<Shared>> = None;
    for f in futures {
        match &shared {
            Some(s) if !Arc::ptr_eq(s, &f.shared) => foreign.push(f),
            _ => {
                shared.get_or_insert_with(|| f.shared.clone());
                waiting.insert(f.job, f);
            }
        }
    }
    // Those already done come first, then the log of completions from now on.
    let (mut ready, position) = match &shared {
        Some(s) => {
            let e = s.lock();
            let done: Vec<usize> = waiting.keys().copied().filter(|&j| e.is_finished(j)).collect();
            (done, e.done_position())
        }
        None => (Vec::new(), 0),
    };
    let mut queue: std::collections::VecDeque<Future<R>> = ready.drain(..).filter_map(|j| waiting.remove(&j)).collect();
    queue.extend(foreign);
    AsCompleted { shared, waiting, ready: queue, position }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<R> {
    shared: Option<Arc<Shared>>,
    waiting: std::collections::HashMap<usize, Future<R>>,
    ready: std::collections::VecDeque<Future<R>>,
    /// Our position in the pool's log of finished jobs.
    position: u64,
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted").field("waiting", &self.waiting.len()).field("ready", &self.ready.len()).finish()
    }
}

impl<R: Pod + Send> Iterator for AsCompleted<R> {
    type Item = Future<R>;

    fn next(&mut self) -> Option<Future<R>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            if self.waiting.is_empty() {
                return None;
            }
            let shared = self.shared.clone()?;
            let mut e = shared.lock();
            match e.done_since(self.position) {
                Some((jobs, end)) => {
                    for j in jobs {
                        if let Some(f) = self.waiting.remove(&j) {
                            self.ready.push_back(f);
                        }
                    }
                    self.position = end;
                }
                None => {
                    // Fell behind the log: look at each job.
                    let done: Vec<usize> = self.waiting.keys().copied().filter(|&j| e.is_finished(j)).collect();
                    self.ready.extend(done.into_iter().filter_map(|j| self.waiting.remove(&j)));
                    self.position = e.done_position();
                }
            }
            if self.ready.is_empty() && e.pump(PUMP_WAIT).is_err() {
                drop(e);
                // The pool failed: hand the rest out; their `wait` reports it.
                let any = self.waiting.keys().next().copied();
                return any.and_then(|j| self.waiting.remove(&j));
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.waiting.len() + self.ready.len();
        (n, Some(n))
    }
}

/// Waits until every future is done or `timeout` passes (Python's `concurrent.futures.wait`).
/// Answers the indices of the done and of the not-yet-done futures.
pub fn wait<R: Pod + Send>(futures: &[Future<R>], timeout: Duration) -> (Vec<usize>, Vec<usize>) {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, pending): (Vec<usize>, Vec<usize>) = (0..futures.len()).partition(|&i| {
            let f = &futures[i];
            f.shared.lock().sink::<FutureSink<R>>(f.job).is_none_or(|s| s.result.is_some())
        });
        let left = deadline.saturating_duration_since(Instant::now());
        if pending.is_empty() || left.is_zero() {
            return (done, pending);
        }
        let f = &futures[pending[0]];
        let _ = f.shared.lock().pump(left.min(PUMP_WAIT));
    }
}
