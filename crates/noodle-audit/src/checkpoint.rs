//! Signed checkpoints and the keys that sign them.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, DecodeError};
use crate::record::{FIELD_LEN_MAX, bound_str};

/// Domain separator at the front of every signed checkpoint message, so a checkpoint
/// signature can never be replayed as a signature over anything else a node signs.
pub const CHECKPOINT_CONTEXT: &[u8] = b"noodle audit checkpoint v1";

/// A node's audit signing key (Ed25519). `Debug` shows only the public half.
#[derive(Clone)]
pub struct AuditKey(SigningKey);

impl AuditKey {
    /// The key with this 32-byte secret seed. The caller supplies the randomness; this crate
    /// never reads an RNG.
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        AuditKey(SigningKey::from_bytes(&secret))
    }

    /// The 32-byte secret seed, for storing the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey(self.0.verifying_key())
    }

    /// Signs `context || message`. Each use of a node's key names its own `context` (a
    /// constant that no other use has as a prefix, like [`CHECKPOINT_CONTEXT`]), so a signature
    /// made for one purpose never verifies for another.
    pub fn sign_in_context(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        let mut signed = Vec::with_capacity(context.len() + message.len());
        signed.extend_from_slice(context);
        signed.extend_from_slice(message);
        self.0.sign(&signed).to_bytes()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("public", &self.public_key().to_string())
            .finish_non_exhaustive()
    }
}

/// A node's audit verification key: 32 bytes, shown and parsed as 64 hex digits.
///
/// Only valid Ed25519 points are representable: parsing rejects anything else.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditPublicKey(VerifyingKey);

/// Why a string or byte array is not an [`AuditPublicKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeyError {
    /// Not exactly 64 hex digits.
    #[error("an audit public key is 64 hex digits")]
    NotHex,
    /// 32 bytes, but not an Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
}

impl AuditPublicKey {
    /// The key with these bytes, if they are a valid Ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, PublicKeyError> {
        VerifyingKey::from_bytes(&bytes)
            .map(AuditPublicKey)
            .map_err(|_| PublicKeyError::InvalidPoint)
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Whether `signature` is this key's [`AuditKey::sign_in_context`] of `message`.
    pub fn verifies_in_context(&self, context: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let mut signed = Vec::with_capacity(context.len() + message.len());
        signed.extend_from_slice(context);
        signed.extend_from_slice(message);
        self.verifies(&signed, &signature)
    }

    /// Whether `signature` is this key's signature over `message` (strict verification:
    /// rejects small-order keys and non-canonical signatures).
    fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditPublicKey({self})")
    }
}

impl FromStr for AuditPublicKey {
    type Err = PublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| PublicKeyError::NotHex)?;
        AuditPublicKey::from_bytes(bytes)
    }
}

impl Serialize for AuditPublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::bytes_serde::serialize(&self.to_bytes(), serializer)
    }
}

impl<'de> Deserialize<'de> for AuditPublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = crate::bytes_serde::deserialize(deserializer)?;
        AuditPublicKey::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// A signer's statement "the chain's hash at entry `upto_seq` is `hash`".
///
/// The signature is Ed25519 over [`Checkpoint::message`]. A verified checkpoint pins every
/// entry up to `upto_seq`: changing, dropping or reordering any of them changes the chain hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last entry covered.
    pub upto_seq: u64,
    /// That entry's hash.
    #[serde(with = "crate::bytes_serde")]
    pub hash: [u8; 32],
    /// The signing node's id, used to look up its [`AuditPublicKey`].
    pub signer: String,
    /// When it was signed, unix milliseconds, as chosen by the signer.
    pub at_ms: u64,
    /// Ed25519 signature over [`Checkpoint::message`].
    #[serde(with = "crate::bytes_serde")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// Signs the statement that entry `upto_seq` has hash `hash` (usually [`crate::Chain::head`]).
    /// `signer` longer than [`FIELD_LEN_MAX`] bytes is truncated like a record field.
    /// Ed25519 signing is deterministic, so this is safe inside a state machine.
    pub fn sign(
        upto_seq: u64,
        hash: [u8; 32],
        signer: impl Into<String>,
        at_ms: u64,
        key: &AuditKey,
    ) -> Self {
        let signer = bound_str(&signer.into());
        let message = Checkpoint::message(upto_seq, &hash, &signer, at_ms);
        let signature = key.0.sign(&message).to_bytes();
        Checkpoint {
            upto_seq,
            hash,
            signer,
            at_ms,
            signature,
        }
    }

    /// The signed bytes: [`CHECKPOINT_CONTEXT`] || `upto_seq` u64 LE || `hash` ||
    /// signer byte length u64 LE || signer UTF-8 || `at_ms` u64 LE.
    pub fn message(upto_seq: u64, hash: &[u8; 32], signer: &str, at_ms: u64) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(CHECKPOINT_CONTEXT.len() + 8 + 32 + 8 + signer.len() + 8);
        message.extend_from_slice(CHECKPOINT_CONTEXT);
        message.extend_from_slice(&upto_seq.to_le_bytes());
        message.extend_from_slice(hash);
        message.extend_from_slice(&(signer.len() as u64).to_le_bytes());
        message.extend_from_slice(signer.as_bytes());
        message.extend_from_slice(&at_ms.to_le_bytes());
        message
    }

    /// Whether the signature is `key`'s over this checkpoint's fields.
    pub fn signature_verifies(&self, key: &AuditPublicKey) -> bool {
        key.verifies(
            &Checkpoint::message(self.upto_seq, &self.hash, &self.signer, self.at_ms),
            &self.signature,
        )
    }

    /// The storage encoding: a format version byte ([`crate::FORMAT_V1`]) then postcard.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes [`Checkpoint::encode`]'s output, as strictly as [`crate::Entry::decode`].
    /// Does not check the signature; verification does.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
        let checkpoint: Checkpoint = codec::decode(bytes)?;
        if checkpoint.signer.len() > FIELD_LEN_MAX {
            return Err(DecodeError::FieldTooLong { field: "signer" });
        }
        Ok(checkpoint)
    }
}
