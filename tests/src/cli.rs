//! The real `xenios-cli` binary run to the end within [`crate::process::DEADLINE`].

use std::collections::HashMap;
use std::process::Command;

use crate::jobs_support::cli_bin;
use crate::process::{DEADLINE, output_within_async};

/// Runs `xenios-cli` with `args` and `vars`: (exit code, stdout, stderr).
pub async fn run_cli(
    vars: &HashMap<String, String>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    run(vars, args, None).await
}

/// Runs `xenios-cli` with `input` on its stdin: (exit code, stdout, stderr).
pub async fn run_cli_stdin(
    vars: &HashMap<String, String>,
    args: &[&str],
    input: &[u8],
) -> (Option<i32>, String, String) {
    run(vars, args, Some(input.to_vec())).await
}

async fn run(
    vars: &HashMap<String, String>,
    args: &[&str],
    input: Option<Vec<u8>>,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(cli_bin());
    cmd.args(args).envs(vars).current_dir(std::env::temp_dir());
    let out = output_within_async(cmd, input, DEADLINE).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
