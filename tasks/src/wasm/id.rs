//! A module's name: the SHA-256 of its bytes, as `sha256:<64 hex digits>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// What every module id starts with.
pub const PREFIX: &str = "sha256:";

/// A module's content address: the SHA-256 of its bytes. Equal ids mean
/// equal bytes, so an agent verifies what it fetched by hashing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId([u8; 32]);

/// Why a string is not a module id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a module id: give it as `modules push` printed it, sha256: and 64 lowercase hex digits")]
pub struct ModuleIdError(pub String);

impl ModuleId {
    /// The id of these bytes.
    pub fn of(bytes: &[u8]) -> ModuleId {
        ModuleId(Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(s: &str) -> Result<ModuleId, ModuleIdError> {
        let bad = || ModuleIdError(s.chars().take(80).collect());
        let hex_part = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad())?;
        Ok(ModuleId(digest))
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits alone, for file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether `bytes` are the module this id names.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        ModuleId::of(bytes) == *self
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ModuleId {
    type Err = ModuleIdError;
    fn from_str(s: &str) -> Result<ModuleId, ModuleIdError> {
        ModuleId::parse(s)
    }
}

impl Serialize for ModuleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ModuleId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ModuleId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_strings() {
        let id = ModuleId::of(b"");
        let s = id.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<ModuleId>().unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{s}\""));
        let back: ModuleId = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(back, id);
        let bytes = crate::protocol::encode(&id).unwrap();
        assert_eq!(postcard::from_bytes::<ModuleId>(&bytes).unwrap(), id);
        assert!(id.matches(b""));
        assert!(!id.matches(b"x"));
    }

    #[test]
    fn bad_ids_are_refused_with_the_form_to_use() {
        let good = ModuleId::of(b"m").to_string();
        for bad in [
            "",
            "sha256:",
            &good[7..],
            &good.to_uppercase(),
            &good.replace("sha256:", "sha512:"),
            &format!("{good}0"),
            &good[..good.len() - 1],
            &format!("{}g", &good[..good.len() - 1]),
        ] {
            let e = ModuleId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("64 lowercase hex digits"), "{e}");
        }
        assert!(serde_json::from_str::<ModuleId>("\"sha256:00\"").is_err());
    }
}
