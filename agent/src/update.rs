//! Self-update: notice a newer release of this agent's target on the
//! coordinator, verify it, and put it in place of the running binary.
//!
//! The agent trusts exactly one release key: the one the coordinator sent at
//! enrolment, kept in `agent.json`. A release is installed only if its
//! ed25519 signature over (target, version, SHA-256 of the downloaded bytes)
//! verifies with that key, it is newer than the running version, and the
//! new binary runs here and says it is that version. Anything else is
//! refused, logged once, and the agent keeps working on what it runs.
//!
//! The replacement itself is `self_replace` (a rename next to the running
//! executable, atomic on Unix); the caller then stops work cleanly and
//! re-executes the same path with the same arguments, which come back with
//! the same state directory and so the same credential.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use musketeer_tasks::protocol::{release_message, ReleaseInfo};
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::client::{Client, ClientError};

/// The Rust target triple this agent was built for; releases are published per target.
pub const TARGET: &str = env!("MUSKETEER_TARGET");
/// How often to look for a release by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Largest binary accepted: a static agent is a few MiB.
const MAX_BINARY_BYTES: u64 = 128 << 20;
/// Deadline of a download; a Raspberry Pi on a slow line gets several MiB in this.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the new binary may take to print its version.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a release was not installed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Asking for or downloading the release failed.
    #[error("cannot fetch the release: {0}")]
    Client(#[from] ClientError),
    /// The key saved at enrolment is not an ed25519 public key.
    #[error("the release key saved at enrolment is unusable ({0}); join again to get a fresh one")]
    BadKey(String),
    /// The coordinator offered a release for another target or an unreadable version.
    #[error("the coordinator offered an unusable release ({0})")]
    BadRelease(String),
    /// The downloaded bytes are not the ones the release describes.
    #[error("refusing {version}: the downloaded binary's SHA-256 is {actual}, the release says {expected}")]
    Digest {
        /// The release's version.
        version: String,
        /// What the release says.
        expected: String,
        /// What came.
        actual: String,
    },
    /// The signature was made with another key, or over other bytes.
    #[error("refusing {version}: its signature does not verify with the release key this agent enrolled with")]
    Signature {
        /// The release's version.
        version: String,
    },
    /// The new binary does not run here, or says it is another version.
    #[error("refusing {version}: the new binary does not run as expected here ({reason})")]
    Smoke {
        /// The release's version.
        version: String,
        /// What happened.
        reason: String,
    },
    /// The running binary cannot be replaced (read-only, not ours).
    #[error("cannot replace {path}: {source}; install updates by hand, or run the agent from a directory it can write to")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// SHA-256 by ring, which TLS already brings along.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The operator's release key, as this agent learnt it at enrolment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseKey([u8; 32]);

impl ReleaseKey {
    /// Parses 64 hex digits.
    pub fn parse(hex_key: &str) -> Result<ReleaseKey, UpdateError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key)
            .map_err(|_| UpdateError::BadKey("expected 64 hex digits".into()))?;
        Ok(ReleaseKey(key))
    }

    /// Checks `binary` against `info`: its digest, and the signature over
    /// the target, the version and that digest.
    pub fn verify(&self, info: &ReleaseInfo, binary: &[u8]) -> Result<(), UpdateError> {
        let sha256 = sha256(binary);
        let actual = hex::encode(sha256);
        if !actual.eq_ignore_ascii_case(&info.sha256) {
            return Err(UpdateError::Digest {
                version: info.version.clone(),
                expected: info.sha256.clone(),
                actual,
            });
        }
        let bad = || UpdateError::Signature {
            version: info.version.clone(),
        };
        let mut signature = [0u8; 64];
        hex::decode_to_slice(info.signature.trim(), &mut signature).map_err(|_| bad())?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(
                &release_message(&info.target, &info.version, &sha256),
                &signature,
            )
            .map_err(|_| bad())
    }
}

/// A release put in place of the running binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Its version.
    pub version: String,
    /// The executable's path, now the new binary.
    pub exe: PathBuf,
}

