//! Cluster-wide policies: named Datalog that every authorisation runs before the defaults.
//!
//! A policy is `deny if …` and `check if …` statements, plus facts and rules that feed them.
//! It may not define facts or rules for the predicates tokens and requests speak in (`right`,
//! `operation`, …), nor `allow if`: a policy only restricts what tokens grant, it never grants
//! or forges rights. Each policy
//! is parsed once, when it is added, and dry-run against a sample request under the same
//! limits as real authorisations, so Datalog that would always blow the limits is refused then
//! rather than denying every call later.

use crate::authorise::Limits;
use crate::clock;
use crate::datalog;
use crate::right::echo;
use biscuit_auth::AuthorizerBuilder;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Largest policy source, in bytes.
pub const POLICY_BYTES_MAX: usize = 16 * 1024;
/// Longest policy name.
pub const POLICY_NAME_BYTES_MAX: usize = 64;
/// Predicates only tokens (`right`, `quota`, `holder`) and the authoriser (`operation`,
/// `resource`, `time`) may state.
pub const RESERVED_PREDICATES: &[&str] = &[
    "right",
    "quota",
    "holder",
    "operation",
    "resource",
    "resource_under",
    "time",
];

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy name `{0}` is not valid: use 1 to 64 characters of a-z, 0-9, - and _")]
    Name(String),
    #[error("policy is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("policy does not parse: {0}")]
    Parse(String),
    #[error("policy may not state `{0}` facts or rules: they come only from tokens and requests")]
    Reserved(String),
    #[error(
        "policy may only deny or check (`deny if`, `check if`): `allow if` would grant what no token grants"
    )]
    Allows,
    #[error(
        "policy ran past the authorisation limits on a sample request ({0}); simplify its rules"
    )]
    LimitsExceeded(String),
    #[error("policy fails on a sample request: {0}")]
    Evaluation(String),
}

/// A named, parsed cluster policy. Serialises as its name and source only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "PolicySource", into = "PolicySource")]
pub struct Policy {
    name: String,
    source: String,
    pub(crate) builder: AuthorizerBuilder,
    /// How many `check if` statements it adds, to name it when one fails.
    pub(crate) checks: usize,
    /// How many `allow`/`deny` statements it adds, to name it when one matches.
    pub(crate) policies: usize,
}

/// The replicated form of a [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    pub name: String,
    pub source: String,
}

impl Policy {
    /// Parses and dry-runs a policy with the default [`Limits`].
    pub fn parse(name: &str, source: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_limits(name, source, &Limits::default())
    }

    /// Parses and dry-runs a policy under `limits` (use the authoriser's).
    pub fn parse_with_limits(
        name: &str,
        source: &str,
        limits: &Limits,
    ) -> Result<Policy, PolicyError> {
        let policy = Policy::parse_unchecked(name, source)?;
        policy.dry_run(limits)?;
        Ok(policy)
    }

    /// Parses without the dry run: for policies read back from replicated state, which were
    /// dry-run when they were added (and a busy node must not refuse to load them).
    fn parse_unchecked(name: &str, source: &str) -> Result<Policy, PolicyError> {
        if !is_policy_name(name) {
            return Err(PolicyError::Name(echo(name)));
        }
        if source.len() > POLICY_BYTES_MAX {
            return Err(PolicyError::TooLarge {
                size: source.len(),
                limit: POLICY_BYTES_MAX,
            });
        }
        datalog::guard_source(source).map_err(PolicyError::Parse)?;
        let parsed = biscuit_auth::parser::parse_source(source).map_err(|errors| {
            PolicyError::Parse(datalog::describe_parse_errors(source, &errors))
        })?;
        // A cluster policy narrows what tokens grant; it never grants anything itself.
        let allows = parsed.policies.iter().any(|(_, p)| {
            let p: biscuit_auth::builder::Policy = p.clone().into();
            p.kind == biscuit_auth::builder::PolicyKind::Allow
        });
        if allows {
            return Err(PolicyError::Allows);
        }
        let (checks, policies) = (parsed.checks.len(), parsed.policies.len());
        let stated = parsed
            .facts
            .iter()
            .map(|(_, f)| &f.predicate.name)
            .chain(parsed.rules.iter().map(|(_, r)| &r.head.name));
        for name in stated {
            if RESERVED_PREDICATES.contains(&name.as_str()) {
                return Err(PolicyError::Reserved(name.clone()));
            }
        }
        let builder = AuthorizerBuilder::new()
            .code(source)
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        // Every query of every rule, check and policy, as biscuit's builder types.
        let queries = parsed
            .rules
            .into_iter()
            .map(|(_, r)| r)
            .chain(parsed.checks.into_iter().flat_map(|(_, c)| c.queries))
            .chain(parsed.policies.into_iter().flat_map(|(_, p)| p.queries));
        for query in queries {
            datalog::check_bound_variables(&query.into()).map_err(PolicyError::Parse)?;
        }
        Ok(Policy {
            name: name.to_string(),
            source: source.to_string(),
            builder,
            checks,
            policies,
        })
    }

    /// Runs the policy against a sample token and request.
    fn dry_run(&self, limits: &Limits) -> Result<(), PolicyError> {
        // The sample clock only has to be a plausible time; the decision itself is discarded.
        let now = clock::unix_secs(SystemTime::now());
        let sample = [
            datalog::time_fact(now),
            datalog::operation_fact("config", "read"),
            datalog::resource_fact("/"),
            datalog::resource_under_facts("/").remove(0),
            datalog::right_fact(&crate::Right {
                subsystem: "config".to_string(),
                action: "read".to_string(),
                prefix: None,
            }),
            datalog::right_fact(&crate::Right {
                subsystem: "fabric".to_string(),
                action: "read".to_string(),
                prefix: Some("/".to_string()),
            }),
            datalog::quota_fact(&crate::Quota {
                name: "cpus".to_string(),
                value: 1,
            }),
            datalog::holder_fact("sample"),
        ];
        let mut builder = AuthorizerBuilder::new().set_limits(limits.to_biscuit());
        for fact in sample {
            builder = builder
                .fact(fact)
                .map_err(|e| PolicyError::Evaluation(e.to_string()))?;
        }
        let mut authorizer = builder
            .merge(self.builder.clone())
            .policy("deny if true")
            .and_then(|b| b.build_unauthenticated())
            .map_err(|e| PolicyError::Evaluation(e.to_string()))?;
        match authorizer.authorize() {
            Ok(_) | Err(biscuit_auth::error::Token::FailedLogic(_)) => Ok(()),
            Err(biscuit_auth::error::Token::RunLimit(limit)) => {
                Err(PolicyError::LimitsExceeded(limit.to_string()))
            }
            Err(e) => Err(PolicyError::Evaluation(e.to_string())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.name == other.name && self.source == other.source
    }
}

impl Eq for Policy {}

impl TryFrom<PolicySource> for Policy {
    type Error = PolicyError;

    fn try_from(p: PolicySource) -> Result<Policy, PolicyError> {
        Policy::parse_unchecked(&p.name, &p.source)
    }
}

impl From<Policy> for PolicySource {
    fn from(p: Policy) -> PolicySource {
        PolicySource {
            name: p.name,
            source: p.source,
        }
    }
}

fn is_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= POLICY_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
