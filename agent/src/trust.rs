//! Whom the agent trusts: exactly the CA its join token pins, or the public
//! web roots when the token says `public`.
//!
//! On first contact the agent knows only the SHA-256 of the coordinator CA's
//! DER certificate (from the token); the coordinator serves its chain
//! `[leaf, CA]`, and [`PinnedCaVerifier`] accepts it only if one certificate
//! of the chain has that digest and the leaf chains to it. After enrolment
//! the CA's PEM is saved and trusted on later runs, still checked against
//! the pin, so a coordinator that stops sending its CA still works.

use std::sync::Arc;

use musketeer_tasks::token::{ca_digest, CaPin};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};

/// The pinned CA is not in the coordinator's chain: someone else answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the coordinator's CA does not match the join token (possible impostor; check the token)")]
pub struct CaMismatch;

/// A CA certificate that cannot be trusted as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// The PEM text holds no certificate.
    #[error("the CA certificate is not valid PEM: {0}")]
    BadPem(String),
    /// The certificate is not the one the token pins.
    #[error(transparent)]
    Mismatch(#[from] CaMismatch),
}

/// What the agent trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the CA with this SHA-256 digest of its DER certificate.
    Pinned {
        /// The digest from the join token.
        digest: [u8; 32],
        /// The CA itself once known (saved at enrolment); its digest is `digest`.
        ca: Option<CertificateDer<'static>>,
    },
    /// The public web roots (the token's digest was `public`).
    Public,
}

impl Trust {
    /// Trust as a join token pins it, before the CA itself is known.
    pub fn from_pin(pin: CaPin) -> Trust {
        match pin {
            CaPin::Digest(digest) => Trust::Pinned { digest, ca: None },
            CaPin::Public => Trust::Public,
        }
    }

    /// Trust `pin`, with the CA certificate given as PEM; refused unless the
    /// certificate is the pinned one.
    pub fn with_ca_pem(pin: CaPin, pem: &str) -> Result<Trust, TrustError> {
        let CaPin::Digest(digest) = pin else {
            return Ok(Trust::Public);
        };
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TrustError::BadPem(e.to_string()))?;
        if ca_digest(&der) != digest {
            return Err(CaMismatch.into());
        }
        Ok(Trust::Pinned {
            digest,
            ca: Some(der),
        })
    }

    /// A rustls client configuration (ring provider) that trusts this and nothing else.
    pub fn client_config(&self) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        match self {
            Trust::Public => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pinned { digest, ca } => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                    digest: *digest,
                    known_ca: ca.clone(),
                    provider,
                }))
                .with_no_client_auth(),
        }
    }
}

