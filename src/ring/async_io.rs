//! Async sends and receives (feature `tokio`): `recv_async`, `send_async` and `send_many_async`
//! on the receivers and senders of [`Ring`](super::Ring) and [`Queue`](super::queue::Queue), and
//! the waker thread behind them.
//!
//! A future first tries the operation (the `try_` form). When it would block, it registers its
//! task's [`Waker`] with the process's one **waker thread** and returns `Pending`. The waker
//! thread announces itself on the event count of every ring some task waits on (`not_empty` for
//! receives, `not_full` for sends), looks at each ring once more, and sleeps on all of their
//! futex words at once with `futex_waitv`, plus a bell word that new registrations ring. A sender
//! in any process that publishes into one of those rings sees the announcement and wakes the
//! thread, exactly as it wakes a blocked `recv`; the thread wakes the tasks whose ring is ready.
//! No task polls in a loop, and no thread blocks per task. The thread also wakes every liveness
//! slice (50 ms, as a blocked receiver does) to look for dead peers, so a task whose peers all
//! died is woken and answers `Disconnected`.
//!
//! The futures are runtime-agnostic (they use only [`std::task::Waker`]); the feature is named
//! after the runtime they are tested with.
//!
//! **Cancellation safety.** A `recv_async` future never holds a message it has not returned: each
//! poll either takes a message and returns it (`Ready`) or takes nothing. Dropping the future at
//! an `.await` point (a `select!` branch that lost, a timeout) loses no message. A `send_async`
//! future holds its message until it is sent; dropped before, the message is dropped unsent. A
//! `send_many_async` future dropped before it completes has sent a prefix of its messages
//! (possibly none), each whole and in order, and sends nothing more
//! ([`SendManyFuture::sent`] says how many).
//!
//! **Forks.** The waker thread does not exist in a forked child; the first async operation there
//! starts a new one (the parent's registrations are left behind, unused).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytemuck::Pod;

use super::core::{Core, Role};
use super::error::{RecvError, SendError, TryRecvError, TrySendError};
use super::select::{Announced, Dir, Handle, LIVENESS_SLICE};
use crate::sys::atomic::Ordering;
use crate::sys::{Deadline, current_pid, futex_wake};

/// How long a task waits before trying again when the ring was ready but its lock was held by
/// another member (the holder's release wakes nobody on this side).
const CONTENTION_RETRY: Duration = Duration::from_micros(500);

/// What a registered task waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Interest {
    /// A message at the head of the ring (or every sender gone).
    Recv,
    /// The head moving past `head` (room freed), or every receiver gone.
    Send { head: u64 },
    /// Only the registration's deadline.
    Timer,
}

struct Registration {
    core: Arc<Core>,
    interest: Interest,
    waker: Waker,
    /// Woken at this time whatever the ring does.
    deadline: Option<Deadline>,
}

impl Registration {
    fn dir(&self) -> Option<Dir> {
        match self.interest {
            Interest::Recv => Some(Dir::Recv),
            Interest::Send { .. } => Some(Dir::Send),
            Interest::Timer => None,
        }
    }

    fn ready(&self, sweep: bool) -> bool {
        if self.deadline.is_some_and(Deadline::passed) {
            return true;
        }
        match self.interest {
            Interest::Recv => self.core.recv_ready(sweep),
            Interest::Send { head } => {
                self.core.ctrl().head.load(Ordering::Acquire) != head || self.core.peers_gone(Role::Receiver, sweep)
            }
            Interest::Timer => false,
        }
    }
}

#[derive(Default)]
struct State {
    regs: HashMap<u64, Registration>,
    next_id: u64,
    thread_started: bool,
    /// The thread could not be started: every registration is woken at once (a poll loop,
    /// but never a hang).
    no_thread: bool,
}

/// The process's waker thread and its registrations.
pub(crate) struct Reactor {
    /// The process the reactor belongs to (a forked child makes its own).
    pid: u32,
    state: Mutex<State>,
    /// Rung (incremented, then woken) when a registration is added, so the thread looks again.
    bell: AtomicU32,
}

static REACTOR: AtomicPtr<Reactor> = AtomicPtr::new(std::ptr::null_mut());

