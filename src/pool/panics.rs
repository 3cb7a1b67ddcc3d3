//! Capturing the panics of tasks in a worker: the pool's claim on the process layer's panic hook.
//!
//! A task's panic is the task's failure, not the worker's: the trampoline catches its unwind, and
//! the text (message and location) goes to the parent as that task's [`TaskError::Panicked`].
//! The process layer's panic hook would otherwise report it as the process's panic and print it;
//! so the pool registers a claimer there ([`crate::process::register_panic_claimer`]) that takes
//! every panic of a thread that has capture on, and keeps its text for the trampoline.
//!
//! [`TaskError::Panicked`]: super::TaskError::Panicked

use std::cell::{Cell, RefCell};
use std::panic::PanicHookInfo;

thread_local! {
    /// True while this thread runs tasks: a panic is a task's.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The text of the last captured panic ("message (at location)").
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Turns task-panic capture on or off for this thread (see [`take_captured_panic`]). While on, a
/// panic is neither reported to the parent as the process's panic nor printed: its text is kept
/// for the trampoline, which catches the unwind and fails only that task.
pub(crate) fn capture_task_panics(on: bool) {
    // Fork-safe (a child forked mid-registration registers again; the same claimer is kept once).
    static REGISTER: crate::sys::once::ForkSafeOnce = crate::sys::once::ForkSafeOnce::new();
    REGISTER.call(|| {
        // Four places, and the pool is the only layer that registers: cannot be full.
        let _ = crate::process::register_panic_claimer(claim);
    });
    let _ = CAPTURING.try_with(|c| c.set(on));
}

/// The text of the panic captured last on this thread, if any (taken: a second call gets `None`).
pub(crate) fn take_captured_panic() -> Option<String> {
    CAPTURED.try_with(|c| c.borrow_mut().take()).ok().flatten()
}

/// The claimer: takes the panic of a thread that runs tasks, keeping its text.
fn claim(info: &PanicHookInfo<'_>) -> bool {
    if !CAPTURING.try_with(Cell::get).unwrap_or(false) {
        return false;
    }
    let message = crate::process::payload_text(info.payload());
    let text = match info.location() {
        Some(loc) => format!("{message} (at {loc})"),
        None => message.to_owned(),
    };
    let _ = CAPTURED.try_with(|c| *c.borrow_mut() = Some(text));
    true
}
