//! [`Future`]: the result of a task submitted with [`Pool::submit`](super::Pool::submit), and the
//! functions that wait on many: [`as_completed`] and [`wait`].
//!
//! No thread collects results in the background: whoever waits drives the pool (takes results
//! off the result queue, dispatches pending tasks, replaces dead workers), under the pool's lock.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::engine::{Chunk, PUMP_WAIT, Sink};
use super::{PoolError, Shared, TaskError, WaitError};

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
}

/// The result of a task, to come. See [`Pool::submit`](super::Pool::submit).
///
/// Dropping a future does not cancel its task (use [`cancel`](Future::cancel)); the result is
/// then discarded.
pub struct Future<R> {
    shared: Arc<Shared>,
    job: usize,
    id: u64,
    /// Looks the result up in the job's sink (`None`: the job is unknown; `Some(None)`: not yet).
    take: Take<R>,
    _r: PhantomData<fn() -> R>,
}

/// How a [`Future`] finds its result: a `Pod` one's sink, or an archived one's (validated and
/// deserialized as it is taken).
pub(crate) type Take<R> = fn(&mut super::engine::Engine, usize) -> Option<Option<Result<R, TaskError>>>;

/// [`Take`] for `Pod` results.
fn take_pod<R: Pod + Send>(e: &mut super::engine::Engine, job: usize) -> Option<Option<Result<R, TaskError>>> {
    e.sink::<FutureSink<R>>(job).map(|s| s.result.clone())
}

/// Numbers futures for [`Future::id`].
static NEXT_ID: crate::sys::atomic::AtomicU64 = crate::sys::atomic::AtomicU64::new(1);

impl<R> std::fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Future").field("id", &self.id).finish()
    }
}

impl<R: Pod + Send> Future<R> {
    pub(crate) fn new(shared: Arc<Shared>, job: usize) -> Future<R> {
        Future::with_take(shared, job, take_pod::<R>)
    }
}

impl<R: Send> Future<R> {
    pub(crate) fn with_take(shared: Arc<Shared>, job: usize, take: Take<R>) -> Future<R> {
        let id = NEXT_ID.fetch_add(1, crate::sys::atomic::Ordering::Relaxed);
        Future { shared, job, id, take, _r: PhantomData }
    }

    /// A number unique to this future in this process (in submission order): a key to tell
    /// futures apart, say to find a future's input again when [`as_completed`] yields it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The result if the task has finished (`None` otherwise); drives the pool a little.
    fn poll(&self, wait: Duration) -> Result<Option<Result<R, TaskError>>, PoolError> {
        let mut e = self.shared.lock();
        match (self.take)(&mut e, self.job) {
            Some(Some(r)) => return Ok(Some(r)),
            Some(None) => {}
            None => return Err(unknown_task()),
        }
        match e.pump(wait) {
            Ok(_) => Ok((self.take)(&mut e, self.job).flatten()),
            Err(err) => Err(err),
        }
    }

    /// Waits for the result (Python's `result()`); may be called again.
    pub fn wait(&self) -> Result<R, TaskError> {
        loop {
            match self.poll(PUMP_WAIT) {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(e) => return Err(TaskError::from(e)),
            }
        }
    }

    /// Waits at most `timeout` for the result (never less); the task goes on after a timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<R, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(r) = self.poll(left.min(PUMP_WAIT)).map_err(|e| WaitError::Pool(e.to_string()))? {
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
/// [`wait`](Future::wait) returns at once. Futures of several pools may be mixed; each pool is
/// driven in turn while none is done.
pub fn as_completed<R: Send>(futures: impl IntoIterator<Item = Future<R>>) -> AsCompleted<R> {
    let mut groups: Vec<Group<R>> = Vec::new();
    for f in futures {
        match groups.iter_mut().find(|g| Arc::ptr_eq(&g.shared, &f.shared)) {
            Some(g) => {
                g.waiting.insert(f.job, f);
            }
            None => {
                let shared = f.shared.clone();
                let position = shared.lock().done_position();
                groups.push(Group { shared, waiting: HashMap::from([(f.job, f)]), position });
            }
        }
    }
    // Those already done come first; then each pool's log of completions from now on.
    let mut ready = VecDeque::new();
    for g in &mut groups {
        let e = g.shared.lock();
        let done: Vec<usize> = g.waiting.keys().copied().filter(|&j| e.is_finished(j)).collect();
        drop(e);
        ready.extend(done.into_iter().filter_map(|j| g.waiting.remove(&j)));
    }
    AsCompleted { groups, ready }
}

/// One pool's futures in an [`AsCompleted`], and its position in the pool's log of finished jobs.
struct Group<R> {
    shared: Arc<Shared>,
    waiting: HashMap<usize, Future<R>>,
    position: u64,
}

impl<R> Group<R> {
    /// Moves this pool's finished futures to `ready`. Answers false if the pool failed (then all
    /// of its futures are moved: their `wait` reports the failure).
    fn collect(&mut self, ready: &mut VecDeque<Future<R>>, pump: Option<std::time::Duration>) -> bool {
        let mut e = self.shared.lock();
        match e.done_since(self.position) {
            Some((jobs, end)) => {
                for j in jobs {
                    if let Some(f) = self.waiting.remove(&j) {
                        ready.push_back(f);
                    }
                }
                self.position = end;
            }
            None => {
                // Fell behind the log (a million completions since): look at each job.
                let done: Vec<usize> = self.waiting.keys().copied().filter(|&j| e.is_finished(j)).collect();
                ready.extend(done.into_iter().filter_map(|j| self.waiting.remove(&j)));
                self.position = e.done_position();
            }
        }
        if let Some(wait) = pump
            && e.pump(wait).is_err()
        {
            drop(e);
            ready.extend(self.waiting.drain().map(|(_, f)| f));
            return false;
        }
        true
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<R> {
    groups: Vec<Group<R>>,
    ready: VecDeque<Future<R>>,
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting: usize = self.groups.iter().map(|g| g.waiting.len()).sum();
        f.debug_struct("AsCompleted").field("waiting", &waiting).field("ready", &self.ready.len()).finish()
    }
}

impl<R: Send> Iterator for AsCompleted<R> {
    type Item = Future<R>;