/// This process's reactor, made on first use (and anew in a forked child).
pub(crate) fn reactor() -> &'static Reactor {
    loop {
        let p = REACTOR.load(StdOrdering::Acquire);
        if !p.is_null() {
            // SAFETY: a non-null pointer here came from Box::leak below and is never freed.
            let r = unsafe { &*p };
            if r.pid == current_pid() {
                return r;
            }
        }
        let fresh: &'static Reactor = Box::leak(Box::new(Reactor {
            pid: current_pid(),
            state: Mutex::new(State::default()),
            bell: AtomicU32::new(0),
        }));
        let fresh_ptr = fresh as *const Reactor as *mut Reactor;
        match REACTOR.compare_exchange(p, fresh_ptr, StdOrdering::AcqRel, StdOrdering::Acquire) {
            Ok(_) => return fresh,
            Err(_) => {
                // SAFETY: `fresh` was leaked just above and published nowhere: this is its only use.
                drop(unsafe { Box::from_raw(fresh_ptr) });
            }
        }
    }
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics halfway through an update (map inserts and removes).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new registration id (one per future, reused across its polls).
    pub(crate) fn new_id(&self) -> u64 {
        let mut st = self.lock();
        st.next_id += 1;
        st.next_id
    }

    /// Registers (or renews) `id`: wake `waker` once `interest` holds on `core`, or at `deadline`.
    pub(crate) fn register(
        &'static self,
        id: u64,
        core: &Arc<Core>,
        interest: Interest,
        deadline: Option<Deadline>,
        waker: &Waker,
    ) {
        let mut st = self.lock();
        if st.no_thread {
            drop(st);
            waker.wake_by_ref();
            return;
        }
        if !st.thread_started {
            st.thread_started = true;
            let spawned = std::thread::Builder::new().name("ringpool-waker".into()).spawn(move || {
                // Should the thread ever panic, nobody may wait for it: every task is woken, and
                // later registrations wake their tasks at once (a poll loop, never a hang).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).is_err() {
                    let mut st = self.lock();
                    st.no_thread = true;
                    let wake: Vec<Waker> = st.regs.drain().map(|(_, r)| r.waker).collect();
                    drop(st);
                    wake.into_iter().for_each(Waker::wake);
                }
            });
            if spawned.is_err() {
                st.no_thread = true;
                drop(st);
                waker.wake_by_ref();
                return;
            }
        }
        match st.regs.get_mut(&id) {
            Some(r) if Arc::ptr_eq(&r.core, core) => {
                r.interest = interest;
                r.deadline = deadline;
                if !r.waker.will_wake(waker) {
                    r.waker = waker.clone();
                }
            }
            _ => {
                st.regs.insert(id, Registration { core: core.clone(), interest, waker: waker.clone(), deadline });
            }
        }
        drop(st);
        self.bell.fetch_add(1, StdOrdering::SeqCst);
        futex_wake(&self.bell, 1);
    }

    /// Removes `id` (its future completed or was dropped).
    pub(crate) fn deregister(&self, id: u64) {
        self.lock().regs.remove(&id);
    }

    /// Wakes every task registered on `core` now (someone took results that may be theirs).
    pub(crate) fn wake_all_on(&self, core: &Arc<Core>) {
        let mut wake = Vec::new();
        self.lock().regs.retain(|_, r| {
            let hit = Arc::ptr_eq(&r.core, core);
            if hit {
                wake.push(r.waker.clone());
            }
            !hit
        });
        wake.into_iter().for_each(Waker::wake);
    }

    /// The waker thread.
    fn run(&'static self) {
        let mut next_sweep = Deadline::after(LIVENESS_SLICE);
        let mut round = 0usize;
        loop {
            if self.pid != current_pid() {
                return;
            }
            let bell = self.bell.load(StdOrdering::SeqCst);
            let mut wake: Vec<Waker> = Vec::new();
            let mut earliest = next_sweep;
            let mut cores: Vec<(Arc<Core>, Dir)> = Vec::new();
            let sweep = next_sweep.passed();
            if sweep {
                next_sweep = Deadline::after(LIVENESS_SLICE);
                earliest = next_sweep;
            }
            let mut st = self.lock();
            for r in st.regs.values() {
                if let Some(dir) = r.dir()
                    && !cores.iter().any(|(c, d)| Arc::ptr_eq(c, &r.core) && *d == dir)
                {
                    cores.push((r.core.clone(), dir));
                }
            }
            let mut announced = Announced::new();
            for (c, d) in &cores {
                announced.add(c.event_for(*d), c.notifier_sticky(*d));
            }
            // Announced on every ring: a change from here on wakes the sleep below. Look now.
            st.regs.retain(|_, r| {
                if r.ready(sweep) {
                    wake.push(r.waker.clone());
                    false
                } else {
                    if let Some(d) = r.deadline {
                        earliest = earliest.min(d);
                    }
                    true
                }
            });
            let idle = st.regs.is_empty();
            drop(st);
            if idle {
                // Nothing to watch: sleep on the bell alone (no liveness look is due for anyone).
                earliest = Deadline::after(Duration::from_secs(3600));
            }
            if !wake.is_empty() {
                drop(announced);
                wake.into_iter().for_each(Waker::wake);
                continue;
            }
            announced.sleep(Some((&self.bell, bell)), earliest, round);
            round = round.wrapping_add(1);
            drop(announced);
        }
    }
}

