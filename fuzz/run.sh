#!/usr/bin/env bash
# Runs every cargo-fuzz target of ringpool for SECONDS each (default 20), starting from the seed
# corpus in fuzz/corpus/<target>/ (new inputs go to a scratch directory, not the repository).
# Fails if any target finds a crash (the input is left in fuzz/artifacts/<target>/).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); without them it says so
# and succeeds, so that CI on a machine without them skips this step.
set -euo pipefail
secs=${1:-20}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: SKIPPED: cargo-fuzz or the nightly toolchain is missing" \
         "(rustup toolchain install nightly; cargo install cargo-fuzz)"
    exit 0
fi
# Debug assertions on (-a): an overflow on a forged value is a finding, as in `cargo test`.
flags=(--debug-assertions)
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build "${flags[@]}"
failed=()
for t in $targets; do
    scratch=$(mktemp -d)
    echo "== fuzz target $t: ${secs}s"
    if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1; then
        failed+=("$t")
    fi
    rm -rf "$scratch"
done
if ((${#failed[@]})); then
    echo "fuzz/run.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz/run.sh: every target ran ${secs}s without a crash"
