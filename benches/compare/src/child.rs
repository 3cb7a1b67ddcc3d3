//! The hidden `--child ROLE key=value...` mode: one side of one measurement, in its own process.

use std::path::PathBuf;

use crate::harness::{Args, Link, RESULT_PREFIX, Result, pin};
use crate::peers::{Role, Session, Spec};
use crate::{faults, limits, mpmc, peers, pools, typed};

/// Runs one role and exits: status 0 with a `RESULT {json}` line, 1 on an error,
/// [`crate::payload::MISMATCH_EXIT`] on a wrong message.
pub fn main(words: &[String]) -> ! {
    let role = words.first().cloned().unwrap_or_default();
    match run(&role, words.get(1..).unwrap_or_default()) {
        Ok(v) => {
            println!("{RESULT_PREFIX}{v}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("ringpool-compare child {role}: {e}");
            std::process::exit(1)
        }
    }
}

fn run(role: &str, words: &[String]) -> Result<serde_json::Value> {
    let args = Args::parse(words)?;
    // Pin first: every thread a peer starts later inherits the CPU.
    if let Some(cpu) = args.opt("cpu") {
        pin(cpu.parse()?)?;
    }
    let link = match args.opt("link") {
        // SAFETY: the runner passed this descriptor number for the inherited link socket; nothing
        // else in this fresh process knows of it, so it becomes the link's alone.
        Some(fd) => Some(unsafe { Link::from_raw(fd.parse()?) }),
        None => None,
    };
    if let Some(r) = Role::parse(role) {
        let (name, size) = (args.get("peer")?, args.num::<usize>("size")?);
        let entry = peers::all()
            .into_iter()
            .find(|p| p.name == name && (p.supports)(size))
            .ok_or_else(|| format!("no peer {name} for {size}-byte messages"))?;
        let session = Session {
            link: link.ok_or("a peer needs its link")?,
            spec: Spec::for_size(size),
            tag: args.get("tag")?.to_string(),
            shm_prefix: args.get("prefix")?.to_string(),
            scratch: PathBuf::from(args.get("scratch")?),
            args: args.clone(),
        };
        (entry.run)(r, &session)
    } else if limits::ROLES.contains(&role) {
        limits::run(role, link.as_ref(), &args)
    } else if typed::ROLES.contains(&role) {
        typed::run(role, link.as_ref(), &args)
    } else if mpmc::ROLES.contains(&role) {
        mpmc::run(role, &args)
    } else if faults::ROLES.contains(&role) {
        faults::run(role, &args)
    } else if role == "pool" {
        pools::run_child(&args)
    } else if role == "pool-floor" {
        pools::run_floor(&args)
    } else {
        Err(format!("unknown child role {role:?}").into())
    }
}
