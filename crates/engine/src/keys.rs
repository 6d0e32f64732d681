//! API keys: generation, hashing, and the shape check done before any database lookup.
//!
//! A key is `sk_live_` or `sk_test_` followed by 32 base62 characters (about 190 bits from the
//! operating system's CSPRNG). Only its SHA-256 is stored — a fast hash is right here because
//! the key is long and random, unlike a password — and its first 12 characters are kept visible
//! so people can tell keys apart.

use herald_domain::message::Mode;
use herald_store::NewApiKey;
use jiff::Timestamp;
use rand::RngExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const SECRET_LEN: usize = 32;
const VISIBLE_LEN: usize = 12;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: the secret to show once, and the record to store.
pub struct GeneratedKey {
    pub secret: String,
    pub record: NewApiKey,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("prefix", &self.record.prefix)
            .finish_non_exhaustive()
    }
}

pub fn generate(org_id: Uuid, mode: Mode, name: Option<String>, now: Timestamp) -> GeneratedKey {
    let mut rng = rand::rng();
    let random: String = (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let secret = format!("{}{random}", mode.key_prefix());
    let record = NewApiKey {
        id: Uuid::now_v7(),
        org_id,
        mode,
        prefix: secret[..VISIBLE_LEN].to_owned(),
        hash: hash(&secret),
        name,
        created_at: now,
    };
    GeneratedKey { secret, record }
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The mode a well-formed key claims, or `None` if the text cannot be a Herald key at all.
pub fn parse_mode(secret: &str) -> Option<Mode> {
    let (mode, rest) = [Mode::Live, Mode::Test].into_iter().find_map(|mode| {
        secret
            .strip_prefix(mode.key_prefix())
            .map(|rest| (mode, rest))
    })?;
    (rest.len() == SECRET_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_are_unique() {
        let now = Timestamp::UNIX_EPOCH;
        let a = generate(Uuid::nil(), Mode::Live, None, now);
        let b = generate(Uuid::nil(), Mode::Test, None, now);
        assert!(a.secret.starts_with("sk_live_") && b.secret.starts_with("sk_test_"));
        assert_eq!(a.secret.len(), 40);
        assert_eq!(parse_mode(&a.secret), Some(Mode::Live));
        assert_eq!(parse_mode(&b.secret), Some(Mode::Test));
        assert_eq!(a.record.prefix, &a.secret[..12]);
        assert_eq!(a.record.hash, hash(&a.secret));
        assert_ne!(a.secret[8..], b.secret[8..]);
        assert!(
            !format!("{a:?}").contains(&a.secret),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn malformed_keys_are_recognised_without_a_lookup() {
        for bad in [
            "",
            "sk_live_",
            "sk_live_short",
            "pk_live_0123456789abcdefghijABCDEFGHIJ01",
            "sk_live_0123456789abcdefghijABCDEFGHIJ0!",
        ] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }
}
