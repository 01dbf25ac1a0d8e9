//! API tokens: generation and the hash under which they are stored.
//!
//! A token is 32 random bytes (hex, prefixed `flt_`). Only its SHA-256 is stored:
//! with 256 bits of entropy a fast hash suffices (no password-stretching needed),
//! and a copy of the database does not reveal any token.

use flotilla_protocol::digest::Sha256Digest;
use ring::rand::SecureRandom;

/// Prefix of every token, so that leaked tokens are easy to scan for.
pub const TOKEN_PREFIX: &str = "flt_";

/// A new random token.
pub fn generate() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    Sha256Digest::of(token.as_bytes()).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 4 + 64);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }
}
