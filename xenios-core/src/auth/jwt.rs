//! Supabase access-token verification: legacy HS256 and asymmetric ES256/RS256 (JWKS), both
//! at once, because projects migrate from one to the other.
//!
//! The algorithm is chosen by the key, never by the token: an `HS256` header is only ever
//! checked against `SUPABASE_JWT_SECRET`, an `ES256`/`RS256` header only against the JWKS key
//! its `kid` names, and only when that key is of the same algorithm. Everything else (`none`,
//! other algorithms, a header naming its own key with `jwk`/`jku`/`x5u`/`x5c`) is refused or
//! ignored. Claims: `exp`, `aud`, `iss` and `sub` are required; `aud` must contain
//! `authenticated`, `iss` must be `<SUPABASE_URL>/auth/v1` when the URL is configured, `nbf`
//! is honoured, and clocks may differ by [`LEEWAY_SECS`].

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::jwks::{JwksCache, JwksSettings, KeyLookupError};
use super::verified::{self, VerifiedBy, VerifiedTokens};
use super::{AuthError, Principal, UserContext};
use crate::config::{MAX_JWKS_CACHE_TTL, SupabaseConfig};

/// Longest bearer token accepted, in bytes. Supabase access tokens are about 1 KiB; the cap
/// keeps hostile input from costing more than a length check.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Allowed clock difference for `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// The audience of Supabase user access tokens.
pub const AUDIENCE: &str = "authenticated";

/// Claims we read from a verified token; the registered claims (`exp`, `aud`, `iss`...) are
/// checked by `jsonwebtoken` itself.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required and checked by `jsonwebtoken`; read to bound a cached verification (a
    /// number, which JSON lets be fractional).
    exp: f64,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    aal: Option<String>,
    #[serde(default)]
    is_anonymous: Option<bool>,
}

/// Verifies Supabase access tokens. Cheap to share; holds the JWKS cache.
pub struct JwtVerifier {
    /// The HS256 shared secret and its validation rules, when configured.
    hs256: Option<(DecodingKey, Validation)>,
    es256: Validation,
    rs256: Validation,
    jwks: Option<Arc<JwksCache>>,
    /// Tokens verified before ([`verified`]): a session's token costs one signature check,
    /// not one per request.
    verified: VerifiedTokens,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "[REDACTED]"))
            .field("issuer", &self.es256.iss)
            .field("jwks", &self.jwks)
            .finish()
    }
}

fn validation(algorithm: Algorithm, issuer: Option<&str>) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&[AUDIENCE]);
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    // Without these, `aud`/`iss`/`sub` are only checked when present, and a legacy anon or
    // service_role key (no aud, no sub) would pass.
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v
}

fn invalid(detail: impl Into<String>) -> AuthError {
    AuthError::InvalidToken {
        detail: detail.into(),
    }
}

impl JwtVerifier {
    /// A verifier for the project described by `config`, fetching the JWKS (if any) with
    /// `http`. Without `SUPABASE_URL` the issuer cannot be known: `iss` must then be present
    /// but is not compared (development only; production requires `SUPABASE_URL`).
    pub fn new(config: &SupabaseConfig, http: reqwest::Client) -> Self {
        let issuer = config.issuer();
        let issuer = issuer.as_deref();
        let hs256 = config.jwt_secret.as_ref().map(|secret| {
            (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                validation(Algorithm::HS256, issuer),
            )
        });
        let jwks = config.jwks_url().map(|url| {
            Arc::new(JwksCache::new(
                JwksSettings {
                    url,
                    ttl: config.jwks_cache_ttl.min(MAX_JWKS_CACHE_TTL),
                    min_refresh_interval: config.jwks_min_refresh_interval,
                    timeout: config.jwks_timeout,
                },
                http,
            ))
        });
        Self {
            hs256,
            es256: validation(Algorithm::ES256, issuer),
            rs256: validation(Algorithm::RS256, issuer),
            jwks,
            verified: VerifiedTokens::new(),
        }
    }

