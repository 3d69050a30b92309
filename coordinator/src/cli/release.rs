//! `release ...`: the operator's key pair, and signing and publishing agent
//! builds. Signing happens here, where the private key is, never on the
//! coordinator.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use musketeer_tasks::protocol::ReleaseInfo;
use reqwest::Method;

use super::Connection;
use crate::api::SIGNATURE_HEADER;
use crate::releases::{self, SigningKey};

/// `release ...`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make an ed25519 key pair for signing agent releases. Keep the private
    /// key off the coordinator; start `serve --release-key <PUBLIC>`.
    Keygen {
        /// Where the private key goes (written 0600; never overwritten).
        #[arg(long, default_value = "release.key")]
        private: PathBuf,
        /// Where the public key goes.
        #[arg(long, default_value = "release.pub")]
        public: PathBuf,
    },
    /// Sign an agent binary with the private key and publish it for its target.
    Publish {
        /// The private key file, as `release keygen` wrote it.
        #[arg(long, env = "MUSKETEER_RELEASE_SECRET_KEY_FILE")]
        key: PathBuf,
        /// The Rust target triple the binary is built for, e.g. aarch64-unknown-linux-musl.
        #[arg(long)]
        target: String,
        /// The binary's version, as `musketeer --version` prints it.
        #[arg(long)]
        version: String,
        /// The agent binary.
        binary: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the published releases.
    List {
        #[command(flatten)]
        connection: Connection,
    },
}

/// Runs a `release` command.
pub async fn release(cmd: ReleaseCommand) -> Result<()> {
    match cmd {
        ReleaseCommand::Keygen { private, public } => {
            let key = releases::keygen(&private, &public)?;
            eprintln!(
                "wrote the private key to {} (keep it off the coordinator) and the public key to {}",
                private.display(),
                public.display()
            );
            eprintln!(
                "start the coordinator with:  musketeer-coordinator serve --release-key {}",
                public.display()
            );
            println!("{key}");
        }
        ReleaseCommand::Publish {
            key,
            target,
            version,
            binary,
            connection,
        } => {
            let signer = SigningKey::load(&key)?;
            let bytes = std::fs::read(&binary)
                .with_context(|| format!("cannot read the binary {}", binary.display()))?;
            let signed = signer.sign(&target, &version, &bytes)?;
            let c = super::connect(&connection)?;
            let path = format!("/v1/releases/{}/{}", signed.target, signed.version);
            let resp = c
                .send(
                    c.request(Method::POST, &path)
                        .header(SIGNATURE_HEADER, &signed.signature)
                        .body(bytes),
                )
                .await?;
            let created = resp.status() == reqwest::StatusCode::CREATED;
            let info: ReleaseInfo = resp.json().await?;
            eprintln!(
                "{} {} {} ({} bytes, sha256 {})",
                if created {
                    "published"
                } else {
                    "already published:"
                },
                info.target,
                info.version,
                info.size,
                info.sha256
            );
        }
        ReleaseCommand::List { connection } => {
            let c = super::connect(&connection)?;
            let v = c.get_json("/v1/releases").await?;
            match v["release_key"].as_str() {
                Some(k) => println!("release key: {k}"),
                None => println!("release key: none (serve --release-key to publish)"),
            }
            println!("{:<32} {:<16} {:>10}  SHA256", "TARGET", "VERSION", "BYTES");
            for r in v["releases"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<16} {:>10}  {}",
                    r["target"].as_str().unwrap_or("?"),
                    r["version"].as_str().unwrap_or("?"),
                    r["size"],
                    r["sha256"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}
