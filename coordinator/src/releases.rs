//! Signed agent releases: the operator's ed25519 key pair, and the
//! releases this coordinator serves to its agents.
//!
//! The operator makes a key pair with `musketeer-coordinator release keygen`
//! and keeps the private half off the coordinator; `serve --release-key`
//! gets the public half only, hands it to agents at enrolment, and refuses
//! uploads it does not verify. `release publish` signs a binary where the
//! private key lives and uploads it; the coordinator keeps each release as
//! files in its data directory (`releases/<target>/<version>/`), not in the
//! store: releases are a few large, write-once files that a `jobs` store
//! (SQLite or Redis) has no business carrying, and a restart finds them
//! where they were.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use musketeer_tasks::protocol::{release_message, ReleaseInfo};
use ring::rand::SecureRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

/// The data directory's folder of releases.
pub const RELEASES_DIR: &str = "releases";
/// Largest release binary: a static agent is a few MiB; this bounds what an
/// upload can make the coordinator write.
pub const MAX_RELEASE_BYTES: usize = 128 << 20;
/// The file a release's binary is kept in.
const BINARY_FILE: &str = "musketeer";
/// The file a release's description is kept in.
const INFO_FILE: &str = "release.json";
/// Prefix of a public release key in files and flags.
const PUBLIC_PREFIX: &str = "MSKREL-PUB-1-";
/// Prefix of a private release key; distinct, so that the private key given
/// where the public one belongs is caught instead of silently trusted.
const SECRET_PREFIX: &str = "MSKREL-SECRET-1-";
/// Longest target triple or version accepted.
const MAX_NAME_LEN: usize = 64;

/// Why a key or release cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A key that does not parse.
    #[error("{0}")]
    BadKey(String),
    /// A target that is not a plausible target triple.
    #[error("invalid target {0:?}: use a Rust target triple such as x86_64-unknown-linux-musl (letters, digits, '_', '-', '.', at most 64)")]
    BadTarget(String),
    /// A version that is not semver.
    #[error("invalid version {0:?}: {1}; use a semantic version such as 1.2.3")]
    BadVersion(String, String),
    /// A signature that is malformed or made with another key.
    #[error("the signature does not verify with this coordinator's release key: sign with the private key whose public half `serve --release-key` was given")]
    BadSignature,
    /// The coordinator was started without `--release-key`.
    #[error("this coordinator has no release key: make one with `musketeer-coordinator release keygen` and restart `serve` with --release-key <the .pub file>")]
    NoKey,
    /// The version is already published with other bytes.
    #[error("{target} {version} is already published with other bytes: publish a new version instead (agents that installed it would never see the change)")]
    Conflict {
        /// The target.
        target: String,
        /// The version.
        version: String,
    },
    /// The data directory or a key file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The public half of the operator's release key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `MSKREL-PUB-1-<64 hex>` or the bare 64 hex digits.
    pub fn parse(text: &str) -> Result<PublicKey, ReleaseError> {
        let text = text.trim();
        if text.starts_with(SECRET_PREFIX) {
            return Err(ReleaseError::BadKey(
                "this is the PRIVATE release key: keep it off the coordinator and give --release-key the .pub file".into(),
            ));
        }
        let hex_part = text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text);
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut key).map_err(|_| {
            ReleaseError::BadKey(format!(
                "not a release public key (expected {PUBLIC_PREFIX}<64 hex digits>, as `release keygen` writes it)"
            ))
        })?;
        Ok(PublicKey(key))
    }

    /// Reads a key given as the key itself or as the path of a `.pub` file.
    pub fn from_arg(arg: &str) -> Result<PublicKey, ReleaseError> {
        if let Ok(key) = PublicKey::parse(arg) {
            return Ok(key);
        }
        if arg.trim().starts_with(SECRET_PREFIX) {
            return PublicKey::parse(arg);
        }
        let path = Path::new(arg);
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        PublicKey::parse(&text)
            .map_err(|e| ReleaseError::BadKey(format!("{}: {e}", path.display())))
    }

    /// The 64 hex digits, as agents receive the key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Checks `signature` (hex) over the release message of these fields.
    pub fn verify(
        &self,
        target: &str,
        version: &str,
        sha256: &[u8; 32],
        signature_hex: &str,
    ) -> Result<(), ReleaseError> {
        let mut signature = [0u8; 64];
        hex::decode_to_slice(signature_hex.trim(), &mut signature)
            .map_err(|_| ReleaseError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&release_message(target, version, sha256), &signature)
            .map_err(|_| ReleaseError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The private half, which signs releases; it lives with the operator.
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<SigningKey, ReleaseError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| ReleaseError::BadKey("the system's random source failed".into()))?;
        SigningKey::from_seed(seed)
    }

    fn from_seed(seed: [u8; 32]) -> Result<SigningKey, ReleaseError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| ReleaseError::BadKey("not an ed25519 seed".into()))?;
        Ok(SigningKey { seed, pair })
    }

    /// Parses `MSKREL-SECRET-1-<64 hex>`.
    pub fn parse(text: &str) -> Result<SigningKey, ReleaseError> {
        let text = text.trim();
        let bad = || {
            ReleaseError::BadKey(format!(
                "not a private release key (expected {SECRET_PREFIX}<64 hex digits>, as `release keygen` writes it)"
            ))
        };
        let hex_part = text.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut seed).map_err(|_| bad())?;
        SigningKey::from_seed(seed)
    }

    /// Reads a private key file.
    pub fn load(path: &Path) -> Result<SigningKey, ReleaseError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        SigningKey::parse(&text)
            .map_err(|e| ReleaseError::BadKey(format!("{}: {e}", path.display())))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// Signs `binary` as `version` for `target`.
    pub fn sign(
        &self,
        target: &str,
        version: &str,
        binary: &[u8],
    ) -> Result<ReleaseInfo, ReleaseError> {
        let target = check_target(target)?;
        let version = check_version(version)?;
        let sha256: [u8; 32] = Sha256::digest(binary).into();
        let signature = self.pair.sign(&release_message(&target, &version, &sha256));
        Ok(ReleaseInfo {
            target,
            version,
            sha256: hex::encode(sha256),
            signature: hex::encode(signature.as_ref()),
            size: binary.len() as u64,
        })
    }

    fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.seed))
    }
}

