//! rustls configuration for HBONE: TLS 1.3 only, AES-GCM suites, ALPN h2, no SNI, no
//! resumption (reference 01), with SPIFFE verification from `verify`.

use std::io::BufReader;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::verify::{trust_domain, uri_sans, SpiffeClientVerifier, SpiffeServerVerifier};

const ALPN_H2: &[u8] = b"h2";

/// aws-lc-rs restricted to the suites ztunnel offers (no ChaCha20).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = aws_lc_rs::default_provider();
            p.cipher_suites = vec![
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ];
            Arc::new(p)
        })
        .clone()
}

/// A workload's certificate chain, key and mesh roots, parsed once.
pub struct Identity {
    pub spiffe_id: String,
    pub trust_domain: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Identity {
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> Result<Self, String> {
        let chain = rustls_pemfile::certs(&mut BufReader::new(chain_pem))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        let leaf = chain
            .first()
            .ok_or("certificate chain: no certificate in PEM")?;
        let spiffe_id = uri_sans(leaf)?
            .into_iter()
            .find(|s| trust_domain(s).is_some())
            .ok_or("certificate chain: leaf has no spiffe://<td>/ns/<ns>/sa/<sa> URI SAN")?;
        let trust_domain = trust_domain(&spiffe_id).unwrap_or_default().to_string();
        let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem))
            .map_err(|e| format!("private key: {e}"))?
            .ok_or("private key: no key in PEM")?;
        let mut roots = RootCertStore::empty();
        for root in rustls_pemfile::certs(&mut BufReader::new(roots_pem)) {
            let root = root.map_err(|e| format!("roots: {e}"))?;
            roots.add(root).map_err(|e| format!("roots: {e}"))?;
        }
        if roots.is_empty() {
            return Err("roots: no certificate in PEM".into());
        }
        Ok(Self {
            spiffe_id,
            trust_domain,
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The config a proxy serves HBONE with when this identity is the destination's.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let verifier =
            SpiffeClientVerifier::new(self.roots.clone(), self.trust_domain.clone(), provider())?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("server config: {e}"))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("server config for {}: {e}", self.spiffe_id))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The config for connecting as this identity to a peer that must hold one of `expected`.
    pub fn client_config(&self, expected: Vec<String>) -> Result<Arc<ClientConfig>, String> {
        let verifier = SpiffeServerVerifier::new(self.roots.clone(), expected, provider());
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("client config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("client config for {}: {e}", self.spiffe_id))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}
