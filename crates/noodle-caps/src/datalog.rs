//! The Datalog noodle writes into tokens, and how it reads its own shapes back.
//!
//! Writing goes through biscuit's builder types, never through string formatting, so no right,
//! prefix or holder can smuggle syntax into a block. Reading goes the other way: a block is
//! printed as source by biscuit, guarded ([`guard_source`]), parsed back, and each fact or check
//! is matched against the exact shapes written here. Anything else is counted as an "other
//! condition": still enforced by the authoriser, just not described. Reading is only ever used to
//! describe a token or to refuse an attenuation early; it never decides an authorisation.

use crate::right::{ANY_ACTION, Quota, Right};
use biscuit_auth::builder::{
    Binary, BlockBuilder, Check, CheckKind, Expression, Fact, Op, Predicate, Rule, Term,
};

/// Deepest bracket nesting accepted in source text: the Datalog parser recurses once per level,
/// and a stack overflow cannot be caught.
const NESTING_MAX: usize = 32;
/// Most negations (`!`) in one statement, for the same reason (each may nest in the previous).
const NEGATIONS_PER_STATEMENT_MAX: usize = 16;
/// Most binary operators in one statement: the parser folds them into a left-deep tree that is
/// walked and dropped recursively (about 3000 operators overflow a 2 MiB stack in a debug build).
const OPERATORS_PER_STATEMENT_MAX: usize = 512;
/// Upper bound on the size of a computed set of effective rights.
pub(crate) const EFFECTIVE_RIGHTS_MAX: usize = 1024;

const VAR_ACTION: &str = "a";
const VAR_TIME: &str = "t";

/// `right("jobs", "run")` or `right("fabric", "read", "/datasets/")`.
pub(crate) fn right_fact(right: &Right) -> Fact {
    let mut terms = vec![
        Term::Str(right.subsystem.clone()),
        Term::Str(right.action.clone()),
    ];
    if let Some(prefix) = &right.prefix {
        terms.push(Term::Str(prefix.clone()));
    }
    Fact::new("right".to_string(), terms)
}

/// `quota("cpus", 4)`.
pub(crate) fn quota_fact(quota: &Quota) -> Fact {
    Fact::new(
        "quota".to_string(),
        vec![Term::Str(quota.name.clone()), Term::Integer(quota.value)],
    )
}

/// `holder("alice")`.
pub(crate) fn holder_fact(holder: &str) -> Fact {
    Fact::new("holder".to_string(), vec![Term::Str(holder.to_string())])
}

/// `operation("config", "read")`: what the request wants, added by the authoriser.
pub(crate) fn operation_fact(subsystem: &str, action: &str) -> Fact {
    Fact::new(
        "operation".to_string(),
        vec![
            Term::Str(subsystem.to_string()),
            Term::Str(action.to_string()),
        ],
    )
}

/// Most path segments of a resource whose ancestors the authoriser states; a prefix right
/// deeper than this never matches (a refusal, never a grant).
pub(crate) const RESOURCE_SEGMENTS_MAX: usize = 64;

/// `resource_under(p)` for every prefix `p` a prefix right may name to cover `resource`:
/// the resource itself and each ancestor at a `/`, with and without the slash. So a prefix
/// matches whole path segments: `/app` covers `/app` and `/app/x`, never `/apple`.
pub(crate) fn resource_under_facts(resource: &str) -> Vec<Fact> {
    let under = |p: &str| Fact::new("resource_under".to_string(), vec![Term::Str(p.to_string())]);
    let mut facts = vec![under(resource)];
    for (at, _) in resource.match_indices('/').take(RESOURCE_SEGMENTS_MAX) {
        if at > 0 {
            facts.push(under(&resource[..at]));
        }
        if at + 1 < resource.len() {
            facts.push(under(&resource[..=at]));
        }
    }
    facts
}

