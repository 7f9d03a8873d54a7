//! The real `xenios-server` binary: startup validation, JSON logs, graceful SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xenios-server"));
    // Nothing from the developer's environment or a .env file may leak in.
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    c
}

#[test]
fn production_without_keys_exits_2_naming_every_missing_variable() {
    let out = server()
        .env("ENVIRONMENT", "production")
        .env("CORS_ORIGINS", "*")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("xenios-server: invalid configuration"),
        "{stderr}"
    );
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "XENIOS_BACKEND_API_KEY",
        "SUPABASE_URL",
        "SUPABASE_JWT_SECRET",
        "OPENROUTER_API_KEY",
        "CORS_ORIGINS",
    ] {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
    // One message, not one per problem.
    assert_eq!(
        stderr.matches("invalid configuration").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn json_logs_carry_the_correlation_id_and_never_a_secret() {
    let pg = std::env::var("TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secrets = [
        "sk-or-v1-topsecret-openrouter",
        "jwt-secret-that-must-not-leak-0123456789",
        "api-key-that-must-not-leak-42",
        "dg-secret-deepgram",
    ];
    let mut child = server()
        .env("ENVIRONMENT", "staging")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "debug")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATABASE_URL", &pg)
        .env("REDIS_URL", format!("{redis}/0"))
        .env("SUPABASE_URL", "https://abc.supabase.co")
        .env("OPENROUTER_API_KEY", secrets[0])
        .env("SUPABASE_JWT_SECRET", secrets[1])
        .env("XENIOS_BACKEND_API_KEY", secrets[2])
        .env("DEEPGRAM_API_KEY", secrets[3])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        log.push(line);
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no listening line"
        );
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .get(format!("http://{addr}/api/v1/status"))
            .header("x-api-key", secrets[2])
            .header("x-request-id", "corr-log-test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("http://{addr}/api/v1/missing"))
            .header("x-api-key", "wrong")
            .header("x-request-id", "corr-log-404")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    // Graceful stop on SIGTERM, exit code 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    log.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let text = log.join("\n");
    for s in secrets {
        assert!(!text.contains(s), "secret {s} appeared in the logs");
    }
    assert!(
        !text.contains("postgres:postgres@"),
        "database password in the logs"
    );
    let parsed: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        parsed
            .iter()
            .filter(|v| v["span"]["correlation_id"] == id)
            .collect()
    };
    let ok = of("corr-log-test");
    assert!(
        ok.iter()
            .any(|v| v["message"] == "request completed" && v["status"] == 200),
        "{text}"
    );
    let refused = of("corr-log-404");
    assert!(refused.iter().any(|v| v["status"] == 401), "{text}");
    assert!(
        parsed.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("server stopped"))),
        "{text}"
    );
}