    fn next(&mut self) -> Option<Future<R>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            self.groups.retain(|g| !g.waiting.is_empty());
            if self.groups.is_empty() {
                return None;
            }
            for g in &mut self.groups {
                g.collect(&mut self.ready, None);
            }
            if self.ready.is_empty() {
                // Nothing done anywhere: drive each pool a little, in turn.
                let slice = PUMP_WAIT / self.groups.len() as u32;
                for g in &mut self.groups {
                    g.collect(&mut self.ready, Some(slice));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.ready.len() + self.groups.iter().map(|g| g.waiting.len()).sum::<usize>();
        (n, Some(n))
    }
}

/// Waits until every future is done or `timeout` passes (Python's `concurrent.futures.wait`).
/// Answers the indices of the done and of the not-yet-done futures.
pub fn wait<R: Send>(futures: &[Future<R>], timeout: Duration) -> (Vec<usize>, Vec<usize>) {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, pending): (Vec<usize>, Vec<usize>) = (0..futures.len()).partition(|&i| {
            let f = &futures[i];
            f.shared.lock().is_finished(f.job)
        });
        let left = deadline.saturating_duration_since(Instant::now());
        if pending.is_empty() || left.is_zero() {
            return (done, pending);
        }
        let f = &futures[pending[0]];
        let _ = f.shared.lock().pump(left.min(PUMP_WAIT));
    }
}

// ----- async: a task's result as a `std::future::Future` (feature `tokio`) ----------------------

/// A pool task's result as a [`std::future::Future`] (feature `tokio`): what `.await` on a
/// [`Future`] gives, through [`IntoFuture`](std::future::IntoFuture).
///
/// Polling drives the pool without waiting (takes results off the result queue, dispatches
/// pending tasks, replaces dead workers); while the result is not there, the task sleeps on the
/// result queue through the waker thread of the ring's async operations (see
/// [`ring::RecvFuture`](crate::ring::RecvFuture)), and looks again at least every 50 ms (results
/// another thread took for it, worker deaths). No thread blocks for it.
///
/// ```
/// fn double(x: &u64) -> u64 {
///     x * 2
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = ringpool::Pool::new(2)?;
/// let answer = pool.submit(double, 21)?.await?;
/// assert_eq!(answer, 42);
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tokio")]
pub struct AsyncTask<R> {
    inner: Future<R>,
    core: Arc<crate::ring::Core>,
    wait: crate::ring::AsyncWait,
}

#[cfg(feature = "tokio")]
impl<R> std::fmt::Debug for AsyncTask<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTask").field("id", &self.inner.id).finish()
    }
}

#[cfg(feature = "tokio")]
impl<R: Send> std::future::IntoFuture for Future<R> {
    type Output = Result<R, TaskError>;
    type IntoFuture = AsyncTask<R>;

    fn into_future(self) -> AsyncTask<R> {
        let core = self.shared.lock().results_core().clone();
        AsyncTask { inner: self, core, wait: Default::default() }
    }
}

#[cfg(feature = "tokio")]
impl<R: Send> std::future::Future for AsyncTask<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use crate::sys::Deadline;
        use std::task::Poll;
        let this = self.get_mut();
        let mut e = match this.inner.shared.engine.try_lock() {
            Ok(e) => e,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // Another thread drives the pool right now: look again shortly.
            Err(std::sync::TryLockError::WouldBlock) => {
                this.wait.at(&this.core, Deadline::after(Duration::from_millis(1)), cx.waker());
                return Poll::Pending;
            }
        };
        let job = this.inner.job;
        let take = this.inner.take;
        let taken = |e: &mut super::engine::Engine| take(e, job);
        let result = match taken(&mut e) {
            None => Some(Err(TaskError::from(unknown_task()))),
            Some(Some(r)) => Some(r),
            Some(None) => match e.pump(Duration::ZERO) {
                Err(err) => Some(Err(TaskError::from(err))),
                Ok(n) => {
                    let r = taken(&mut e).flatten();
                    drop(e);
                    if n > 0 {
                        // Results of other futures may have come with ours: let them look.
                        this.wait.done();
                        this.wait.wake_others(&this.core);
                    }
                    r
                }
            },
        };
        match result {
            Some(r) => {
                this.wait.done();
                Poll::Ready(r)
            }
            None => {
                this.wait.on_recv(&this.core, Deadline::after(Duration::from_millis(50)), cx.waker());
                Poll::Pending
            }
        }
    }
}

/// A future whose task its pool does not know (cannot happen: a job lives as long as its future).
fn unknown_task() -> PoolError {
    PoolError::Broken(crate::ring::Broken::Corrupted("the future's task is unknown to its pool"))
}
