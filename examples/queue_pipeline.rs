//! Scene 2 of the seed, "process communication": a writer process puts 0..9 into a queue, a reader
//! process takes them out, and, unlike the seed, the program then ends by itself.
//!
//! Python's version (the tutorial's comments translated from Chinese):
//!
//! ```python
//! from multiprocessing import Process, Queue
//!
//! def write(q):                       # put into the queue
//!     print('joined the queue: {}'.format(Process.pid))   # print the process's pid
//!     for i in range(10):             # 0..9
//!         print('putting into the queue: {}'.format(i))
//!         q.put(i)                    # put
//!
//! def read(q):                        # read the queue
//!     print('joined the queue: {}'.format(Process.pid))   # print the process's pid
//!     while True:                     # as soon as there is something, read it at once
//!         value = q.get()             # read
//!         print('got from the queue: {}'.format(value))
//!
//! if __name__ == "__main__":
//!     # Python's processes cannot talk to each other by default, since they run concurrently,
//!     # so we need another data structure: usually a stack or a queue
//!     q = Queue()                     # make the Queue
//!     pw = Process(target=write, args=(q,))   # create the writer process
//!     pr = Process(target=read, args=(q,))    # create the reader process
//!     pw.start()                      # start the writer
//!     pr.start()                      # start the reader
//!     pw.join()                       # block (wait for the writer)
//! ```
//!
//! The tutorial then notes: "if you run this, you will find that the program does not end: the
//! reader process keeps on reading". It cannot end: `q.get()` has no way to learn that the writer
//! is gone, so the reader waits for ever, and Python's exit waits for the reader. (It also prints
//! `Process.pid`, a property of the class, so each process prints `<property object at ...>`
//! instead of its pid.)
//!
//! Here the queue counts its members. When the writer is done it leaves (its sending handle is
//! dropped; had it crashed, its death would count as leaving too), and once the reader has taken
//! every value out, its next `recv` answers `Disconnected` instead of waiting. The reader stops,
//! both processes end, `main` joins them, and the program ends on its own, in a few milliseconds.
//!
//! Why the typed [`Queue<u64>`](ringpool::Queue) and not the byte [`Ring`](ringpool::Ring): the
//! values are plain numbers of one fixed size, so each goes into its own slot as it is, with no
//! encoding to bytes and back, and the queue is checked to hold `u64` values. The byte ring is for
//! messages of varying length (see the `named_queue` example, which sends words).
//!
//! Each process makes its own handle to the queue: the writer calls `sender()`, the reader
//! `receiver()`, inside the process that uses it. `main` holds the queue itself, which sends and
//! receives nothing and so does not keep the reader waiting.
//!
//! Run it with `cargo run --release --example queue_pipeline`.

use std::process::ExitCode;

use ringpool::ring::RecvError;
use ringpool::{Process, Queue, current_process};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("main: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let me = current_process();
    println!("main (pid {}): making a queue of u64 values in shared memory", me.pid());
    let queue: Queue<u64> =
        Queue::builder().slots(16).anonymous().map_err(|e| format!("cannot make the queue: {e}"))?;

    // Each child gets a clone of the queue (a mapping, cheap to clone) and joins it itself.
    let q = queue.clone();
    let mut writer = Process::builder()
        .name("writer")
        .fork(move || write(&q))
        .map_err(|e| format!("cannot start the writer: {e}"))?;
    let q = queue.clone();
    let mut reader = Process::builder()
        .name("reader")
        .fork(move || read(&q))
        .map_err(|e| format!("cannot start the reader: {e}"))?;
    println!("main: started the writer (pid {}) and the reader (pid {}); waiting for both", writer.pid(), reader.pid());

    let wrote = writer.join().map_err(|e| format!("waiting for the writer failed: {e}"))?;
    let read = reader.join().map_err(|e| format!("waiting for the reader failed: {e}"))?;
    println!("main: the writer ended with {wrote}, the reader with {read}");
    if !(wrote.success() && read.success()) {
        eprintln!("main: a child failed; see its message above");
        return Ok(ExitCode::FAILURE);
    }
    println!("main: the program ended on its own: the reader stopped by itself once the writer was done");
    Ok(ExitCode::SUCCESS)
}

/// The writer process: puts 0..9 into the queue, then leaves it.
fn write(queue: &Queue<u64>) {
    let me = current_process();
    let who = format!("{} (pid {})", me.name(), me.pid());
    let tx = match queue.sender() {
        Ok(tx) => tx,
        Err(e) => fail(&who, &format!("cannot join the queue: {e}")),
    };
    println!("{who}: joined the queue as a sender");
    for i in 0..10u64 {
        println!("{who}: put {i}");
        if let Err(e) = tx.send(i) {
            fail(&who, &format!("cannot put {i}: {e}"));
        }
    }
    println!("{who}: done; leaving the queue");
    // `tx` is dropped here: the queue now has no sender.
}

/// The reader process: gets values until the queue is empty and every writer is gone.
fn read(queue: &Queue<u64>) {
    let me = current_process();
    let who = format!("{} (pid {})", me.name(), me.pid());
    let rx = match queue.receiver() {
        Ok(rx) => rx,
        Err(e) => fail(&who, &format!("cannot join the queue: {e}")),
    };
    println!("{who}: joined the queue as a receiver");
    loop {
        match rx.recv() {
            Ok(value) => println!("{who}: got {value}"),
            Err(RecvError::Disconnected) => {
                println!("{who}: Disconnected: the queue is empty and every writer is gone, so I stop");
                return;
            }
            Err(e) => fail(&who, &format!("cannot get from the queue: {e}")),
        }
    }
}

/// Ends a child process with a message and exit code 1.
fn fail(who: &str, message: &str) -> ! {
    eprintln!("{who}: {message}");
    // A forked child leaves through ringpool's exit, which skips the parent's destructors.
    ringpool::process::exit(1)
}
