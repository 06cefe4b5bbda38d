//! API tokens kept in the store.
//!
//! A token is a random secret (`fst_` and 40 hex digits, 160 bits) handed
//! to its holder once, when it is created. The store keeps only its blake3
//! hash, its first characters (so a listing can say which token is which)
//! and its name, right, expiry and revocation. A random secret of that
//! length needs no slow password hash: nobody can guess one from its hash.
//!
//! The server ([`flowstone-server`]) looks a presented token up by hash on
//! every request, so a revocation takes effect at once, in every process
//! that shares the store.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a token lets its holder do; a right includes those before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRight {
    /// Read everything: the API, the dashboard and the event stream.
    Read,
    /// Read, and launch, cancel and resume runs.
    Launch,
}

impl TokenRight {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRight::Read => "read",
            TokenRight::Launch => "launch",
        }
    }
}

impl fmt::Display for TokenRight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenRight {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "read" => Ok(TokenRight::Read),
            "launch" => Ok(TokenRight::Launch),
            other => Err(format!(
                "unknown token right {other:?}; give `read` (read everything) or `launch` \
                 (read, and launch, cancel and resume runs)"
            )),
        }
    }
}

/// A token to store: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Unique among the tokens not revoked, e.g. `ci` or `alice-laptop`.
    pub name: String,
    pub right: TokenRight,
    /// The blake3 hash of the secret, in hex ([`hash`]).
    pub hash: String,
    /// The secret's first characters, e.g. `fst_3f9a1c07`.
    pub prefix: String,
    pub created_at: Timestamp,
    /// After this the token is refused; `None`: it does not expire.
    pub expires_at: Option<Timestamp>,
}

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub right: TokenRight,
    pub prefix: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// When a request last presented it, to the minute or so (the server
    /// notes a use at most once a minute per token).
    pub last_used_at: Option<Timestamp>,
}

impl TokenRecord {
    /// Whether the token is accepted at `now`: not revoked and not expired.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// A token's secret, shown once. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret, to hand to the token's holder.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a token cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "invalid token name {0:?}: give 1 to 64 characters of letters, digits, `.`, `_` \
         and `-`, e.g. ci or alice-laptop"
    )]
    BadName(String),
    #[error("the token's expiry {expires_at} is not after its creation {now}")]
    AlreadyExpired {
        expires_at: Timestamp,
        now: Timestamp,
    },
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
}

/// How every secret starts, so that one found in a log or a repository can
/// be recognised (and scanners can look for it).
pub const SECRET_PREFIX: &str = "fst_";

/// The characters of a secret the store keeps to tell tokens apart.
const SHOWN: usize = SECRET_PREFIX.len() + 8;

/// Checks a token name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    if crate::asset::is_plain_name(name) {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_owned()))
    }
}

/// The hash under which the store keeps a secret: blake3, in hex.
pub fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Makes a new token: a fresh secret, and the record to store for it.
///
/// # Errors
///
/// A bad name, an expiry not after `now`, or no randomness from the OS.
pub fn generate(
    name: &str,
    right: TokenRight,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<(NewToken, Secret), TokenError> {
    check_name(name)?;
    if let Some(at) = expires_at
        && at <= now
    {
        return Err(TokenError::AlreadyExpired {
            expires_at: at,
            now,
        });
    }
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|err| TokenError::Random(err.to_string()))?;
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 40);
    secret.push_str(SECRET_PREFIX);
    for b in bytes {
        secret.push_str(&format!("{b:02x}"));
    }
    let token = NewToken {
        name: name.to_owned(),
        right,
        hash: hash(&secret),
        prefix: secret[..SHOWN].to_owned(),
        created_at: now,
        expires_at,
    };
    Ok((token, Secret(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_only_their_hash_is_kept() {
        let now = Timestamp::now();
        let (a, secret_a) = generate("ci", TokenRight::Launch, None, now).unwrap();
        let (b, secret_b) = generate("ci", TokenRight::Launch, None, now).unwrap();
        assert_ne!(secret_a, secret_b);
        assert_ne!(a.hash, b.hash);
        assert!(secret_a.expose().starts_with(SECRET_PREFIX));
        assert_eq!(secret_a.expose().len(), 44);
        assert_eq!(a.hash, hash(secret_a.expose()));
        assert!(secret_a.expose().starts_with(&a.prefix));
        assert_eq!(a.prefix.len(), 12);
        assert!(!a.hash.contains(&secret_a.expose()[4..]));
        assert_eq!(format!("{secret_a:?}"), "Secret(..)");
    }

    #[test]
    fn names_rights_and_expiry_are_checked() {
        let now = Timestamp::now();
        for bad in ["", "has space", "ünicode", &"x".repeat(65), "a/b"] {
            let err = generate(bad, TokenRight::Read, None, now).unwrap_err();
            assert!(err.to_string().contains("1 to 64 characters"), "{err}");
        }
        check_name("alice-laptop.2_b").unwrap();
        let past = now - jiff::SignedDuration::from_secs(1);
        assert!(matches!(
            generate("ci", TokenRight::Read, Some(past), now),
            Err(TokenError::AlreadyExpired { .. })
        ));
        assert_eq!("launch".parse::<TokenRight>(), Ok(TokenRight::Launch));
        let err = "admin".parse::<TokenRight>().unwrap_err();
        assert!(err.contains("`read`") && err.contains("`launch`"), "{err}");
        assert!(TokenRight::Launch > TokenRight::Read);
    }

    #[test]
    fn a_record_is_active_until_revoked_or_expired() {
        let now = Timestamp::now();
        let hour = jiff::SignedDuration::from_hours(1);
        let mut record = TokenRecord {
            id: 1,
            name: "ci".into(),
            right: TokenRight::Read,
            prefix: "fst_00000000".into(),
            created_at: now,
            expires_at: Some(now + hour),
            revoked_at: None,
            last_used_at: None,
        };
        assert!(record.is_active(now));
        assert!(!record.is_active(now + hour));
        record.expires_at = None;
        assert!(record.is_active(now + hour));
        record.revoked_at = Some(now);
        assert!(!record.is_active(now));
    }
}
