//! The embedding example, run for real: the `xenios-embedding-example` binary against a test
//! database, a test Redis database and a fake OpenRouter. It must complete, stream, run its
//! own job on its in-process worker, verify a token, shut down with its audit rows written,
//! and exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use xenios_tests::process::CommandExt as _;

use xenios_tests::fake_openrouter::FakeOpenRouter;
use xenios_tests::{TestDb, TestRedis, test_vars};

const SECRET: &str = "example-test-jwt-secret-0123456789abcdef";

/// The example binary next to the test executable (`scripts/test.sh` builds every workspace
/// target first); built only when missing, so that a test never recompiles the workspace
/// with another feature set.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join("xenios-embedding-example");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-q",
            "-p",
            "xenios-embedding-example",
        ]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cannot build the example");
    }
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_example_completes_streams_runs_a_job_verifies_a_token_and_shuts_down() {
    let upstream = FakeOpenRouter::canned().await;
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let mut vars = test_vars(&db, &redis.url);
    vars.insert("OPENROUTER_API_KEY".into(), "sk-or-example".into());
    vars.insert("OPENROUTER_BASE_URL".into(), upstream.base_url());
    vars.insert("SUPABASE_JWT_SECRET".into(), SECRET.into());
    vars.insert("LOG_LEVEL".into(), "warn".into());

    let bin = example_bin();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&vars)
            // No `.env` from the repository: only the variables above.
            .current_dir(std::env::temp_dir())
            .output_within_deadline()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        lines[..4],
        [
            "complete: Hi there [anthropic/claude-opus-4.5]",
            "stream: Hello! [anthropic/claude-opus-4.5]",
            "job: SUCCESS \"HELLO FROM A JOB\"",
            "token: user 6f1c2a9e-3b7d-4c55-9a51-0f3e8b2d7c41",
        ],
        "stderr:\n{stderr}"
    );
    // Two inference rows and the job's state changes, all written before exit.
    let written: u64 = lines[4]
        .strip_prefix("shutdown: audit rows written ")
        .and_then(|rest| rest.strip_suffix(", dropped 0, all flushed true"))
        .unwrap_or_else(|| panic!("{}", lines[4]))
        .parse()
        .unwrap();
    assert!(written >= 3, "{}", lines[4]);

    // What the example did is in Postgres: two inference rows, the job's row.
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT streaming, status FROM ai_backend.inference_logs ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(bool, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [(false, "success".to_owned()), (true, "success".to_owned())]
    );
    let jobs = client
        .query(
            "SELECT task_name, status FROM ai_backend.job_queue_metadata",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].get::<_, String>(0), "example.shout");
    assert!(jobs[0].get::<_, String>(1).eq_ignore_ascii_case("success"));
    assert_eq!(upstream.requests().len(), 2);
    drop(redis);
}
