//! A process-shared mutex that survives its owner's death.
//!
//! One 32-bit word in shared memory, the futex itself:
//!
//! | value | meaning |
//! | --- | --- |
//! | `0` | free |
//! | `owner` | held by the holder of [`OwnerToken`] `owner`, nobody asleep |
//! | `owner \| WAITERS` | held, and somebody may be asleep on the word |
//! | `POISONED` | a recovered owner gave up: the protected state cannot be trusted |
//!
//! Who an owner is, the word does not say: the locker passes an [`OwnerToken`] and a liveness
//! question for tokens. The plain forms ([`RobustMutex::lock`], [`RobustMutex::try_lock`]) use the
//! caller's pid, which pid reuse can fool (a dead owner's pid handed to a live process keeps the
//! lock held for ever); the ring uses a token pid reuse cannot fool (its member-table entry plus a
//! generation, see `ring/membership.rs`). All threads of a process use the same token: they
//! exclude each other through the word, and never take the lock over from each other.
//!
//! Uncontended, locking is one compare-and-swap and unlocking one compare-and-swap: no system
//! call. A contended locker spins for a bounded time, then sleeps on the word in slices; between
//! slices it asks whether the owner is still alive, and if it is not, takes the lock over and is
//! told so ([`RobustMutexGuard::owner_died`]). Like a POSIX robust mutex, the new owner must then
//! repair the protected state and call [`RobustMutexGuard::mark_consistent`]; if it unlocks without
//! doing so (or cannot repair), the mutex becomes poisoned and every later lock fails with
//! [`LockError::Poisoned`] instead of handing out a broken state.
//!
//! A guard acts only in the process that took the lock: a copy of it in a forked child (made by a
//! raw `fork()`, since the safe API does not let a guard cross) unlocks nothing, and an unlock
//! changes the word only while the word still names the guard's token.
//!
//! Why not glibc's robust `pthread_mutex_t` or raw_sync's mutex: see `SAFETY.md`, "Why our own lock".

use crate::sys::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::spin::{SpinPolicy, Spinner};
use crate::sys::{Deadline, FutexWait, current_pid, futex_wait, futex_wake};

const WAITERS: u32 = 1 << 30;
const OWNER: u32 = WAITERS - 1;
/// The owner field of a poisoned mutex: all ones, never a valid token.
const POISONED: u32 = OWNER;

/// First park slice; doubles up to [`MAX_SLICE`]. Between slices the owner's liveness is checked.
const FIRST_SLICE: Duration = Duration::from_millis(1);
const MAX_SLICE: Duration = Duration::from_millis(50);

/// Who holds a [`RobustMutex`], as its word records it: a value in `1..2^30 - 1`. A process's pid
/// is one ([`OwnerToken::pid`]); the ring uses its member-table entry and a generation instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnerToken(u32);

impl OwnerToken {
    /// The largest token value.
    pub const MAX: u32 = POISONED - 1;

    /// A token from its value; `None` for 0 and values above [`OwnerToken::MAX`].
    pub const fn new(value: u32) -> Option<OwnerToken> {
        if value == 0 || value > Self::MAX { None } else { Some(OwnerToken(value)) }
    }

    /// This process's pid as a token (what [`RobustMutex::lock`] uses).
    #[inline]
    pub fn pid() -> OwnerToken {
        // Pids are below 2^22 (PID_MAX_LIMIT), far below MAX, and never 0.
        OwnerToken(current_pid())
    }

    /// The value the lock word holds.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// Why a lock could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The deadline passed while another live process held the lock.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// A previous owner died and its successor could not repair the protected state.
    #[error("the lock is poisoned: an owner died and the protected state could not be repaired")]
    Poisoned,
}

/// Why [`RobustMutex::try_lock`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryLockError {
    /// Another process holds the lock.
    #[error("the lock is held")]
    WouldBlock,
    /// See [`LockError::Poisoned`].
    #[error("the lock is poisoned")]
    Poisoned,
}

/// A robust, process-shared mutex word. Zeroed memory is an unlocked mutex.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RobustMutex {
    word: AtomicU32,
}

