//! Two programs meet by name on a ring of an enum of messages, some holding strings and vectors:
//! one serves, one sends. Each message is archived (rkyv) straight into the ring by the sender and
//! read where it lies by the server, after validation: no serialization buffer, no copy.
//!
//! ```text
//! $ cargo run --release --example typed_messages -- serve demo      # first terminal
//! $ cargo run --release --example typed_messages -- send demo hello typed world   # second
//! ```
//!
//! With no arguments it plays both parts itself: it serves a ring named after its pid and starts a
//! second copy of its own program (a separate process, re-executed, sharing nothing with it but
//! the ring's name) as the sender, then ends on its own when the sender said goodbye.
//!
//! The server ends when every sender that said hello has said goodbye (or when no message came
//! for 30 seconds). The creator removes the name from /dev/shm when it ends; `serve --purge NAME`
//! replaces one left behind by a server killed with kill -9.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ringpool::SegmentError;
use ringpool::ring::archive::{TypedRecvError, TypedRing, TypedRingBuilder, rkyv};

/// The messages. Every variant crosses the ring archived; the server reads `ArchivedMsg` in place.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
#[rkyv(crate = rkyv)]
enum Msg {
    /// A sender introduces itself.
    Hello { from: String, pid: u32 },
    /// A line of text.
    Text(String),
    /// Some numbers (here: the length of each word).
    Numbers(Vec<u64>),
    /// A summary, with an optional field.
    Summary { words: u32, longest: Option<String> },
    /// The sender leaves.
    Bye { pid: u32 },
}

/// How long the server waits for the next message before giving up.
const IDLE: Duration = Duration::from_secs(30);

const USAGE: &str = "\
usage:
  typed_messages                          play both parts: serve, and start a sender (ends on its own)
  typed_messages serve [--purge] NAME     create the ring NAME and print what senders send
  typed_messages send NAME WORD...        send a few messages made of the WORDs to the server of NAME

With cargo: cargo run --release --example typed_messages -- serve demo";

