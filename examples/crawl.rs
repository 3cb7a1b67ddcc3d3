//! A crawler, locally: a process pool reads every file of a directory tree and counts its lines
//! and words, and the parent prints each file's row as soon as it is done, then the totals.
//!
//! ```text
//! $ cargo run --release --example crawl               # the crate's own src/
//! $ cargo run --release --example crawl -- /some/dir  # any tree
//! ```
//!
//! The tasks take and give ordinary Rust values, not plain bytes: each task gets a file's path (a
//! `String`) and answers a struct holding a `String` and an `Option<(String, u32)>`. Both cross
//! between the processes archived with rkyv in the pool's shared memory: the worker reads the path
//! in place (`&ArchivedString`), without copying it out, and writes its answer into the same slot;
//! the parent checks that answer and reads it in place too (`views()`: an `ArchivedFileStats`,
//! validated, never turned back into a `FileStats`).
//!
//! Then a second pass shows a *context*: a list of words to look for is archived once into shared
//! memory, and every task reads it in place next to its own path (`Pool::map_with`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ringpool::Pool;
use ringpool::ring::archive::rkyv::{self, string::ArchivedString, vec::ArchivedVec};

/// What a task finds out about one file.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
#[rkyv(crate = rkyv)]
struct FileStats {
    path: String,
    lines: u64,
    words: u64,
    /// The most frequent word of at least 3 letters, and how often it appears.
    top_word: Option<(String, u32)>,
    /// Why the file could not be read, if it could not.
    error: Option<String>,
}

/// Runs in a worker: reads one file and counts. The path is read in place in shared memory.
fn count(path: &ArchivedString) -> FileStats {
    let mut stats = FileStats { path: path.to_string(), lines: 0, words: 0, top_word: None, error: None };
    let text = match std::fs::read(path.as_str()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            stats.error = Some(e.to_string());
            return stats;
        }
    };
    stats.lines = text.lines().count() as u64;
    stats.words = text.split_whitespace().count() as u64;
    let mut freq: HashMap<&str, u32> = HashMap::new();
    for w in text.split(|c: char| !c.is_alphanumeric() && c != '_').filter(|w| w.len() >= 3) {
        *freq.entry(w).or_default() += 1;
    }
    // Most frequent; ties go to the word first in alphabetical order.
    stats.top_word = freq.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))).map(|(w, n)| (w.to_owned(), n));
    stats
}

/// Runs in a worker: how often each word of the context appears in the file (as a whole word).
fn find_words(words: &ArchivedVec<ArchivedString>, path: &ArchivedString) -> Vec<u32> {
    let text = std::fs::read_to_string(path.as_str()).unwrap_or_default();
    let mut counts = vec![0u32; words.len()];
    for w in text.split(|c: char| !c.is_alphanumeric() && c != '_') {
        if let Some(k) = words.iter().position(|x| x == w) {
            counts[k] += 1;
        }
    }
    counts
}

/// Every regular file under `dir`, sorted.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    };
    let paths: Vec<String> = files_under(&root)?.into_iter().map(|p| p.display().to_string()).collect();
    let pool = Pool::new(4)?;
    println!(
        "crawl: {} files under {}; 4 worker processes read and count them; each row is printed as soon as its file is done",
        paths.len(),
        root.display()
    );
    println!("{:>4}  {:>7}  {:>7}  {:<24}  path", "done", "lines", "words", "top word");
    let start = Instant::now();
    let (mut lines, mut words, mut done, mut failed) = (0u64, 0u64, 0usize, 0usize);
    // `views()`: each answer read where the parent copied it, as an `ArchivedFileStats`.
    for (i, result) in pool.imap_unordered_archived(count, paths.clone())?.views() {
        done += 1;
        let shown = paths.get(i).map_or("?", |p| p.strip_prefix(&*root.to_string_lossy()).unwrap_or(p));
        match result {
            Ok(s) if s.error.is_none() => {
                let (l, w) = (s.lines.to_native(), s.words.to_native());
                lines += l;
                words += w;
                let top = s.top_word.as_ref().map_or_else(|| "-".to_owned(), |t| format!("{} ({})", t.0, t.1));
                println!("{done:>4}  {l:>7}  {w:>7}  {top:<24}  {shown}");
            }
            Ok(s) => {
                failed += 1;
                let why = s.error.as_ref().map_or("", |e| e.as_str());
                println!("{done:>4}  {:>7}  {:>7}  {:<24}  {shown}: {why}", "-", "-", "-");
            }
            Err(e) => {
                failed += 1;
                println!("{done:>4}  task failed: {e}  {shown}");
            }
        }
    }
    println!(
        "total: {done} files, {lines} lines, {words} words ({failed} could not be read), in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    // The context: archived once into the pool's shared memory, read in place by every task.
    let wanted: Vec<String> = ["unsafe", "SAFETY", "fn", "struct"].map(String::from).to_vec();
    let counts = pool.map_with(&wanted, find_words, paths.clone())?;
    println!("words looked for in every file (one context, archived once, read in place by every task):");
    for (k, w) in wanted.iter().enumerate() {
        let total: u64 = counts.iter().map(|c| u64::from(c[k])).sum();
        let most = counts.iter().enumerate().max_by_key(|(i, c)| (c[k], std::cmp::Reverse(*i)));
        let most = most.map_or("-", |(i, _)| paths[i].strip_prefix(&*root.to_string_lossy()).unwrap_or(&paths[i]));
        println!("  {w:<8} {total:>6} times; most in {most}");
    }
    drop(pool);
    println!("the workers have left; the program ended on its own");
    Ok(())
}
