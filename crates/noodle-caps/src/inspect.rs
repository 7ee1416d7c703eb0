//! Reading a token offline: what `noodle cap inspect` shows, in plain words or as JSON.
//!
//! Inspection needs no key and checks no signature, so it describes what a token *claims*; only
//! the [`Authoriser`](crate::Authoriser) decides what it is worth.

use crate::clock;
use crate::right::{Quota, Right};
use crate::token::{TokenError, TokenView, parse_unverified};
use serde::Serialize;
use std::fmt::Write;
use std::time::SystemTime;

/// What a token says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// Revocation id of the last block, hex: revoking it revokes this token and every token
    /// narrowed from it, but not the token it was narrowed from.
    pub id: String,
    /// Revocation ids of every block, the root-signed one first.
    pub revocation_ids: Vec<String>,
    pub holder: Option<String>,
    /// The rights the root-signed block grants.
    pub rights: Vec<Right>,
    /// What is left of them after every narrowing noodle recognises.
    pub effective_rights: Vec<Right>,
    pub quotas: Vec<Quota>,
    /// The earliest expiry of any block, unix seconds.
    pub expires_at: Option<i64>,
    /// Number of blocks: 1 for a freshly minted token, one more per narrowing.
    pub blocks: usize,
    /// One entry per narrowing, oldest first.
    pub attenuations: Vec<Attenuation>,
}

/// One narrowing step (one appended block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attenuation {
    /// The rights this block lets through; `None` when it does not limit rights.
    pub allow: Option<Vec<Right>>,
    /// The expiry this block adds, unix seconds.
    pub expires_at: Option<i64>,
    /// Conditions in the block that noodle cannot describe (they are still enforced).
    pub other_conditions: usize,
}

/// Reads a token without any key. Fails only when the text is not a token.
pub fn inspect(token: &str) -> Result<Inspection, TokenError> {
    let parsed = parse_unverified(token)?;
    let view = TokenView::read_unverified(&parsed)?;
    let authority = view.authority();
    Ok(Inspection {
        id: view.id().to_string(),
        revocation_ids: view.ids.clone(),
        holder: authority.holder.clone(),
        rights: crate::datalog::minimise(authority.rights.clone()),
        effective_rights: view.effective_rights(),
        quotas: authority.quotas.clone(),
        expires_at: view.expires_at().map(to_i64),
        blocks: view.blocks.len(),
        attenuations: view.blocks[1..]
            .iter()
            .map(|b| Attenuation {
                allow: b.allow.clone(),
                expires_at: b.expires_at.map(to_i64),
                other_conditions: b.other_checks,
            })
            .collect(),
    })
}

impl Inspection {
    /// Plain words, relative to the current time.
    pub fn explain(&self) -> String {
        self.explain_at(SystemTime::now())
    }

    /// Plain words, e.g.
    ///
    /// ```text
    /// Token for alice, expires 2026-11-23 14:00:00 UTC (in 59m).
    /// May: read config; read fabric under /datasets/.
    /// Quotas: cpus 4.
    /// Narrowed 1 time.
    /// Revocation id: ab12…
    /// ```
    pub fn explain_at(&self, now: SystemTime) -> String {
        let mut out = String::new();
        match &self.holder {
            Some(holder) => {
                let _ = write!(out, "Token for {holder}");
            }
            None => out.push_str("Token for whoever holds it"),
        }
        let now = to_i64(clock::unix_secs(now));
        match self.expires_at {
            Some(at) if at >= now => {
                let _ = write!(
                    out,
                    ", expires {} (in {}).",
                    clock::human_date(at),
                    clock::human_span(at.abs_diff(now))
                );
            }
            Some(at) => {
                let _ = write!(
                    out,
                    ", EXPIRED {} ({} ago).",
                    clock::human_date(at),
                    clock::human_span(at.abs_diff(now))
                );
            }
            None => out.push_str(", never expires."),
        }
        let _ = writeln!(out, "\nMay: {}.", describe_rights(&self.effective_rights));
        if self.quotas.is_empty() {
            out.push_str("Quotas: none.\n");
        } else {
            let quotas: Vec<String> = self
                .quotas
                .iter()
                .map(|q| format!("{} {}", q.name, q.value))
                .collect();
            let _ = writeln!(out, "Quotas: {}.", quotas.join(", "));
        }
        let narrowed = self.attenuations.len();
        if narrowed > 0 {
            let _ = write!(
                out,
                "Narrowed {narrowed} time{}",
                if narrowed == 1 { "" } else { "s" }
            );
            if self.effective_rights != self.rights {
                let _ = write!(out, " (first granted: {})", describe_rights(&self.rights));
            }
            out.push_str(".\n");
        }
        let other: usize = self.attenuations.iter().map(|a| a.other_conditions).sum();
        if other > 0 {
            let _ = writeln!(
                out,
                "It also carries {other} condition{} noodle cannot describe; they still apply.",
                if other == 1 { "" } else { "s" }
            );
        }
        let _ = write!(out, "Revocation id: {}", self.id);
        out
    }
}

fn describe_rights(rights: &[Right]) -> String {
    if rights.is_empty() {
        return "nothing".to_string();
    }
    rights
        .iter()
        .map(Right::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

fn to_i64(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}
