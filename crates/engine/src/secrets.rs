//! The server's secret key and the sealing of provider credentials with it.
//!
//! Credentials are encrypted with XChaCha20-Poly1305: its 24-byte nonces are long enough to be
//! drawn at random for every value without fear of repeating one, and the tag makes any
//! tampering (or a wrong key) fail loudly instead of yielding garbage. A sealed value is
//! `version (1 byte) ‖ nonce (24) ‖ ciphertext and tag`, and is bound to the account and the
//! organization it belongs to (the associated data), so sealed bytes copied onto another row
//! do not open.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use uuid::Uuid;

/// The first byte of every sealed value; a new format (or key rotation scheme) takes another.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// A 32-byte key, given as 64 hex digits or as base64. Never printed.
#[derive(Clone)]
pub struct SecretKey(Key);

/// Why a configured secret key was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the secret key must be 32 bytes, written as 64 hex digits or in base64 \
     (generate one with `openssl rand -base64 32`)"
)]
pub struct BadSecretKey;

/// Sealed bytes that do not open: the wrong key, or a damaged or moved value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the credentials cannot be decrypted with this server's secret key")]
pub struct CannotOpen;

impl SecretKey {
    pub fn parse(text: &str) -> Result<SecretKey, BadSecretKey> {
        use base64::Engine as _;
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };

        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
        };
        let bytes: [u8; 32] = bytes
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(BadSecretKey)?;
        Ok(SecretKey(Key::from(bytes)))
    }

    /// Encrypt `plaintext` for the account `account_id` of `org_id`.
    pub fn seal(&self, org_id: Uuid, account_id: Uuid, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(&self.0);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(org_id, account_id);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // Encryption fails only for inputs of gigabytes, far beyond any credentials.
            .expect("credentials are small enough to encrypt");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypt what [`SecretKey::seal`] produced for the same account.
    pub fn open(
        &self,
        org_id: Uuid,
        account_id: Uuid,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CannotOpen> {
        let (&version, rest) = sealed.split_first().ok_or(CannotOpen)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(CannotOpen);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CannotOpen)?;
        let aad = associated_data(org_id, account_id);
        XChaCha20Poly1305::new(&self.0)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CannotOpen)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(****)")
    }
}

fn associated_data(org_id: Uuid, account_id: Uuid) -> Vec<u8> {
    let mut aad = b"herald provider credentials\0".to_vec();
    aad.extend_from_slice(org_id.as_bytes());
    aad.extend_from_slice(account_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn keys_are_read_from_hex_or_base64_and_nothing_else() {
        let hex = SecretKey::parse(HEX).unwrap();
        let base64 = SecretKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(hex.0, base64.0);
        assert!(SecretKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").is_ok());
        assert_eq!(SecretKey::parse("short").unwrap_err(), BadSecretKey);
        assert_eq!(SecretKey::parse(&HEX[..62]).unwrap_err(), BadSecretKey);
        assert_eq!(SecretKey::parse("").unwrap_err(), BadSecretKey);
        assert_eq!(format!("{hex:?}"), "SecretKey(****)");
    }

    #[test]
    fn sealed_values_open_only_with_their_key_for_their_account() {
        let key = SecretKey::parse(HEX).unwrap();
        let (org, account) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = key.seal(org, account, b"auth token 1234");
        assert!(!sealed.windows(4).any(|w| w == b"1234"), "encrypted");
        assert_eq!(key.open(org, account, &sealed).unwrap(), b"auth token 1234");
        assert_ne!(
            key.seal(org, account, b"auth token 1234"),
            sealed,
            "a fresh nonce every time"
        );

        let other_key = SecretKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(other_key.open(org, account, &sealed), Err(CannotOpen));
        assert_eq!(key.open(org, Uuid::now_v7(), &sealed), Err(CannotOpen));
        assert_eq!(key.open(Uuid::now_v7(), account, &sealed), Err(CannotOpen));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(org, account, &tampered), Err(CannotOpen));
        assert_eq!(key.open(org, account, &[]), Err(CannotOpen));
        assert_eq!(key.open(org, account, &sealed[..10]), Err(CannotOpen));
    }
}
