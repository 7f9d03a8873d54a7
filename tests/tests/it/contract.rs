//! The OpenAPI contract: the served document is the committed `openapi.json`, schema-based
//! fuzzing (schemathesis, every check but `use_after_free`, stateful tests included) finds
//! nothing against the real server, and the TypeScript client's tests (node's test runner)
//! pass against it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use xenios_tests::jobs_support::python;
use xenios_tests::{API_KEY, TestApp};

const JWT_SECRET: &str = "contract-test-jwt-secret-0123456789abcdef";
const REGENERATE: &str = "XENIOS_WRITE_OPENAPI=1 cargo nextest run -p xenios-tests --test it -E 'test(contract::served_document)'";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A server with the fake LLM, a JWT secret for user tokens, and limits high enough for a
/// fuzzer's request rate.
async fn app() -> TestApp {
    TestApp::spawn_with(|v| {
        v.insert("SUPABASE_JWT_SECRET".into(), JWT_SECRET.into());
        v.insert("RATE_LIMIT_PER_MINUTE".into(), "1000000".into());
        v.insert("RATE_LIMIT_BURST".into(), "1000000".into());
    })
    .await
}

fn user_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://contract.supabase.test/auth/v1", "aud": "authenticated",
        "sub": uuid::Uuid::new_v4().to_string(),
        "exp": now + 3600, "iat": now, "email": "coach@example.com",
        "role": "authenticated", "is_anonymous": false,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let app = app().await;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = root().join("openapi.json");
    if std::env::var_os("XENIOS_WRITE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; regenerate with: {REGENERATE}", path.display())),
    )
    .unwrap();
    assert!(
        served == committed,
        "the served /openapi.json differs from {}: regenerate it with\n  {REGENERATE}\nthen the \
         TypeScript types with\n  (cd clients/typescript && npm run generate)\nand commit both",
        path.display()
    );
    // Every authenticated operation declares the API key; user routes the bearer token too.
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = path.starts_with("/health");
            let security = &op["security"];
            if open {
                assert!(security.is_null(), "{method} {path}");
            } else {
                assert!(
                    security
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|s| s.get("ApiKeyAuth").is_some()),
                    "{method} {path}: {security}"
                );
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn undeclared_methods_are_405_in_the_error_shape() {
    let app = app().await;
    for (method, path) in [
        ("TRACE", "/health"),
        ("TRACE", "/api/v1/llm/complete"),
        ("PUT", "/api/v1/jobs"),
        ("PATCH", "/api/v1/jobs/abc"),
        ("DELETE", "/api/v1/me"),
        ("TRACE", "/v1/chat/completions"),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
        assert!(body["error"]["correlation_id"].is_string());
    }
}

#[tokio::test]
async fn schemathesis_finds_nothing() {
    let app = app().await;
    let mut cmd = Command::new(python());
    cmd.args(["-m", "schemathesis.cli", "run"])
        .arg(app.url("/openapi.json"))
        // Every check but one: `DELETE /api/v1/jobs/{id}` is Celery's revoke, not a deletion;
        // the job stays readable (PENDING, then REVOKED), so a read after it is the contract
        // and not a use after free.
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--mode", "all"])
        // Only the API key (the service): a generated bearer token is refused before the
        // route runs, which would leave the routes themselves untested.
        .args(["--generation-with-security-parameters", "false"])
        .args(["--generation-database", "none"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", "25", "--seed", "1", "--workers", "1"])
        .args(["--header", &format!("X-API-Key: {API_KEY}")])
        .args(["--no-color"])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    // The server runs on this test's runtime: wait for the child off it.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn typescript_client_tests_pass_against_the_server() {
    let app = app().await;
    let install = Command::new(root().join("scripts/node-client.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/node-client.sh");
    assert!(install.status.success(), "scripts/node-client.sh failed");
    let dir = PathBuf::from(String::from_utf8(install.stdout).unwrap().trim());
    let mut cmd = Command::new("npm");
    cmd.args(["test", "--silent"])
        .current_dir(&dir)
        .env("XENIOS_URL", &app.base)
        .env("XENIOS_API_KEY", API_KEY)
        .env("XENIOS_USER_TOKEN", user_token())
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("npm test");
    assert!(
        out.status.success(),
        "the TypeScript client's tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_error_code_is_in_the_documented_enum() {
    use std::time::Duration;
    use xenios_core::Error;
    use xenios_core::auth::AuthError;
    use xenios_server::error::ErrorCode;
    let errors = [
        Error::Validation("x".into()),
        Error::NotFound("x".into()),
        Error::UnknownTask("x".into()),
        Error::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        Error::Unavailable {
            component: xenios_core::error::Component::Redis,
            message: "x".into(),
            source: None,
        },
        Error::Unavailable {
            component: xenios_core::error::Component::Postgres,
            message: "x".into(),
            source: None,
        },
        Error::Internal("x".into()),
        Error::BudgetExceeded {
            limit: 1,
            retry_after: Duration::from_secs(1),
        },
        Error::Auth(AuthError::MissingApiKey),
        Error::Auth(AuthError::InvalidApiKey),
        Error::Auth(AuthError::MissingToken),
        Error::Auth(AuthError::InvalidToken { detail: "x".into() }),
        Error::Auth(AuthError::Forbidden("x".into())),
    ];
    let mut codes: Vec<&str> = errors.iter().map(Error::code).collect();
    // Codes whose errors need a live engine to build (LLM failures, policy refusals, config).
    codes.extend([
        "upstream_refused",
        "upstream_timeout",
        "all_models_failed",
        "model_choice_forbidden",
        "model_not_allowed",
        "config_error",
    ]);
    for code in codes {
        let parsed = ErrorCode::parse(code).unwrap_or_else(|| panic!("{code} is not documented"));
        assert_eq!(parsed.name(), code);
    }
}