/// Looks for, verifies and installs releases.
#[derive(Debug)]
pub struct Updater {
    client: Client,
    key: ReleaseKey,
    current: semver::Version,
    exe: PathBuf,
    /// Releases refused already (version, digest, signature), so that one
    /// bad release is downloaded and logged once, not at every check.
    refused: HashSet<(String, String, String)>,
}

impl Updater {
    /// An updater for the binary at `exe`, running `current`.
    pub fn new(
        client: Client,
        key_hex: &str,
        current: &str,
        exe: PathBuf,
    ) -> Result<Updater, UpdateError> {
        let current = semver::Version::parse(current).map_err(|e| {
            UpdateError::BadRelease(format!("this agent's version {current:?}: {e}"))
        })?;
        Ok(Updater {
            client,
            key: ReleaseKey::parse(key_hex)?,
            current,
            exe,
            refused: HashSet::new(),
        })
    }

    /// One look: `Ok(None)` when there is nothing newer (or only releases
    /// refused before), `Ok(Some(_))` once a newer release replaced the
    /// binary on disk.
    pub async fn check(&mut self) -> Result<Option<Installed>, UpdateError> {
        let Some(info) = self.client.latest_release(TARGET).await? else {
            return Ok(None);
        };
        if info.target != TARGET {
            return Err(UpdateError::BadRelease(format!(
                "asked for {TARGET}, got {}",
                info.target
            )));
        }
        let version = semver::Version::parse(&info.version)
            .map_err(|e| UpdateError::BadRelease(format!("version {:?}: {e}", info.version)))?;
        if version <= self.current {
            return Ok(None);
        }
        let id = (
            info.version.clone(),
            info.sha256.to_ascii_lowercase(),
            info.signature.to_ascii_lowercase(),
        );
        if self.refused.contains(&id) {
            return Ok(None);
        }
        tracing::info!(
            "release {} is newer than {}: downloading it",
            info.version,
            self.current
        );
        let result = self.install(&info).await;
        if matches!(
            result,
            Err(UpdateError::Digest { .. }
                | UpdateError::Signature { .. }
                | UpdateError::Smoke { .. }
                | UpdateError::Io { .. })
        ) {
            self.refused.insert(id);
        }
        result.map(Some)
    }