/// Both programs build the ring the same way; the tag names the message type across builds.
fn builder() -> TypedRingBuilder<Msg> {
    TypedRing::<Msg>::builder().capacity(64 * 1024).type_tag("typed_messages::Msg/1")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        [] => both(),
        ["serve", "--purge", name] => serve(name, true, None),
        ["serve", name] if !name.starts_with('-') => serve(name, false, None),
        ["send", name, words @ ..] if !words.is_empty() && !name.starts_with('-') => send(name, words),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves a ring named after this process and re-executes this program as its sender.
fn both() -> Result<(), String> {
    let me = std::process::id();
    let name = format!("typed-messages-{me}");
    println!("main (pid {me}): I will serve the ring \"{name}\" and start a copy of this program to send to it");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own program: {e}"))?;
    let mut sender = None;
    let started = serve(
        &name,
        true,
        Some(&mut |name: &str| {
            let child = Command::new(&exe)
                .args(["send", name, "hello", "from", "another", "program"])
                .spawn()
                .map_err(|e| format!("cannot start the sender: {e}"))?;
            println!("main: started the sender as a separate program (pid {})", child.id());
            sender = Some(child);
            Ok(())
        }),
    );
    let status = match sender {
        Some(mut child) => wait_at_most(&mut child, IDLE)?,
        None => return started,
    };
    started?;
    let gone = !std::path::Path::new("/dev/shm").join(&name).exists();
    let gone = if gone { "is removed" } else { "is STILL THERE (a bug)" };
    println!("main: the sender ended with {status}; the server is done and /dev/shm/{name} {gone}");
    println!("main: the program ended on its own");
    Ok(())
}

fn wait_at_most(child: &mut std::process::Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the sender did not end in time; killed it".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type OnReady<'a> = &'a mut dyn FnMut(&str) -> Result<(), String>;

/// Creates the ring `name`, then prints every message, read in place, until every sender that
/// said hello said goodbye.
fn serve(name: &str, purge: bool, on_ready: Option<OnReady<'_>>) -> Result<(), String> {
    let me = std::process::id();
    let made = if purge { builder().purge_and_create(name) } else { builder().create(name) };
    let ring = match made {
        Ok(r) => r,
        Err(SegmentError::AlreadyExists(_)) => {
            return Err(format!("a ring named {name:?} exists already; `serve --purge {name}` replaces it"));
        }
        Err(e) => return Err(format!("cannot create the ring {name:?}: {e}")),
    };
    let rx = ring.receiver().map_err(|e| e.to_string())?;
    println!(
        "server (pid {me}): ring \"{name}\" is ready (/dev/shm/{name}, messages up to {} bytes); waiting for senders",
        ring.max_message_len()
    );
    if let Some(f) = on_ready {
        f(name)?;
    }
    let (mut greeted, mut left, mut count) = (0u32, 0u32, 0u32);
    loop {
        let msg = match rx.recv_archived_timeout(IDLE) {
            Ok(m) => m,
            Err(TypedRecvError::Timeout) => return Err(format!("no message for {IDLE:?}: stopping")),
            Err(TypedRecvError::Disconnected) if greeted > 0 => {
                println!("server: every sender left without saying goodbye; stopping");
                break;
            }
            Err(TypedRecvError::Invalid { len, reason }) => {
                println!("server: dropped a {len}-byte message that is not a valid Msg ({reason})");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        count += 1;
        // `msg` derefs to `ArchivedMsg`: the fields are read where they lie in the ring.
        match &*msg {
            ArchivedMsg::Hello { from, pid } => {
                greeted += 1;
                println!("server: got Hello from \"{from}\" (pid {pid})");
            }
            ArchivedMsg::Text(text) => println!("server: got Text \"{text}\" ({} bytes)", text.len()),
            ArchivedMsg::Numbers(v) => {
                let sum: u64 = v.iter().map(|n| n.to_native()).sum();
                println!("server: got Numbers {v:?}: {} numbers adding up to {sum}", v.len());
            }
            ArchivedMsg::Summary { words, longest } => match longest.as_ref() {
                Some(w) => println!("server: got Summary: {words} words, the longest is \"{w}\""),
                None => println!("server: got Summary: {words} words, none longest"),
            },
            ArchivedMsg::Bye { pid } => {
                left += 1;
                println!("server: got Bye from pid {pid}");
                if left >= greeted {
                    break;
                }
            }
        }
    }
    println!("server: received {count} messages; every sender has said goodbye; removing /dev/shm/{name}");
    Ok(())
}

/// Opens the ring `name` (waiting up to 10 s for the server to create it) and sends a few messages
/// built from `words`.
fn send(name: &str, words: &[&str]) -> Result<(), String> {
    let me = std::process::id();
    let start = Instant::now();
    let ring = loop {
        match builder().open(name) {
            Ok(r) => break r,
            Err(SegmentError::NotFound(_)) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot open the ring {name:?}: {e}")),
        }
    };
    let tx = ring.sender().map_err(|e| e.to_string())?;
    println!("sender (pid {me}): opened ring \"{name}\"");
    let text = words.join(" ");
    let longest = words.iter().max_by_key(|w| w.len()).map(|w| w.to_string());
    let msgs = vec![
        Msg::Hello { from: "typed_messages sender".into(), pid: me },
        Msg::Text(text),
        Msg::Numbers(words.iter().map(|w| w.len() as u64).collect()),
        Msg::Summary { words: words.len() as u32, longest },
        Msg::Bye { pid: me },
    ];
    for m in msgs {
        let what = format!("{m:?}");
        tx.send_timeout(m, IDLE).map_err(|e| format!("cannot send {what}: {e}"))?;
        println!("sender: sent {what}");
    }
    println!("sender: done; leaving the ring");
    Ok(())
}
