//! Membership: which processes hold handles of a ring, per side, found dead by pid and start
//! time and reaped for them; the registry of this process's mapped rings, for `fork`.
//!
//! A member's entry also names it as a lock owner: the ring's locks hold an [`OwnerToken`] made of
//! the entry's index and the entry's generation (bumped on every claim), never a bare pid. A
//! holder is alive while its entry still has that generation and the entry's pid with its start
//! time runs: a dead owner whose pid was handed to another process (even to the waiter itself)
//! is seen dead, because its entry's start time no longer matches, or its entry was reaped and
//! claimed again under a new generation. Every thread of a process uses its entry's token.
//!
//! An entry in transition (`CLAIMING | pid`, `REAPING | pid`) names the process making the
//! transition; a sweep reclaims it once that process is dead (a process killed in the middle of
//! joining or reaping would otherwise leak the entry for ever).

use crate::sys::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::control::{CLAIMING, MAX_MEMBERS, Member, REAPING, TRANSIENT};
use super::core::{Core, Role};
use super::error::JoinRingError;
use crate::sync::{OwnerToken, RobustMutex, current_pid, liveness};

/// How often, at most, one process sweeps the member table for dead processes (ring-wide).
const SWEEP_INTERVAL_NS: u64 = 20_000_000;

/// Bits of `MembershipHeader::gone`... kept in `Control::membership` as flags.
pub(crate) const SENDERS_GONE: u32 = 1;
pub(crate) const RECEIVERS_GONE: u32 = 2;
/// Set (and never cleared) once a side has had a member: a side that never had one is not "gone"
/// (a receiver waits for its first sender), one that had members and has none left is, even when
/// the last of them died between giving up its count and saying so (found by the sweep).
pub(crate) const SENDERS_EVER: u32 = 4;
pub(crate) const RECEIVERS_EVER: u32 = 8;

/// Bits of an owner token that hold the entry's generation; the entry's index sits above them.
const GEN_BITS: u32 = 22;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// The generation after `g`: in `1..GEN_MASK`, so that a token is never 0 and the largest one
/// (index 255) stays below the poisoned word.
fn next_generation(g: u32) -> u32 {
    match (g & GEN_MASK) + 1 {
        n if n >= GEN_MASK => 1,
        n => n,
    }
}

/// The lock owner token of entry `slot` in generation `generation`.
pub(crate) fn token_of(slot: usize, generation: u32) -> Option<OwnerToken> {
    let slot = u32::try_from(slot).ok().filter(|&s| (s as usize) < MAX_MEMBERS)?;
    OwnerToken::new((slot << GEN_BITS) | (generation & GEN_MASK))
}

/// The entry index and generation a token names.
pub(crate) fn token_parts(token: u32) -> (usize, u32) {
    ((token >> GEN_BITS) as usize, token & GEN_MASK)
}