/// A registration owned by one future: its id, removed when the future is dropped or done.
#[derive(Debug, Default)]
struct Reg(Option<u64>);

impl Reg {
    fn register(&mut self, core: &Arc<Core>, interest: Interest, deadline: Option<Deadline>, waker: &Waker) {
        let r = reactor();
        let id = *self.0.get_or_insert_with(|| r.new_id());
        r.register(id, core, interest, deadline, waker);
    }

    /// A receive found nothing: waits for the senders' event, or, when the ring is ready already
    /// (the receive lock was held by another receiver), retries after [`CONTENTION_RETRY`].
    fn wait_recv(&mut self, core: &Arc<Core>, waker: &Waker) {
        if core.recv_ready(false) {
            self.register(core, Interest::Timer, Some(Deadline::after(CONTENTION_RETRY)), waker);
        } else {
            self.register(core, Interest::Recv, None, waker);
        }
    }

    /// A send of `need` units found no room (the head was at `head`): waits for the head to
    /// move, or, when there is room already (the send lock was held), retries after
    /// [`CONTENTION_RETRY`]; if the head moved since the try, wakes at once.
    fn wait_send(&mut self, core: &Arc<Core>, head: u64, need: u64, waker: &Waker) {
        if core.ctrl().head.load(Ordering::Acquire) != head {
            waker.wake_by_ref();
        } else if core.send_ready(need, false) {
            self.register(core, Interest::Timer, Some(Deadline::after(CONTENTION_RETRY)), waker);
        } else {
            self.register(core, Interest::Send { head }, None, waker);
        }
    }

    fn done(&mut self) {
        if let Some(id) = self.0.take() {
            reactor().deregister(id);
        }
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.done();
    }
}

/// A receiving handle with `recv_async`: [`ring::Receiver`](super::Receiver) (messages as
/// `Vec<u8>`) and [`queue::Receiver<T>`](super::queue::Receiver) (values `T`).
pub trait AsyncRecv: Handle {
    /// What one receive yields.
    type Item;
    #[doc(hidden)]
    fn try_recv_op(&self) -> Result<Self::Item, TryRecvError>;
}

impl AsyncRecv for super::Receiver {
    type Item = Vec<u8>;
    fn try_recv_op(&self) -> Result<Vec<u8>, TryRecvError> {
        self.try_recv()
    }
}

impl<T: Pod> AsyncRecv for super::queue::Receiver<T> {
    type Item = T;
    fn try_recv_op(&self) -> Result<T, TryRecvError> {
        self.try_recv()
    }
}

/// A sending handle with `send_async` of messages `M`: [`ring::Sender`](super::Sender) (any
/// `AsRef<[u8]>`) and [`queue::Sender<T>`](super::queue::Sender) (values `T`).
pub trait AsyncSend<M>: Handle {
    #[doc(hidden)]
    fn try_send_op(&self, msg: M) -> Result<(), TrySendError<M>>;
    /// Room `msg` needs (bytes of record and marker, or slots).
    #[doc(hidden)]
    fn send_need(&self, msg: &M) -> u64;
    /// Sends as many of `msgs` (not empty) as fit now, in order, under one lock hold.
    #[doc(hidden)]
    fn try_send_many_op(&self, msgs: &[M]) -> Result<usize, TrySendError<usize>>;
}

impl<M: AsRef<[u8]>> AsyncSend<M> for super::Sender {
    fn try_send_op(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.try_send(msg)
    }
    fn send_need(&self, msg: &M) -> u64 {
        super::records::room_needed(msg.as_ref().len())
    }
    fn try_send_many_op(&self, msgs: &[M]) -> Result<usize, TrySendError<usize>> {
        self.try_send_many(msgs)
    }
}

