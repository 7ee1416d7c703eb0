//! Narrowing: children allow less, never more, whatever their blocks say.

use crate::{at, authoriser, rights, token, verdict};
use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
use noodle_caps::{
    Context, Request, Right, RootKey, TokenError, attenuate_at, attenuate_unchecked_at, inspect,
};
use proptest::prelude::*;
use std::time::Duration;

#[test]
fn child_is_denied_what_the_parent_allows_beyond_its_list() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let parent = token(
        &root,
        &[
            "config:read",
            "config:write",
            "fabric:read:/datasets/",
            "jobs:*",
        ],
    );
    let child = attenuate_at(
        &parent,
        &rights(&["config:read", "fabric:read:/datasets/public/", "jobs:run"]),
        None,
        at(0),
    )
    .unwrap();
    let ctx = Context::new(at(1));
    let cases = [
        // (request, parent, child)
        ("config:read", "allow", "allow"),
        ("config:write", "allow", "token does not allow config:write"),
        ("fabric:read on /datasets/public/a", "allow", "allow"),
        (
            "fabric:read on /datasets/private/a",
            "allow",
            "token does not allow fabric:read on /datasets/private/a",
        ),
        ("jobs:run", "allow", "allow"),
        ("jobs:cancel", "allow", "token does not allow jobs:cancel"),
        (
            "agents:spawn",
            "token does not allow agents:spawn",
            "token does not allow agents:spawn",
        ),
    ];
    for (req, want_parent, want_child) in cases {
        assert_eq!(
            [
                verdict(&auth, &parent, req, &ctx),
                verdict(&auth, &child, req, &ctx)
            ],
            [want_parent, want_child].map(str::to_string),
            "{req}"
        );
    }
}

#[test]
fn asking_for_more_than_the_parent_is_refused() {
    let root = RootKey::generate();
    let cases: [(&[&str], &[&str], Option<&str>); 9] = [
        (&["config:read"], &["jobs:run"], Some("jobs:run")),
        (&["config:read"], &["config:read"], None),
        (&["config:read"], &["config:read:/a/"], None),
        (
            &["fabric:read:/datasets/"],
            &["fabric:read:/"],
            Some("fabric:read:/"),
        ),
        (
            &["fabric:read:/datasets/"],
            &["fabric:read"],
            Some("fabric:read"),
        ),
        (
            &["fabric:read:/datasets/"],
            &["fabric:read:/datasets/x/"],
            None,
        ),
        (&["jobs:*"], &["jobs:run", "jobs:cancel:/q/"], None),
        (&["jobs:run"], &["jobs:*"], Some("jobs:*")),
        (
            &["jobs:run", "config:read"],
            &["config:read", "config:write"],
            Some("config:write"),
        ),
    ];
    for (parent_rights, asked, refused) in cases {
        let parent = token(&root, parent_rights);
        let got = attenuate_at(&parent, &rights(asked), None, at(0));
        match refused {
            None => assert!(got.is_ok(), "{parent_rights:?} -> {asked:?}: {got:?}"),
            Some(right) => assert_eq!(
                got,
                Err(TokenError::Widening {
                    right: right.parse().unwrap()
                }),
                "{parent_rights:?} -> {asked:?}"
            ),
        }
    }
    // Narrowing twice: the grandchild is held to the child's list, not the root block's.
    let parent = token(&root, &["config:read", "config:write"]);
    let child = attenuate_at(&parent, &rights(&["config:read"]), None, at(0)).unwrap();
    assert_eq!(
        attenuate_at(&child, &rights(&["config:write"]), None, at(0))
            .unwrap_err()
            .to_string(),
        "the token does not allow config:write, so a narrowed token cannot allow it either"
    );
    assert_eq!(
        attenuate_at(&parent, &[], None, at(0)),
        Err(TokenError::NothingToNarrow)
    );
}

