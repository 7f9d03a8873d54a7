//! Cost of verifying one Supabase access token through `JwtVerifier::verify`: HS256 (shared
//! secret) and ES256 (key from a JWKS, already cached), each as the same token again
//! (remembered by the verified-token cache, as a session's token is) and as tokens seen for
//! the first time (the full check), plus the API-key check. Compare ES256 with HS256 of the same run: absolute times drift between machines.
//!
//! `cargo bench -p xenios-core --bench auth`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use secrecy::SecretString;
use serde_json::json;
use xenios_core::auth::{ApiKeyVerifier, JwtVerifier};
use xenios_core::config::SupabaseConfig;

const SECRET: &str = "bench-jwt-secret-with-at-least-32-characters";
const URL: &str = "https://bench.supabase.co";

/// Serves one static JWKS document over plain HTTP on 127.0.0.1, forever (bench lifetime).
fn serve_jwks(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        }
    });
    format!("http://{addr}/jwks.json")
}

fn bench(c: &mut Criterion) {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let point = sk.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    }]});
    let config = SupabaseConfig {
        url: Some(URL.to_owned()),
        jwt_secret: Some(SecretString::from(SECRET)),
        jwks_url: Some(serve_jwks(jwks.to_string())),
        jwks_cache_ttl: Duration::from_secs(600),
        jwks_min_refresh_interval: Duration::from_secs(30),
        jwks_timeout: Duration::from_secs(5),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = JwtVerifier::new(&config, reqwest::Client::new());

    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": format!("{URL}/auth/v1"), "aud": "authenticated",
        "sub": "8d3f0c9e-1f0b-4c4e-9a59-0c1d2e3f4a5b", "exp": now + 86_400, "iat": now,
        "role": "authenticated", "email": "coach@example.com",
        "session_id": "0f6b9f8e-7a2c-4d0e-8b1a-2c3d4e5f6a7b", "aal": "aal1",
        "is_anonymous": false, "amr": [{"method": "password", "timestamp": now}],
        "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {},
    });
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    let es = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // Warm the JWKS cache (one fetch), as in a running server.
    rt.block_on(verifier.verify(&es)).unwrap();
    rt.block_on(verifier.verify(&hs)).unwrap();

    c.bench_function("verify HS256 (same token again)", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&hs))).unwrap())
    });
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let hs_header = Header::new(Algorithm::HS256);
    first_sight(
        c,
        "verify HS256 (first sight)",
        &rt,
        &verifier,
        &claims,
        |fresh| encode(&hs_header, fresh, &secret).unwrap(),
    );
    // The token of a session, sent again with each of its requests: remembered.
    c.bench_function("verify ES256 (same token again)", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&es))).unwrap())
    });
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    first_sight(
        c,
        "verify ES256 (first sight)",
        &rt,
        &verifier,
        &claims,
        |fresh| encode(&header, fresh, &encoding).unwrap(),
    );
    let keys = ApiKeyVerifier::new(&SecretString::from("bench-api-key-0123456789"));
    c.bench_function("verify API key", |b| {
        b.iter(|| keys.verify(black_box(Some("bench-api-key-0123456789"))))
    });
}

/// A token seen for the first time (a new session): the full check. Each iteration gets a
/// token of its own (the benchmark's claims with another `jti`), signed by `sign` outside
/// the timing.
fn first_sight(
    c: &mut Criterion,
    name: &str,
    rt: &tokio::runtime::Runtime,
    verifier: &JwtVerifier,
    claims: &serde_json::Value,
    mut sign: impl FnMut(&serde_json::Value) -> String,
) {
    let mut claims = claims.clone();
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter_batched(
            || {
                n += 1;
                claims["jti"] = json!(n);
                sign(&claims)
            },
            |token| rt.block_on(verifier.verify(black_box(&token))).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
