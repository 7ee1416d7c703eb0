//! Minting tokens with the root key, and narrowing them offline.
//!
//! Both functions produce the base64url text form that users copy around. Neither ever widens
//! what a token allows: minting writes rights only into the root-signed first block, and
//! [`attenuate`] only appends checks (see the crate documentation).

use crate::clock;
use crate::datalog::{self, BlockView};
use crate::key::RootKey;
use crate::right::{Quota, Right, SpecError, validate_holder};
use biscuit_auth::{Biscuit, BlockBuilder, UnverifiedBiscuit};
use std::time::{Duration, SystemTime};

/// Tokens longer than this are refused unread, and never minted or attenuated.
pub const TOKEN_BYTES_MAX: usize = 8192;
/// Most rights in one token or one attenuation.
pub const RIGHTS_MAX: usize = 64;
/// Most quotas in one token.
pub const QUOTAS_MAX: usize = 32;
/// Longest lifetime a token (or an attenuation) may ask for: ten years.
pub const TTL_MAX: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Why a token could not be minted, narrowed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("a token needs at least one right, e.g. --allow config:read")]
    NoRights,
    #[error("{count} {what} is too many, the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("quota `{0}` is given twice")]
    DuplicateQuota(String),
    #[error("the lifetime must be between 1 second and {} days", TTL_MAX.as_secs() / 86_400)]
    Ttl,
    #[error("nothing to narrow: give rights to keep, a shorter lifetime, or both")]
    NothingToNarrow,
    #[error("the token does not allow {right}, so a narrowed token cannot allow it either")]
    Widening { right: Right },
    #[error("the token would be {size} bytes, the limit is {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("could not build the token: {0}")]
    Build(String),
}

/// What [`mint`] puts into a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub rights: Vec<Right>,
    pub quotas: Vec<Quota>,
    /// How long the token lives from the moment it is minted.
    pub ttl: Duration,
    /// Who the token is for; informative (shown by inspect, returned in grants).
    pub holder: Option<String>,
}

/// Mints a token signed by the cluster's root key, valid from now for `spec.ttl`.
pub fn mint(root: &RootKey, spec: &TokenSpec) -> Result<String, TokenError> {
    mint_at(root, spec, SystemTime::now())
}

/// [`mint`] with the clock passed in.
pub fn mint_at(root: &RootKey, spec: &TokenSpec, now: SystemTime) -> Result<String, TokenError> {
    if spec.rights.is_empty() {
        return Err(TokenError::NoRights);
    }
    check_count("rights", spec.rights.len(), RIGHTS_MAX)?;
    check_count("quotas", spec.quotas.len(), QUOTAS_MAX)?;
    for right in &spec.rights {
        right.validate()?;
    }
    for (i, quota) in spec.quotas.iter().enumerate() {
        quota.validate()?;
        if spec.quotas[..i].iter().any(|q| q.name == quota.name) {
            return Err(TokenError::DuplicateQuota(quota.name.clone()));
        }
    }
    if let Some(holder) = &spec.holder {
        validate_holder(holder)?;
    }
    let expires = expiry(now, spec.ttl)?;

    let mut builder = Biscuit::builder();
    for right in datalog::minimise(spec.rights.clone()) {
        builder = builder.fact(datalog::right_fact(&right)).map_err(build)?;
    }
    for quota in &spec.quotas {
        builder = builder.fact(datalog::quota_fact(quota)).map_err(build)?;
    }
    if let Some(holder) = &spec.holder {
        builder = builder.fact(datalog::holder_fact(holder)).map_err(build)?;
    }
    let token = builder
        .check(datalog::expiry_check(expires))
        .map_err(build)?
        .build(&root.0)
        .map_err(build)?
        .to_base64()
        .map_err(build)?;
    check_size(token)
}

/// Narrows a token without the root key: the result allows only what both the token and
/// `allow` allow (everything the token allows when `allow` is empty), and expires after `ttl`
/// if that is sooner. Asking for a right the token does not have is refused.
pub fn attenuate(
    token: &str,
    allow: &[Right],
    ttl: Option<Duration>,
) -> Result<String, TokenError> {
    attenuate_at(token, allow, ttl, SystemTime::now())
}

