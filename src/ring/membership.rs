//! Membership: which processes hold handles of a ring, per side, found dead by pid and start
//! time and reaped for them; the registry of this process's mapped rings, for `fork`.

use crate::sys::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::control::{CLAIMING, MAX_MEMBERS, REAPING};
use super::core::{Core, Role};
use super::error::JoinError;
use crate::sync::{current_pid, liveness};

/// How often, at most, one process sweeps the member table for dead processes (ring-wide).
const SWEEP_INTERVAL_NS: u64 = 20_000_000;

/// Bits of `MembershipHeader::gone`... kept in `Control::membership` as flags.
const SENDERS_GONE: u32 = 1;
const RECEIVERS_GONE: u32 = 2;

/// This process's view of its membership in one mapped ring.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// Serializes (re-)registration among this process's threads.
    registering: AtomicBool,
    /// The pid our registry entry belongs to; differs from `current_pid()` in a forked child
    /// that has not registered yet. 0: not registered.
    pid: AtomicU32,
    slot: AtomicU32,
    senders: AtomicU32,
    receivers: AtomicU32,
}
/// Every live Core of this process, so a forked child can register its inherited handles.
static ALL_CORES: Mutex<Vec<Weak<Core>>> = Mutex::new(Vec::new());
impl Core {
    pub(super) fn track(self: &Arc<Self>) {
        static HOOKS: std::sync::Once = std::sync::Once::new();
        HOOKS.call_once(|| crate::sys::atfork::register(&super::fork::RingForkHooks));
        if let Ok(mut all) = ALL_CORES.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(self));
        }
    }
    // ----- membership ----------------------------------------------------------------------

    /// Makes sure this process has a registry entry (claiming one after a fork). Returns its index.
    #[inline]
    pub(crate) fn ensure_registered(&self) -> Result<usize, JoinError> {
        let me = current_pid();
        if self.local.pid.load(Ordering::Acquire) == me {
            return Ok(self.local.slot.load(Ordering::Relaxed) as usize);
        }
        self.register_slow(me)
    }

    #[cold]
    fn register_slow(&self, me: u32) -> Result<usize, JoinError> {
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
    fn claim_entry(&self, me: u32) -> Result<usize, JoinError> {
        let c = self.ctrl();
        let max = self.cfg.max_members as usize;
        let senders = self.local.senders.load(Ordering::Relaxed);
        let receivers = self.local.receivers.load(Ordering::Relaxed);
        for pass in 0..2 {
            for (i, m) in c.members.iter().enumerate().take(max) {
                if m.pid.compare_exchange(0, CLAIMING, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                m.start_time.store(liveness::own_start_time(), Ordering::Relaxed);
                m.senders.store(senders, Ordering::Relaxed);
                m.receivers.store(receivers, Ordering::Relaxed);
                m.pid.store(me, Ordering::Release);
                c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
                self.local.slot.store(i as u32, Ordering::Relaxed);
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
        Err(JoinError::TooManyMembers(max))
    }

    fn entry(&self, slot: usize) -> &super::control::Member {
        &self.ctrl().members[slot.min(MAX_MEMBERS - 1)]
    }

    /// A new handle of `role` made from the ring (not cloned from another handle): dead members
    /// are swept first, so a handle made on a ring whose peers were all killed sees them gone at
    /// once, not only when it first waits.
    pub(crate) fn join_fresh(&self, role: Role) -> Result<(), JoinError> {
        self.sweep(false);
        self.join(role)
    }

    /// A new handle of `role` in this process.
    pub(crate) fn join(&self, role: Role) -> Result<(), JoinError> {
        let slot = self.ensure_registered()?;
        let m = self.entry(slot);
        match role {
            Role::Sender => {
                self.local.senders.fetch_add(1, Ordering::Relaxed);
                m.senders.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(SENDERS_GONE);
            }
            Role::Receiver => {
                self.local.receivers.fetch_add(1, Ordering::Relaxed);
                m.receivers.fetch_add(1, Ordering::AcqRel);
                self.clear_gone(RECEIVERS_GONE);
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
            if pid == 0 || pid == REAPING {
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
        if !force
            && (now.saturating_sub(last) < SWEEP_INTERVAL_NS
                || c.membership.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err())
        {
            return;
        }
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        let (mut senders, mut receivers) = (false, false);
        for m in &c.members[..hw] {
            let pid = m.pid.load(Ordering::Acquire);
            if pid == 0 || pid == CLAIMING || pid == REAPING {
                continue;
            }
            if liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed)) {
                continue;
            }
            if m.pid.compare_exchange(pid, REAPING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            senders |= m.senders.swap(0, Ordering::AcqRel) > 0;
            receivers |= m.receivers.swap(0, Ordering::AcqRel) > 0;
            m.pid.store(0, Ordering::Release);
        }
        if senders {
            self.after_departure(Role::Sender);
        }
        if receivers {
            self.after_departure(Role::Receiver);
        }
    }

    /// Whether the process `pid`, found holding a lock, is a live member. A pid that is not in
    /// the member table at all is not a legitimate holder (every locker registers first).
    pub(super) fn member_alive(&self, pid: u32) -> bool {
        let c = self.ctrl();
        let hw = (c.membership.high_water.load(Ordering::Acquire) as usize).min(self.cfg.max_members as usize);
        c.members[..hw]
            .iter()
            .filter(|m| m.pid.load(Ordering::Acquire) == pid)
            .any(|m| liveness::is_alive(pid, m.start_time.load(Ordering::Relaxed)))
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
pub(super) fn child_exit() {
    let all = match ALL_CORES.try_lock() {
        Ok(all) => all.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
        Err(_) => return,
    };
    for core in all {
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
            if m.pid.compare_exchange(0, CLAIMING, Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            m.start_time.store(1, Ordering::Relaxed);
            m.pid.store(pid, Ordering::Release);
            c.membership.high_water.fetch_max(i as u32 + 1, Ordering::AcqRel);
            let side = if send_side { &c.send } else { &c.recv };
            side.lock.debug_force_owner(pid);
            return;
        }
    }
}