impl<T: Pod> AsyncSend<T> for super::queue::Sender<T> {
    fn try_send_op(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.try_send(msg)
    }
    fn send_need(&self, _: &T) -> u64 {
        1
    }
    fn try_send_many_op(&self, msgs: &[T]) -> Result<usize, TrySendError<usize>> {
        self.try_send_many(msgs)
    }
}

/// The future of `recv_async`: a message (or value), or why there will be none. Cancellation
/// safe: dropping it loses no message (each poll either takes a message and returns it, or takes
/// nothing).
///
/// How it wakes: a poll that finds the ring empty registers the task's [`Waker`] with the
/// process's one waker thread (started on first use, named `ringpool-waker`), which announces
/// itself on the event count of every ring some task waits on and sleeps on all of their futex
/// words at once (`futex_waitv`, Linux 5.16+; older kernels: one word at a time in 1 ms slices).
/// A sender in any process that publishes wakes it as it would wake a blocked `recv`, and it
/// wakes the tasks of the rings that are ready. It also looks for dead peers every 50 ms, as a
/// blocked receiver does, so a task whose senders all died answers `Disconnected`. No task polls
/// in a loop and no thread blocks per task. The thread makes the process multi-threaded: fork
/// children before the first async operation, or start them by spawning.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct RecvFuture<'a, R: AsyncRecv> {
    rx: &'a R,
    reg: Reg,
}

impl<R: AsyncRecv> Future for RecvFuture<'_, R> {
    type Output = Result<R::Item, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = match self.rx.try_recv_op() {
            Ok(v) => Ok(v),
            Err(TryRecvError::Disconnected) => Err(RecvError::Disconnected),
            Err(TryRecvError::Broken(b)) => Err(RecvError::Broken(b)),
            Err(TryRecvError::Empty) => {
                let core = self.rx.handle_ref().core;
                self.reg.wait_recv(core, cx.waker());
                return Poll::Pending;
            }
        };
        self.reg.done();
        Poll::Ready(out)
    }
}

/// The future of `send_async`: `Ok` once the message is in the ring, or the message back with
/// why it was not sent. Dropped before it completes, the message is not sent.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct SendFuture<'a, S: AsyncSend<M>, M> {
    tx: &'a S,
    msg: Option<M>,
    reg: Reg,
}

// The message is only moved out of the pinned future by value, never pinned itself.
impl<S: AsyncSend<M>, M> Unpin for SendFuture<'_, S, M> {}

impl<S: AsyncSend<M>, M> Future for SendFuture<'_, S, M> {
    type Output = Result<(), SendError<M>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(msg) = this.msg.take() else {
            panic!("a SendFuture was polled after it completed (the caller's bug)");
        };
        let core = this.tx.handle_ref().core;
        let need = this.tx.send_need(&msg);
        let head = core.ctrl().head.load(Ordering::Acquire);
        let out = match this.tx.try_send_op(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(m)) => Err(SendError::Disconnected(m)),
            Err(TrySendError::TooLarge { msg, len, max }) => Err(SendError::TooLarge { msg, len, max }),
            Err(TrySendError::Broken(m, b)) => Err(SendError::Broken(m, b)),
            Err(TrySendError::Full(m)) => {
                this.msg = Some(m);
                this.reg.wait_send(core, head, need, cx.waker());
                return Poll::Pending;
            }
        };
        this.reg.done();
        Poll::Ready(out)
    }
}

/// The future of `send_many_async`: `Ok` once every message is in the ring, in order, or how many
/// were sent with why the rest were not (as [`Sender::send_many`](super::Sender::send_many)).
///
/// Each poll sends as many of the remaining messages as there is room for, under one lock hold
/// per batch, and waits (registered with the waker thread, as [`SendFuture`] does) only when no
/// room is left for the next one.
///
/// **Cancellation.** Dropped before it completes, the future has sent a **prefix** of the
/// messages, possibly empty, and nothing after it: messages go in whole and in order, never one
/// in part, and none is sent once the future is gone. [`sent`](Self::sent) says how many: the
/// future is `Unpin`, so await it through `&mut fut` (under a timeout, say) to ask afterwards.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct SendManyFuture<'a, S: AsyncSend<M>, M> {
    tx: &'a S,
    msgs: &'a [M],
    sent: usize,
    reg: Reg,
}

// Only indices and references change between polls; nothing is pinned.
impl<S: AsyncSend<M>, M> Unpin for SendManyFuture<'_, S, M> {}

