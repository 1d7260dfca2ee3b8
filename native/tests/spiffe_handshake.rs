//! TLS handshakes in memory between our client and server configs: SPIFFE SAN checks.

use ambient_fast_native::tls::Identity;
use ambient_fast_native::verify::peer_identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::OrganizationName, name);
    let cert = params.self_signed(&key).expect("ca cert");
    Ca { cert, key }
}

fn workload(ca: &Ca, uri: Option<&str>) -> Result<Identity, String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    }
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    Identity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        ca.cert.pem().as_bytes(),
    )
}

const CLIENT: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/b/sa/server";

/// Runs one handshake; Ok(identity the server saw) or Err(which side failed and why).
async fn handshake(
    client: &Identity,
    server: &Identity,
    expect: &[&str],
) -> Result<String, String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config()?);
    let connector =
        TlsConnector::from(client.client_config(expect.iter().map(|e| e.to_string()).collect())?);
    let name = ServerName::try_from("127.0.0.1").expect("ip name");
    let (client_side, server_side) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    client_side.map_err(|e| format!("client: {e}"))?;
    let server_side = server_side.map_err(|e| format!("server: {e}"))?;
    Ok(peer_identity(server_side.get_ref().1.peer_certificates()).unwrap_or_default())
}

#[tokio::test]
async fn matching_identities_handshake_and_the_server_sees_the_client_id() {
    let mesh = ca("mesh");
    let client = workload(&mesh, Some(CLIENT)).expect("client");
    let server = workload(&mesh, Some(SERVER)).expect("server");
    assert_eq!(
        handshake(&client, &server, &[SERVER]).await,
        Ok(CLIENT.to_string())
    );
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_by_the_client() {
    let mesh = ca("mesh");
    let client = workload(&mesh, Some(CLIENT)).expect("client");
    let impostor = workload(&mesh, Some("spiffe://cluster.local/ns/b/sa/other")).expect("server");
    let err = handshake(&client, &impostor, &[SERVER])
        .await
        .expect_err("must fail");
    assert!(err.contains("not one of the expected"), "{err}");
}

#[tokio::test]
async fn a_server_from_another_mesh_is_refused() {
    let (mesh, other) = (ca("mesh"), ca("other"));
    let client = workload(&mesh, Some(CLIENT)).expect("client");
    let server = workload(&other, Some(SERVER)).expect("server");
    let err = handshake(&client, &server, &[SERVER])
        .await
        .expect_err("must fail");
    assert!(err.starts_with("client:"), "{err}");
}

#[tokio::test]
async fn a_client_from_another_trust_domain_is_refused_by_the_server() {
    let mesh = ca("mesh");
    let client = workload(&mesh, Some("spiffe://evil.local/ns/a/sa/client")).expect("client");
    let server = workload(&mesh, Some(SERVER)).expect("server");
    let err = handshake(&client, &server, &[SERVER])
        .await
        .expect_err("must fail");
    assert!(err.contains("trust domain"), "{err}");
}

#[test]
fn a_certificate_without_a_spiffe_san_is_not_an_identity() {
    let mesh = ca("mesh");
    let err = workload(&mesh, None).err().expect("must fail");
    assert!(err.contains("URI SAN"), "{err}");
    let err = workload(&mesh, Some("spiffe://td/ns/a"))
        .err()
        .expect("must fail");
    assert!(err.contains("URI SAN"), "{err}");
}
