//! The coordinator's trust material, kept in its data directory:
//!
//! - `ca.pem` / `ca-key.pem`: a CA made on first start. Agents pin its
//!   SHA-256 through the join token; clients pass `ca.pem` to curl.
//! - a server certificate, issued by that CA on every start for the names the
//!   coordinator is reached by, and served with the CA in its chain so that
//!   an agent can find the pinned certificate in the handshake itself. It
//!   lives at most [`MAX_SERVER_CERT_LIFETIME`] (as Swarm's node
//!   certificates) and is renewed in memory two thirds of the way through
//!   its life ([`ServerIssuer::renew_at`]), without a restart: connections
//!   open keep their session, new handshakes get the new certificate.
//! - `admin.token` (mode 0600): the admin bearer token.
//!
//! An operator can instead pass a certificate from a public CA; join tokens
//! then say `public` and agents trust the usual web roots.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use musketeer_tasks::token::{ca_digest, CaPin};
use rand::distributions::Alphanumeric;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// File names inside the data directory.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The admin bearer token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The longest a server certificate the coordinator issues itself may live:
/// 90 days, as Swarm's node certificates and Let's Encrypt's.
pub const MAX_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a CA made on first start is valid: ten years, so a forgotten
/// cluster's trust ends by itself (Swarm's root CA lives twenty).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far back a new certificate's validity starts, for agents whose
/// clocks run a little slow.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// What the coordinator serves TLS with and what agents pin.
pub struct Pki {
    /// The CA's certificate, PEM, as agents and clients trust it.
    pub ca_pem: String,
    /// What join tokens pin.
    pub pin: CaPin,
    /// The rustls server configuration (certificate chain and key).
    pub server_config: Arc<rustls::ServerConfig>,
    /// Issues the next server certificate when this one ages; `None` for an
    /// operator's certificate, which the operator renews.
    pub issuer: Option<ServerIssuer>,
    /// When the served certificate stops being valid.
    pub not_after: Option<SystemTime>,
}

/// The self-made CA's signing half, kept in memory to renew the server
/// certificate.
pub struct ServerIssuer {
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    names: Vec<String>,
    lifetime: Duration,
}

impl ServerIssuer {
    /// Issues a server certificate valid from a little before now for the
    /// issuer's lifetime; returns the rustls configuration serving it and
    /// its end of validity.
    pub fn issue(&self) -> Result<(Arc<rustls::ServerConfig>, SystemTime)> {
        // Rebuilt from the same parameters and key: same subject and key
        // identifier, so what it signs verifies against the saved ca.pem.
        let issuer = ca_params()?.self_signed(&self.ca_key)?;
        let mut params = CertificateParams::new(self.names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Musketeer coordinator");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        let not_after = now + self.lifetime;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let leaf_key = KeyPair::generate()?;
        let leaf = params.signed_by(&leaf_key, &issuer, &self.ca_key)?;
        let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        Ok((server_config(chain, key)?, not_after))
    }

    /// When a certificate valid until `not_after` is renewed: two thirds of
    /// the way through its life, so a renewal that fails (and is retried)
    /// has a third of the lifetime to succeed before agents notice.
    pub fn renew_at(&self, not_after: SystemTime) -> SystemTime {
        not_after - self.lifetime / 3
    }
}

/// The crypto provider every TLS endpoint of the coordinator uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// A random alphanumeric secret of `len` characters.
pub fn random_secret(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The CA's parameters, the same on every start, so that the CA rebuilt from
/// its saved key issues certificates that chain to the saved `ca.pem`.
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Musketeer coordinator CA");
    dn.push(DnType::OrganizationName, "Musketeer");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Pki {
    /// Loads the CA from `dir`, making one on first start, and issues a
    /// server certificate for `names` (host names and IP addresses) valid
    /// for `lifetime` (at most [`MAX_SERVER_CERT_LIFETIME`]).
    pub fn load_or_create(dir: &Path, names: &[String], lifetime: Duration) -> Result<Pki> {
        if lifetime > MAX_SERVER_CERT_LIFETIME || lifetime < Duration::from_secs(1) {
            bail!(
                "a server certificate lifetime of {} s is outside 1 s to 90 days: pick one in that range",
                lifetime.as_secs_f64()
            );
        }
        let ca_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (ca_pem, ca_key) = if ca_path.exists() && key_path.exists() {
            let key_pem = fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem).context("ca-key.pem is not a private key")?;
            (fs::read_to_string(&ca_path)?, key)
        } else {
            let key = KeyPair::generate()?;
            let mut params = ca_params()?;
            let now = SystemTime::now();
            params.not_before = (now - CLOCK_SKEW).into();
            params.not_after = (now + CA_LIFETIME).into();
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            fs::write(&ca_path, cert.pem())?;
            (cert.pem(), key)
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .context("ca.pem is not a PEM certificate")?;
        let issuer = ServerIssuer {
            ca_key,
            ca_der: ca_der.clone(),
            names: names.to_vec(),
            lifetime,
        };
        let (server_config, not_after) = issuer.issue()?;
        Ok(Pki {
            pin: CaPin::Digest(ca_digest(&ca_der)),
            ca_pem,
            server_config,
            issuer: Some(issuer),
            not_after: Some(not_after),
        })
    }

    /// Serves an operator's certificate (from a public CA) instead.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Pki> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
        if chain.is_empty() {
            bail!("{} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("cannot read a private key from {}", key.display()))?;
        let ca_pem = fs::read_to_string(cert)?;
        Ok(Pki {
            pin: CaPin::Public,
            ca_pem,
            server_config: server_config(chain, key)?,
            issuer: None,
            not_after: None,
        })
    }
}

/// Reads the admin token, making one on first start.
pub fn load_or_create_admin_token(dir: &Path) -> Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let token = fs::read_to_string(&path)?.trim().to_string();
        if token.is_empty() {
            bail!(
                "{} is empty: delete it to have a new one made",
                path.display()
            );
        }
        return Ok(token);
    }
    let token = random_secret(40);
    write_private(&path, &token)?;
    Ok(token)
}

/// The names a self-made server certificate covers: loopback, this host's
/// name, and whatever the operator reaches the coordinator by.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// The data directory's default place: the platform's data directory.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "musketeer-coordinator")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("musketeer-data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_restart_and_pin_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let life = MAX_SERVER_CERT_LIFETIME;
        let a = Pki::load_or_create(dir.path(), &server_names(&[]), life).unwrap();
        let b = Pki::load_or_create(dir.path(), &server_names(&["coord".into()]), life).unwrap();
        assert_eq!(a.pin, b.pin);
        assert_eq!(a.ca_pem, b.ca_pem);
        let t1 = load_or_create_admin_token(dir.path()).unwrap();
        let t2 = load_or_create_admin_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
