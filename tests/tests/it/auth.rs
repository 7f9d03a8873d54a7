//! Auth and request protection, end to end: real tokens (HS256 with a secret, ES256 and
//! RS256 with keys generated here and served by a local JWKS server), key rotation, JWKS
//! caching rules, every hostile token, rate limits, body size limits, CORS and `/me`.

// Test helpers outside `#[test]` functions (key generation, the fake JWKS) may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use poem::{IntoResponse, Route};
use rand_core::OsRng;
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use xenios_tests::{API_KEY, FakeUpstream, TestApp, wait_for};

const SECRET: &str = "test-jwt-secret-with-at-least-32-characters";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// A signing key and its public JWK.
#[derive(Clone)]
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key in PEM, for the HS/RS confusion attack.
    public_pem: String,
}

fn ec_key(kid: &str) -> Key {
    let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
    let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    let point = sk.verifying_key().to_encoded_point(false);
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "key_ops": ["verify"],
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        }),
        public_pem: String::new(),
    }
}

/// RSA keys are slow to generate: one per test process is plenty.
fn rsa_key() -> Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let sk = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let pem = sk.to_pkcs1_pem(LineEnding::LF).unwrap();
        let pk = sk.to_public_key();
        Key {
            kid: "rsa-1".to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
                "key_ops": ["verify"],
                "n": b64(pk.n().to_bytes_be()), "e": b64(pk.e().to_bytes_be()),
            }),
            public_pem: pk.to_pkcs1_pem(LineEnding::LF).unwrap(),
        }
    })
    .clone()
}

/// What the fake JWKS endpoint does.
const SERVE: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// A local Supabase stand-in serving `/auth/v1/.well-known/jwks.json`, counting fetches.
struct Jwks {
    up: FakeUpstream,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    delay: Arc<Mutex<Duration>>,
}

