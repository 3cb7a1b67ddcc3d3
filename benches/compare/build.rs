//! Records the compiler's version, for the header of the results (crossbeam's habit: the
//! results say which machine, which compiler and which commit).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown rustc".into());
    println!("cargo:rustc-env=COMPARE_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
}