impl<S: AsyncSend<M>, M> SendManyFuture<'_, S, M> {
    /// How many messages are in the ring already (the first `sent()` of them).
    pub fn sent(&self) -> usize {
        self.sent
    }
}

impl<S: AsyncSend<M>, M> Future for SendManyFuture<'_, S, M> {
    type Output = Result<(), SendError<usize>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = loop {
            let Some(rest) = this.msgs.get(this.sent..).filter(|r| !r.is_empty()) else {
                break Ok(());
            };
            let core = this.tx.handle_ref().core;
            let need = this.tx.send_need(&rest[0]);
            let head = core.ctrl().head.load(Ordering::Acquire);
            match this.tx.try_send_many_op(rest) {
                Ok(n) if n > 0 => this.sent += n.min(rest.len()),
                Ok(_) | Err(TrySendError::Full(_)) => {
                    this.reg.wait_send(core, head, need, cx.waker());
                    return Poll::Pending;
                }
                Err(TrySendError::Disconnected(_)) => break Err(SendError::Disconnected(this.sent)),
                Err(TrySendError::TooLarge { len, max, .. }) => {
                    break Err(SendError::TooLarge { msg: this.sent, len, max });
                }
                Err(TrySendError::Broken(_, b)) => break Err(SendError::Broken(this.sent, b)),
            }
        };
        this.reg.done();
        Poll::Ready(out)
    }
}

impl super::Receiver {
    /// Receives a message without blocking the thread: the future completes with the next
    /// message, or `Disconnected` once the ring is empty and every sender is gone (feature
    /// `tokio`; see [`RecvFuture`] for how it wakes).
    ///
    /// Cancellation safe: dropping the future loses no message.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = ringpool::Ring::builder().capacity(4096).anonymous()?;
    /// let (tx, rx) = (ring.sender()?, ring.receiver()?);
    /// tx.send_async(b"hello").await?;
    /// assert_eq!(rx.recv_async().await?, b"hello");
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_async(&self) -> RecvFuture<'_, Self> {
        RecvFuture { rx: self, reg: Reg::default() }
    }
}

impl<T: Pod> super::queue::Receiver<T> {
    /// Receives a value without blocking the thread (feature `tokio`); see
    /// [`ring::Receiver::recv_async`](super::Receiver::recv_async). Cancellation safe.
    pub fn recv_async(&self) -> RecvFuture<'_, Self> {
        RecvFuture { rx: self, reg: Reg::default() }
    }
}

impl super::Sender {
    /// Sends a message without blocking the thread, waiting for room (feature `tokio`). Fails,
    /// handing the message back, as [`send`](Self::send) does.
    pub fn send_async<M: AsRef<[u8]>>(&self, msg: M) -> SendFuture<'_, Self, M> {
        SendFuture { tx: self, msg: Some(msg), reg: Reg::default() }
    }
}

impl<T: Pod> super::queue::Sender<T> {
    /// Sends a value without blocking the thread, waiting for a free slot (feature `tokio`).
    pub fn send_async(&self, value: T) -> SendFuture<'_, Self, T> {
        SendFuture { tx: self, msg: Some(value), reg: Reg::default() }
    }

    /// [`send_many`](Self::send_many) without blocking the thread (feature `tokio`): sends every
    /// value, in order, as many per lock hold as there are free slots, waiting for slots in
    /// between. On failure the error holds how many were sent.
    ///
    /// Cancellation safe in this sense: dropped before it completes, the future has sent a prefix
    /// of `values` (possibly none) and sends nothing more; [`SendManyFuture::sent`] says how many.
    pub fn send_many_async<'a>(&'a self, values: &'a [T]) -> SendManyFuture<'a, Self, T> {
        SendManyFuture { tx: self, msgs: values, sent: 0, reg: Reg::default() }
    }
}

impl super::Sender {
    /// [`send_many`](Self::send_many) without blocking the thread (feature `tokio`): sends every
    /// message, in order, as many per lock hold as there is room for, waiting for room in
    /// between. On failure (every receiver gone, a message longer than the ring's largest, a
    /// broken ring) the error holds how many were sent.
    ///
    /// Cancellation safe in this sense: dropped before it completes, the future has sent a prefix
    /// of `msgs` (possibly none), each message whole, and sends nothing more;
    /// [`SendManyFuture::sent`] says how many.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = ringpool::Ring::builder().capacity(4096).anonymous()?;
    /// let (tx, rx) = (ring.sender()?, ring.receiver()?);
    /// tx.send_many_async(&[&b"one"[..], b"two", b"three"]).await?;
    /// assert_eq!(rx.recv()?, b"one");
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_many_async<'a, M: AsRef<[u8]>>(&'a self, msgs: &'a [M]) -> SendManyFuture<'a, Self, M> {
        SendManyFuture { tx: self, msgs, sent: 0, reg: Reg::default() }
    }
}

