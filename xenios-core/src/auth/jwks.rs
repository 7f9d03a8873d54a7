//! The project's public signing keys (JWKS), cached.
//!
//! Rules, from RFC 8725 and Supabase's own guidance (`shared/notes/supabase-jwt.md`):
//! - a fetched set is trusted for at most the configured TTL (10 minutes at most);
//! - an unknown `kid` triggers a refresh (a rotation published a new key), but refreshes are
//!   single-flight (concurrent callers wait for the one fetch in progress instead of starting
//!   their own) and rate-limited (at most one attempt per `min_refresh_interval`), so tokens
//!   with made-up `kid`s cannot make us hammer the endpoint;
//! - a failed fetch keeps the last good set;
//! - every fetch has a deadline and a size cap.
//!
//! Only asymmetric verification keys are taken from the set (EC P-256 -> ES256, RSA -> RS256);
//! the algorithm is fixed by the key, never by a token. Symmetric (`oct`) keys are ignored:
//! HS256 is only ever checked against the configured shared secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// Largest JWKS document accepted; a real one is a few kilobytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One verification key of the set, with the one algorithm it may verify.
pub(crate) struct JwksKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<JwksKey>>,
    fetched_at: Option<Instant>,
}

/// Settings of a [`JwksCache`].
#[derive(Debug, Clone)]
pub(crate) struct JwksSettings {
    pub(crate) url: String,
    pub(crate) ttl: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) timeout: Duration,
}

/// A cached JWKS with single-flight, rate-limited refreshes.
pub(crate) struct JwksCache {
    settings: JwksSettings,
    http: reqwest::Client,
    /// The last good set. Readers clone the `Arc` and never wait for a fetch.
    current: RwLock<Arc<KeySet>>,
    /// Held while a fetch runs: the single flight.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Number of finished fetch attempts; a caller that waited for the lock compares it with
    /// the value it saw before waiting to know whether a fetch ended in the meantime.
    attempts: AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.snapshot();
        f.debug_struct("JwksCache")
            .field("url", &self.settings.url)
            .field("kids", &set.keys.keys().collect::<Vec<_>>())
            .field("attempts", &self.attempts.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a key could not be had.
#[derive(Debug)]
pub(crate) enum KeyLookupError {
    /// No key with that `kid` in the (possibly refreshed) set.
    UnknownKid,
}

impl JwksCache {
    pub(crate) fn new(settings: JwksSettings, http: reqwest::Client) -> Self {
        Self {
            settings,
            http,
            current: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A panic while holding the lock cannot leave a half-written set (the write is
            // one pointer swap), so the poisoned value is still good.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn store(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The key named `kid` in the current set while that set is fresh (younger than the
    /// TTL); never fetches. A cached verification holds only while this is its key.
    pub(crate) fn fresh_key(&self, kid: &str) -> Option<Arc<JwksKey>> {
        let set = self.snapshot();
        let fresh = set
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.settings.ttl);
        if fresh {
            set.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// The key named `kid`, fetching the set when it is stale or does not know `kid`.
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<JwksKey>, KeyLookupError> {
        let set = self.snapshot();
        let fresh = set
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.settings.ttl);
        if fresh && let Some(key) = set.keys.get(kid) {
            return Ok(Arc::clone(key));
        }
        self.refresh().await;
        // After a failed or rate-limited refresh this is still the last good set.
        self.snapshot()
            .keys
            .get(kid)
            .cloned()
            .ok_or(KeyLookupError::UnknownKid)
    }

    /// Fetches the set unless a fetch happened while we waited for the lock or the last
    /// attempt is more recent than `min_refresh_interval`.
    async fn refresh(&self) {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last_attempt = self.refresh.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return; // someone else just fetched (or tried to) for us
        }
        if last_attempt.is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval) {
            tracing::debug!(url = %self.settings.url, "JWKS refresh skipped: rate-limited");
            return;
        }
        *last_attempt = Some(Instant::now());
        let result = self.fetch().await;
        // Counted when the attempt is over: a caller that arrived during it saw the old count
        // and, once it gets the lock, knows not to fetch again.
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.settings.url, keys = keys.len(), "JWKS refreshed");
                self.store(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
            }
            Err(e) => {
                tracing::warn!(
                    url = %self.settings.url,
                    error = %e,
                    "JWKS refresh failed; keeping the last good key set"
                );
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<JwksKey>>, String> {
        let mut resp = self
            .http
            .get(&self.settings.url)
            .timeout(self.settings.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document, keeping the usable verification keys by `kid`. One bad or
/// unsupported key does not spoil the others.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<JwksKey>>, String> {
    let doc: JwksDocument =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for raw in doc.keys {
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(error = %e, "JWKS: skipping an unreadable key");
                continue;
            }
        };
        match usable_key(&jwk) {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(why) => tracing::debug!(kid = ?jwk.common.key_id, why, "JWKS: skipping a key"),
        }
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk) -> Result<(String, JwksKey), &'static str> {
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("not a signature key");
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops lacks verify");
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        _ => return Err("unsupported key type or algorithm (only ES256 and RS256)"),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key material")?;
    Ok((kid, JwksKey { algorithm, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_asymmetric_verification_keys() {
        let doc = serde_json::json!({"keys": [
            // EC P-256 (a valid point: the P-256 generator)
            {"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256", "use": "sig",
             "key_ops": ["verify"],
             "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
             "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"},
            // RSA without alg: RS256 is implied
            {"kty": "RSA", "kid": "rsa1", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            // symmetric keys never come from a JWKS
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
            // encryption key
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            // unknown type, and garbage
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"hello": "world"},
            // key_ops without verify
            {"kty": "EC", "crv": "P-256", "kid": "signonly", "key_ops": ["sign"],
             "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
             "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"},
            // alg contradicting the key type
            {"kty": "EC", "crv": "P-256", "kid": "ecrs", "alg": "RS256",
             "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
             "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["ec1", "rsa1"]);
        assert_eq!(keys["ec1"].algorithm, Algorithm::ES256);
        assert_eq!(keys["rsa1"].algorithm, Algorithm::RS256);
    }

    #[test]
    fn refuses_documents_that_are_not_a_jwks() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys": []}"#).unwrap().is_empty());
    }
}