/// `resource("/datasets/x")`.
pub(crate) fn resource_fact(resource: &str) -> Fact {
    Fact::new(
        "resource".to_string(),
        vec![Term::Str(resource.to_string())],
    )
}

/// `time(2026-11-23T13:00:00Z)`.
pub(crate) fn time_fact(unix: u64) -> Fact {
    Fact::new("time".to_string(), vec![Term::Date(unix)])
}

fn var(name: &str) -> Term {
    Term::Variable(name.to_string())
}

fn pred(name: &str, terms: Vec<Term>) -> Predicate {
    Predicate {
        name: name.to_string(),
        terms,
    }
}

fn query(body: Vec<Predicate>, expressions: Vec<Expression>) -> Rule {
    Rule::new(pred("query", vec![]), body, expressions, vec![])
}

/// `check if time($t), $t <= <expiry>`.
pub(crate) fn expiry_check(expires_unix: u64) -> Check {
    Check {
        queries: vec![query(
            vec![pred("time", vec![var(VAR_TIME)])],
            vec![Expression {
                ops: vec![
                    Op::Value(var(VAR_TIME)),
                    Op::Value(Term::Date(expires_unix)),
                    Op::Binary(Binary::LessOrEqual),
                ],
            }],
        )],
        kind: CheckKind::One,
    }
}

/// `check if operation("config","read") or operation("fabric","read"),
/// resource_under("/datasets/")`: one alternative per right, so the block passes only for
/// requests that one of `allow` covers. Being a check, it can only ever take rights away.
pub(crate) fn rights_check(allow: &[Right]) -> Check {
    let queries = allow
        .iter()
        .map(|right| {
            let action = if right.action == ANY_ACTION {
                var(VAR_ACTION)
            } else {
                Term::Str(right.action.clone())
            };
            let operation = pred(
                "operation",
                vec![Term::Str(right.subsystem.clone()), action],
            );
            match &right.prefix {
                None => query(vec![operation], vec![]),
                Some(prefix) => query(
                    vec![
                        operation,
                        pred("resource_under", vec![Term::Str(prefix.clone())]),
                    ],
                    vec![],
                ),
            }
        })
        .collect();
    Check {
        queries,
        kind: CheckKind::One,
    }
}