/// This process's view of its membership in one mapped ring.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// Serializes (re-)registration among this process's threads.
    registering: AtomicBool,
    /// The pid our registry entry belongs to; differs from `current_pid()` in a forked child
    /// that has not registered yet. 0: not registered.
    pid: AtomicU32,
    slot: AtomicU32,
    /// Our lock owner token (see the module docs), valid with `pid`.
    token: AtomicU32,
    senders: AtomicU32,
    receivers: AtomicU32,
}
/// Every live Core of this process, so a forked child can register its inherited handles.
static ALL_CORES: Mutex<Vec<Weak<Core>>> = Mutex::new(Vec::new());
impl Core {
    pub(super) fn track(self: &Arc<Self>) {
        // Fork-safe (a child forked mid-registration registers again; the registry keeps one).
        static HOOKS: crate::sys::once::ForkSafeOnce = crate::sys::once::ForkSafeOnce::new();
        HOOKS.call(|| crate::sys::atfork::register(&super::fork::RingForkHooks));
        if let Ok(mut all) = ALL_CORES.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(self));
        }
    }
    // ----- membership ----------------------------------------------------------------------

    /// Makes sure this process has a registry entry (claiming one after a fork). Returns its index.
    #[inline]
    pub(crate) fn ensure_registered(&self) -> Result<usize, JoinRingError> {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) == me {
            return Ok(self.local.slot.load(Ordering::Relaxed) as usize);
        }
        self.register_slow(me)
    }

    /// This process's lock owner token in this ring (registering first if needed).
    #[inline]
    pub(crate) fn owner_token(&self) -> Result<OwnerToken, JoinRingError> {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) != me {
            self.register_slow(me)?;
        }
        // Written before `local.pid` (Release) by whichever thread registered.
        OwnerToken::new(self.local.token.load(Ordering::Relaxed))
            .ok_or(JoinRingError::TooManyMembers(self.cfg.max_members as usize))
    }

    #[cold]
    fn register_slow(&self, me: u32) -> Result<usize, JoinRingError> {
        // A tiny spin lock among this process's threads (no std Mutex: a forked child may find a
        // std Mutex held by a thread that does not exist in it).
        while self.local.registering.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let result = if self.local.pid.load(Ordering::Acquire) == me {
            Ok(self.local.slot.load(Ordering::Relaxed) as usize)
        } else {
            self.claim_entry(me)
        };
        self.local.registering.store(false, Ordering::Release);
        result
    }

    /// Claims a free registry entry for `me`, carrying this process's current handle counts
    /// (inherited ones included, in a forked child).
    fn claim_entry(&self, me: u32) -> Result<usize, JoinRingError> {
        let c = self.ctrl();
        let max = self.cfg.max_members as usize;
        let senders = self.local.senders.load(Ordering::Relaxed);
        let receivers = self.local.receivers.load(Ordering::Relaxed);
        for pass in 0..2 {
            for (i, m) in c.members.iter().enumerate().take(max) {
                // The transient word names us: a sweep reclaims the entry if we die before the end.
                if m.pid.compare_exchange(0, CLAIMING | me, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
                let generation = next_generation(m.generation.load(Ordering::Relaxed));
                let Some(token) = token_of(i, generation) else {
                    m.pid.store(0, Ordering::Release);
                    continue;
                };
                m.generation.store(generation, Ordering::Relaxed);
                m.start_time.store(liveness::own_start_time(), Ordering::Relaxed);
                m.senders.store(senders, Ordering::Relaxed);
                m.receivers.store(receivers, Ordering::Relaxed);
                m.pid.store(me, Ordering::Release);
                self.local.slot.store(i as u32, Ordering::Relaxed);
                self.local.token.store(token.get(), Ordering::Relaxed);
                self.local.pid.store(me, Ordering::Release);
                if senders > 0 {
                    self.clear_gone(SENDERS_GONE);
                }
                if receivers > 0 {
                    self.clear_gone(RECEIVERS_GONE);
                }
                return Ok(i);
            }
            if pass == 0 {
                // Full: dead members may be hogging entries.
                self.sweep(true);
            }
        }
        Err(JoinRingError::TooManyMembers(max))
    }

    fn entry(&self, slot: usize) -> &super::control::Member {
        &self.ctrl().members[slot.min(MAX_MEMBERS - 1)]
    }

    /// A new handle of `role` made from the ring (not cloned from another handle): dead members
    /// are swept first, so a handle made on a ring whose peers were all killed sees them gone at
    /// once, not only when it first waits.
    pub(crate) fn join_fresh(&self, role: Role) -> Result<(), JoinRingError> {
        self.sweep(false);
        self.join(role)
    }

    /// A new handle of `role` in this process.
    pub(crate) fn join(&self, role: Role) -> Result<(), JoinRingError> {
        let slot = self.ensure_registered()?;
        let m = self.entry(slot);
        match role {
            Role::Sender => {
                self.local.senders.fetch_add(1, Ordering::Relaxed);
                m.senders.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(SENDERS_GONE);
                self.mark_ever(SENDERS_EVER);
            }
            Role::Receiver => {
                self.local.receivers.fetch_add(1, Ordering::Relaxed);
                m.receivers.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(RECEIVERS_GONE);
                self.mark_ever(RECEIVERS_EVER);
            }
        }
        Ok(())
    }

    /// A handle of `role` goes away. Never panics; wakes the other side if it was the last one.
    pub(crate) fn leave(&self, role: Role) {
        let Ok(slot) = self.ensure_registered() else {
            // No entry could be claimed (table full after a fork): nothing of ours is counted.
            return;
        };
        let m = self.entry(slot);
        let (local, shared) = match role {
            Role::Sender => (&self.local.senders, &m.senders),
            Role::Receiver => (&self.local.receivers, &m.receivers),
        };
        let _ = local.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = shared.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.after_departure(role);
    }

    /// Called after a member of `role` left or was reaped: if none is left, mark that side gone
    /// and wake the other side so it sees it.
    fn after_departure(&self, role: Role) {
        let c = self.ctrl();
        if self.live_count(role) != 0 {
            return;
        }
        let bit = match role {
            Role::Sender => SENDERS_GONE,
            Role::Receiver => RECEIVERS_GONE,
        };
        c.membership.gone.fetch_or(bit, Ordering::SeqCst);
        // A member may have joined between our count and our flag: look again.
        if self.live_count(role) != 0 {
            self.clear_gone(bit);
        }
        match role {
            Role::Sender => c.not_empty.notify_all(),
            Role::Receiver => c.not_full.notify_all(),
        }
    }

    fn mark_ever(&self, bit: u32) {
        let gone = &self.ctrl().membership.gone;
        if gone.load(Ordering::Relaxed) & bit == 0 {
            gone.fetch_or(bit, Ordering::SeqCst);
        }
    }

    fn clear_gone(&self, bit: u32) {
        let gone = &self.ctrl().membership.gone;
        if gone.load(Ordering::Relaxed) & bit != 0 {
            gone.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Handles of `role` held by registered members (dead ones included until swept).
    pub(crate) fn live_count(&self, role: Role) -> u32 {
        let c = self.ctrl();
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        let mut n = 0u32;
        for m in &c.members[..hw] {
            let pid = m.pid.load(Ordering::Acquire);
            if pid == 0 || pid & REAPING != 0 {
                continue;
            }
            n = n.saturating_add(match role {
                Role::Sender => m.senders.load(Ordering::Acquire),
                Role::Receiver => m.receivers.load(Ordering::Acquire),
            });
        }
        n
    }

    /// Whether every member of `role` is gone (they existed once, and none is left). With
    /// `sweep`, dead members are reaped first (rate-limited ring-wide).
    pub(crate) fn peers_gone(&self, role: Role, sweep: bool) -> bool {
        let bit = match role {
            Role::Sender => SENDERS_GONE,
            Role::Receiver => RECEIVERS_GONE,
        };
        if sweep {
            self.sweep(false);
        }
        self.ctrl().membership.gone.load(Ordering::Acquire) & bit != 0 && self.live_count(role) == 0
    }

    /// Fast check used on every send: has the last receiver left? (one load of a quiet line)
    #[inline]
    pub(crate) fn receivers_maybe_gone(&self) -> bool {
        self.ctrl().membership.gone.load(Ordering::Relaxed) & RECEIVERS_GONE != 0
    }

    /// Reaps registry entries of dead processes. At most once per [`SWEEP_INTERVAL_NS`] ring-wide
    /// unless `force`.
    pub(crate) fn sweep(&self, force: bool) {
        let c = self.ctrl();
        let now = crate::sys::monotonic_ns();
        let last = c.membership.last_sweep.load(Ordering::Relaxed);
        // A `last` in the future (a scribbled word) counts as long ago: it must not stop sweeps.
        let recent = now.checked_sub(last).is_some_and(|since| since < SWEEP_INTERVAL_NS);
        if !force
            && (recent
                || c.membership.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err())
        {
            return;
        }
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        let (mut senders, mut receivers, mut reaped) = (false, false, false);
        let me = current_pid();
        for m in &c.members[..hw] {
            let pid = m.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            let alive = if pid & TRANSIENT != 0 {
                // In transition by the process the low bits name: by pid alone (its start time is
                // not recorded yet); a recycled pid only delays the reclaim until that one ends.
                liveness::is_alive(pid & !TRANSIENT, 0)
            } else {
                liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed))
            };
            if alive {
                continue;
            }
            if m.pid.compare_exchange(pid, REAPING | me, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            senders |= m.senders.swap(0, Ordering::AcqRel) > 0;
            receivers |= m.receivers.swap(0, Ordering::AcqRel) > 0;
            reaped = true;
            m.pid.store(0, Ordering::Release);
        }
        // A dead member may have given up its last count without saying so (killed inside
        // `leave`, between the count and `after_departure`): after any reap, a side that has had
        // members is looked at again (`after_departure` acts only when none is left).
        let ever = c.membership.gone.load(Ordering::Acquire);
        if senders || (reaped && ever & SENDERS_EVER != 0) {
            self.after_departure(Role::Sender);
        }
        if receivers || (reaped && ever & RECEIVERS_EVER != 0) {
            self.after_departure(Role::Receiver);
        }
    }

    /// Whether the owner `token`, found holding a lock, is a live member: its entry still has the
    /// token's generation, and the entry's pid with its start time runs. A token that names no
    /// such entry is not a legitimate holder (every locker registers first).
    pub(super) fn member_alive(&self, token: u32) -> bool {
        self.holder_entry(token).is_some_and(|(m, pid)| liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed)))
    }

    /// The entry and pid of the member that `token` names, if the entry is still that member's.
    fn holder_entry(&self, token: u32) -> Option<(&Member, u32)> {
        let (slot, generation) = token_parts(token);
        if slot >= self.cfg.max_members as usize {
            return None;
        }
        let m = self.ctrl().members.get(slot)?;
        let pid = m.pid.load(Ordering::Acquire);
        // A free entry, or one in transition: the member that held the lock has left or died.
        if pid == 0 || pid & TRANSIENT != 0 || m.generation.load(Ordering::Acquire) != generation {
            return None;
        }
        Some((m, pid))
    }

    /// The pid of the member holding `lock`, if any (a snapshot, for tests and diagnostics).
    pub(crate) fn lock_holder_pid(&self, lock: &RobustMutex) -> Option<u32> {
        self.holder_entry(lock.holder()?).map(|(_, pid)| pid)
    }

    /// Drops every membership this process holds in this ring (used by a forked child about to
    /// `_exit`, whose inherited handles will never be dropped).
    fn release_all(&self) {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) != me {
            return;
        }
        let m = self.entry(self.local.slot.load(Ordering::Relaxed) as usize);
        let s = m.senders.swap(0, Ordering::AcqRel);
        let r = m.receivers.swap(0, Ordering::AcqRel);
        self.local.senders.store(0, Ordering::Relaxed);
        self.local.receivers.store(0, Ordering::Relaxed);
        if m.pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.local.pid.store(0, Ordering::Release);
        }
        if s > 0 {
            self.after_departure(Role::Sender);
        }
        if r > 0 {
            self.after_departure(Role::Receiver);
        }
    }

    /// The last handle of this mapping in this process is gone: free our registry entry if it is
    /// empty.
    pub(super) fn drop_membership(&self) {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) == me {
            let m = self.entry(self.local.slot.load(Ordering::Relaxed) as usize);
            if m.senders.load(Ordering::Acquire) == 0 && m.receivers.load(Ordering::Acquire) == 0 {
                let _ = m.pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// Around `fork()`: see [`super::fork`].
pub(super) fn fork_prepare() -> Option<MutexGuard<'static, Vec<Weak<Core>>>> {
    ALL_CORES.lock().ok()
}

/// Whether any live mapping in `all` holds handles of this process (what [`fork_child`] would
/// register in a child).
pub(super) fn holds_handles(all: &[Weak<Core>]) -> bool {
    all.iter()
        .filter_map(Weak::upgrade)
        .any(|core| core.local.senders.load(Ordering::Relaxed) > 0 || core.local.receivers.load(Ordering::Relaxed) > 0)
}

/// In a forked child: register every inherited mapping that holds handles under the child's pid.
pub(super) fn fork_child(all: &[Weak<Core>]) {
    for core in all.iter().filter_map(Weak::upgrade) {
        let held = core.local.senders.load(Ordering::Relaxed) + core.local.receivers.load(Ordering::Relaxed);
        // The registration spin lock may have been held by a parent thread at the fork; in the
        // child that thread does not exist, so the flag is reset before use.
        core.local.registering.store(false, Ordering::Relaxed);
        if held > 0 {
            let _ = core.ensure_registered();
        }
    }
}

/// In a forked child that will use none of its inherited handles (a pool worker): forget them.
/// Nothing is registered for them and nothing in shared memory is touched: the child starts with
/// no membership, as a re-executed process would.
pub(super) fn fork_child_forgetting(all: &[Weak<Core>]) {
    for core in all.iter().filter_map(Weak::upgrade) {
        core.local.registering.store(false, Ordering::Relaxed);
        core.local.senders.store(0, Ordering::Relaxed);
        core.local.receivers.store(0, Ordering::Relaxed);
        core.local.pid.store(0, Ordering::Release);
    }
}

/// In a forked child about to `_exit`: give up every membership at once.
/// Allocates nothing (it may run between `fork` and `exec`): the list is walked under its lock,
/// which no code holds while it drops a mapping.
pub(super) fn child_exit() {
    let Ok(all) = ALL_CORES.try_lock() else { return };
    for core in all.iter().filter_map(Weak::upgrade) {
        core.release_all();
    }
}

impl Core {
    /// Test support: makes one side's lock look held by a process that died, whose pid is now
    /// `pid` (a live process: a member, or the caller itself). A member-table entry is forged for
    /// the dead owner with `pid` and a start time no live process has.
    pub(crate) fn debug_forge_dead_owner(&self, send_side: bool, pid: u32) {
        let c = self.ctrl();
        let max = self.cfg.max_members as usize;
        for (i, m) in c.members.iter().enumerate().take(max) {
            if m.pid.compare_exchange(0, CLAIMING | pid, Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
            let generation = next_generation(m.generation.load(Ordering::Relaxed));
            m.generation.store(generation, Ordering::Relaxed);
            m.start_time.store(1, Ordering::Relaxed);
            m.pid.store(pid, Ordering::Release);
            let side = if send_side { &c.send } else { &c.recv };
            if let Some(token) = token_of(i, generation) {
                side.lock.debug_force_owner(token.get());
            }
            return;
        }
    }

    /// Test support: leaves a free member-table entry in transition (joining when `claiming`,
    /// else being reaped) by process `pid`, holding one sender, as a process killed in the middle
    /// would.
    pub(crate) fn debug_forge_transient(&self, claiming: bool, pid: u32) {
        let c = self.ctrl();
        let state = if claiming { CLAIMING } else { REAPING } | (pid & !TRANSIENT);
        for (i, m) in c.members.iter().enumerate().take(self.cfg.max_members as usize) {
            if m.pid.compare_exchange(0, state, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                m.senders.store(1, Ordering::Relaxed);
                c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_entry_and_generation_and_stay_valid() {
        // Generations never reach 0 or GEN_MASK, so every token is a valid, unpoisoned owner.
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(GEN_MASK - 2), GEN_MASK - 1);
        assert_eq!(next_generation(GEN_MASK - 1), 1, "wraps past the largest");
        assert_eq!(next_generation(u32::MAX), 1, "garbage in the shared word");
        let last = token_of(MAX_MEMBERS - 1, GEN_MASK - 1).unwrap();
        assert_eq!(last.get(), OwnerToken::MAX);
        assert_eq!(token_parts(last.get()), (MAX_MEMBERS - 1, GEN_MASK - 1));
        assert!(token_of(MAX_MEMBERS, 1).is_none());
        let t = token_of(3, 7).unwrap();
        assert_eq!(token_parts(t.get()), (3, 7));
        assert_ne!(t, token_of(3, 8).unwrap(), "a new claim of the entry is a new owner");
    }
}
