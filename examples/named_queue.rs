//! Two programs that share no parent meet through a ring by its name.
//!
//! In the first terminal, a server creates the ring `/dev/shm/demo` and prints what it receives:
//!
//! ```text
//! $ cargo run --release --example named_queue -- serve demo
//! server (pid 4242): ring "demo" is ready (65536 bytes, /dev/shm/demo)
//! server: waiting for clients; in another terminal run:
//! server:   cargo run --release --example named_queue -- send demo hello world
//! server: got "hello"
//! server: got "world"
//! server: every client has left and the ring is empty: stopping after 2 messages
//! server: removed /dev/shm/demo; bye
//! ```
//!
//! In the second terminal, a client opens the ring by name, sends each word, and leaves:
//!
//! ```text
//! $ cargo run --release --example named_queue -- send demo hello world
//! client (pid 4250): opened ring "demo"
//! client: sent "hello"
//! client: sent "world"
//! client: done: sent 2 words; leaving the ring
//! ```
//!
//! The server ends by itself once a client has come and every client has left (the ring counts its
//! senders; its receiver gets `Disconnected` when none is left and the ring is drained). Start
//! several clients at once and it waits for the last of them. Ctrl-C (SIGINT), SIGTERM or SIGHUP
//! stop it too: a signal handler sets a flag that the server looks at between short waits
//! (`recv_timeout`), so it always leaves through its normal path, which removes the name from
//! `/dev/shm`. Only `kill -9` can leave a stale name behind; `serve --purge demo` then replaces it.
//! (A client of such a stale ring cannot tell at once that nobody listens: its words are taken
//! until the ring is full, and only then does it learn that the server is gone.)
//!
//! Words are of any length, so this uses the byte [`Ring`]; the `queue_pipeline` example uses the
//! typed `Queue<u64>` for numbers.

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use ringpool::ring::{RecvTimeoutError, SendError};
use ringpool::{Ring, Segment, SegmentError, current_process};

/// Bytes of message storage in the ring.
const CAPACITY: usize = 64 * 1024;

/// How long the server waits for a message before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);

const USAGE: &str = "\
usage:
  named_queue serve [--purge] NAME   create the ring NAME, print what clients send, stop when they have left
  named_queue send NAME WORD...      send each WORD to the server of NAME, then exit

  --purge   first remove a ring NAME left behind by a server that was killed with kill -9

With cargo: cargo run --release --example named_queue -- serve demo";

/// The signal that asked the server to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs inside the signal handler: only an atomic store, which is async-signal-safe.
extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", "--purge", name] => serve(name, true),
        ["serve", name] if !name.starts_with('-') => serve(name, false),
        ["send", name, words @ ..] if !words.is_empty() && !name.starts_with('-') => send(name, words),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// What ended the server's loop.
enum Stop {
    ClientsGone,
    Signal(Signal),
    Failed(RecvTimeoutError),
}

fn serve(name: &str, purge: bool) -> ExitCode {
    // Handlers first: a Ctrl-C from now on always goes through the clean-up below.
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let action = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe, and this
        // program installs no other handler for these signals that this could disturb.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            eprintln!("server: cannot handle {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let builder = Ring::builder().capacity(CAPACITY);
    let made = if purge { builder.purge_and_create(name) } else { builder.create(name) };
    let ring = match made {
        Ok(ring) => ring,
        Err(SegmentError::AlreadyExists(_)) => {
            eprintln!(
                "server: the name {name:?} is taken: another server is using it, or a server that was \
                 killed left it behind.\nIf no server of {name:?} is running, replace the stale ring with:\n  \
                 cargo run --release --example named_queue -- serve --purge {name}"
            );
            return ExitCode::FAILURE;
        }
        Err(e @ SegmentError::InvalidName { .. }) => {
            eprintln!("server: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("server: cannot create the ring {name:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rx = match ring.receiver() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("server: cannot join the ring {name:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let purged = if purge { ", any older one of that name removed" } else { "" };
    println!(
        "server (pid {}): ring {name:?} is ready ({} bytes, /dev/shm/{name}){purged}",
        current_process().pid(),
        ring.capacity()
    );
    println!("server: waiting for clients; in another terminal run:");
    println!("server:   cargo run --release --example named_queue -- send {name} hello world");

    let mut received = 0u64;
    let stop = loop {
        if let Ok(signal) = Signal::try_from(STOP_SIGNAL.load(Ordering::Relaxed)) {
            break Stop::Signal(signal);
        }
        match rx.recv_timeout(POLL) {
            Ok(message) => {
                received += 1;
                println!("server: got {:?}", String::from_utf8_lossy(&message));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Stop::ClientsGone,
            Err(e) => break Stop::Failed(e),
        }
    };

    let code = match stop {
        Stop::ClientsGone => {
            println!("server: every client has left and the ring is empty: stopping after {received} messages");
            ExitCode::SUCCESS
        }
        Stop::Signal(signal) => {
            println!("server: got {signal}: stopping after {received} messages");
            // The shell's convention for "ended by this signal".
            ExitCode::from(128 + signal as u8)
        }
        Stop::Failed(e) => {
            eprintln!("server: cannot receive: {e}");
            ExitCode::FAILURE
        }
    };
    // Dropping the last handle in the process that created the ring removes its name.
    drop(rx);
    drop(ring);
    if Segment::exists(name) {
        println!("server: /dev/shm/{name} now belongs to a newer ring (made with --purge); left it alone");
    } else {
        println!("server: removed /dev/shm/{name}; bye");
    }
    code
}

fn send(name: &str, words: &[&str]) -> ExitCode {
    let ring = match Ring::builder().open(name) {
        Ok(ring) => ring,
        Err(SegmentError::NotFound(_)) => {
            eprintln!(
                "client: no ring named {name:?}: start the server first:\n  \
                 cargo run --release --example named_queue -- serve {name}"
            );
            return ExitCode::FAILURE;
        }
        Err(e @ SegmentError::InvalidName { .. }) => {
            eprintln!("client: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("client: cannot open the ring {name:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tx = match ring.sender() {
        Ok(tx) => tx,
        Err(e) => {
            eprintln!("client: cannot join the ring {name:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("client (pid {}): opened ring {name:?}", current_process().pid());
    for (sent, word) in words.iter().enumerate() {
        match tx.send(word.as_bytes()) {
            Ok(()) => println!("client: sent {word:?}"),
            Err(SendError::Disconnected(_)) => {
                eprintln!("client: the server of {name:?} is gone; sent {sent} of {} words", words.len());
                return ExitCode::FAILURE;
            }
            Err(SendError::TooLarge { len, max, .. }) => {
                eprintln!("client: {word:?} is {len} bytes, longer than the ring's largest message ({max} bytes)");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("client: cannot send {word:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("client: done: sent {} words; leaving the ring", words.len());
    ExitCode::SUCCESS
}
