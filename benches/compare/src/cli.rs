//! The command line.

use std::path::PathBuf;

/// What `--help` prints.
pub const USAGE: &str = "\
usage: cargo run --release -p ringpool-compare -- [OPTIONS]

Measures ringpool beside every peer in one run: one-way throughput at 8 B, 1 KiB, 64 KiB and
1 MiB, the 8-byte round trip, both on one shared CPU too, producers x consumers, typed data (a
struct with a String one-way; pool maps over strings and Vec<f64>s), Python's multiprocessing
queues and pools, pool start with a 1 GiB parent, what goes wrong (failures counted), and the
physical floors.
Every peer runs as two separate processes pinned to two CPUs; every message is written in full
and checked. The tables go to stdout (markdown), progress to stderr.

options:
  --quick          fewer rounds and shorter measurements (all peers; about a minute or two)
  --runs N         rounds per measurement (default 5, --quick 3)
  --json PATH      also write one JSON object per line per figure to PATH
  --plot PATH      also write an SVG of one-way bytes/s against message size to PATH
  --only A,B,...   measure only these peers or groups (see --list); add `floors` to keep the floors
  --list           list the peers and groups, and exit
  -h, --help       this text
";

/// The parsed options.
#[derive(Debug, Default)]
pub struct Options {
    /// `--quick`.
    pub quick: bool,
    /// `--runs N`.
    pub runs: Option<usize>,
    /// `--json PATH`.
    pub json: Option<PathBuf>,
    /// `--plot PATH`.
    pub plot: Option<PathBuf>,
    /// `--only A,B`.
    pub only: Option<Vec<String>>,
    /// `--list`.
    pub list: bool,
    /// `--help`.
    pub help: bool,
}

/// Parses the arguments after the program's name.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--runs" => {
                let n: usize = value("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?;
                if n == 0 {
                    return Err("--runs must be at least 1".into());
                }
                o.runs = Some(n);
            }
            "--json" => o.json = Some(value("--json")?.into()),
            "--plot" => o.plot = Some(value("--plot")?.into()),
            "--only" => {
                let names = value("--only")?;
                o.only = Some(names.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect());
            }
            "--list" => o.list = true,
            "-h" | "--help" => o.help = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}
