//! Child processes run to the end within a deadline: a hung CLI, worker or Python peer fails
//! its test (killed, with what it printed so far) instead of stalling the run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any child process of a test may run: generous for a loaded box, far below the
/// per-test timeout of `.config/nextest.toml`.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `Command::output` with [`DEADLINE`].
pub trait CommandExt {
    /// Runs the command to the end, stdin null; panics (after killing it) past [`DEADLINE`].
    fn output_within_deadline(&mut self) -> Output;
}

impl CommandExt for Command {
    fn output_within_deadline(&mut self) -> Output {
        output_within(self, None, DEADLINE)
    }
}

/// Runs `cmd` with `input` on stdin (none: stdin is null) and returns its output, as
/// `Command::output` does; kills it and panics when it runs past `deadline`.
pub fn output_within(cmd: &mut Command, input: Option<Vec<u8>>, deadline: Duration) -> Output {
    let program = format!("{:?}", cmd.get_program());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // The program may exit before reading everything (a broken pipe is then fine).
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    wait_output_within(child, deadline)
}

/// Waits for `child` (whose stdout and stderr are piped) and collects its output; kills it
/// and panics when it runs past `deadline`.
pub fn wait_output_within(mut child: Child, deadline: Duration) -> Output {
    let read_all = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let Some(status) = exit_within(&mut child, deadline) else {
        let err = stderr.join().unwrap_or_default();
        panic!(
            "child {} still ran after {deadline:?}; killed. stderr:\n{}",
            child.id(),
            String::from_utf8_lossy(&err)
        );
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Sends SIGTERM to `pid` (a warm shutdown).
pub fn sigterm(pid: u32) {
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -TERM {pid} failed");
}

/// Waits for `child` to exit and returns its status; past `deadline` kills and reaps it and
/// returns `None`.
pub fn exit_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`output_within`] from async code (on a blocking thread).
pub async fn output_within_async(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    deadline: Duration,
) -> Output {
    tokio::task::spawn_blocking(move || output_within(&mut cmd, input, deadline))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A real `xenios-server` process (JSON logs), killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl ServerProcess {
    /// Starts the server with exactly `vars` (plus `PATH`, and `LOG_FORMAT=json` to read
    /// its address from the `listening` line) and waits for it to listen.
    pub fn start(vars: &HashMap<String, String>) -> Self {
        let mut child = Command::new(crate::jobs_support::server_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars)
            .env("LOG_FORMAT", "json")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xenios-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not log `listening` within 60 s");
            }
        };
        Self { child, addr }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET with the API key (as [`crate::TestApp::get`]).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .header("x-api-key", crate::API_KEY)
            .send()
            .await
            .unwrap()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The names of the process's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit; kills it and panics past `deadline`.
    pub fn terminate_within(&mut self, deadline: Duration) -> std::process::ExitStatus {
        sigterm(self.pid());
        exit_within(&mut self.child, deadline)
            .unwrap_or_else(|| panic!("the server did not exit within {deadline:?} of SIGTERM"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