/// Refuses source text the Datalog parser could choke on: nesting deep enough to overflow the
/// stack, and public keys the parser accepts but biscuit's conversion would panic on.
pub(crate) fn guard_source(source: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut negations = 0usize;
    let mut operators = 0usize;
    let mut in_string = false;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            // Comments may hold anything, quotes included: skip them whole.
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > NESTING_MAX {
                    return Err(format!("it nests brackets more than {NESTING_MAX} deep"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '!' if chars.peek() != Some(&'=') => {
                negations += 1;
                if negations > NEGATIONS_PER_STATEMENT_MAX {
                    return Err(format!(
                        "a statement has more than {NEGATIONS_PER_STATEMENT_MAX} negations"
                    ));
                }
            }
            '+' | '-' | '*' | '/' | '<' | '>' | '=' | '&' | '|' | '^' | '.' | '!' => {
                operators += 1;
                if operators > OPERATORS_PER_STATEMENT_MAX {
                    return Err(format!(
                        "a statement has more than {OPERATORS_PER_STATEMENT_MAX} operators"
                    ));
                }
            }
            ';' => {
                negations = 0;
                operators = 0;
            }
            _ => {}
        }
    }
    for tag in ["ed25519/", "secp256r1/"] {
        for (at, _) in source.match_indices(tag) {
            if let Ok((_, key)) = biscuit_auth::parser::public_key(&source[at..]) {
                biscuit_auth::PublicKey::from_bytes(&key.key, key.algorithm.into())
                    .map_err(|_| "it names an invalid public key".to_string())?;
            }
        }
    }
    Ok(())
}

/// Parse errors in one line, bounded: where each is (line and text) and what the parser expected.
pub(crate) fn describe_parse_errors(
    source: &str,
    errors: &[biscuit_auth::parser::Error<'_>],
) -> String {
    const SHOWN_MAX: usize = 3;
    let mut parts: Vec<String> = errors
        .iter()
        .take(SHOWN_MAX)
        .map(|e| {
            let what = e.message.as_deref().unwrap_or("unexpected input");
            // The parser's error input is a slice of `source`: its address gives the position.
            let offset = (e.input.as_ptr() as usize).wrapping_sub(source.as_ptr() as usize);
            let near = crate::right::echo(e.input.trim());
            match source.get(..offset) {
                Some(before) => {
                    let line_no = before.matches('\n').count() + 1;
                    let start = before.rfind('\n').map_or(0, |i| i + 1);
                    let end = source[offset..]
                        .find('\n')
                        .map_or(source.len(), |i| offset + i);
                    let line = crate::right::echo(source[start..end].trim());
                    format!("line {line_no}: {what} near `{near}` in `{line}`")
                }
                None => format!("{what} near `{near}`"),
            }
        })
        .collect();
    if errors.len() > SHOWN_MAX {
        parts.push(format!("and {} more", errors.len() - SHOWN_MAX));
    }
    parts.join("; ")
}

/// Refuses expressions that use a variable no predicate binds (the parser checks only rule
/// heads; the authoriser would fail on every call instead).
pub(crate) fn check_bound_variables(rule: &Rule) -> Result<(), String> {
    let bound: Vec<&str> = rule
        .body
        .iter()
        .flat_map(|p| p.terms.iter())
        .filter_map(|t| match t {
            Term::Variable(v) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    for expression in &rule.expressions {
        check_ops_bound(&expression.ops, &bound)?;
    }
    Ok(())
}

fn check_ops_bound(ops: &[Op], bound: &[&str]) -> Result<(), String> {
    for op in ops {
        match op {
            Op::Value(Term::Variable(v)) if !bound.contains(&v.as_str()) => {
                return Err(format!(
                    "`${v}` is used in an expression but no predicate of its rule binds it"
                ));
            }
            Op::Closure(params, inner) => {
                let mut with_params = bound.to_vec();
                with_params.extend(params.iter().map(String::as_str));
                check_ops_bound(inner, &with_params)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// What one block says, as far as noodle's own shapes go.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockView {
    /// `right` facts (they grant only in the first block, the one the root key signs).
    pub(crate) rights: Vec<Right>,
    pub(crate) quotas: Vec<Quota>,
    pub(crate) holder: Option<String>,
    /// What this block's rights checks let through, if it has any.
    pub(crate) allow: Option<Vec<Right>>,
    /// The earliest expiry among its time checks.
    pub(crate) expires_at: Option<u64>,
    /// Checks noodle does not recognise (or 1 for a block it could not read at all).
    pub(crate) other_checks: usize,
}

/// Reads one block's printed source back.
pub(crate) fn read_block(source: &str) -> Result<BlockView, String> {
    guard_source(source)?;
    if let Err(errors) = biscuit_auth::parser::parse_source(source) {
        return Err(describe_parse_errors(source, &errors));
    }
    let block = BlockBuilder::new()
        .code(source)
        .map_err(|e| e.to_string())?;
    let mut view = BlockView::default();
    for fact in &block.facts {
        read_fact(&fact.predicate, &mut view);
    }
    for check in &block.checks {
        if let Some(expiry) = match_expiry(check) {
            view.expires_at = Some(view.expires_at.map_or(expiry, |e| e.min(expiry)));
        } else if let Some(allow) = match_rights(check) {
            view.allow = Some(match view.allow.take() {
                None => minimise(allow),
                Some(before) => intersect_sets(&before, &allow),
            });
        } else {
            view.other_checks += 1;
        }
    }
    Ok(view)
}

fn read_fact(p: &Predicate, view: &mut BlockView) {
    match (p.name.as_str(), p.terms.as_slice()) {
        ("right", [Term::Str(s), Term::Str(a)]) => push_right(view, s, a, None),
        ("right", [Term::Str(s), Term::Str(a), Term::Str(prefix)]) => {
            push_right(view, s, a, Some(prefix))
        }
        ("quota", [Term::Str(name), Term::Integer(value)]) => {
            let quota = Quota {
                name: name.clone(),
                value: *value,
            };
            if quota.validate().is_ok() && !view.quotas.iter().any(|q| q.name == quota.name) {
                view.quotas.push(quota);
            }
        }
        ("holder", [Term::Str(holder)]) if view.holder.is_none() => {
            view.holder = Some(holder.clone());
        }
        _ => {}
    }
}

fn push_right(view: &mut BlockView, subsystem: &str, action: &str, prefix: Option<&str>) {
    if let Ok(right) = Right::new(subsystem, action, prefix)
        && !view.rights.contains(&right)
    {
        view.rights.push(right);
    }
}

fn match_expiry(check: &Check) -> Option<u64> {
    let [q] = check.queries.as_slice() else {
        return None;
    };
    if check.kind != CheckKind::One || !q.scopes.is_empty() {
        return None;
    }
    let ([body], [expr]) = (q.body.as_slice(), q.expressions.as_slice()) else {
        return None;
    };
    let (Some(time_var), true) = (single_var(body, "time"), q.head.terms.is_empty()) else {
        return None;
    };
    match expr.ops.as_slice() {
        [
            Op::Value(Term::Variable(v)),
            Op::Value(Term::Date(expiry)),
            Op::Binary(Binary::LessOrEqual),
        ] if v == time_var => Some(*expiry),
        _ => None,
    }
}

fn single_var<'p>(p: &'p Predicate, name: &str) -> Option<&'p str> {
    match p.terms.as_slice() {
        [Term::Variable(v)] if p.name == name => Some(v),
        _ => None,
    }
}

fn match_rights(check: &Check) -> Option<Vec<Right>> {
    if check.kind != CheckKind::One || check.queries.is_empty() {
        return None;
    }
    check.queries.iter().map(match_right_query).collect()
}

fn match_right_query(q: &Rule) -> Option<Right> {
    if !q.scopes.is_empty() || !q.head.terms.is_empty() {
        return None;
    }
    let operation = q.body.first()?;
    let (subsystem, action) = match (operation.name.as_str(), operation.terms.as_slice()) {
        ("operation", [Term::Str(s), Term::Str(a)]) => (s, a.as_str()),
        ("operation", [Term::Str(s), Term::Variable(_)]) => (s, ANY_ACTION),
        _ => return None,
    };
    let prefix = match (&q.body[1..], q.expressions.as_slice()) {
        ([], []) => None,
        ([under], []) => match (under.name.as_str(), under.terms.as_slice()) {
            ("resource_under", [Term::Str(prefix)]) => Some(prefix.as_str()),
            _ => return None,
        },
        _ => return None,
    };
    Right::new(subsystem, action, prefix).ok()
}

/// Everything both sets allow, as a set of rights (bounded by [`EFFECTIVE_RIGHTS_MAX`]).
pub(crate) fn intersect_sets(a: &[Right], b: &[Right]) -> Vec<Right> {
    let mut out = Vec::new();
    'outer: for x in a {
        for y in b {
            if let Some(both) = x.intersect(y) {
                if out.len() >= EFFECTIVE_RIGHTS_MAX {
                    break 'outer;
                }
                out.push(both);
            }
        }
    }
    minimise(out)
}

/// Sorted, without duplicates and without rights that another one in the set covers.
pub(crate) fn minimise(mut rights: Vec<Right>) -> Vec<Right> {
    rights.sort();
    rights.dedup();
    let keep: Vec<bool> = rights
        .iter()
        .enumerate()
        // After dedup no two rights cover each other, so "covered by another" is unambiguous.
        .map(|(i, r)| {
            !rights
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.covers(r))
        })
        .collect();
    rights
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}
