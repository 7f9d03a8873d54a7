//! Opening Postgres connections: TLS per `sslmode`, and the prepared-statement setting.
//!
//! diesel-async connects without TLS by itself, but Supabase requires it, so connections are
//! opened here with tokio-postgres + rustls and handed to diesel-async. `sslmode` follows
//! libpq: `disable` (plain), `prefer` (the default: TLS when the server offers it),
//! `require` (TLS, certificate not verified, like libpq), `verify-ca`/`verify-full` (TLS,
//! certificate verified against `sslrootcert` or the web PKI roots; both also check the host).

use std::sync::Arc;

use diesel::ConnectionError;
use diesel::connection::CacheSize;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;

use super::error::UrlError;

/// How to open connections, derived from `DATABASE_URL` and the database settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `sslmode` from the URL (default `prefer`).
    pub ssl: TlsMode,
    /// `sslrootcert` from the URL: a PEM file of trusted CAs for `verify-*` modes.
    pub root_cert: Option<String>,
    /// Cache prepared statements per connection (`DATABASE_PREPARED_STATEMENTS`).
    pub prepared_statements: bool,
}

/// TLS behaviour, after libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when offered; certificate not verified.
    Prefer,
    /// TLS or fail; certificate not verified.
    Require,
    /// TLS or fail; certificate and host name verified.
    Verify,
}

/// Splits libpq TLS parameters off a URL, returning the URL tokio-postgres understands and
/// the options. Unknown `sslmode` values are an error naming the value.
pub fn parse_url(
    url: &str,
    prepared_statements: bool,
) -> Result<(String, ConnectOptions), UrlError> {
    let mut parsed = url::Url::parse(url)?;
    let mut ssl = TlsMode::Prefer;
    let mut root_cert = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                ssl = match v.as_ref() {
                    "disable" => TlsMode::Disable,
                    "allow" | "prefer" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" | "verify-full" => TlsMode::Verify,
                    other => return Err(UrlError::SslMode(other.to_owned())),
                }
            }
            "sslrootcert" => root_cert = Some(v.into_owned()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((
        parsed.to_string(),
        ConnectOptions {
            ssl,
            root_cert,
            prepared_statements,
        },
    ))
}

/// Opens one diesel-async connection.
pub async fn establish(
    url: &str,
    options: &ConnectOptions,
) -> Result<AsyncPgConnection, ConnectionError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::BadConnection(e.to_string()))?;
    if config.get_application_name().is_none() {
        config.application_name("xenios-ai-backend");
    }
    let mut conn = if options.ssl == TlsMode::Disable {
        config.ssl_mode(SslMode::Disable);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await?
    } else {
        config.ssl_mode(if options.ssl == TlsMode::Prefer {
            SslMode::Prefer
        } else {
            SslMode::Require
        });
        let tls = tls_connector(options)?;
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await?
    };
    if !options.prepared_statements {
        conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    }
    Ok(conn)
}

fn tls_connector(
    options: &ConnectOptions,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectionError> {
    let bad = |e: String| ConnectionError::BadConnection(e);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?;
    let config = if options.ssl == TlsMode::Verify {
        let mut roots = rustls::RootCertStore::empty();
        match &options.root_cert {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?
                {
                    let cert = cert.map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("sslrootcert `{path}`: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=require` semantics (libpq's): the channel is encrypted and the handshake
/// signatures are checked, but the server certificate is not verified against a CA.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_parameters_off_the_url() {
        let (url, o) = parse_url(
            "postgres://u:p@db.example.com:6543/postgres?sslmode=require&application_name=x",
            false,
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db.example.com:6543/postgres?application_name=x"
        );
        assert_eq!(o.ssl, TlsMode::Require);
        assert!(!o.prepared_statements);
        let (url, o) = parse_url("postgres://h/d", true).unwrap();
        assert_eq!(url, "postgres://h/d");
        assert_eq!(o.ssl, TlsMode::Prefer);
        assert!(parse_url("postgres://h/d?sslmode=bogus", true).is_err());
    }
}