/// Writes a fresh key pair: `private` (mode 0600) and `public`. Refuses to
/// overwrite either: losing a private key strands every agent that trusts it.
pub fn keygen(private: &Path, public: &Path) -> Result<PublicKey, ReleaseError> {
    for path in [private, public] {
        if path.exists() {
            return Err(ReleaseError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; agents trust the key they enrolled with, so move it aside yourself if you mean to replace it",
                ),
            });
        }
    }
    let key = SigningKey::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(private).map_err(io_err(private))?;
    file.write_all(key.to_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(private))?;
    std::fs::write(public, format!("{}\n", key.public())).map_err(io_err(public))?;
    Ok(key.public())
}

/// Checks a target triple; returns it.
pub fn check_target(target: &str) -> Result<String, ReleaseError> {
    let ok = !target.is_empty()
        && target.len() <= MAX_NAME_LEN
        && !target.starts_with('.')
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(target.to_string())
    } else {
        Err(ReleaseError::BadTarget(target.to_string()))
    }
}

/// Checks a version; returns its canonical form (which is also a safe file name).
pub fn check_version(version: &str) -> Result<String, ReleaseError> {
    if version.len() > MAX_NAME_LEN {
        return Err(ReleaseError::BadVersion(
            version.to_string(),
            format!("longer than {MAX_NAME_LEN} characters"),
        ));
    }
    semver::Version::parse(version)
        .map(|v| v.to_string())
        .map_err(|e| ReleaseError::BadVersion(version.to_string(), e.to_string()))
}

/// The releases a coordinator serves, kept under `<data dir>/releases/`.
#[derive(Debug)]
pub struct Releases {
    dir: PathBuf,
    key: Option<PublicKey>,
    /// Serialises publications, so that two uploads of one version cannot
    /// interleave their renames.
    publishing: Mutex<()>,
}

