//! Dashboard sessions: what the login page's cookie holds, and the CSRF
//! token that goes with it.
//!
//! A session is a signed value, not an id looked up in a table: with
//! several coordinators behind one address (the Redis store) any of them
//! must accept a session another issued, and a table would be one more
//! thing to share and to expire. The cookie holds
//! `v1.<role>.<token hash or ->.<expiry ms>.<nonce>.<HMAC-SHA256>`, keyed by
//! a key derived from the admin token's hash, which every coordinator of a
//! cluster holds and nobody else does. It names the viewer token's hash
//! (never a secret), so a viewer session ends when its token is revoked:
//! the guard looks the token up on every request. Logging out clears the
//! cookie; a copy stolen before then works until it expires
//! ([`LIFETIME_MS`]), the price of keeping no state.
//!
//! The cookie is `HttpOnly` (no script reads it), `Secure` (HTTPS only) and
//! `SameSite=Strict` (no other site's page sends it). Every request that
//! changes state with it must also carry the session's CSRF token in
//! [`CSRF_HEADER`]: an HMAC of the cookie, which the dashboard page gets
//! when it is served and another site cannot learn.

use ring::hmac;

use super::auth::hashes_match;

/// The cookie's name.
pub const COOKIE: &str = "musketeer_session";
/// The header a state-changing request with a session cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts: a working day.
pub const LIFETIME_MS: u64 = 12 * 3600 * 1000;

/// Who a session is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Logged in with the admin token: reads and acts.
    Admin,
    /// Logged in with a viewer token: reads.
    Viewer,
}

/// A session whose signature and expiry checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Who it is for.
    pub role: Role,
    /// A viewer session's token hash, to check the token is not revoked.
    pub token_hash: Option<[u8; 32]>,
    /// The signed part of the cookie, which the CSRF token is derived from.
    payload: String,
}

/// The key sessions are signed with: derived from the admin token's hash
/// with a label, so that it is used for nothing else.
fn key(admin_token_hash: &[u8; 32]) -> hmac::Key {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, admin_token_hash),
        b"musketeer dashboard session key v1",
    );
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// A new session's cookie value.
pub fn issue(
    admin_token_hash: &[u8; 32],
    role: Role,
    token_hash: Option<[u8; 32]>,
    now_ms: u64,
) -> String {
    let role = match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    let hash = token_hash.map(hex::encode).unwrap_or_else(|| "-".into());
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let payload = format!("v1.{role}.{hash}.{}.{nonce}", now_ms + LIFETIME_MS);
    let mac = hmac::sign(&key(admin_token_hash), payload.as_bytes());
    format!("{payload}.{}", hex::encode(mac.as_ref()))
}

/// The session a cookie value stands for, if its signature is ours and it
/// has not expired.
pub fn verify(admin_token_hash: &[u8; 32], value: &str, now_ms: u64) -> Option<Session> {
    let (payload, mac) = value.rsplit_once('.')?;
    let mac = hex::decode(mac).ok()?;
    hmac::verify(&key(admin_token_hash), payload.as_bytes(), &mac).ok()?;
    let mut parts = payload.split('.');
    if parts.next()? != "v1" {
        return None;
    }
    let role = match parts.next()? {
        "admin" => Role::Admin,
        "viewer" => Role::Viewer,
        _ => return None,
    };
    let token_hash = match parts.next()? {
        "-" => None,
        h => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).ok()?;
            Some(out)
        }
    };
    let expires: u64 = parts.next()?.parse().ok()?;
    if now_ms >= expires || (role == Role::Viewer) != token_hash.is_some() {
        return None;
    }
    Some(Session {
        role,
        token_hash,
        payload: payload.to_string(),
    })
}

impl Session {
    /// The CSRF token of this session.
    pub fn csrf(&self, admin_token_hash: &[u8; 32]) -> String {
        let mut msg = b"csrf.".to_vec();
        msg.extend_from_slice(self.payload.as_bytes());
        hex::encode(&hmac::sign(&key(admin_token_hash), &msg).as_ref()[..16])
    }

    /// Whether `given` is this session's CSRF token, compared in constant time.
    pub fn csrf_matches(&self, admin_token_hash: &[u8; 32], given: &str) -> bool {
        let want = musketeer_tasks::token::secret_hash(&self.csrf(admin_token_hash));
        hashes_match(&want, &musketeer_tasks::token::secret_hash(given))
    }
}

/// The session cookie's value in a `Cookie` header, if there is one.
pub fn from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME_MS / 1000
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: u64 = 1_000_000;

    #[test]
    fn a_session_verifies_until_it_expires() {
        let v = issue(&KEY, Role::Viewer, Some([3; 32]), NOW);
        let s = verify(&KEY, &v, NOW + 1).unwrap();
        assert_eq!((s.role, s.token_hash), (Role::Viewer, Some([3; 32])));
        assert!(verify(&KEY, &v, NOW + LIFETIME_MS).is_none(), "expired");
        let a = verify(&KEY, &issue(&KEY, Role::Admin, None, NOW), NOW).unwrap();
        assert_eq!(a.role, Role::Admin);
    }

    #[test]
    fn a_forged_or_foreign_session_does_not_verify() {
        let v = issue(&KEY, Role::Viewer, Some([3; 32]), NOW);
        // Another cluster's key.
        assert!(verify(&[8; 32], &v, NOW).is_none());
        // A viewer who edits the role to admin breaks the signature.
        let forged = v.replacen(".viewer.", ".admin.", 1);
        assert!(verify(&KEY, &forged, NOW).is_none());
        // A later expiry, too.
        let (payload, mac) = v.rsplit_once('.').unwrap();
        let mut parts: Vec<&str> = payload.split('.').collect();
        let later = (NOW + 10 * LIFETIME_MS).to_string();
        parts[3] = &later;
        assert!(verify(&KEY, &format!("{}.{mac}", parts.join(".")), NOW).is_none());
        for junk in ["", "v1", "...", "v1.admin.-.9.x.zz"] {
            assert!(verify(&KEY, junk, NOW).is_none(), "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let a = verify(&KEY, &issue(&KEY, Role::Admin, None, NOW), NOW).unwrap();
        let b = verify(&KEY, &issue(&KEY, Role::Admin, None, NOW), NOW).unwrap();
        let token = a.csrf(&KEY);
        assert!(a.csrf_matches(&KEY, &token));
        assert!(!b.csrf_matches(&KEY, &token), "another session's token");
        assert!(!a.csrf_matches(&KEY, ""));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(
            from_cookies("a=1; musketeer_session=v1.x; b=2"),
            Some("v1.x")
        );
        assert_eq!(from_cookies("a=1"), None);
        let set = set_cookie("v");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