    /// Whether any way of verifying tokens is configured (a secret or a JWKS URL).
    pub fn is_configured(&self) -> bool {
        self.hs256.is_some() || self.jwks.is_some()
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) and returns the user it names.
    ///
    /// Every failure is [`AuthError::InvalidToken`], whose `detail` says why for the log.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!("token longer than {MAX_TOKEN_LEN} bytes")));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || token.bytes().filter(|&b| b == b'.').count() != 2
        {
            return Err(invalid("not a compact JWS (three base64url parts)"));
        }
        // A token verified before ([`verified`]) costs a hash and a lookup: no header decode,
        // no signature check, no claims parse.
        let hash = verified::digest(token);
        let current = |kid: &str| self.jwks.as_ref().and_then(|jwks| jwks.fresh_key(kid));
        if let Some(principal) = self.verified.get(&hash, current) {
            return Ok(principal);
        }
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variants.
        let header = decode_header(token).map_err(|e| invalid(format!("bad header: {e}")))?;
        match header.alg {
            Algorithm::HS256 => {
                let (key, validation) = self.hs256.as_ref().ok_or_else(|| {
                    invalid("HS256 token but SUPABASE_JWT_SECRET is not configured")
                })?;
                let claims = decode::<Claims>(token, key, validation)
                    .map_err(|e| invalid(format!("verification failed: {e}")))?
                    .claims;
                let exp = claims.exp as u64;
                let principal = principal_from(claims)?;
                self.verified
                    .insert(hash, &principal, exp, VerifiedBy::Secret);
                Ok(principal)
            }
            Algorithm::ES256 | Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    invalid("asymmetric token but no JWKS is configured (SUPABASE_URL)")
                })?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("asymmetric token without kid"))?;
                let key = jwks.key(kid).await.map_err(|e| match e {
                    KeyLookupError::UnknownKid => invalid(format!("unknown kid `{kid}`")),
                })?;
                if key.algorithm != header.alg {
                    return Err(invalid(format!(
                        "token alg {:?} does not match key `{kid}` ({:?})",
                        header.alg, key.algorithm
                    )));
                }
                let validation = match key.algorithm {
                    Algorithm::ES256 => &self.es256,
                    _ => &self.rs256,
                };
                let claims = decode::<Claims>(token, &key.key, validation)
                    .map_err(|e| invalid(format!("verification failed: {e}")))?
                    .claims;
                let exp = claims.exp as u64;
                let principal = principal_from(claims)?;
                let by = VerifiedBy::Jwks {
                    kid: kid.to_owned(),
                    key,
                };
                self.verified.insert(hash, &principal, exp, by);
                Ok(principal)
            }
            other => Err(invalid(format!("algorithm {other:?} is not accepted"))),
        }
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn principal_from(claims: Claims) -> Result<Principal, AuthError> {
    if claims.sub.trim().is_empty() {
        return Err(invalid("empty sub"));
    }
    let role = claims.role.unwrap_or_default();
    match role.as_str() {
        "" => return Err(invalid("no role claim")),
        // API-key JWTs and not-signed-in tokens are not users.
        "anon" | "service_role" => return Err(invalid(format!("role `{role}` is not a user"))),
        _ => {}
    }
    Ok(Principal::User(UserContext {
        user_id: claims.sub,
        role,
        email: non_empty(claims.email),
        session_id: non_empty(claims.session_id),
        aal: non_empty(claims.aal),
        is_anonymous: claims.is_anonymous.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use secrecy::SecretString;
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";
    const URL: &str = "https://abc.supabase.co";

    fn config(secret: bool) -> SupabaseConfig {
        SupabaseConfig {
            url: Some(URL.to_owned()),
            jwt_secret: secret.then(|| SecretString::from(SECRET)),
            // Nothing listens there: asymmetric lookups fail fast and find no key.
            jwks_url: Some("http://127.0.0.1:9/jwks.json".to_owned()),
            jwks_cache_ttl: Duration::from_secs(600),
            jwks_min_refresh_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_millis(500),
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims() -> Value {
        json!({
            "iss": format!("{URL}/auth/v1"), "aud": "authenticated", "sub": "user-1",
            "exp": now() + 3600, "iat": now(), "role": "authenticated",
            "email": "a@example.com", "session_id": "s-1", "aal": "aal1", "is_anonymous": false,
        })
    }

    fn hs(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&config(true), reqwest::Client::new())
    }

    #[tokio::test]
    async fn a_valid_hs256_token_gives_the_user() {
        let p = verifier().verify(&hs(&claims())).await.unwrap();
        assert_eq!(
            p,
            Principal::User(UserContext {
                user_id: "user-1".into(),
                role: "authenticated".into(),
                email: Some("a@example.com".into()),
                session_id: Some("s-1".into()),
                aal: Some("aal1".into()),
                is_anonymous: false,
            })
        );
        let mut c = claims();
        c["aud"] = json!(["other", "authenticated"]);
        c["is_anonymous"] = json!(true);
        c["email"] = json!("");
        let Principal::User(u) = verifier().verify(&hs(&c)).await.unwrap() else {
            panic!("not a user")
        };
        assert!(u.is_anonymous);
        assert_eq!(u.email, None);
    }

    #[tokio::test]
    async fn hostile_and_malformed_tokens_are_invalid() {
        let v = verifier();
        let mut cases: Vec<(&str, String)> = Vec::new();
        let mut with = |name: &'static str, f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            cases.push((name, hs(&c)));
        };
        with("expired", &|c| c["exp"] = json!(now() - 120));
        with("not yet valid", &|c| c["nbf"] = json!(now() + 120));
        with("wrong iss", &|c| {
            c["iss"] = json!("https://evil.supabase.co/auth/v1")
        });
        with("no iss", &|c| {
            drop(c.as_object_mut().unwrap().remove("iss"))
        });
        with("wrong aud", &|c| c["aud"] = json!("anon"));
        with("no aud", &|c| {
            drop(c.as_object_mut().unwrap().remove("aud"))
        });
        with("no sub", &|c| {
            drop(c.as_object_mut().unwrap().remove("sub"))
        });
        with("empty sub", &|c| c["sub"] = json!(""));
        with("no exp", &|c| {
            drop(c.as_object_mut().unwrap().remove("exp"))
        });
        with("anon role", &|c| c["role"] = json!("anon"));
        with("service role", &|c| c["role"] = json!("service_role"));
        // The legacy anon / service_role API keys, signed with the same secret.
        cases.push((
            "legacy anon key",
            hs(&json!({"iss": "supabase", "ref": "abc", "role": "anon",
                       "iat": now(), "exp": now() + 3600})),
        ));
        cases.push((
            "legacy service key",
            hs(
                &json!({"iss": "supabase", "ref": "abc", "role": "service_role",
                       "iat": now(), "exp": now() + 3600}),
            ),
        ));
        let good = hs(&claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.rsplit_once('.').unwrap();
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let body = b64(&claims().to_string());
        cases.push(("alg none", format!("{}.{body}.", b64(r#"{"alg":"none"}"#))));
        cases.push((
            "alg none sig",
            format!("{}.{body}.{sig}", b64(r#"{"alg":"none"}"#)),
        ));
        cases.push((
            "HS512",
            format!("{}.{body}.{sig}", b64(r#"{"alg":"HS512"}"#)),
        ));
        cases.push(("tampered", format!("{head}.{body}x.{sig}")));
        cases.push(("wrong secret", {
            encode(
                &Header::new(Algorithm::HS256),
                &claims(),
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            )
            .unwrap()
        }));
        cases.push(("garbage", "garbage".into()));
        cases.push(("dots", "..".into()));
        cases.push(("spaces", "a b.c.d".into()));
        cases.push(("unicode", "é.é.é".into()));
        cases.push(("empty", String::new()));
        cases.push((
            "huge",
            format!("{head}.{}.{sig}", "A".repeat(MAX_TOKEN_LEN)),
        ));
        // ES256 / RS256 with a kid that no JWKS knows.
        cases.push((
            "unknown kid",
            format!("{}.{body}.{sig}", b64(r#"{"alg":"ES256","kid":"nope"}"#)),
        ));
        cases.push((
            "no kid",
            format!("{}.{body}.{sig}", b64(r#"{"alg":"RS256"}"#)),
        ));
        for (name, token) in cases {
            match v.verify(&token).await {
                Err(AuthError::InvalidToken { detail }) => assert!(!detail.is_empty(), "{name}"),
                other => panic!("{name}: expected InvalidToken, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_verified_hs256_token_is_remembered_and_a_tampered_one_is_not() {
        let v = verifier();
        let token = hs(&claims());
        let first = v.verify(&token).await.unwrap();
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.verify(&token).await.unwrap(), first);
        assert_eq!(v.verified.len(), 1);
        // One byte of the signature changed: another entry's key, checked in full, refused.
        let mut tampered = token.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        match v.verify(&tampered).await {
            Err(AuthError::InvalidToken { detail }) => {
                assert!(detail.contains("verification failed"), "{detail}")
            }
            other => panic!("a tampered token gave {other:?}"),
        }
        assert_eq!(v.verified.len(), 1);
        // Claims that verify but name no user are refused and not remembered.
        let mut anon = claims();
        anon["role"] = json!("anon");
        assert!(v.verify(&hs(&anon)).await.is_err());
        assert_eq!(v.verified.len(), 1);
    }

    #[tokio::test]
    async fn hs256_is_refused_without_the_secret() {
        let v = JwtVerifier::new(&config(false), reqwest::Client::new());
        assert!(matches!(
            v.verify(&hs(&claims())).await,
            Err(AuthError::InvalidToken { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let text = format!("{:?}", verifier());
        assert!(!text.contains(SECRET), "{text}");
    }
}
