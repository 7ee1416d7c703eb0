//! Capability tokens for Noodle, and the deny-by-default authoriser every API call goes through.
//!
//! Tokens are [biscuits](https://www.biscuitsec.org): chains of signed Datalog blocks, carried
//! as base64url text. This crate mints them ([`mint`]), narrows them offline ([`attenuate`]),
//! describes them ([`inspect`]) and decides requests with them ([`Authoriser`]). It does no I/O,
//! reads no clock on the authorisation path (time comes in through [`Context`]), and never
//! prints the root private key.
//!
//! # The token model
//!
//! - **Authority facts.** The first block is signed by the cluster's [`RootKey`] and is the
//!   only place rights come from: `right("jobs", "run")`, `right("fabric", "read",
//!   "/datasets/")` (a prefix right: only resources starting with `/datasets/`), `quota("cpus",
//!   4)`, `holder("alice")`, and an expiry check `check if time($t), $t <= <expiry>`. Rights
//!   are written `SUBSYSTEM:ACTION[:PREFIX]` ([`Right`]); the action `*` stands for every action.
//! - **Attenuation by checks.** Anyone holding a token can append a block without the root key.
//!   Noodle's blocks hold only checks: `check if operation("config", "read") or
//!   operation("fabric", "read"), resource($r), $r.starts_with("/datasets/")` and an optional
//!   earlier expiry. A check can only make a request fail, and facts in appended blocks are not
//!   visible to the authoriser's `allow` policies (biscuit scopes them to their own block), so
//!   an attenuated token can never allow more than its parent, whoever wrote the block.
//!   [`attenuate`] also refuses up front to ask for rights the parent does not have.
//! - **Revocation ids.** Every block has a unique revocation id (its signature). A token's
//!   [`id`](Inspection::id) is its *last* block's id; revoking it revokes that token and every
//!   token narrowed from it, while its parent (which lacks that block) stays valid. Revoking a
//!   parent's id revokes all its children, since they carry the parent's blocks.
//! - **Policy order.** An authorisation loads the token's blocks, the facts `time(now)`,
//!   `operation(subsystem, action)` and `resource(r)` (if the request names one), then the
//!   cluster [`Policy`]s in order, then the defaults: `allow if operation($s, $a), right($s,
//!   $a)` (and its `*` variant), the prefix rule `allow if operation($s, $a), resource($r),
//!   right($s, $a, $p), $r.starts_with($p)`, and finally `deny if true`. The first matching
//!   `allow`/`deny` decides, and every check of every block and policy must pass.
//!
//! # The order of refusals
//!
//! [`Authoriser::authorise`] refuses, in this order: tokens over 8 KiB ([`Denied::Oversized`],
//! before any parsing), text that is not a token ([`Denied::Malformed`]), tokens not signed by
//! this cluster's root ([`Denied::Forged`]), tokens with any revoked block
//! ([`Denied::Revoked`]), expired tokens ([`Denied::Expired`], from the earliest expiry check),
//! and then whatever the Datalog run says, under [`Limits`] ([`Denied::LimitsExceeded`],
//! [`Denied::Policy`], [`Denied::NotAllowed`]). Signatures are verified once per distinct token
//! and remembered in a bounded cache; revocation and expiry are checked on every call.

#![forbid(unsafe_code)]

mod authorise;
mod clock;
mod datalog;
mod inspect;
mod key;
mod policy;
mod right;
mod token;

pub use authorise::{
    Authoriser, Context, Denied, Grant, Limits, NoneRevoked, RevocationList, TIME_BACKSTOP,
    VERIFIED_CACHE_ENTRIES_MAX,
};
pub use inspect::{Attenuation, Inspection, inspect};
pub use key::{KEY_BYTES, KeyError, PublicKey, RootKey};
pub use policy::{
    POLICY_BYTES_MAX, POLICY_NAME_BYTES_MAX, Policy, PolicyError, PolicySource, RESERVED_PREDICATES,
};
pub use right::{
    ANY_ACTION, HOLDER_CHARS_MAX, NAME_BYTES_MAX, PREFIX_CHARS_MAX, Quota, Request, Right,
    SpecError,
};
pub use token::{
    QUOTAS_MAX, RIGHTS_MAX, TOKEN_BYTES_MAX, TTL_MAX, TokenError, TokenSpec, attenuate,
    attenuate_at, attenuate_unchecked_at, mint, mint_at,
};

#[cfg(test)]
mod tests;
