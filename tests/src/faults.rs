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

/// A private PostgreSQL server (its own `initdb` cluster in a temporary directory, on a free
/// port, trust auth, no TLS) that a test may SIGKILL and restart: never the shared one.
/// Killed and its directory removed on drop. As root, the server runs as the `postgres`
/// user (PostgreSQL refuses to run as root).
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb under /usr/lib/postgresql/<version>/bin");
        let dir = std::env::temp_dir().join(format!("xenios-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pg = Self {
            port: free_port(),
            dir,
            bin,
            child: None,
        };
        if as_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .output_within_deadline();
            assert!(out.status.success(), "chown: {out:?}");
        }
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.dir.join("data"))
            .output_within_deadline();
        assert!(out.status.success(), "initdb: {out:?}");
        pg.start_again().await;
        pg
    }

    /// `program` from the server's binaries, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// SIGKILL to the postmaster and every backend at once (its process group), as an OOM
    /// killer or a crashed host would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .output_within_deadline();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data (after [`PrivatePostgres::kill`]: it
    /// recovers from its WAL), and waits until it answers a query.
    pub async fn start_again(&mut self) {
        use std::os::unix::process::CommandExt as _;
        self.kill();
        let socket_dir = self.dir.to_string_lossy().into_owned();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k", &socket_dir])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=off"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "the private PostgreSQL to accept queries",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                    tokio::spawn(conn);
                    client.simple_query("SELECT 1").await.ok()
                }
            },
        )
        .await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_root() -> bool {
    // The effective uid, from /proc: no libc binding needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
