//! # ringpool-compare
//!
//! Measures ringpool beside its peers in one run, the same way for all of them:
//! `cargo run --release -p ringpool-compare -- [--quick] [--json PATH] [--plot PATH] [--only PEER,...]`.
//! See `README.md` beside this crate for what each row measures.
//!
//! Every peer runs as two separate processes (re-executions of this binary in a hidden
//! `--child` role), pinned to two CPUs; every message is written in full and checked.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`runner`] | the plan of a run: which workloads, which peers, how many rounds; the main loop |
//! | [`peers`] | **the `Peer` trait and its registration point**; one file per peer |
//! | [`workload`] | one-way throughput and round trip, written once, generic over `Peer` |
//! | [`payload`] | the message: how it is written and how it is checked |
//! | [`faults`] | what goes wrong: failures counted for raw_sync and ringpool (timed waits, a SIGKILLed lock holder) |
//! | [`limits`] | the floors: a bounced cache line, a futex ping-pong, memcpy, a system call |
//! | [`python`] | Python's `multiprocessing` (scripts in `python/`) |
//! | [`mpmc`] | producers x consumers: N sending and M receiving processes on one ringpool channel (and ipmpsc Nx1) |
//! | [`pools`] | **the `PoolPeer` trait and its registration point** (ringpool's `Pool` goes here) |
//! | [`typed`] | typed data: a 64-byte struct with a string, one-way, ringpool TypedRing beside ipc-channel and ipmpsc (serde) |
//! | [`typed_pool`] | typed pool maps: strings and `Vec<f64>`s, ringpool (`map_archived`), procspawn, Python |
//! | [`report`] | the markdown tables, the ratios and the JSON lines |
//! | [`plot`] | the SVG of one-way throughput against message size |
//! | [`harness`] | child processes, the link between them, pinning |
//! | [`child`] | the hidden `--child` mode |
//! | [`shm`] | `/dev/shm` checked before and after, this run's leftovers removed |
//! | [`cli`] | the command line |

mod child;
mod cli;
mod faults;
mod harness;
mod limits;
mod mpmc;
mod payload;
mod peers;
mod plot;
mod pools;
mod python;
mod report;
mod ringpool_pool;
mod runner;
mod shm;
mod typed;
mod typed_pool;
mod workload;

fn main() {
    // procspawn's pool (the typed pool rows) re-executes this binary; its workers stop here.
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child::main(&args[1..]);
    }
    let options = match cli::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ringpool-compare: {e}\n\n{}", cli::USAGE);
            std::process::exit(2);
        }
    };
    std::process::exit(runner::run(options));
}