impl Jwks {
    async fn start(keys: &[&Key]) -> Self {
        let keys = Arc::new(Mutex::new(
            keys.iter().map(|k| k.jwk.clone()).collect::<Vec<Value>>(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(AtomicU8::new(SERVE));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (k, f, m, d) = (keys.clone(), fetches.clone(), mode.clone(), delay.clone());
        let ep = poem::endpoint::make(move |_req| {
            let (k, f, m, d) = (k.clone(), f.clone(), m.clone(), d.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let delay = *d.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match m.load(Ordering::SeqCst) {
                    FAIL => poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    HANG => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        "too late".into_response()
                    }
                    _ => {
                        let keys = k.lock().unwrap().clone();
                        poem::web::Json(json!({ "keys": keys })).into_response()
                    }
                }
            }
        });
        let up = FakeUpstream::start(Route::new().at("/auth/v1/.well-known/jwks.json", ep)).await;
        Self {
            up,
            keys,
            fetches,
            mode,
            delay,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, key: &Key) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    /// Stops publishing the key `kid` (Supabase revoking a signing key).
    fn retire(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|k| k["kid"] != kid);
    }

    fn issuer(&self) -> String {
        format!("{}/auth/v1", self.up.base)
    }
}

/// The server, trusting `jwks` (its base URL is the Supabase URL) and the HS256 secret.
async fn app(jwks: &Jwks, extra: &[(&str, &str)]) -> TestApp {
    let base = jwks.up.base.clone();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TestApp::spawn_with(move |v| {
        v.insert("SUPABASE_URL".into(), base);
        v.insert("SUPABASE_JWT_SECRET".into(), SECRET.into());
        v.insert("SUPABASE_JWKS_TIMEOUT_MS".into(), "500".into());
        v.extend(extra);
    })
    .await
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({
        "iss": iss, "aud": "authenticated", "sub": sub, "exp": now() + 3600, "iat": now(),
        "role": "authenticated", "email": format!("{sub}@example.com"),
        "session_id": format!("session-{sub}"), "aal": "aal1", "is_anonymous": false,
        "amr": [{"method": "password", "timestamp": now()}],
        "app_metadata": {"provider": "email"}, "user_metadata": {},
    })
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.encoding).unwrap()
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn me(app: &TestApp, token: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app
        .client
        .get(app.url("/api/v1/me"))
        .header("x-api-key", API_KEY);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

fn assert_invalid_token(case: &str, status: u16, body: &Value) {
    assert_eq!(status, 401, "{case}: {body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{case}: {body}");
    assert_eq!(body["error"]["message"], "invalid bearer token", "{case}");
    assert!(
        body["error"]["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{case}: {body}"
    );
}

#[tokio::test]
async fn hs256_es256_and_rs256_tokens_identify_the_user() {
    let (ec, rsa) = (ec_key("ec-1"), rsa_key());
    let jwks = Jwks::start(&[&ec, &rsa]).await;
    let app = app(&jwks, &[]).await;
    let iss = jwks.issuer();

    let (status, body, _) = me(&app, Some(&hs256(&claims(&iss, "user-hs")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "user");
    assert_eq!(body["user_id"], "user-hs");
    assert_eq!(body["role"], "authenticated");
    assert_eq!(body["email"], "user-hs@example.com");
    assert_eq!(body["session_id"], "session-user-hs");
    assert_eq!(body["aal"], "aal1");
    assert_eq!(body["is_anonymous"], false);
    assert_eq!(jwks.fetches(), 0, "HS256 needs no JWKS");

    let (status, body, _) = me(&app, Some(&sign(&ec, &claims(&iss, "user-ec")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "user-ec");

    let mut c = claims(&iss, "user-rsa");
    c["aud"] = json!(["authenticated", "other"]);
    c["is_anonymous"] = json!(true);
    let (status, body, _) = me(&app, Some(&sign(&rsa, &c))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "user-rsa");
    assert_eq!(body["is_anonymous"], true);

    // Both asymmetric keys came from one cached fetch.
    for _ in 0..5 {
        assert_eq!(me(&app, Some(&sign(&ec, &claims(&iss, "u")))).await.0, 200);
    }
    assert_eq!(jwks.fetches(), 1);

    // The user context reaches other routes too.
    let r = app
        .client
        .get(app.url("/api/v1/status"))
        .header("x-api-key", API_KEY)
        .bearer_auth(sign(&ec, &claims(&iss, "u")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_api_key_alone_is_the_service_and_is_always_required() {
    let jwks = Jwks::start(&[]).await;
    let app = app(&jwks, &[]).await;
    let (status, body, headers) = me(&app, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], "service");
    assert!(body.get("user_id").is_none(), "{body}");
    assert_eq!(
        body["correlation_id"],
        headers["x-request-id"].to_str().unwrap()
    );

    // A valid user token does not replace the API key.
    let token = hs256(&claims(&jwks.issuer(), "u"));
    for key in [None, Some("wrong-key")] {
        let mut req = app.client.get(app.url("/api/v1/me")).bearer_auth(&token);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        let code = if key.is_none() {
            "missing_api_key"
        } else {
            "invalid_api_key"
        };
        assert_eq!(body["error"]["code"], code);
    }
}

#[tokio::test]
async fn every_hostile_token_is_401_with_a_json_error() {
    let (ec, rsa) = (ec_key("ec-1"), rsa_key());
    let jwks = Jwks::start(&[&ec, &rsa]).await;
    let app = app(&jwks, &[]).await;
    let iss = jwks.issuer();
    let good = claims(&iss, "victim");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let body_b64 = b64(good.to_string());
    let header_b64 = |h: Value| b64(h.to_string());
    let attacker = ec_key("ec-1"); // same kid, key the server never published

    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{body_b64}.", header_b64(json!({"alg": "none"}))),
        ),
        (
            "alg none with kid",
            format!(
                "{}.{body_b64}.",
                header_b64(json!({"alg": "none", "kid": "ec-1"}))
            ),
        ),
        ("HS256 signed with the RSA public key (alg confusion)", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(rsa.kid.clone());
            encode(
                &h,
                &good,
                &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
            )
            .unwrap()
        }),
        ("RS256 header on the EC key", {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(ec.kid.clone());
            encode(&h, &good, &rsa.encoding).unwrap()
        }),
        ("ES256 header on the RSA key", {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(rsa.kid.clone());
            encode(&h, &good, &ec.encoding).unwrap()
        }),
        ("forged signature on a known kid", sign(&attacker, &good)),
        ("embedded jwk header", {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("attacker".into());
            h.jwk = serde_json::from_value(attacker.jwk.clone()).ok();
            encode(&h, &good, &attacker.encoding).unwrap()
        }),
        ("unknown kid", sign(&ec_key("never-published"), &good)),
        ("no kid", {
            encode(&Header::new(Algorithm::ES256), &good, &ec.encoding).unwrap()
        }),
        ("PS256", {
            let mut h = Header::new(Algorithm::PS256);
            h.kid = Some(rsa.kid.clone());
            encode(&h, &good, &rsa.encoding).unwrap()
        }),
        (
            "expired",
            sign(&ec, &with(&|c| c["exp"] = json!(now() - 120))),
        ),
        (
            "expired HS256",
            hs256(&with(&|c| c["exp"] = json!(now() - 120))),
        ),
        (
            "not yet valid",
            sign(&ec, &with(&|c| c["nbf"] = json!(now() + 300))),
        ),
        (
            "wrong iss",
            sign(
                &ec,
                &with(&|c| c["iss"] = json!("https://evil.supabase.co/auth/v1")),
            ),
        ),
        ("wrong aud", sign(&ec, &with(&|c| c["aud"] = json!("anon")))),
        (
            "wrong aud list",
            sign(&ec, &with(&|c| c["aud"] = json!(["a", "b"]))),
        ),
        (
            "no aud",
            sign(
                &ec,
                &with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
            ),
        ),
        (
            "no sub",
            sign(
                &rsa,
                &with(&|c| drop(c.as_object_mut().unwrap().remove("sub"))),
            ),
        ),
        (
            "no exp",
            hs256(&with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))),
        ),
        ("anon role", hs256(&with(&|c| c["role"] = json!("anon")))),
        (
            "legacy anon API key",
            hs256(
                &json!({"iss": "supabase", "ref": "abcdefghij", "role": "anon",
                          "iat": now(), "exp": now() + 315_360_000}),
            ),
        ),
        (
            "legacy service_role API key",
            hs256(
                &json!({"iss": "supabase", "ref": "abcdefghij", "role": "service_role",
                          "iat": now(), "exp": now() + 315_360_000}),
            ),
        ),
        ("HS256 with another secret", {
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
            )
            .unwrap()
        }),
        ("tampered payload", {
            let t = sign(&ec, &good);
            let parts: Vec<&str> = t.split('.').collect();
            let evil = b64(with(&|c| c["sub"] = json!("admin")).to_string());
            format!("{}.{evil}.{}", parts[0], parts[2])
        }),
        ("oversized", {
            let big = with(&|c| c["pad"] = json!("x".repeat(9000)));
            sign(&ec, &big)
        }),
        ("garbage", "garbage".into()),
        ("two parts", "abc.def".into()),
        ("non-base64", "!!!.@@@.###".into()),
        (
            "json but not a jwt",
            b64("{}") + "." + &b64("{}") + "." + &b64("x"),
        ),
    ];
    // Make sure nothing silently passes when sent raw in other ways.
    cases.push(("empty bearer", String::new()));

    for (case, token) in &cases {
        let (status, body, _) = me(&app, Some(token)).await;
        assert_invalid_token(case, status, &body);
    }

    // Other ways of sending a credential that cannot be used.
    for (case, value) in [
        ("basic scheme", "Basic dXNlcjpwYXNz".to_owned()),
        ("no scheme", hs256(&good)),
        ("empty header", String::new()),
    ] {
        let r = app
            .client
            .get(app.url("/api/v1/me"))
            .header("x-api-key", API_KEY)
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_invalid_token(case, status, &r.json().await.unwrap());
    }

    // The server is alive and still accepts the real thing.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(me(&app, Some(&sign(&ec, &good))).await.0, 200);
    assert_eq!(me(&app, Some(&hs256(&good))).await.0, 200);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_restart_and_refetches_are_rate_limited() {
    let interval = Duration::from_millis(1500);
    let old = ec_key("old");
    let jwks = Jwks::start(&[&old]).await;
    let app = app(&jwks, &[("SUPABASE_JWKS_MIN_REFRESH_MS", "1500")]).await;
    let iss = jwks.issuer();

    assert_eq!(me(&app, Some(&sign(&old, &claims(&iss, "u")))).await.0, 200);
    let first_fetch = Instant::now();
    assert_eq!(jwks.fetches(), 1);

    // Supabase publishes a new key and starts signing with it.
    let new = ec_key("new");
    jwks.publish(&new);
    let token = sign(&new, &claims(&iss, "u"));
    // Unknown kid: a refresh is due, but only once per interval however many tokens ask.
    for _ in 0..10 {
        me(&app, Some(&token)).await;
    }
    let fetches = jwks.fetches();
    let allowed = 1 + (first_fetch.elapsed().as_millis() / interval.as_millis()) as usize + 1;
    assert!(fetches <= allowed, "{fetches} fetches, at most {allowed}");

    // Without a restart, the new key is accepted as soon as the interval allows a refetch.
    wait_for("the rotated key", Duration::from_secs(30), || async {
        (me(&app, Some(&token)).await.0 == 200).then_some(())
    })
    .await;
    // The old key stays valid until Supabase revokes it.
    assert_eq!(me(&app, Some(&sign(&old, &claims(&iss, "u")))).await.0, 200);

    // A flood of made-up kids costs at most one fetch per interval.
    let before = jwks.fetches();
    let started = Instant::now();
    for i in 0..30 {
        let (status, body, _) = me(
            &app,
            Some(&sign(&ec_key(&format!("junk-{i}")), &claims(&iss, "u"))),
        )
        .await;
        assert_invalid_token("made-up kid", status, &body);
    }
    let extra = jwks.fetches() - before;
    let allowed = (started.elapsed().as_millis() / interval.as_millis()) as usize + 1;
    assert!(
        extra <= allowed,
        "{extra} fetches for 30 unknown kids, at most {allowed}"
    );
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_is_refused_once_the_key_set_is_refetched() {
    let kept = ec_key("kept");
    let revoked = ec_key("revoked");
    let jwks = Jwks::start(&[&kept, &revoked]).await;
    // The key set is trusted for 1 s; refetches at most every 200 ms.
    let app = app(
        &jwks,
        &[
            ("SUPABASE_JWKS_CACHE_TTL_SECS", "1"),
            ("SUPABASE_JWKS_MIN_REFRESH_MS", "200"),
        ],
    )
    .await;
    let iss = jwks.issuer();
    let by_revoked = sign(&revoked, &claims(&iss, "u-revoked"));
    let by_kept = sign(&kept, &claims(&iss, "u-kept"));
    assert_eq!(me(&app, Some(&by_revoked)).await.0, 200);
    assert_eq!(me(&app, Some(&by_kept)).await.0, 200);
    let fetched = jwks.fetches();

    // Supabase revokes the key: once the cached set expires and is fetched again, a token
    // it signed (still unexpired, signature still valid) is refused.
    jwks.retire("revoked");
    let (status, body) = wait_for(
        "the revoked key's token to be refused",
        Duration::from_secs(15),
        || async {
            let (status, body, _) = me(&app, Some(&by_revoked)).await;
            (status != 200).then_some((status, body))
        },
    )
    .await;
    assert_invalid_token("a token signed by a removed key", status, &body);
    assert!(
        jwks.fetches() > fetched,
        "refused without refetching the key set"
    );
    // For good, not once: later calls are refused too, and the other key still works.
    for _ in 0..3 {
        let (status, body, _) = me(&app, Some(&by_revoked)).await;
        assert_invalid_token("a token signed by a removed key, again", status, &body);
    }
    assert_eq!(me(&app, Some(&by_kept)).await.0, 200);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let key = ec_key("k1");
    let jwks = Jwks::start(&[&key]).await;
    // No rate limit at all: only the single flight can keep this to one fetch.
    let app = app(
        &jwks,
        &[
            ("SUPABASE_JWKS_MIN_REFRESH_MS", "0"),
            ("SUPABASE_JWKS_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    let iss = jwks.issuer();
    *jwks.delay.lock().unwrap() = Duration::from_millis(1500);

    let tokens: Vec<String> = (0..16)
        .map(|i| sign(&ec_key(&format!("unknown-{i}")), &claims(&iss, "u")))
        .chain(std::iter::once(sign(&key, &claims(&iss, "u"))))
        .collect();
    let results = futures::future::join_all(tokens.iter().map(|t| me(&app, Some(t)))).await;
    assert_eq!(jwks.fetches(), 1, "one fetch for 17 concurrent lookups");
    for (status, body, _) in &results[..16] {
        assert_invalid_token("unknown kid", *status, body);
    }
    assert_eq!(results[16].0, 200, "{}", results[16].1);

    // Without a rate limit a later unknown kid fetches again: the sharing above was the
    // single flight.
    *jwks.delay.lock().unwrap() = Duration::ZERO;
    me(&app, Some(&sign(&ec_key("later"), &claims(&iss, "u")))).await;
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn a_failing_or_hanging_jwks_keeps_the_last_good_keys() {
    let key = ec_key("k1");
    let jwks = Jwks::start(&[&key]).await;
    let app = app(
        &jwks,
        &[
            ("SUPABASE_JWKS_CACHE_TTL_SECS", "1"),
            ("SUPABASE_JWKS_MIN_REFRESH_MS", "0"),
            ("SUPABASE_JWKS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let token = sign(&key, &claims(&jwks.issuer(), "u"));
    assert_eq!(me(&app, Some(&token)).await.0, 200);
    assert_eq!(jwks.fetches(), 1);

    for mode in [FAIL, HANG] {
        jwks.mode.store(mode, Ordering::SeqCst);
        let before = jwks.fetches();
        // Once the TTL has passed every request tries a refresh, which fails (or times out):
        // the stale set keeps serving, and no request waits past the fetch timeout.
        wait_for("a failed refresh", Duration::from_secs(30), || async {
            let started = Instant::now();
            let (status, body, _) = me(&app, Some(&token)).await;
            assert_eq!(status, 200, "mode {mode}: {body}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "request waited on the JWKS"
            );
            (jwks.fetches() > before + 1).then_some(())
        })
        .await;
    }
    // It recovers when the endpoint does.
    jwks.mode.store(SERVE, Ordering::SeqCst);
    assert_eq!(me(&app, Some(&token)).await.0, 200);
}

#[tokio::test]
async fn rate_limits_are_per_caller_with_429_and_retry_after() {
    let jwks = Jwks::start(&[]).await;
    let app = app(
        &jwks,
        &[("RATE_LIMIT_PER_MINUTE", "1"), ("RATE_LIMIT_BURST", "3")],
    )
    .await;
    let iss = jwks.issuer();
    let alice = hs256(&claims(&iss, "alice"));
    // Another session of the same user shares the bucket.
    let mut other_session = claims(&iss, "alice");
    other_session["session_id"] = json!("phone");
    let alice_phone = hs256(&other_session);
    let bob = hs256(&claims(&iss, "bob"));

    assert_eq!(me(&app, Some(&alice)).await.0, 200);
    assert_eq!(me(&app, Some(&alice_phone)).await.0, 200);
    assert_eq!(me(&app, Some(&alice)).await.0, 200);
    let (status, body, headers) = me(&app, Some(&alice_phone)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    // Bob and the service have buckets of their own.
    assert_eq!(me(&app, Some(&bob)).await.0, 200);
    for _ in 0..3 {
        assert_eq!(me(&app, None).await.0, 200);
    }
    assert_eq!(me(&app, None).await.0, 429);
    // Health is never limited.
    assert_eq!(app.get("/health").await.status(), 200);
}

/// Many requests of one caller at once, each finding the process's lease used up, must not
/// each lease tokens of their own: that emptied the bucket with tokens nobody spent, and
/// callers well under their burst got 429.
#[tokio::test]
async fn concurrent_requests_of_one_caller_get_the_whole_burst_and_no_more() {
    const BURST: usize = 60;
    const WAVE: usize = 12;
    let jwks = Jwks::start(&[]).await;
    let app = app(
        &jwks,
        &[
            ("RATE_LIMIT_PER_MINUTE", "1"),
            ("RATE_LIMIT_BURST", "60"),
            ("RATE_LIMIT_LEASE", "8"),
            // A loaded test box must not push the limiter into its per-process fallback.
            ("RATE_LIMIT_REDIS_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let alice = hs256(&claims(&jwks.issuer(), "alice"));
    // Waves of requests at once, until one is refused: each wave finds the lease of the
    // last one used up.
    let mut statuses = Vec::new();
    while !statuses.contains(&429) {
        assert!(statuses.len() < BURST * 2, "never refused: {statuses:?}");
        let wave = futures::future::join_all((0..WAVE).map(|_| me(&app, Some(&alice)))).await;
        statuses.extend(wave.into_iter().map(|(status, _, _)| status));
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let first_refused = statuses.iter().position(|s| *s == 429).unwrap_or(0);
    // Leased tokens lapse only if the box stalls for LEASE_TTL, which would cost at most one
    // lease (RATE_LIMIT_LEASE); one token may refill meanwhile.
    assert!(
        first_refused >= BURST - 8,
        "refused after {first_refused} requests within a burst of {BURST}: {statuses:?}"
    );
    assert!(
        (BURST - 8..=BURST + 1).contains(&ok),
        "{ok} requests let through a burst of {BURST}: {statuses:?}"
    );
    // One lease in flight at a time, covering the requests waiting for it (9 leases for 72
    // requests when measured), not a lease for each request of a crowd.
    let leases = app.backend.auth().rate_limit_stats().leases;
    assert!(
        leases <= 20,
        "{leases} leases for {} requests",
        statuses.len()
    );
    // Refused again, with the time until the next token, and without asking Redis: it said
    // when the next token comes.
    let (status, body, headers) = me(&app, Some(&alice)).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(app.backend.auth().rate_limit_stats().leases, leases);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_bodyless_requests_pass() {
    let jwks = Jwks::start(&[]).await;
    let app = app(&jwks, &[("MAX_BODY_BYTES", "1024")]).await;
    let post = |body: reqwest::Body| {
        app.client
            .post(app.url("/api/v1/me"))
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = post(vec![b'x'; 4096].into()).await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["correlation_id"].is_string());

    // Chunked (no Content-Length): counted as it is read.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'x'; 1000])).collect();
    let r = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    // A small chunked body passes the limit (and /me only answers GET).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(b"{}".to_vec())];
    let r = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Bodyless GETs are untouched.
    assert_eq!(me(&app, None).await.0, 200);
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn cors_covers_the_auth_headers_and_error_responses() {
    let jwks = Jwks::start(&[]).await;
    let app = app(&jwks, &[("CORS_ORIGINS", "https://app.xenios.example")]).await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/me"))
        .header("origin", "https://app.xenios.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization, x-api-key")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.xenios.example"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("x-api-key"),
        "{allowed}"
    );

    // A browser can read a 401 body: it carries the CORS headers too.
    let r = app
        .client
        .get(app.url("/api/v1/me"))
        .header("origin", "https://app.xenios.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.xenios.example"
    );
}

#[tokio::test]
async fn the_openapi_document_declares_both_schemes() {
    let jwks = Jwks::start(&[]).await;
    let app = app(&jwks, &[]).await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["ApiKeyAuth"]["type"], "apiKey");
    assert_eq!(schemes["ApiKeyAuth"]["name"], "X-API-Key");
    assert_eq!(schemes["ApiKeyAuth"]["in"], "header");
    assert_eq!(schemes["BearerAuth"]["type"], "http");
    assert_eq!(schemes["BearerAuth"]["scheme"], "bearer");
    let security = spec["paths"]["/api/v1/me"]["get"]["security"].to_string();
    assert!(
        security.contains("ApiKeyAuth") && security.contains("BearerAuth"),
        "{security}"
    );
    assert!(spec["paths"]["/api/v1/status"]["get"]["security"].is_array());
    assert!(spec["paths"]["/health"]["get"]["security"].is_null());
}

/// A verified ES256 token is remembered (by its hash, until its `exp`), so its user is served
/// again without another signature check; but any other byte string, however close, is not
/// that token: a flipped signature, a payload with another user, the same claims signed by a
/// key the JWKS does not hold, all go through the full check and are refused.
#[tokio::test]
async fn a_remembered_token_vouches_for_itself_only() {
    let key = ec_key("k1");
    let jwks = Jwks::start(&[&key]).await;
    let app = app(&jwks, &[]).await;
    let iss = jwks.issuer();
    let good = sign(&key, &claims(&iss, "u-good"));
    for _ in 0..3 {
        let (status, body, _) = me(&app, Some(&good)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], "u-good", "{body}");
    }
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    // The signature's first character changed (base64url: still well-formed).
    let first = signature.chars().next().unwrap();
    let flipped = format!(
        "{header}.{payload}.{}{}",
        if first == 'A' { 'B' } else { 'A' },
        &signature[1..]
    );
    // Another user's claims under the good token's header and signature.
    let other_claims = b64(serde_json::to_vec(&claims(&iss, "u-other")).unwrap());
    let swapped = format!("{header}.{other_claims}.{signature}");
    // The same claims, the same kid, signed by a key the JWKS does not hold.
    let forged = sign(&ec_key("k1"), &claims(&iss, "u-good"));
    for (case, token) in [
        ("flipped signature", &flipped),
        ("swapped payload", &swapped),
        ("forged with the same kid", &forged),
    ] {
        let (status, body, _) = me(&app, Some(token)).await;
        assert_invalid_token(case, status, &body);
    }
    // The remembered token still works after the refusals.
    assert_eq!(me(&app, Some(&good)).await.0, 200);
}