#[test]
fn blocks_written_by_anyone_cannot_widen() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let ctx = Context::new(at(1));
    let parent = token(&root, &["config:read"]);
    // Skipping noodle's refusal: the child's check lets jobs:run through, the parent's rights
    // still do not.
    let child = attenuate_unchecked_at(&parent, &rights(&["jobs:run"]), None, at(0)).unwrap();
    assert_eq!(
        verdict(&auth, &child, "jobs:run", &ctx),
        "token does not allow jobs:run"
    );
    assert_eq!(
        verdict(&auth, &child, "config:read", &ctx),
        "token does not allow config:read"
    );
    // A block stating rights as facts, written with biscuit directly: facts in appended blocks
    // are invisible to the authoriser's allow policies.
    let forged_block = BlockBuilder::new()
        .code(r#"right("jobs", "run"); right("config", "write"); operation("jobs", "run");"#)
        .unwrap();
    let crafted = UnverifiedBiscuit::from_base64(&parent)
        .unwrap()
        .append(forged_block)
        .unwrap()
        .to_base64()
        .unwrap();
    assert_eq!(verdict(&auth, &crafted, "config:read", &ctx), "allow");
    assert_eq!(
        verdict(&auth, &crafted, "jobs:run", &ctx),
        "token does not allow jobs:run"
    );
    assert_eq!(
        verdict(&auth, &crafted, "config:write", &ctx),
        "token does not allow config:write"
    );
    // inspect does not count those facts as rights either.
    assert_eq!(
        inspect(&crafted).unwrap().effective_rights,
        rights(&["config:read"])
    );
}

#[test]
fn a_later_expiry_does_not_extend_the_parent() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let parent = token(&root, &["config:read"]);
    let child = attenuate_at(&parent, &[], Some(Duration::from_secs(86_400)), at(0)).unwrap();
    assert_eq!(
        inspect(&child).unwrap().expires_at,
        Some(crate::T0_UNIX as i64 + 3600)
    );
    assert_eq!(
        verdict(&auth, &child, "config:read", &Context::new(at(7200))),
        "token expired at 2027-01-15T09:00:00Z"
    );
}

fn arb_right() -> impl Strategy<Value = Right> {
    (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["r", "w", "*"]),
        prop::sample::select(vec![None, Some("/"), Some("/x"), Some("/x/y"), Some("/z")]),
    )
        .prop_map(|(s, a, p)| Right::new(s, a, p).unwrap())
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["r", "w", "q"]),
        prop::sample::select(vec![
            None,
            Some("/"),
            Some("/x"),
            Some("/x/y/1"),
            Some("/z"),
            Some("/zz"),
        ]),
    )
        .prop_map(|(s, a, r)| {
            let req = Request::new(s, a);
            match r {
                Some(r) => req.on(r),
                None => req,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For any parent, any narrowing (checked or not) and any request: the child allows only
    /// what the parent allows, and both agree with the plain model of rights.
    #[test]
    fn child_allows_implies_parent_allows(
        parent_rights in prop::collection::vec(arb_right(), 1..4),
        child_rights in prop::collection::vec(arb_right(), 1..4),
        requests in prop::collection::vec(arb_request(), 1..8),
    ) {
        let root = RootKey::generate();
        let auth = authoriser(&root);
        let ctx = Context::new(at(1));
        let parent = noodle_caps::mint_at(&root, &noodle_caps::TokenSpec {
            rights: parent_rights.clone(),
            quotas: vec![],
            ttl: Duration::from_secs(60),
            holder: None,
        }, at(0)).unwrap();
        let unchecked = attenuate_unchecked_at(&parent, &child_rights, None, at(0)).unwrap();
        let checked = attenuate_at(&parent, &child_rights, None, at(0));
        // The up-front refusal happens exactly when some asked right is not covered.
        let effective = inspect(&parent).unwrap().effective_rights;
        let widening = child_rights.iter().any(|c| !effective.iter().any(|p| p.covers(c)));
        prop_assert_eq!(checked.is_err(), widening, "{:?}", checked);
        for req in &requests {
            let parent_ok = auth.authorise(&parent, req, &ctx).is_ok();
            let child_ok = auth.authorise(&unchecked, req, &ctx).is_ok();
            let model_parent = parent_rights.iter().any(|r| r.allows(req));
            let model_child = model_parent && child_rights.iter().any(|r| r.allows(req));
            prop_assert!(!child_ok || parent_ok, "child allows {} but parent does not", req);
            prop_assert_eq!(parent_ok, model_parent, "parent on {}", req);
            prop_assert_eq!(child_ok, model_child, "child on {}", req);
            if let Ok(checked) = &checked {
                prop_assert_eq!(auth.authorise(checked, req, &ctx).is_ok(), model_child);
            }
        }
        // inspect's effective rights agree with the authoriser on every request.
        let child_effective = inspect(&unchecked).unwrap().effective_rights;
        for req in &requests {
            prop_assert_eq!(
                child_effective.iter().any(|r| r.allows(req)),
                auth.authorise(&unchecked, req, &ctx).is_ok(),
                "effective {:?} on {}", child_effective, req
            );
        }
    }
}
