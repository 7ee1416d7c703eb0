//! Cluster policies: they run before the defaults, are named in denials, and are refused at
//! add time when they do not parse, forge rights, or run past the limits.

use crate::{at, authoriser, token, verdict};
use noodle_caps::{Context, Policy, PolicyError, PolicySource, RootKey};

#[test]
fn policies_decide_before_the_defaults_and_are_named() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(&root, &["jobs:run", "config:read", "fabric:read:/"]);
    let policies = vec![
        Policy::parse(
            "read-only-fabric",
            r#"deny if operation("fabric", $a), $a != "read";"#,
        )
        .unwrap(),
        Policy::parse("no-jobs-at-night", r#"deny if operation("jobs", "run");"#).unwrap(),
        Policy::parse(
            "no-secrets",
            r#"reject if resource($r), $r.starts_with("/secret/");"#,
        )
        .unwrap(),
        Policy::parse(
            "before-2030",
            "check if time($t), $t < 2030-01-01T00:00:00Z;",
        )
        .unwrap(),
    ];
    let ctx = Context::new(at(1)).with_policies(&policies);
    let cases = [
        ("jobs:run", "policy 'no-jobs-at-night' denied jobs:run"),
        ("config:read", "allow"),
        ("fabric:read on /data", "allow"),
        (
            "fabric:read on /secret/key",
            "policy 'no-secrets' denied fabric:read on /secret/key",
        ),
        ("config:write", "token does not allow config:write"),
    ];
    for (req, want) in cases {
        assert_eq!(verdict(&auth, &tok, req, &ctx), want, "{req}");
    }
    // Without the policies, the token's own rights decide.
    assert_eq!(
        verdict(&auth, &tok, "jobs:run", &Context::new(at(1))),
        "allow"
    );
    // A failing cluster check is named too.
    let late = Context::new(crate::at(86_400 * 365 * 4)).with_policies(&policies);
    let long = noodle_caps::mint_at(
        &root,
        &noodle_caps::TokenSpec {
            rights: crate::rights(&["config:read"]),
            quotas: vec![],
            ttl: std::time::Duration::from_secs(86_400 * 365 * 5),
            holder: None,
        },
        at(0),
    )
    .unwrap();
    assert_eq!(
        verdict(&auth, &long, "config:read", &late),
        "policy 'before-2030' denied config:read"
    );
}

#[test]
fn a_policy_cannot_allow_what_no_token_grants() {
    // An `allow` would decide before the defaults and grant a request no token allows: a
    // policy may only narrow.
    for source in [
        r#"allow if operation("audit", "read");"#,
        r#"deny if operation("jobs", "run"); allow if true;"#,
    ] {
        assert_eq!(
            Policy::parse("widening", source).map(|_| ()),
            Err(PolicyError::Allows),
            "{source}"
        );
    }
    // Narrowing stays possible, and a token still gets exactly its own rights.
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(&root, &["config:read"]);
    let policies = [Policy::parse("no-audit", r#"deny if operation("audit", "read");"#).unwrap()];
    let ctx = Context::new(at(1)).with_policies(&policies);
    assert_eq!(verdict(&auth, &tok, "config:read", &ctx), "allow");
    assert_eq!(
        verdict(&auth, &tok, "audit:read", &ctx),
        "policy 'no-audit' denied audit:read"
    );
}

#[test]
fn bad_policies_are_refused_with_a_clear_error() {
    let chain: String = (0..300)
        .map(|i| format!("edge({i}, {});\n", i + 1))
        .collect();
    let transitive = format!(
        "{chain}path($x, $y) <- edge($x, $y);\npath($x, $z) <- path($x, $y), edge($y, $z);\ndeny if path(0, 300);"
    );
    let product = "n(0); n(1); n(2); n(3); n(4); n(5); n(6); n(7); n(8); n(9);
        big($a, $b, $c, $d) <- n($a), n($b), n($c), n($d);
        deny if big(9, 9, 9, 9);";
    let cases: Vec<(&str, String, &str)> = vec![
        ("ok", r#"deny if operation("jobs", "run");"#.into(), "ok"),
        ("ok", "// nothing yet\n".into(), "ok"),
        (
            "typo",
            "deny iff operation(\"jobs\", \"run\");".into(),
            "policy does not parse:",
        ),
        (
            "unbound",
            "deny if operation($s, $a), $b == 1;".into(),
            "policy does not parse: `$b` is used in an expression",
        ),
        (
            "closure",
            "deny if operation($s, $a), [1].any($x -> $x == 1);".into(),
            "ok",
        ),
        (
            "forger",
            r#"right("jobs", "run");"#.into(),
            "policy may not state `right` facts or rules",
        ),
        (
            "forger",
            r#"operation($s, "run") <- resource($s);"#.into(),
            "policy may not state `operation` facts or rules",
        ),
        (
            "deep",
            format!("deny if {}true{};", "(".repeat(5000), ")".repeat(5000)),
            "policy does not parse: it nests brackets",
        ),
        (
            "negations",
            format!("deny if {}true;", "!".repeat(5000)),
            "policy does not parse: a statement has more than",
        ),
        (
            "bad-key",
            "deny if true trusting ed25519/00;".into(),
            "policy does not parse: it names an invalid public key",
        ),
        (
            "transitive",
            transitive,
            "policy ran past the authorisation limits",
        ),
        (
            "product",
            product.into(),
            "policy ran past the authorisation limits",
        ),
        (
            "Bad Name",
            "deny if true;".into(),
            "policy name `Bad Name` is not valid",
        ),
        ("", "deny if true;".into(), "policy name `` is not valid"),
        (
            "huge",
            format!("// {}\n", "x".repeat(20_000)),
            "policy is 20004 bytes, the limit is 16384",
        ),
    ];
    for (name, source, want) in cases {
        let got = match Policy::parse(name, &source) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert!(got.starts_with(want), "{name}: got {got:?}, want {want:?}");
    }
    assert!(matches!(
        Policy::parse("product", product),
        Err(PolicyError::LimitsExceeded(_))
    ));
}

#[test]
fn parse_errors_point_at_the_problem() {
    let err = Policy::parse(
        "typo",
        "deny if true;\ndeny iff operation(\"jobs\", \"run\");",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        r#"policy does not parse: line 2: unexpected input near `f` in `deny iff operation("jobs", "run");`"#
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn policies_serialise_as_name_and_source() {
    let policy = Policy::parse("no-jobs", r#"deny if operation("jobs", "run");"#).unwrap();
    let json = serde_json::to_string(&policy).unwrap();
    assert_eq!(
        json,
        r#"{"name":"no-jobs","source":"deny if operation(\"jobs\", \"run\");"}"#
    );
    let back: Policy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, policy);
    assert_eq!(back.name(), "no-jobs");
    // What does not parse does not deserialise either.
    let bad = serde_json::to_string(&PolicySource {
        name: "x".into(),
        source: "deny iff".into(),
    })
    .unwrap();
    assert!(serde_json::from_str::<Policy>(&bad).is_err());
}
