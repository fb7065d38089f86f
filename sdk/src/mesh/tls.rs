//! TLS bound to node keys.
//!
//! Every node presents a self-signed certificate for its own ed25519 node
//! key; there is no certificate authority. A verifier accepts a certificate
//! only if its subject public key is an ed25519 key (that key *is* the peer's
//! [`NodeId`]) and, when the dialer pinned an id, only that id. The TLS 1.3
//! handshake signature is verified with the same key, so a peer cannot claim
//! an id whose secret it does not hold. Mesh membership (the pre-shared key)
//! is proven after the handshake by [`admission`](super::admission).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::Keypair;
use crate::identity::NodeId;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key
/// follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ed25519 PKCS#8 v1 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The name every node's certificate carries and every dialer asks for.
pub(crate) const SERVER_NAME: &str = "cellmesh.invalid";

/// Why TLS credentials could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate could not be generated.
    #[error("cannot generate the node certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

/// The node id a certificate's ed25519 key names.
pub(crate) fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    let raw = spki.as_ref();
    if raw.len() != 44 || raw[..12] != ED25519_SPKI_PREFIX {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&raw[12..]);
    NodeId::from_bytes(key)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's certificate and key, built once per node.
pub(crate) struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Credentials {
    pub(crate) fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        let (cert, key) = credentials(keypair)?;
        Ok(Self { cert, key })
    }
}

/// The node's certificate and key.
fn credentials(
    keypair: &Keypair,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(keypair.secret_seed().as_ref());
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// Server side: requires a client certificate (any ed25519 node key; the
/// admission proof decides membership).
pub(crate) fn server_config(
    creds: &Credentials,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key) = (creds.cert.clone(), creds.key.clone_key());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(NodeKeyVerifier::any()))
        .with_single_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// Client side: presents our certificate; accepts the server only if its key
/// is `expected` (when given).
pub(crate) fn client_config(
    creds: &Credentials,
    alpns: &[&[u8]],
    expected: Option<NodeId>,
) -> Result<rustls::ClientConfig, TlsError> {
    let (cert, key) = (creds.cert.clone(), creds.key.clone_key());
    let verifier = match expected {
        Some(id) => NodeKeyVerifier::pinned(id),
        None => NodeKeyVerifier::any(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// Accepts self-signed ed25519 node certificates, optionally pinned to one id.
#[derive(Debug)]
struct NodeKeyVerifier {
    expected: Option<NodeId>,
    provider: Arc<CryptoProvider>,
}

impl NodeKeyVerifier {
    fn any() -> Self {
        Self {
            expected: None,
            provider: provider(),
        }
    }

    fn pinned(id: NodeId) -> Self {
        Self {
            expected: Some(id),
            provider: provider(),
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = node_id_of(cert)?;
        match self.expected {
            Some(want) if want != id => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for NodeKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn certificate_names_the_node_key() {
        let id = Identity::from_seed([4; 32]);
        let (cert, _) = credentials(id.keypair()).unwrap();
        assert_eq!(node_id_of(&cert).unwrap(), NodeId::from(id.entity_id()));
    }

    #[test]
    fn pinned_verifier_refuses_another_key() {
        let a = Identity::from_seed([5; 32]);
        let b = Identity::from_seed([6; 32]);
        let (cert_b, _) = credentials(b.keypair()).unwrap();
        let v = NodeKeyVerifier::pinned(NodeId::from(a.entity_id()));
        assert!(v.check(&cert_b).is_err());
        assert!(NodeKeyVerifier::any().check(&cert_b).is_ok());
        assert!(node_id_of(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
