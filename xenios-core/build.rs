//! Records the git commit the binary was built from, for `/api/v1/status`.
//! `GIT_COMMIT` (set by the Docker build, which has no `.git`) wins over asking git.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    // Watch HEAD only where it exists: a path that does not (a worktree's `.git` is a file,
    // a Docker build has none) would make cargo rebuild this crate every time.
    if let Some(git_dir) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
    {
        let git_dir = std::path::PathBuf::from(git_dir.trim());
        for watched in [git_dir.join("HEAD"), git_dir.join("refs").join("heads")] {
            if let Ok(abs) = watched.canonicalize() {
                println!("cargo:rerun-if-changed={}", abs.display());
            }
        }
    }
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        });
    println!(
        "cargo:rustc-env=XENIOS_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
