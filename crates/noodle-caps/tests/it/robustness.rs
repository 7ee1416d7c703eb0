//! Nothing a caller can type makes the crate panic (the fuzz targets go further).

use crate::{at, authoriser, request};
use noodle_caps::{Context, Policy, RootKey, inspect};
use proptest::prelude::*;

/// Strings made of Datalog pieces, so the parser gets past its first character.
fn datalog_ish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "allow if ",
        "deny if ",
        "check if ",
        "reject if ",
        "check all ",
        "true",
        "false",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ";",
        "$x",
        "$y",
        "\"s\"",
        "1",
        "-1",
        "!",
        "==",
        "<=",
        "+",
        ".",
        "starts_with(",
        "length()",
        "operation(",
        "resource(",
        "right(",
        "p(",
        "q(",
        " <- ",
        "trusting ",
        "ed25519/",
        "00",
        "previous",
        "authority",
        "2030-01-01T00:00:00Z",
        "hex:00",
        "// c\n",
        "/* c */",
        "\n",
        "{p}",
        "$x -> ",
        "all(",
        "any(",
        "null",
        "||",
        "&&",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let root = RootKey::generate();
        let auth = authoriser(&root);
        let _ = auth.authorise(&text, &request("config:read"), &Context::new(at(1)));
        let _ = inspect(&text);
        let _ = noodle_caps::attenuate(&text, &[], Some(std::time::Duration::from_secs(1)));
        let _ = Policy::parse("p", &text);
        let _ = text.parse::<noodle_caps::Right>();
        let _ = text.parse::<noodle_caps::Quota>();
    }

    #[test]
    fn datalog_ish_policies_never_panic(source in datalog_ish()) {
        let _ = Policy::parse("p", &source);
    }

    #[test]
    fn base64_ish_tokens_never_panic(text in "[A-Za-z0-9_=-]{0,400}") {
        let root = RootKey::generate();
        let _ = authoriser(&root).authorise(&text, &request("config:read"), &Context::new(at(1)));
        let _ = inspect(&text);
    }
}

/// A real narrowed token, as raw bytes, to mutate.
fn sample_token_bytes() -> (RootKey, Vec<u8>) {
    use base64::Engine;
    let root = RootKey::from_bytes(&[7; 32]).unwrap();
    let tok = crate::token(&root, &["config:read", "fabric:read:/datasets/"]);
    let child = noodle_caps::attenuate_at(
        &tok,
        &crate::rights(&["fabric:read:/datasets/a/"]),
        Some(std::time::Duration::from_secs(60)),
        at(0),
    )
    .unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(child)
        .unwrap();
    (root, bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Tokens with a few bytes changed, cut or repeated reach the binary decoder and the block
    /// reader; none of it may panic, and none of it may be allowed what the original is not.
    #[test]
    fn mutated_tokens_never_panic_or_widen(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        use base64::Engine;
        let (root, mut bytes) = sample_token_bytes();
        for (at_index, value) in edits {
            let i = at_index.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let text = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
        let auth = authoriser(&root);
        let ctx = Context::new(at(1));
        for req in ["config:read", "fabric:read on /datasets/b", "jobs:run", "fabric:read on /datasets/a/x"] {
            let got = auth.authorise(&text, &request(req), &ctx);
            if req != "fabric:read on /datasets/a/x" {
                prop_assert!(got.is_err(), "{} allowed by a mutated token", req);
            }
        }
        if let Ok(i) = inspect(&text) {
            let _ = i.explain_at(at(0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Blocks anyone could append (with biscuit itself, not noodle) are enforced, described as
    /// well as noodle can, and never widen the token.
    #[test]
    fn appended_datalog_never_panics_or_widens(source in datalog_ish()) {
        // biscuit's own parser panics on malformed public keys; noodle guards its calls.
        prop_assume!(!source.contains("ed25519/"));
        let Ok(block) = biscuit_auth::BlockBuilder::new().code(&source) else {
            return Ok(());
        };
        let root = RootKey::from_bytes(&[7; 32]).unwrap();
        let tok = crate::token(&root, &["config:read"]);
        let Ok(crafted) = biscuit_auth::UnverifiedBiscuit::from_base64(&tok)
            .and_then(|t| t.append(block))
            .and_then(|t| t.to_base64())
        else {
            return Ok(());
        };
        let auth = authoriser(&root);
        let ctx = Context::new(at(1));
        for req in ["config:write", "jobs:run", "fabric:read on /x"] {
            prop_assert!(auth.authorise(&crafted, &request(req), &ctx).is_err(), "{}", req);
        }
        let _ = auth.authorise(&crafted, &request("config:read"), &ctx);
        let i = inspect(&crafted).unwrap();
        prop_assert_eq!(i.blocks, 2);
        let _ = i.explain_at(at(0));
    }
}

#[test]
fn long_operator_chains_do_not_overflow_the_stack() {
    // As long as the guard lets through, filling the source limit, on a test thread's stack.
    for op in [" + ", " || ", " && ", ".length() + "] {
        let statement = format!("deny if {} == 0;\n", vec!["1"; 250].join(op));
        let source = statement.repeat(noodle_caps::POLICY_BYTES_MAX / statement.len());
        let got = Policy::parse("p", &source);
        assert!(
            got.is_ok() || matches!(got, Err(noodle_caps::PolicyError::Evaluation(_))),
            "{op}: {got:?}"
        );
    }
    // One statement longer than that is refused before the parser sees it.
    let body = vec!["1"; 5000].join(" + ");
    assert!(Policy::parse("p", &format!("deny if {body} == 0;")).is_err());
}
