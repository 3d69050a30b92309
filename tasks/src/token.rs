//! Join tokens and agent credentials.
//!
//! A join token is `MSKTKN-1-<ca digest>-<secret>`, in the manner of Docker
//! Swarm's `SWMTKN-1-...`: the digest is the SHA-256 of the coordinator CA's
//! DER certificate, in hex, so an agent holding only the token can tell the
//! real coordinator from an impostor on first contact. When the coordinator
//! serves a certificate from a public CA the digest is the word `public`
//! and the agent trusts the usual web roots instead.
//!
//! A viewer token, `MSKVWR-<secret>`, reads what the admin token reads (the
//! API's GET routes, the dashboard) and changes nothing.
//!
//! An agent credential is `MSKAGT-<agent id>-<secret>`. The coordinator stores
//! only SHA-256 hashes of secrets, and compares them in constant time.

use std::fmt;

use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "MSKTKN-1-";
const CREDENTIAL_PREFIX: &str = "MSKAGT-";
const VIEWER_PREFIX: &str = "MSKVWR-";
/// The digest word of a token for a coordinator with a public certificate.
pub const PUBLIC_CA: &str = "public";

/// What is wrong with a token or credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not shaped like a join token at all.
    #[error("not a join token: expected MSKTKN-1-<ca digest>-<secret>, as printed by `musketeer-coordinator token create`")]
    NotAToken,
    /// The digest part is not 64 hex digits.
    #[error("the join token's CA digest is not 64 hex digits: copy the whole token again")]
    BadDigest,
    /// Not shaped like an agent credential.
    #[error("not an agent credential: expected MSKAGT-<agent id>-<secret>")]
    NotACredential,
    /// Not shaped like a viewer token.
    #[error("not a viewer token: expected MSKVWR-<secret>, as printed by `musketeer-coordinator token create --viewer`")]
    NotAViewerToken,
}

/// Which certificate authority an agent trusts, as its token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPin {
    /// Exactly the CA whose DER certificate has this SHA-256.
    Digest([u8; 32]),
    /// The public web roots.
    Public,
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Which CA to trust.
    pub ca: CaPin,
    /// The secret; its hash is what the coordinator stores.
    pub secret: String,
}

impl JoinToken {
    /// Parses `MSKTKN-1-<digest>-<secret>`, ignoring surrounding white space.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let rest = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::NotAToken)?;
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::NotAToken)?;
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::NotAToken);
        }
        let ca = if digest == PUBLIC_CA {
            CaPin::Public
        } else {
            let mut d = [0u8; 32];
            hex::decode_to_slice(digest, &mut d).map_err(|_| TokenError::BadDigest)?;
            CaPin::Digest(d)
        };
        Ok(JoinToken {
            ca,
            secret: secret.to_string(),
        })
    }

    /// The token's id as listed and revoked: a prefix of its secret's hash,
    /// so that listing tokens never shows a usable secret.
    pub fn id(&self) -> String {
        token_id(&self.secret)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ca {
            CaPin::Digest(d) => write!(f, "{TOKEN_PREFIX}{}-{}", hex::encode(d), self.secret),
            CaPin::Public => write!(f, "{TOKEN_PREFIX}{PUBLIC_CA}-{}", self.secret),
        }
    }
}

/// A parsed agent credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCredential {
    /// The agent's id.
    pub agent_id: String,
    /// The secret; the coordinator stores its hash.
    pub secret: String,
}

impl AgentCredential {
    /// Parses `MSKAGT-<agent id>-<secret>`.
    pub fn parse(s: &str) -> Result<AgentCredential, TokenError> {
        let rest = s
            .trim()
            .strip_prefix(CREDENTIAL_PREFIX)
            .ok_or(TokenError::NotACredential)?;
        let (id, secret) = rest.split_once('-').ok_or(TokenError::NotACredential)?;
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok(id) || !ok(secret) {
            return Err(TokenError::NotACredential);
        }
        Ok(AgentCredential {
            agent_id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for AgentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CREDENTIAL_PREFIX}{}-{}", self.agent_id, self.secret)
    }
}

/// A parsed viewer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewerToken {
    /// The secret; the coordinator stores its hash.
    pub secret: String,
}

impl ViewerToken {
    /// Parses `MSKVWR-<secret>`, ignoring surrounding white space.
    pub fn parse(s: &str) -> Result<ViewerToken, TokenError> {
        let secret = s
            .trim()
            .strip_prefix(VIEWER_PREFIX)
            .ok_or(TokenError::NotAViewerToken)?;
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::NotAViewerToken);
        }
        Ok(ViewerToken {
            secret: secret.to_string(),
        })
    }

    /// The token's id as listed and revoked (see [`JoinToken::id`]).
    pub fn id(&self) -> String {
        token_id(&self.secret)
    }
}

impl fmt::Display for ViewerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VIEWER_PREFIX}{}", self.secret)
    }
}

/// SHA-256 of a DER certificate: the pin a join token carries.
pub fn ca_digest(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// SHA-256 of a secret: all the coordinator keeps of it.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A token's public id: the first 12 hex digits of its secret's hash.
pub fn token_id(secret: &str) -> String {
    hex::encode(&secret_hash(secret)[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_tokens_round_trip_and_are_not_join_tokens() {
        let v = ViewerToken {
            secret: "abcdefghijklmnopqrstuvwxyz012345".into(),
        };
        assert_eq!(ViewerToken::parse(&format!(" {v}\n")).unwrap(), v);
        assert!(JoinToken::parse(&v.to_string()).is_err());
        assert!(AgentCredential::parse(&v.to_string()).is_err());
        assert_eq!(
            ViewerToken::parse("MSKVWR-short"),
            Err(TokenError::NotAViewerToken)
        );
        assert_eq!(v.id().len(), 12);
    }

    #[test]
    fn token_round_trips() {
        let t = JoinToken {
            ca: CaPin::Digest([7; 32]),
            secret: "abcdefghijklmnopqrstuvwxyz012345".into(),
        };
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        let p = JoinToken {
            ca: CaPin::Public,
            secret: "abcdefghijklmnopqrstuvwxyz012345".into(),
        };
        assert_eq!(JoinToken::parse(&format!(" {p}\n")).unwrap(), p);
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert_eq!(JoinToken::parse("hello"), Err(TokenError::NotAToken));
        assert_eq!(
            JoinToken::parse("MSKTKN-1-zz-abcdefghijklmnopqrstuvwxyz"),
            Err(TokenError::BadDigest)
        );
        assert_eq!(
            JoinToken::parse(&format!("MSKTKN-1-{}-short", "0".repeat(64))),
            Err(TokenError::NotAToken)
        );
    }

    #[test]
    fn credential_round_trips() {
        let c = AgentCredential {
            agent_id: "a1b2".into(),
            secret: "s3cr3t".into(),
        };
        assert_eq!(AgentCredential::parse(&c.to_string()).unwrap(), c);
        assert!(AgentCredential::parse("MSKAGT-onlyid").is_err());
        assert!(AgentCredential::parse("Bearer x").is_err());
    }
}