/// A receive in any form (a closure over the `try_` form), as a future: the batch and in-place
/// forms below. Cancellation safe as [`RecvFuture`] is: each poll takes messages and returns them,
/// or takes nothing.
struct RecvOp<'a, H, F> {
    rx: &'a H,
    op: F,
    reg: Reg,
}

// The closure is called through `&mut`, never pinned.
impl<H, F> Unpin for RecvOp<'_, H, F> {}

impl<H: Handle, F: FnMut(&H) -> Result<T, TryRecvError>, T> Future for RecvOp<'_, H, F> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = match (this.op)(this.rx) {
            Ok(v) => Ok(v),
            Err(TryRecvError::Disconnected) => Err(RecvError::Disconnected),
            Err(TryRecvError::Broken(b)) => Err(RecvError::Broken(b)),
            Err(TryRecvError::Empty) => {
                let core = this.rx.handle_ref().core;
                this.reg.wait_recv(core, cx.waker());
                return Poll::Pending;
            }
        };
        this.reg.done();
        Poll::Ready(out)
    }
}

impl super::Receiver {
    /// [`recv_with`](Self::recv_with) without blocking the thread (feature `tokio`): hands the
    /// next message to `f` in place, then removes it. Dropped before completion, `f` never ran and
    /// no message was taken.
    pub fn recv_with_async<'a, R: 'a>(
        &'a self,
        f: impl FnOnce(&[u8]) -> R + 'a,
    ) -> impl Future<Output = Result<R, RecvError>> + 'a {
        let mut f = Some(f);
        RecvOp {
            rx: self,
            op: move |rx: &super::Receiver| {
                // `f` is only taken when a message is handed over (once: the future is then done).
                assert!(f.is_some(), "a recv_with_async future was polled after it completed (the caller's bug)");
                rx.try_recv_with(|m| f.take().map(|f| f(m)))
                    .map(|r| r.expect("recv_with_async: the closure is called once"))
            },
            reg: Reg::default(),
        }
    }

    /// [`recv_many`](Self::recv_many) without blocking the thread (feature `tokio`): waits for at
    /// least one message, then hands up to `max` to `f` in place; answers how many.
    pub fn recv_many_async<'a>(
        &'a self,
        max: usize,
        mut f: impl FnMut(&[u8]) + 'a,
    ) -> impl Future<Output = Result<usize, RecvError>> + 'a {
        RecvOp { rx: self, op: move |rx: &super::Receiver| rx.try_recv_many(max, &mut f), reg: Reg::default() }
    }
}

impl<T: Pod> super::queue::Receiver<T> {
    /// [`recv_many`](Self::recv_many) without blocking the thread (feature `tokio`): waits for at
    /// least one value, then moves up to `out.len()` (at most 1024) into `out`; answers how many.
    pub fn recv_many_async<'a>(&'a self, out: &'a mut [T]) -> impl Future<Output = Result<usize, RecvError>> + 'a {
        RecvOp { rx: self, op: move |rx: &Self| rx.try_recv_many(&mut *out), reg: Reg::default() }
    }
}

/// For the pool's futures: a registration that a `std::future::Future` keeps across polls.
#[derive(Debug, Default)]
pub(crate) struct AsyncWait(Reg);

impl AsyncWait {
    /// Wake `waker` when the ring under `core` has a message, or at `deadline` at the latest.
    pub(crate) fn on_recv(&mut self, core: &Arc<Core>, deadline: Deadline, waker: &Waker) {
        self.0.register(core, Interest::Recv, Some(deadline), waker);
    }

    /// Wake `waker` at `deadline`.
    pub(crate) fn at(&mut self, core: &Arc<Core>, deadline: Deadline, waker: &Waker) {
        self.0.register(core, Interest::Timer, Some(deadline), waker);
    }

    /// Wakes every task waiting on `core` (results that may be theirs were taken).
    pub(crate) fn wake_others(&self, core: &Arc<Core>) {
        reactor().wake_all_on(core);
    }

    /// The wait is over.
    pub(crate) fn done(&mut self) {
        self.0.done();
    }
}