/// Accepts a server whose certificate chains to the CA with a pinned digest.
///
/// The server name is deliberately not checked: the pinned CA is the
/// coordinator's own and issues certificates for nothing else, so a chain to
/// it already proves whom we talk to, while agents reach coordinators by IP
/// addresses, container names and through NAT that no certificate can list.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    digest: [u8; 32],
    known_ca: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier for the CA with SHA-256 `digest` (of its DER certificate).
    pub fn new(digest: [u8; 32]) -> PinnedCaVerifier {
        PinnedCaVerifier {
            digest,
            known_ca: None,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ca = self
            .known_ca
            .iter()
            .chain(std::iter::once(end_entity))
            .chain(intermediates)
            .find(|cert| ca_digest(cert) == self.digest)
            .ok_or_else(|| {
                TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    CaMismatch,
                ))))
            })?;
        let anchor = webpki::anchor_from_trusted_cert(ca).map_err(pki_error)?;
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        leaf.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Maps a path-building error to the rustls error a user would recognise.
fn pki_error(e: webpki::Error) -> TlsError {
    use webpki::Error as E;
    TlsError::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// Whether `err`, or anything in its chain of causes, is a [`CaMismatch`].
///
/// The cause travels through reqwest, hyper and an `io::Error`; `io::Error`'s
/// own `source()` skips the error it wraps, so its `get_ref()` is looked at too.
pub fn is_ca_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<CaMismatch>() {
            return true;
        }
        if let Some(TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            e.downcast_ref::<TlsError>()
        {
            if inner.is::<CaMismatch>() {
                return true;
            }
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_ca_mismatch(inner) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    /// A CA and a server certificate it signed, as a coordinator makes them.
    pub(crate) struct TestPki {
        pub ca_der: CertificateDer<'static>,
        pub ca_pem: String,
        pub leaf_der: CertificateDer<'static>,
        pub leaf_key_der: Vec<u8>,
    }

    /// Makes a CA and a leaf for `localhost`; two calls give two CAs with the same names.
    pub(crate) fn test_pki() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Musketeer CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "musketeer coordinator");
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        TestPki {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    fn verify(
        verifier: &PinnedCaVerifier,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<ServerCertVerified, TlsError> {
        verifier.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn the_pinned_ca_is_accepted_whatever_the_name() {
        let pki = test_pki();
        let verifier = PinnedCaVerifier::new(ca_digest(&pki.ca_der));
        let chain = [pki.leaf_der.clone(), pki.ca_der.clone()];
        verify(&verifier, &chain, "localhost").unwrap();
        // Agents reach coordinators by names the certificate does not list.
        verify(&verifier, &chain, "coordinator.internal").unwrap();
        verify(&verifier, &chain, "10.1.2.3").unwrap();
    }

    #[test]
    fn another_ca_with_the_same_names_is_refused_clearly() {
        let real = test_pki();
        let impostor = test_pki();
        let verifier = PinnedCaVerifier::new(ca_digest(&real.ca_der));
        let chain = [impostor.leaf_der.clone(), impostor.ca_der.clone()];
        let err = verify(&verifier, &chain, "localhost").unwrap_err();
        assert!(is_ca_mismatch(&err), "{err:?}");
        // rustls shows the cause with Debug; the client turns it back into ours.
        let text = crate::client::ClientError::from(CaMismatch).to_string();
        assert!(
            text.contains("does not match the join token") && text.contains("impostor"),
            "{text}"
        );
    }

    #[test]
    fn an_impostor_leaf_beside_the_real_ca_is_refused() {
        // Sending the real CA's public certificate proves nothing: the leaf
        // must be signed by it.
        let real = test_pki();
        let impostor = test_pki();
        let verifier = PinnedCaVerifier::new(ca_digest(&real.ca_der));
        let chain = [impostor.leaf_der.clone(), real.ca_der.clone()];
        let err = verify(&verifier, &chain, "localhost").unwrap_err();
        assert!(!is_ca_mismatch(&err));
        assert!(matches!(err, TlsError::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn a_saved_ca_works_when_the_chain_omits_it() {
        let pki = test_pki();
        let pin = CaPin::Digest(ca_digest(&pki.ca_der));
        let Trust::Pinned { digest, ca } = Trust::with_ca_pem(pin, &pki.ca_pem).unwrap() else {
            panic!("pinned trust expected");
        };
        let verifier = PinnedCaVerifier {
            digest,
            known_ca: ca,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        verify(&verifier, std::slice::from_ref(&pki.leaf_der), "localhost").unwrap();
        // Without the saved CA, the same chain has nothing to pin.
        let bare = PinnedCaVerifier::new(digest);
        assert!(verify(&bare, &[pki.leaf_der], "localhost").is_err());
    }

    #[test]
    fn a_saved_ca_must_match_the_pin() {
        let real = test_pki();
        let other = test_pki();
        let pin = CaPin::Digest(ca_digest(&real.ca_der));
        assert_eq!(
            Trust::with_ca_pem(pin, &other.ca_pem),
            Err(TrustError::Mismatch(CaMismatch))
        );
        assert!(matches!(
            Trust::with_ca_pem(pin, "not pem"),
            Err(TrustError::BadPem(_))
        ));
        assert_eq!(
            Trust::with_ca_pem(CaPin::Public, "ignored"),
            Ok(Trust::Public)
        );
    }

    #[test]
    fn public_trust_builds_with_web_roots() {
        let config = Trust::Public.client_config();
        assert!(config.alpn_protocols.is_empty());
    }
}
