//! Scene 1 of the seed: one process starts another and waits for it.
//!
//! Python's version:
//!
//! ```python
//! def start():
//!     time.sleep(2)
//!     print(multiprocessing.current_process().name)
//!     print(multiprocessing.current_process().pid)
//!     print(multiprocessing.current_process().is_alive())
//!
//! p = multiprocessing.Process(target=start)
//! p.start()
//! p.join()
//! ```
//!
//! Here the child sleeps 200 ms instead of 2 s, so the example ends quickly. Each process prints
//! its own pid: two different numbers, because these are two processes, not two threads.
//!
//! Run it with `cargo run --release --example process_basics`.

use std::time::Duration;

use ringpool::{Process, current_process};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let me = current_process();
    println!("parent: program start; I am {}, pid {}", me.name(), me.pid());

    let mut p = Process::start(|| {
        std::thread::sleep(Duration::from_millis(200));
        let me = current_process();
        println!("child: my name is {}, my pid is {}, alive: {}", me.name(), me.pid(), me.is_alive());
    })?;
    println!("parent: started {} (pid {}), waiting for it to finish", p.name(), p.pid());

    let status = p.join()?;
    let alive = p.is_alive();
    println!("parent: {} finished with {status}; alive now: {alive}", p.name());
    println!("parent: program end; two processes took part: {} (parent) and {} (child)", me.pid(), p.pid());
    Ok(())
}