/// [`attenuate`] with the clock passed in.
pub fn attenuate_at(
    token: &str,
    allow: &[Right],
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, TokenError> {
    let parent = parse_unverified(token)?;
    let view = TokenView::read_unverified(&parent)?;
    let effective = view.effective_rights();
    for right in allow {
        right.validate()?;
        if !effective.iter().any(|have| have.covers(right)) {
            return Err(TokenError::Widening {
                right: right.clone(),
            });
        }
    }
    append_block(&parent, allow, ttl, now)
}

/// [`attenuate_at`] without the refusal of rights the parent lacks: the checks still can never
/// widen anything, which is what the tests that call this show.
#[doc(hidden)]
pub fn attenuate_unchecked_at(
    token: &str,
    allow: &[Right],
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, TokenError> {
    let parent = parse_unverified(token)?;
    for right in allow {
        right.validate()?;
    }
    append_block(&parent, allow, ttl, now)
}

fn append_block(
    parent: &UnverifiedBiscuit,
    allow: &[Right],
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, TokenError> {
    if allow.is_empty() && ttl.is_none() {
        return Err(TokenError::NothingToNarrow);
    }
    check_count("rights", allow.len(), RIGHTS_MAX)?;
    let mut block = BlockBuilder::new();
    if !allow.is_empty() {
        block = block
            .check(datalog::rights_check(&datalog::minimise(allow.to_vec())))
            .map_err(build)?;
    }
    if let Some(ttl) = ttl {
        block = block
            .check(datalog::expiry_check(expiry(now, ttl)?))
            .map_err(build)?;
    }
    let child = parent
        .append(block)
        .map_err(build)?
        .to_base64()
        .map_err(build)?;
    check_size(child)
}

/// Parses the text form without checking any signature (for attenuation and inspection).
pub(crate) fn parse_unverified(token: &str) -> Result<UnverifiedBiscuit, TokenError> {
    let token = token.trim();
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed(format!(
            "it is {} bytes, the limit is {TOKEN_BYTES_MAX}",
            token.len()
        )));
    }
    if token.is_empty() {
        return Err(TokenError::Malformed("it is empty".to_string()));
    }
    UnverifiedBiscuit::from_base64(token).map_err(|e| TokenError::Malformed(e.to_string()))
}

/// What noodle can read out of a token's blocks.
#[derive(Debug, Clone)]
pub(crate) struct TokenView {
    /// One per block, the root-signed one first.
    pub(crate) blocks: Vec<BlockView>,
    /// Revocation ids, hex, one per block.
    pub(crate) ids: Vec<String>,
}

impl TokenView {
    pub(crate) fn read_unverified(token: &UnverifiedBiscuit) -> Result<TokenView, TokenError> {
        Self::read(
            token.block_count(),
            |i| token.print_block_source(i),
            token.revocation_identifiers(),
        )
    }

    pub(crate) fn read_verified(token: &Biscuit) -> Result<TokenView, TokenError> {
        Self::read(
            token.block_count(),
            |i| token.print_block_source(i),
            token.revocation_identifiers(),
        )
    }

    fn read(
        count: usize,
        print: impl Fn(usize) -> Result<String, biscuit_auth::error::Token>,
        ids: Vec<Vec<u8>>,
    ) -> Result<TokenView, TokenError> {
        let mut blocks = Vec::with_capacity(count);
        for i in 0..count {
            let view = print(i)
                .map_err(|e| e.to_string())
                .and_then(|source| datalog::read_block(&source));
            match view {
                Ok(view) => blocks.push(view),
                Err(e) if i == 0 => {
                    return Err(TokenError::Malformed(format!(
                        "its first block cannot be read: {e}"
                    )));
                }
                // Someone else's block: still enforced by the authoriser, just not described.
                Err(_) => blocks.push(BlockView {
                    other_checks: 1,
                    ..BlockView::default()
                }),
            }
        }
        if ids.len() != count || count == 0 {
            return Err(TokenError::Malformed(
                "its revocation ids do not match its blocks".to_string(),
            ));
        }
        Ok(TokenView {
            blocks,
            ids: ids.iter().map(hex::encode).collect(),
        })
    }

    /// The first block: the only one whose facts grant anything.
    pub(crate) fn authority(&self) -> &BlockView {
        &self.blocks[0]
    }

    /// Hex revocation id of the last block: names this token and all tokens made from it.
    pub(crate) fn id(&self) -> &str {
        self.ids.last().map(String::as_str).unwrap_or_default()
    }

    /// The first block's rights, narrowed by every rights check noodle recognises.
    pub(crate) fn effective_rights(&self) -> Vec<Right> {
        let mut rights = datalog::minimise(self.authority().rights.clone());
        for block in &self.blocks {
            if let Some(allow) = &block.allow {
                rights = datalog::intersect_sets(&rights, allow);
            }
        }
        rights
    }

    /// The earliest expiry of any block, unix seconds.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.blocks.iter().filter_map(|b| b.expires_at).min()
    }
}

fn expiry(now: SystemTime, ttl: Duration) -> Result<u64, TokenError> {
    if ttl < Duration::from_secs(1) || ttl > TTL_MAX {
        return Err(TokenError::Ttl);
    }
    Ok(clock::unix_secs(now).saturating_add(ttl.as_secs()))
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), TokenError> {
    if count > max {
        return Err(TokenError::TooMany { what, count, max });
    }
    Ok(())
}

fn check_size(token: String) -> Result<String, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Oversized {
            size: token.len(),
            limit: TOKEN_BYTES_MAX,
        });
    }
    Ok(token)
}

fn build(e: biscuit_auth::error::Token) -> TokenError {
    TokenError::Build(e.to_string())
}
