//! X.509 for the node proxy, so it needs no second crypto library: workload keys and CSRs in
//! Istio's form, parsing and chain-checking what a CA returns, and a local CA for standalone
//! mode (FAKE_CA). Certificates follow the control plane's profile (identity/ca.py): EC P-256
//! leaves, empty subject, one critical URI SAN, critical BasicConstraints CA:false, critical
//! KeyUsage digitalSignature+keyEncipherment, serverAuth+clientAuth, an authority key id.

use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::provider;
use crate::verify::uri_sans;

const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// notBefore is backdated so peers with slightly skewed clocks accept a new certificate.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// One certificate, parsed: what the node proxy checks and reports.
#[derive(Clone, Debug)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    /// The serial number's big-endian magnitude.
    pub serial: Vec<u8>,
    /// Validity, POSIX seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub uri_sans: Vec<String>,
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
}

impl ParsedCert {
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| format!("malformed certificate: {e}"))?;
        let validity = cert.validity();
        let parsed = Self {
            serial: cert.raw_serial().to_vec(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            uri_sans: Vec::new(),
            spki: cert.public_key().raw.to_vec(),
            der: Vec::new(),
        };
        let uris = uri_sans(&CertificateDer::from(der.as_slice()))?;
        Ok(Self {
            uri_sans: uris,
            der,
            ..parsed
        })
    }

    pub fn pem(&self) -> String {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("CERTIFICATE", self.der.clone()), lf)
    }
}

/// Every CERTIFICATE block of a PEM text, in order; other blocks are an error, none is one.
pub fn parse_certificates(pem_text: &[u8]) -> Result<Vec<ParsedCert>, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("not PEM: {e}"))?;
    if blocks.is_empty() {
        return Err("no PEM certificate found".into());
    }
    blocks
        .into_iter()
        .map(|block| match block.tag() {
            "CERTIFICATE" => ParsedCert::from_der(block.into_contents()),
            other => Err(format!(
                "a PEM {other} block where certificates were expected"
            )),
        })
        .collect()
}

/// The SubjectPublicKeyInfo (DER) of a PKCS#8 PEM private key.
pub fn private_key_spki(key_pem: &str) -> Result<Vec<u8>, String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("private key: {e}"))?;
    Ok(key.public_key_der())
}

/// Checks that `leaf` chains to one of `roots` through `intermediates` at `now` for client
/// authentication, as a peer ztunnel will check it (rustls' WebPKI verifier, our provider).
pub fn verify_client_chain(
    leaf: &ParsedCert,
    intermediates: &[ParsedCert],
    roots: &[ParsedCert],
    now: Duration,
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.der.as_slice()))
            .map_err(|e| format!("trust root: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(store.into(), provider())
        .build()
        .map_err(|e| format!("verifier: {e}"))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf.der.as_slice()),
            &intermediates,
            UnixTime::since_unix_epoch(now),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A fresh P-256 key (PKCS#8 PEM) and its CSR (PEM): empty subject, one critical URI SAN,
/// as Istio's node proxy sends them.
pub fn workload_key_and_csr(uri: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![critical_uri_san(uri)?];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR for {uri}: {e}"))?;
    let csr_pem = csr.pem().map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr_pem))
}

fn critical_uri_san(uri: &str) -> Result<CustomExtension, String> {
    if !uri.is_ascii() {
        return Err(format!("URI SAN {uri:?} is not ASCII"));
    }
    // GeneralNames ::= SEQUENCE OF GeneralName; uniformResourceIdentifier [6] IA5String.
    let name = der_tlv(0x86, uri.as_bytes());
    let mut extension =
        CustomExtension::from_oid_content(OID_SUBJECT_ALT_NAME, der_tlv(0x30, &name));
    extension.set_criticality(true);
    Ok(extension)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 20];
    provider()
        .secure_random
        .fill(&mut bytes)
        .expect("system randomness");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 20 bytes long, as cryptography's random_serial_number
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ttl;
}

/// A root CA that signs workload certificates locally (standalone mode).
pub struct LocalCa {
    issuer: Certificate,
    key: KeyPair,
    root_pem: String,
}