/// Proof of holding a [`RobustMutex`]; unlocks on drop, in the process that locked only.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RobustMutexGuard<'a> {
    mutex: &'a RobustMutex,
    /// The token the word holds for us (below 2^30), with [`RECOVERED`] and [`CONSISTENT`] in the
    /// two bits above it (one word: the guard stays two words, as it is returned on every lock).
    state: u32,
    /// The process that took the lock: a copy of the guard elsewhere (a forked child) is inert.
    pid: u32,
}

/// Guard state bit: the previous owner died holding the lock.
const RECOVERED: u32 = 1 << 31;
/// Guard state bit: the protected state is consistent (unlock, don't poison).
const CONSISTENT: u32 = 1 << 30;

impl RobustMutex {
    /// An unlocked mutex.
    pub const fn new() -> RobustMutex {
        RobustMutex { word: AtomicU32::new(0) }
    }

    /// Takes the lock for this process (by pid) if it is free, without waiting. A lock whose
    /// owner is dead is not taken over here (that needs a liveness check, which only the waiting
    /// forms make).
    #[inline]
    pub fn try_lock(&self) -> Result<RobustMutexGuard<'_>, TryLockError> {
        self.try_lock_as(OwnerToken::pid())
    }

    /// [`try_lock`](Self::try_lock) under the caller's own token.
    #[inline]
    pub fn try_lock_as(&self, token: OwnerToken) -> Result<RobustMutexGuard<'_>, TryLockError> {
        match self.word.compare_exchange(0, token.0, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => Ok(RobustMutexGuard::new(self, token.0, false)),
            Err(w) if w & OWNER == POISONED => Err(TryLockError::Poisoned),
            Err(_) => Err(TryLockError::WouldBlock),
        }
    }

    /// Takes the lock for this process (by pid), waiting until `deadline` (`None`: for ever). A
    /// dead owner is detected by [`crate::sys::liveness::is_alive`] on its pid. A dead owner whose
    /// pid was handed to a live process cannot be told from that process: lockers that need to see
    /// through pid reuse use [`lock_as`](Self::lock_as) with a token of their own.
    pub fn lock(&self, spin: SpinPolicy, deadline: Option<Deadline>) -> Result<RobustMutexGuard<'_>, LockError> {
        self.lock_with(spin, deadline, |pid| crate::sys::liveness::is_alive(pid, 0))
    }

    /// Takes the lock like [`lock`](Self::lock), asking `owner_alive(pid)` whether a long-time owner
    /// still lives (a caller that knows its peers' start times can see through pid reuse).
    #[inline]
    pub fn lock_with(
        &self,
        spin: SpinPolicy,
        deadline: Option<Deadline>,
        owner_alive: impl FnMut(u32) -> bool,
    ) -> Result<RobustMutexGuard<'_>, LockError> {
        self.lock_as(OwnerToken::pid(), spin, deadline, owner_alive)
    }

    /// Takes the lock under `token`, waiting until `deadline`, asking `owner_alive(token)` whether
    /// another token's holder still lives. A holder with the caller's own token (another thread
    /// of the same owner) is waited for, never taken over from.
    #[inline]
    pub fn lock_as(
        &self,
        token: OwnerToken,
        spin: SpinPolicy,
        deadline: Option<Deadline>,
        owner_alive: impl FnMut(u32) -> bool,
    ) -> Result<RobustMutexGuard<'_>, LockError> {
        if self.word.compare_exchange(0, token.0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return Ok(RobustMutexGuard::new(self, token.0, false));
        }
        self.lock_slow(token.0, spin, deadline, owner_alive)
    }

    #[cold]
    fn lock_slow(
        &self,
        me: u32,
        spin: SpinPolicy,
        deadline: Option<Deadline>,
        mut owner_alive: impl FnMut(u32) -> bool,
    ) -> Result<RobustMutexGuard<'_>, LockError> {
        // Phase 1: spin while the holder is (presumably) inside a short critical section. Critical
        // sections last well under a microsecond; a holder that keeps the lock for a millisecond is
        // holding a zero-copy guard or is dead, and is waited for by sleeping, even by busy waiters.
        let mut spinner = Spinner::new(SpinPolicy::spin_for(spin.budget().min(Duration::from_millis(1))));
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w == 0 {
                if self.word.compare_exchange_weak(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    return Ok(RobustMutexGuard::new(self, me, false));
                }
                continue;
            }
            if w & OWNER == POISONED {
                return Err(LockError::Poisoned);
            }
            if !spinner.spin() || deadline.is_some_and(|d| d.passed()) {
                break;
            }
        }
        // Phase 2: sleep on the word in slices, checking the owner's liveness between them.
        let mut slice = FIRST_SLICE;
        loop {
            let w = self.word.load(Ordering::Relaxed);
            if w == 0 {
                // We may have sleepers behind us: keep the WAITERS bit so our unlock wakes one.
                if self.word.compare_exchange(0, me | WAITERS, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    return Ok(RobustMutexGuard::new(self, me, false));
                }
                continue;
            }
            let owner = w & OWNER;
            if owner == POISONED {
                return Err(LockError::Poisoned);
            }
            if w & !(OWNER | WAITERS) != 0 {
                // Not a word this code ever writes: garbage. Treat it as a dead owner; the caller's
                // repair validates everything the lock protects.
                if let Some(g) = self.take_over(w, me) {
                    return Ok(g);
                }
                continue;
            }
            if w & WAITERS == 0
                && self.word.compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let wake_at = match deadline {
                Some(d) => d.min_after(slice),
                None => Deadline::after(slice),
            };
            let r = futex_wait(&self.word, w | WAITERS, Some(wake_at));
            if r == FutexWait::TimedOut {
                if deadline.is_some_and(|d| d.passed()) {
                    return Err(LockError::Timeout);
                }
                // A whole slice without the lock changing hands: is the owner still there? Our own
                // token is another thread of ours: alive by definition, waited for.
                // Acquire: pairs with the owner's locking CAS (AcqRel), so that whatever the owner
                // published before it locked (its member-table entry) is seen by `owner_alive`.
                let now = self.word.load(Ordering::Acquire);
                if now & OWNER == owner && owner != me && !owner_alive(owner) {
                    if let Some(g) = self.take_over(now, me) {
                        return Ok(g);
                    }
                }
                slice = (slice * 2).min(MAX_SLICE);
            }
        }
    }

    /// Replaces a dead owner's word `seen` by ours; the guard reports the recovery.
    fn take_over(&self, seen: u32, me: u32) -> Option<RobustMutexGuard<'_>> {
        self.word
            .compare_exchange(seen, me | WAITERS, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| RobustMutexGuard::new(self, me, true))
    }

    /// The token of the current holder, if any (a snapshot, for diagnostics): the holder's pid for
    /// lockers by pid.
    pub fn holder(&self) -> Option<u32> {
        match Self::word_owner(self.word.load(Ordering::Relaxed)) {
            0 | Self::POISONED_OWNER => None,
            token => Some(token),
        }
    }

    /// Whether the mutex is poisoned.
    pub fn is_poisoned(&self) -> bool {
        Self::word_owner(self.word.load(Ordering::Relaxed)) == Self::POISONED_OWNER
    }

    /// [`word_owner`](Self::word_owner) of a poisoned mutex's word.
    pub(crate) const POISONED_OWNER: u32 = POISONED;

    /// The owner field of a copy of a lock word (read out of a file by the inspector, not through
    /// a mutex): 0 free, [`POISONED_OWNER`](Self::POISONED_OWNER) poisoned, else the holder's token.
    pub(crate) const fn word_owner(word: u32) -> u32 {
        word & OWNER
    }

    /// Frees the word if it still names `token` (it may not: a locker that found us dead took over).
    #[inline]
    fn unlock_as(&self, token: u32) {
        if self.word.compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed).is_ok() {
            return;
        }
        self.unlock_slow(token);
    }

    #[cold]
    fn unlock_slow(&self, token: u32) {
        let mut w = self.word.load(Ordering::Relaxed);
        while w & OWNER == token {
            match self.word.compare_exchange_weak(w, 0, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => {
                    if w & WAITERS != 0 {
                        futex_wake(&self.word, 1);
                    }
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    fn poison_as(&self, token: u32) {
        let mut w = self.word.load(Ordering::Relaxed);
        while w & OWNER == token {
            match self.word.compare_exchange_weak(w, POISONED, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => {
                    futex_wake(&self.word, u32::MAX);
                    return;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Whether somebody may be asleep on the word (a snapshot).
    pub(crate) fn has_waiters(&self) -> bool {
        self.word.load(Ordering::Relaxed) & WAITERS != 0
    }

    /// Releases a hold whose guard was given up ([`RobustMutexGuard::keep_held`]): frees the word
    /// if it still names `token`, waking a sleeper. The caller must be the holder, in the process
    /// that took the lock.
    pub(crate) fn release_kept(&self, token: OwnerToken) {
        self.unlock_as(token.0)
    }

    /// Takes over a hold that `from` kept ([`RobustMutexGuard::keep_held`]) while it was idle, for
    /// `to`: swaps the owner field if it still names `from` (keeping the waiters bit, so that this
    /// guard's unlock wakes the sleepers). `None` if the word no longer names `from`. The caller
    /// must know that `from` is between operations (the ring's steal protocol, `ring/core.rs`):
    /// the state the lock protects is then consistent, and the guard is an ordinary one.
    pub(crate) fn take_kept(&self, from: OwnerToken, to: OwnerToken) -> Option<RobustMutexGuard<'_>> {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if w & OWNER != from.0 {
                return None;
            }
            match self.word.compare_exchange_weak(w, to.0 | (w & WAITERS), Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(RobustMutexGuard::new(self, to.0, false)),
                Err(now) => w = now,
            }
        }
    }

    /// Forces the word to "held by `owner`" (test support: a dead owner without a dead process).
    pub(crate) fn debug_force_owner(&self, owner: u32) {
        self.word.store(owner & OWNER, Ordering::Release);
    }
}

impl<'a> RobustMutexGuard<'a> {
    #[inline(always)]
    fn new(mutex: &'a RobustMutex, token: u32, recovered: bool) -> Self {
        let flags = if recovered { RECOVERED } else { CONSISTENT };
        RobustMutexGuard { mutex, state: (token & OWNER) | flags, pid: current_pid() }
    }

    /// True if the previous owner died holding the lock: the protected state may be half-changed.
    /// Repair it, then call [`mark_consistent`](Self::mark_consistent).
    pub fn owner_died(&self) -> bool {
        self.state & RECOVERED != 0
    }

    /// Declares the protected state repaired. Without this, a recovered lock is poisoned on unlock.
    pub fn mark_consistent(&mut self) {
        self.state |= CONSISTENT;
    }

    /// Whether this guard is in the process that took the lock. A copy of a guard in a forked
    /// child answers false: the lock is its parent's, and the copy must not touch what it protects
    /// (dropping the copy does nothing).
    #[inline]
    pub fn held_here(&self) -> bool {
        self.pid == current_pid()
    }

    /// The token the guard holds the lock under.
    pub(crate) fn token(&self) -> OwnerToken {
        OwnerToken(self.state & OWNER)
    }

    /// Gives the guard up with the lock still held (the holder keeps it across operations and
    /// frees it with [`RobustMutex::release_kept`]). Refused (the guard comes back) unless the
    /// state is consistent and the guard is in the process that took the lock.
    pub(crate) fn keep_held(self) -> Result<OwnerToken, Self> {
        if self.state & CONSISTENT == 0 || !self.held_here() {
            return Err(self);
        }
        let token = self.token();
        std::mem::forget(self);
        Ok(token)
    }

    /// Releases the lock. Equivalent to dropping the guard.
    pub fn unlock(self) {
        drop(self)
    }
}

impl Drop for RobustMutexGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.held_here() {
            return;
        }
        let token = self.state & OWNER;
        if self.state & CONSISTENT != 0 { self.mutex.unlock_as(token) } else { self.mutex.poison_as(token) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::liveness::PID_MAX;

    #[test]
    fn lock_unlock_and_try_lock() {
        let m = RobustMutex::new();
        let g = m.try_lock().unwrap();
        assert_eq!(m.holder(), Some(std::process::id()));
        assert_eq!(m.try_lock().unwrap_err(), TryLockError::WouldBlock);
        drop(g);
        assert_eq!(m.holder(), None);
        let g = m.lock(SpinPolicy::default(), None).unwrap();
        assert!(!g.owner_died());
    }

    #[test]
    fn dead_owner_is_recovered_and_unrepaired_state_poisons() {
        let m = RobustMutex::new();
        // A pid that cannot exist plays the dead owner.
        m.debug_force_owner(PID_MAX - 1);
        let g = m.lock(SpinPolicy::park(), Some(Deadline::after(Duration::from_secs(5)))).unwrap();
        assert!(g.owner_died());
        drop(g); // not marked consistent
        assert!(m.is_poisoned());
        assert_eq!(m.lock(SpinPolicy::park(), None).unwrap_err(), LockError::Poisoned);
        assert_eq!(m.try_lock().unwrap_err(), TryLockError::Poisoned);
    }

    #[test]
    fn recovered_and_repaired_lock_works_on() {
        let m = RobustMutex::new();
        m.debug_force_owner(PID_MAX - 1);
        let mut g = m.lock(SpinPolicy::park(), None).unwrap();
        assert!(g.owner_died());
        g.mark_consistent();
        drop(g);
        assert!(!m.is_poisoned());
        assert!(!m.try_lock().unwrap().owner_died());
    }

    #[test]
    fn live_owner_times_out_never_early() {
        let m = RobustMutex::new();
        let _g = m.try_lock().unwrap();
        let t = std::time::Instant::now();
        let r = std::thread::scope(|s| {
            s.spawn(|| m.lock(SpinPolicy::park(), Some(Deadline::after(Duration::from_millis(30)))).map(|_| ()))
                .join()
                .unwrap()
        });
        assert_eq!(r.unwrap_err(), LockError::Timeout);
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn threads_exclude_each_other() {
        let m = RobustMutex::new();
        let counter = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = m.lock(SpinPolicy::default(), None).unwrap();
                        // A non-atomic read-modify-write made of two atomics: lost updates would
                        // show if two threads were inside at once.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn threads_sharing_a_token_exclude_each_other_and_never_take_over() {
        let m = RobustMutex::new();
        let token = OwnerToken::new(OwnerToken::MAX).unwrap();
        let counter = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        // Everyone is "dead" to this liveness question: only the own-token rule
                        // keeps a thread from taking the lock over from a sibling.
                        let g = m.lock_as(token, SpinPolicy::park(), None, |_| false).unwrap();
                        assert!(!g.owner_died());
                        let v = counter.load(Ordering::Relaxed);
                        std::thread::yield_now();
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 20_000);
    }

    #[test]
    fn a_dead_token_is_taken_over_and_its_late_unlock_changes_nothing() {
        let m = RobustMutex::new();
        let a = OwnerToken::new(7).unwrap();
        let b = OwnerToken::new(8).unwrap();
        let stale = m.try_lock_as(a).unwrap();
        let mut g =
            m.lock_as(b, SpinPolicy::park(), Some(Deadline::after(Duration::from_secs(5))), |t| t != 7).unwrap();
        assert!(g.owner_died());
        g.mark_consistent();
        // The owner judged dead unlocks after all: the word is b's and stays so.
        drop(stale);
        assert_eq!(m.holder(), Some(8));
        drop(g);
        assert_eq!(m.holder(), None);
    }

    #[test]
    fn tokens_are_bounded() {
        assert!(OwnerToken::new(0).is_none());
        assert!(OwnerToken::new(POISONED).is_none());
        assert_eq!(OwnerToken::new(OwnerToken::MAX).map(OwnerToken::get), Some(POISONED - 1));
        assert_eq!(OwnerToken::pid().get(), std::process::id());
    }
}