impl Releases {
    /// The releases under `data_dir`, verified with `key` (none: publishing is refused).
    pub fn open(data_dir: &Path, key: Option<PublicKey>) -> Result<Releases, ReleaseError> {
        let dir = data_dir.join(RELEASES_DIR);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Releases {
            dir,
            key,
            publishing: Mutex::new(()),
        })
    }

    /// The release key agents learn at enrolment.
    pub fn key(&self) -> Option<PublicKey> {
        self.key
    }

    /// Verifies and stores a release. Returns its description and whether it
    /// is new (publishing the same bytes again is a no-op).
    pub fn publish(
        &self,
        target: &str,
        version: &str,
        signature_hex: &str,
        binary: &[u8],
    ) -> Result<(ReleaseInfo, bool), ReleaseError> {
        let key = self.key.ok_or(ReleaseError::NoKey)?;
        let target = check_target(target)?;
        let version = check_version(version)?;
        let sha256: [u8; 32] = Sha256::digest(binary).into();
        key.verify(&target, &version, &sha256, signature_hex)?;
        let info = ReleaseInfo {
            target: target.clone(),
            version: version.clone(),
            sha256: hex::encode(sha256),
            signature: signature_hex.trim().to_ascii_lowercase(),
            size: binary.len() as u64,
        };
        let _guard = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let final_dir = self.dir.join(&target).join(&version);
        if let Some(existing) = self.read_info(&final_dir)? {
            if existing.sha256 == info.sha256 {
                return Ok((existing, false));
            }
            return Err(ReleaseError::Conflict { target, version });
        }
        // Written beside its final place and renamed in, so that an agent
        // never finds a release whose binary is half written.
        let target_dir = self.dir.join(&target);
        std::fs::create_dir_all(&target_dir).map_err(io_err(&target_dir))?;
        let tmp = target_dir.join(format!(".{version}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        write_synced(&tmp.join(BINARY_FILE), binary)?;
        let json = serde_json::to_vec_pretty(&info).expect("a release info serializes");
        write_synced(&tmp.join(INFO_FILE), &json)?;
        std::fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        Ok((info, true))
    }

    fn read_info(&self, dir: &Path) -> Result<Option<ReleaseInfo>, ReleaseError> {
        let path = dir.join(INFO_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ReleaseError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReleaseError::Io { path, source: e }),
        }
    }

    /// Every release of `target`, oldest version first.
    pub fn of_target(&self, target: &str) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        let target = check_target(target)?;
        let dir = self.dir.join(&target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ReleaseError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(version) = semver::Version::parse(&name) else {
                continue; // a temporary folder
            };
            if let Some(info) = self.read_info(&entry.path())? {
                found.push((version, info));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, info)| info).collect())
    }

    /// The newest release of `target`.
    pub fn latest(&self, target: &str) -> Result<Option<ReleaseInfo>, ReleaseError> {
        Ok(self.of_target(target)?.pop())
    }

    /// Every release, by target then version.
    pub fn list(&self) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        let mut targets = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if entry.path().is_dir() {
                targets.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        targets.sort();
        let mut all = Vec::new();
        for t in targets.iter().filter(|t| check_target(t).is_ok()) {
            all.extend(self.of_target(t)?);
        }
        Ok(all)
    }

    /// The binary of a published release, if there is one.
    pub fn binary(&self, target: &str, version: &str) -> Result<Option<PathBuf>, ReleaseError> {
        let dir = self
            .dir
            .join(check_target(target)?)
            .join(check_version(version)?);
        Ok(self.read_info(&dir)?.map(|_| dir.join(BINARY_FILE)))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "x86_64-unknown-linux-musl";

    fn releases(key: Option<PublicKey>) -> (tempfile::TempDir, Releases) {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::open(dir.path(), key).unwrap();
        (dir, r)
    }

    #[test]
    fn keygen_writes_a_pair_that_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (
            dir.path().join("release.key"),
            dir.path().join("release.pub"),
        );
        let key = keygen(&private, &public).unwrap();
        assert_eq!(PublicKey::from_arg(public.to_str().unwrap()).unwrap(), key);
        let signer = SigningKey::load(&private).unwrap();
        assert_eq!(signer.public(), key);
        let info = signer.sign(TARGET, "1.2.3", b"binary").unwrap();
        let sha: [u8; 32] = Sha256::digest(b"binary").into();
        key.verify(TARGET, "1.2.3", &sha, &info.signature).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = keygen(&private, &public).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
    }

    #[test]
    fn the_private_key_is_refused_where_the_public_one_belongs() {
        let key = SigningKey::generate().unwrap();
        let e = PublicKey::from_arg(key.to_text().trim())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PRIVATE"), "{e}");
        assert!(PublicKey::parse("MSKREL-PUB-1-abc").is_err());
        assert!(SigningKey::parse(&key.public().to_string()).is_err());
    }

    #[test]
    fn publish_verifies_and_latest_is_the_highest_version() {
        let signer = SigningKey::generate().unwrap();
        let (_dir, r) = releases(Some(signer.public()));
        for v in ["1.2.0", "1.10.0", "1.9.1", "1.10.0-rc.1"] {
            let bytes = format!("binary {v}");
            let info = signer.sign(TARGET, v, bytes.as_bytes()).unwrap();
            let (stored, new) = r
                .publish(TARGET, v, &info.signature, bytes.as_bytes())
                .unwrap();
            assert!(new);
            assert_eq!(stored, info);
        }
        assert_eq!(r.latest(TARGET).unwrap().unwrap().version, "1.10.0");
        assert_eq!(r.latest("aarch64-unknown-linux-musl").unwrap(), None);
        assert_eq!(r.list().unwrap().len(), 4);
        let path = r.binary(TARGET, "1.9.1").unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"binary 1.9.1");
        assert_eq!(r.binary(TARGET, "9.9.9").unwrap(), None);
    }

    #[test]
    fn publish_refuses_other_keys_other_bytes_and_moved_signatures() {
        let signer = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let (_dir, r) = releases(Some(signer.public()));
        let foreign = other.sign(TARGET, "2.0.0", b"bin").unwrap();
        assert!(matches!(
            r.publish(TARGET, "2.0.0", &foreign.signature, b"bin"),
            Err(ReleaseError::BadSignature)
        ));
        let good = signer.sign(TARGET, "2.0.0", b"bin").unwrap();
        assert!(matches!(
            r.publish(TARGET, "2.0.0", &good.signature, b"bin!"),
            Err(ReleaseError::BadSignature)
        ));
        assert!(matches!(
            r.publish(
                "aarch64-unknown-linux-musl",
                "2.0.0",
                &good.signature,
                b"bin"
            ),
            Err(ReleaseError::BadSignature)
        ));
        assert!(matches!(
            r.publish(TARGET, "2.0.1", &good.signature, b"bin"),
            Err(ReleaseError::BadSignature)
        ));
        assert!(matches!(
            r.publish(TARGET, "2.0.0", "zz", b"bin"),
            Err(ReleaseError::BadSignature)
        ));
        assert!(r.list().unwrap().is_empty(), "nothing refused was kept");
        assert!(
            r.publish(TARGET, "2.0.0", &good.signature, b"bin")
                .unwrap()
                .1
        );
        assert!(
            !r.publish(TARGET, "2.0.0", &good.signature, b"bin")
                .unwrap()
                .1
        );
        let changed = signer.sign(TARGET, "2.0.0", b"other").unwrap();
        assert!(matches!(
            r.publish(TARGET, "2.0.0", &changed.signature, b"other"),
            Err(ReleaseError::Conflict { .. })
        ));
    }

    #[test]
    fn bad_names_and_a_missing_key_are_refused() {
        let (_dir, r) = releases(None);
        assert!(matches!(
            r.publish(TARGET, "1.0.0", "", b""),
            Err(ReleaseError::NoKey)
        ));
        for t in ["", "../etc", ".hidden", "a/b", &"x".repeat(65)] {
            assert!(check_target(t).is_err(), "{t}");
        }
        for v in [
            "",
            "1",
            "1.2",
            "v1.2.3",
            "1.2.3/../../x",
            &format!("1.2.3-{}", "a".repeat(64)),
        ] {
            assert!(check_version(v).is_err(), "{v}");
        }
        assert_eq!(check_version("1.2.3+build.5").unwrap(), "1.2.3+build.5");
    }
}
