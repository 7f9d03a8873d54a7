//! Helpers of the fault tests: a private, durable `redis-server` that a test may SIGKILL and
//! restart (never the shared one), and the worker's health check as a child process.

use crate::process::CommandExt as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::jobs_support::worker_bin;
use crate::{free_port, wait_for};

/// A private `redis-server` with `appendonly yes` and `appendfsync always` in a temporary
/// directory of its own: what it acknowledged survives a SIGKILL. Killed and its directory
/// removed on drop.
#[derive(Debug)]
pub struct DurableRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl DurableRedis {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("xenios-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port: free_port(),
            dir,
            child: None,
        };
        r.start_again().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, as an OOM killer or a crashed host would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`DurableRedis::kill`]).
    pub async fn start_again(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "the private redis-server to load its data",
            Duration::from_secs(10),
            || {
                let url = url.clone();
                async move {
                    let client = xenios_core::redis::redis::Client::open(url).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    xenios_core::redis::redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .ok()
                }
            },
        )
        .await;
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A health-file path of its own for one test (removed on drop).
#[derive(Debug)]
pub struct HealthFile(pub PathBuf);

impl HealthFile {
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!("xenios-health-{}", uuid::Uuid::new_v4())))
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Default for HealthFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HealthFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `xenios-worker` to completion with `args` (e.g. `--check`) and returns its output.
pub fn run_worker(vars: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(worker_bin())
        .args(args)
        .envs(vars)
        .env("LOG_FORMAT", "pretty")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output_within_deadline()
}