impl LocalCa {
    /// A fresh self-signed P-256 root, O=`trust_domain`.
    pub fn create(trust_domain: &str, ttl: Duration) -> Result<Self, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, ttl);
        let issuer = params.self_signed(&key).map_err(|e| format!("root: {e}"))?;
        let root_pem = issuer.pem();
        Ok(Self {
            issuer,
            key,
            root_pem,
        })
    }

    /// A root written earlier (root-cert.pem, root-key.pem); its key is EC or RSA.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("CA key: {e}"))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| format!("CA certificate: {e}"))?;
        let root = parse_certificates(cert_pem.as_bytes())?;
        if root[0].spki != key.public_key_der() {
            return Err("CA certificate and key do not match".into());
        }
        // Re-signing only rebuilds the issuer view (name, key id) leaves are signed with;
        // the root handed out stays the one loaded.
        let issuer = params.self_signed(&key).map_err(|e| format!("CA: {e}"))?;
        Ok(Self {
            issuer,
            key,
            root_pem: cert_pem.to_string(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a CSR whose only URI SAN is `identity` (its self-signature checked), for `ttl`.
    pub fn sign_csr(&self, csr_pem: &str, identity: &str, ttl: Duration) -> Result<String, String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::RingUnspecified => "CSR signature does not match its key".to_string(),
            other => format!("malformed CSR: {other}"),
        })?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect();
        if uris != [identity] {
            let asked = if uris.is_empty() {
                "no URI SAN".to_string()
            } else {
                uris.join(", ")
            };
            return Err(format!("CSR asks for {asked}"));
        }
        self.sign(&csr.public_key, identity, ttl)
    }

    fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        uri: &str,
        ttl: Duration,
    ) -> Result<String, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        // BasicConstraints CA:false, critical: an empty SEQUENCE (cA defaults to false).
        let mut not_ca = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0]);
        not_ca.set_criticality(true);
        params.custom_extensions = vec![not_ca, critical_uri_san(uri)?];
        params.serial_number = Some(random_serial());
        validity(&mut params, ttl);
        let leaf = params
            .signed_by(public_key, &self.issuer, &self.key)
            .map_err(|e| format!("signing {uri}: {e}"))?;
        Ok(leaf.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/a";

    fn now() -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    }

    #[test]
    fn a_signed_csr_chains_to_the_root_and_names_the_identity() {
        let ca = LocalCa::create("cluster.local", Duration::from_secs(3600)).unwrap();
        let (key_pem, csr_pem) = workload_key_and_csr(ID).unwrap();
        let leaf_pem = ca.sign_csr(&csr_pem, ID, Duration::from_secs(600)).unwrap();
        let leaf = &parse_certificates(leaf_pem.as_bytes()).unwrap()[0];
        let roots = parse_certificates(ca.root_pem().as_bytes()).unwrap();
        assert_eq!(leaf.uri_sans, vec![ID.to_string()]);
        assert_eq!(leaf.spki, private_key_spki(&key_pem).unwrap());
        assert_eq!(leaf.serial.len(), 20);
        assert!(leaf.not_after - leaf.not_before == 660);
        verify_client_chain(leaf, &[], &roots, now()).unwrap();
        let (_, parsed) = X509Certificate::from_der(&leaf.der).unwrap();
        let critical: Vec<String> = parsed
            .extensions()
            .iter()
            .filter(|e| e.critical)
            .map(|e| e.oid.to_id_string())
            .collect();
        assert_eq!(
            critical.len(),
            3,
            "BasicConstraints, KeyUsage, SAN: {critical:?}"
        );
    }

    #[test]
    fn a_reloaded_root_signs_leaves_its_original_verifies() {
        let ca = LocalCa::create("cluster.local", Duration::from_secs(3600)).unwrap();
        let again = LocalCa::load(ca.root_pem(), &ca.key_pem()).unwrap();
        let (_, csr_pem) = workload_key_and_csr(ID).unwrap();
        let leaf_pem = again
            .sign_csr(&csr_pem, ID, Duration::from_secs(600))
            .unwrap();
        let leaf = &parse_certificates(leaf_pem.as_bytes()).unwrap()[0];
        let roots = parse_certificates(ca.root_pem().as_bytes()).unwrap();
        verify_client_chain(leaf, &[], &roots, now()).unwrap();
    }

    #[test]
    fn csrs_for_another_identity_or_tampered_are_refused() {
        let ca = LocalCa::create("cluster.local", Duration::from_secs(3600)).unwrap();
        let (_, csr_pem) = workload_key_and_csr("spiffe://cluster.local/ns/x/sa/b").unwrap();
        let err = ca
            .sign_csr(&csr_pem, ID, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            err.contains("CSR asks for spiffe://cluster.local/ns/x/sa/b"),
            "{err}"
        );
        let mut der = pem::parse(&csr_pem).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = ca
            .sign_csr(&tampered, ID, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.contains("CSR"), "{err}");
        assert!(ca.sign_csr("garbage", ID, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn another_roots_leaf_does_not_verify() {
        let ca = LocalCa::create("cluster.local", Duration::from_secs(3600)).unwrap();
        let other = LocalCa::create("cluster.local", Duration::from_secs(3600)).unwrap();
        let (_, csr_pem) = workload_key_and_csr(ID).unwrap();
        let leaf_pem = other
            .sign_csr(&csr_pem, ID, Duration::from_secs(600))
            .unwrap();
        let leaf = &parse_certificates(leaf_pem.as_bytes()).unwrap()[0];
        let roots = parse_certificates(ca.root_pem().as_bytes()).unwrap();
        assert!(verify_client_chain(leaf, &[], &roots, now()).is_err());
    }

    #[test]
    fn pem_without_certificates_is_an_error() {
        assert!(parse_certificates(b"").is_err());
        assert!(parse_certificates(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }
}
