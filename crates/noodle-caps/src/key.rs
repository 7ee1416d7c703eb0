//! The cluster's root key pair, which signs every token's first block.
//!
//! The private half lives in replicated cluster state as raw bytes ([`RootKey::to_bytes`]); it is
//! never printed: `Debug` shows only the public half.

use std::fmt;

/// Why key bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a root key is {expected} bytes of ed25519 key, got {got} bytes")]
    Length { expected: usize, got: usize },
    #[error("the key bytes are not a valid ed25519 key: {0}")]
    Invalid(String),
}

/// Length of an ed25519 private or public key.
pub const KEY_BYTES: usize = 32;

/// The cluster's ed25519 root key pair.
pub struct RootKey(pub(crate) biscuit_auth::KeyPair);

impl RootKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> RootKey {
        RootKey(biscuit_auth::KeyPair::new_with_algorithm(
            biscuit_auth::Algorithm::Ed25519,
        ))
    }

    /// The private key, 32 bytes, for the replicated state. Treat as a secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.private().to_bytes().to_vec()
    }

    /// Reads back what [`RootKey::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<RootKey, KeyError> {
        if bytes.len() != KEY_BYTES {
            return Err(KeyError::Length {
                expected: KEY_BYTES,
                got: bytes.len(),
            });
        }
        let private = biscuit_auth::PrivateKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(RootKey(biscuit_auth::KeyPair::from(&private)))
    }

    /// The public half, which authorisers verify tokens against.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.public())
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// The public half of a [`RootKey`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub(crate) biscuit_auth::PublicKey);

impl PublicKey {
    /// The 32 raw key bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Reads back what [`PublicKey::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        if bytes.len() != KEY_BYTES {
            return Err(KeyError::Length {
                expected: KEY_BYTES,
                got: bytes.len(),
            });
        }
        biscuit_auth::PublicKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519)
            .map(PublicKey)
            .map_err(|e| KeyError::Invalid(e.to_string()))
    }
}

impl fmt::Display for PublicKey {
    /// `ed25519/<hex>`, the form biscuit tools print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519/{}", hex::encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}