    async fn install(&self, info: &ReleaseInfo) -> Result<Installed, UpdateError> {
        let binary = self
            .client
            .download_release(info, MAX_BINARY_BYTES, DOWNLOAD_TIMEOUT)
            .await?;
        self.key.verify(info, &binary)?;
        let exe = self.exe.clone();
        let version = info.version.clone();
        tokio::task::spawn_blocking(move || replace(&exe, &version, &binary))
            .await
            .map_err(|e| UpdateError::Io {
                path: self.exe.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(Installed {
            version: info.version.clone(),
            exe: self.exe.clone(),
        })
    }
}

/// Writes `binary` next to `exe`, checks that it runs and reports
/// `version`, then puts it in place of `exe`.
fn replace(exe: &Path, version: &str, binary: &[u8]) -> Result<(), UpdateError> {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let staged = dir.join(format!(".musketeer-{version}.new"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { path, source }
    };
    write_executable(&staged, binary).map_err(io(&staged))?;
    let smoke = smoke_test(&staged, version);
    if let Err(reason) = smoke {
        let _ = std::fs::remove_file(&staged);
        return Err(UpdateError::Smoke {
            version: version.to_string(),
            reason,
        });
    }
    // self_replace renames over the path the running executable was started
    // from; the running process keeps its (now unlinked) image.
    let replaced = self_replace::self_replace(&staged).map_err(io(exe));
    let _ = std::fs::remove_file(&staged);
    replaced
}

fn write_executable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o755);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Runs `<binary> --version` and expects `musketeer <version>`: a binary for
/// another CPU, or a release whose version was mislabelled, fails here
/// rather than after the running agent has been replaced.
fn smoke_test(binary: &Path, version: &str) -> Result<(), String> {
    let mut child = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let deadline = std::time::Instant::now() + SMOKE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`--version` did not finish in {SMOKE_TIMEOUT:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let expected = format!("musketeer {version}");
    if status.success() && out.trim() == expected {
        Ok(())
    } else {
        Err(format!(
            "`--version` exited with {status} and printed {:?}, not {expected:?}",
            out.trim()
        ))
    }
}

/// Checks at once, then every `interval` (jittered by up to a tenth, so a
/// fleet started together does not ask together), until a release is
/// installed. Failures are logged and retried at the next check.
pub async fn watch(mut updater: Updater, interval: Duration) -> Installed {
    loop {
        match updater.check().await {
            Ok(Some(installed)) => return installed,
            Ok(None) => {}
            Err(e @ UpdateError::Client(_)) => tracing::debug!("update check failed: {e}"),
            Err(e) => tracing::warn!("{e}; keeping version {}", updater.current),
        }
        let jitter = interval.mul_f64(rand::random::<f64>() * 0.1);
        tokio::time::sleep(interval + jitter).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn signer(seed: u8) -> (Ed25519KeyPair, ReleaseKey) {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let key = ReleaseKey::parse(&hex::encode(pair.public_key().as_ref())).unwrap();
        (pair, key)
    }

    fn signed(pair: &Ed25519KeyPair, target: &str, version: &str, binary: &[u8]) -> ReleaseInfo {
        let sha = sha256(binary);
        let sig = pair.sign(&release_message(target, version, &sha));
        ReleaseInfo {
            target: target.into(),
            version: version.into(),
            sha256: hex::encode(sha),
            signature: hex::encode(sig.as_ref()),
            size: binary.len() as u64,
        }
    }

    #[test]
    fn a_release_signed_with_the_key_verifies() {
        let (pair, key) = signer(1);
        let info = signed(&pair, TARGET, "1.0.0", b"new agent");
        key.verify(&info, b"new agent").unwrap();
    }

    #[test]
    fn tampered_bytes_are_refused_even_with_a_matching_digest() {
        let (pair, key) = signer(1);
        let info = signed(&pair, TARGET, "1.0.0", b"new agent");
        assert!(matches!(
            key.verify(&info, b"new agenT"),
            Err(UpdateError::Digest { .. })
        ));
        // A tamperer who also fixes the digest still lacks the signature.
        let mut forged = info.clone();
        forged.sha256 = hex::encode(sha256(b"new agenT"));
        assert!(matches!(
            key.verify(&forged, b"new agenT"),
            Err(UpdateError::Signature { .. })
        ));
    }

    #[test]
    fn another_key_another_target_or_version_is_refused() {
        let (pair, key) = signer(1);
        let (other, _) = signer(2);
        let foreign = signed(&other, TARGET, "1.0.0", b"bin");
        assert!(matches!(
            key.verify(&foreign, b"bin"),
            Err(UpdateError::Signature { .. })
        ));
        let mut moved = signed(&pair, "aarch64-unknown-linux-musl", "1.0.0", b"bin");
        moved.target = TARGET.into();
        assert!(matches!(
            key.verify(&moved, b"bin"),
            Err(UpdateError::Signature { .. })
        ));
        let mut renamed = signed(&pair, TARGET, "1.0.0", b"bin");
        renamed.version = "9.0.0".into();
        assert!(matches!(
            key.verify(&renamed, b"bin"),
            Err(UpdateError::Signature { .. })
        ));
        let mut garbled = signed(&pair, TARGET, "1.0.0", b"bin");
        garbled.signature = "not hex".into();
        assert!(key.verify(&garbled, b"bin").is_err());
    }

    #[test]
    fn bad_keys_say_so() {
        assert!(matches!(
            ReleaseKey::parse("abc"),
            Err(UpdateError::BadKey(_))
        ));
    }

    #[test]
    fn a_binary_that_does_not_run_fails_the_smoke_test() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-an-agent");
        write_executable(&path, b"\x7fELF garbage").unwrap();
        assert!(smoke_test(&path, "1.0.0").is_err());
    }
}
