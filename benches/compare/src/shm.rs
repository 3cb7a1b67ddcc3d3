//! `/dev/shm` hygiene: the runner notes what is there before it starts, looks again after every
//! measurement, removes whatever carries this run's prefix (what a crashed peer left), and warns
//! about anything else that appeared (made by someone else: it is left alone).

use std::collections::BTreeSet;
use std::path::Path;

const SHM: &str = "/dev/shm";

fn list() -> BTreeSet<String> {
    std::fs::read_dir(SHM)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Removes what earlier runs that were killed left behind: `/dev/shm` entries and scratch
/// directories named after a runner whose pid no longer exists. Returns one line per removal.
pub fn clean_stale(shm_stem: &str, scratch_parent: &Path, scratch_stem: &str) -> Vec<String> {
    let dead = |rest: &str| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !digits.is_empty() && !Path::new("/proc").join(&digits).exists()
    };
    let mut notes = Vec::new();
    for name in list() {
        if let Some(rest) = name.strip_prefix(shm_stem)
            && dead(rest)
            && std::fs::remove_file(Path::new(SHM).join(&name)).is_ok()
        {
            notes.push(format!("removed /dev/shm/{name}, left by an earlier run that was killed"));
        }
    }
    for entry in std::fs::read_dir(scratch_parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(scratch_stem)
            && dead(rest)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            notes.push(format!("removed {}, left by an earlier run that was killed", entry.path().display()));
        }
    }
    notes
}

/// Watches `/dev/shm` during a run.
pub struct ShmWatch {
    prefix: String,
    known: BTreeSet<String>,
    removed: Vec<String>,
    foreign: Vec<String>,
}

/// What one sweep found, for the progress output.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Lines worth printing (each leftover name is described once per run, then only counted).
    pub notes: Vec<String>,
}

impl ShmWatch {
    /// Notes what is there now; `prefix` begins every name this run makes.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.into(), known: list(), removed: Vec::new(), foreign: Vec::new() }
    }

    /// Looks again after measurement `what`: removes this run's leftovers, notes the rest.
    pub fn sweep(&mut self, what: &str) -> Sweep {
        let mut out = Sweep::default();
        for name in list().difference(&self.known.clone()) {
            if name.starts_with(&self.prefix) {
                let removed = std::fs::remove_file(Path::new(SHM).join(name)).is_ok();
                if !self.removed.contains(name) {
                    out.notes.push(format!(
                        "{what} left /dev/shm/{name} behind; {} (the runner removes it after every \
                         measurement; said once)",
                        if removed { "removed it" } else { "COULD NOT REMOVE IT" }
                    ));
                }
                self.removed.push(name.clone());
            } else {
                out.notes.push(format!(
                    "/dev/shm/{name} appeared during {what}; it does not carry this run's prefix, left alone"
                ));
                self.known.insert(name.clone());
                self.foreign.push(name.clone());
            }
        }
        out
    }

    /// One line for the end of the run.
    pub fn summary(&mut self) -> String {
        for note in self.sweep("the run").notes {
            eprintln!("  note: {note}");
        }
        let left: Vec<String> = list().into_iter().filter(|n| n.starts_with(&self.prefix)).collect();
        let mut s = if left.is_empty() {
            format!("/dev/shm: nothing of this run's ({}*) is left", self.prefix)
        } else {
            format!("/dev/shm: STILL THERE: {left:?}")
        };
        if !self.removed.is_empty() {
            let mut names: Vec<&String> = self.removed.iter().collect();
            names.sort();
            names.dedup();
            s.push_str(&format!(
                "; peers left entries behind {} times, all removed by the runner: {names:?}",
                self.removed.len()
            ));
        }
        if !self.foreign.is_empty() {
            s.push_str(&format!(
                "; {} entries appeared that are not this run's: {:?}",
                self.foreign.len(),
                self.foreign
            ));
        }
        s
    }
}
