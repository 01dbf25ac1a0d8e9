//! Ed25519 keys as TUF describes them, and signing with ring.
//!
//! A key's id is the SHA-256 of its canonical JSON key object, so one key cannot
//! be listed under two ids. Private keys are PKCS#8 documents; this module never
//! reads or writes files, and generates keys only from a caller-supplied
//! [`ring::rand::SecureRandom`].

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use super::canonical::to_canonical;
use crate::digest::Sha256Digest;

/// A TUF key id: lowercase hex SHA-256 of the canonical key object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key in TUF's JSON form. Only `ed25519` is supported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Always `ed25519`.
    pub keytype: String,
    /// Always `ed25519`.
    pub scheme: String,
    /// Holds `public`: the 32-byte key in hex.
    pub keyval: KeyVal,
}

/// The public half of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Hex-encoded public key bytes.
    pub public: String,
}

impl PublicKey {
    /// The TUF key object for a raw ed25519 public key.
    pub fn ed25519(raw: &[u8]) -> Self {
        Self {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(raw),
            },
        }
    }

    /// This key's id.
    pub fn key_id(&self) -> KeyId {
        let v = serde_json::to_value(self).unwrap_or_default();
        // A key object holds only strings, so it always has a canonical form.
        let bytes = to_canonical(&v).unwrap_or_default();
        KeyId(Sha256Digest::of(&bytes).to_hex())
    }

    /// True when `sig` is this key's valid signature over `msg`. Unknown key types,
    /// schemes and malformed keys verify nothing.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if self.keytype != "ed25519" || self.scheme != "ed25519" {
            return false;
        }
        let Ok(raw) = hex::decode(&self.keyval.public) else {
            return false;
        };
        raw.len() == 32
            && UnparsedPublicKey::new(&ED25519, raw)
                .verify(msg, sig)
                .is_ok()
    }
}

/// A private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
    id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Key material that is not an Ed25519 PKCS#8 document, or a failed RNG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not an Ed25519 PKCS#8 (v1 or v2) private key.
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    Rejected(String),
    /// The random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

impl SigningKey {
    /// Generates a new key and returns its PKCS#8 v2 document.
    pub fn generate_pkcs8(rng: &dyn ring::rand::SecureRandom) -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Rng)
    }

    /// Loads a key from a PKCS#8 document.
    pub fn from_pkcs8(doc: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(doc)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        let public = PublicKey::ed25519(pair.public_key().as_ref());
        let id = public.key_id();
        Ok(Self { pair, public, id })
    }

    /// The public key object.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let rng = ring::rand::SystemRandom::new();
        let a = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&rng).unwrap()).unwrap();
        let b = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&rng).unwrap()).unwrap();
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        assert!(!b.public().verify(b"hello", &sig));
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().0.len(), 64);
    }

    #[test]
    fn garbage_key_material_is_an_error() {
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        let mut k = PublicKey::ed25519(&[0u8; 32]);
        k.keyval.public = "zz".into();
        assert!(!k.verify(b"m", &[0u8; 64]));
    }
}
