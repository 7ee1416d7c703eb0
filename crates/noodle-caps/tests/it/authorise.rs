//! Authorisation of fresh tokens: each kind of right, forged, expired, revoked, malformed,
//! oversized, and the verified-token cache.

use crate::{at, authoriser, rights, token, verdict};
use noodle_caps::{Authoriser, Context, Denied, RootKey, inspect};
use std::collections::HashSet;

#[test]
fn each_kind_of_right() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(
        &root,
        &[
            "config:read",
            "fabric:read:/datasets/",
            "jobs:*",
            "agents:spawn",
        ],
    );
    let ctx = Context::new(at(60));
    let cases = [
        ("config:read", "allow"),
        // A right without a prefix covers every resource.
        ("config:read on /anything", "allow"),
        ("config:write", "token does not allow config:write"),
        ("fabric:read on /datasets/a/b", "allow"),
        ("fabric:read on /datasets/", "allow"),
        (
            "fabric:read on /datasets",
            "token does not allow fabric:read on /datasets",
        ),
        (
            "fabric:read on /other/x",
            "token does not allow fabric:read on /other/x",
        ),
        // A prefix right needs a resource to compare.
        ("fabric:read", "token does not allow fabric:read"),
        (
            "fabric:write on /datasets/a",
            "token does not allow fabric:write on /datasets/a",
        ),
        ("jobs:run", "allow"),
        ("jobs:cancel on /job/7", "allow"),
        ("agents:spawn", "allow"),
        ("agents:kill", "token does not allow agents:kill"),
        ("cap:create", "token does not allow cap:create"),
        ("policy:write", "token does not allow policy:write"),
    ];
    let got: Vec<(&str, String)> = cases
        .iter()
        .map(|(req, _)| (*req, verdict(&auth, &tok, req, &ctx)))
        .collect();
    let want: Vec<(&str, String)> = cases.iter().map(|(r, w)| (*r, w.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn grant_carries_id_holder_and_quotas() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(&root, &["config:read"]);
    let grant = auth
        .authorise(&tok, &crate::request("config:read"), &Context::new(at(1)))
        .unwrap();
    assert_eq!(grant.id, inspect(&tok).unwrap().id);
    assert_eq!(grant.holder.as_deref(), Some("alice"));
    assert_eq!(grant.quotas, vec!["cpus=4".parse().unwrap()]);
}

#[test]
fn token_from_another_cluster_is_forged() {
    let ours = RootKey::generate();
    let theirs = RootKey::generate();
    let tok = token(&theirs, &["config:read"]);
    let got =
        authoriser(&ours).authorise(&tok, &crate::request("config:read"), &Context::new(at(1)));
    assert_eq!(got, Err(Denied::Forged));
    assert_eq!(
        Denied::Forged.to_string(),
        "token is not signed by this cluster"
    );
}

#[test]
fn expiry_is_checked_against_the_context_clock() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(&root, &["config:read"]);
    let child =
        noodle_caps::attenuate_at(&tok, &[], Some(std::time::Duration::from_secs(600)), at(0))
            .unwrap();
    let cases = [
        (&tok, 3599, "allow"),
        (&tok, 3600, "allow"),
        (&tok, 3601, "token expired at 2027-01-15T09:00:00Z"),
        (&tok, 86_400 * 365, "token expired at 2027-01-15T09:00:00Z"),
        (&child, 600, "allow"),
        (&child, 601, "token expired at 2027-01-15T08:10:00Z"),
        (&child, 3601, "token expired at 2027-01-15T08:10:00Z"),
    ];
    for (t, secs, want) in cases {
        assert_eq!(
            verdict(&auth, t, "config:read", &Context::new(at(secs))),
            want,
            "at T0+{secs}s"
        );
    }
}

#[test]
fn revoking_an_id_revokes_that_token_and_its_children_only() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let parent = token(&root, &["config:read", "jobs:run"]);
    let child =
        noodle_caps::attenuate_at(&parent, &crate::rights(&["config:read"]), None, at(0)).unwrap();
    let sibling =
        noodle_caps::attenuate_at(&parent, &crate::rights(&["jobs:run"]), None, at(0)).unwrap();
    let parent_id = inspect(&parent).unwrap().id;
    let child_id = inspect(&child).unwrap().id;
    assert_ne!(parent_id, child_id);
    // The child's ids are the parent's plus its own.
    assert_eq!(
        inspect(&child).unwrap().revocation_ids,
        vec![parent_id.clone(), child_id.clone()]
    );

    let cases = [
        // (revoked ids, verdicts for parent, child, sibling)
        (vec![], ["allow", "allow", "allow"]),
        (
            vec![child_id.clone()],
            ["allow", "token was revoked", "allow"],
        ),
        (
            vec![parent_id.clone()],
            [
                "token was revoked",
                "token was revoked",
                "token was revoked",
            ],
        ),
        (vec!["00".repeat(64)], ["allow", "allow", "allow"]),
    ];
    for (revoked, want) in cases {
        let set: HashSet<String> = revoked.iter().cloned().collect();
        let ctx = Context::new(at(1)).with_revoked(&set);
        let got = [
            verdict(&auth, &parent, "config:read", &ctx),
            verdict(&auth, &child, "config:read", &ctx),
            verdict(&auth, &sibling, "jobs:run", &ctx),
        ];
        assert_eq!(got, want.map(str::to_string), "revoked: {revoked:?}");
    }
    // A closure works as a revocation list too, and the denial names the revoked block.
    let by_fn = |id: &str| id == child_id;
    let ctx = Context::new(at(1)).with_revoked(&by_fn);
    assert_eq!(
        auth.authorise(&child, &crate::request("config:read"), &ctx),
        Err(Denied::Revoked {
            id: child_id.clone()
        })
    );
}

#[test]
fn malformed_and_oversized_tokens() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let tok = token(&root, &["config:read"]);
    let truncated = &tok[..tok.len() / 2];
    let oversized = "A".repeat(9000);
    let cases: [(&str, &str); 6] = [
        ("", "token is malformed: it is empty"),
        ("   \n", "token is malformed: it is empty"),
        ("garbage", "token is malformed"),
        ("!!!!", "token is malformed"),
        (truncated, "token is malformed"),
        (&oversized, "token is 9000 bytes, the limit is 8192"),
    ];
    for (input, want) in cases {
        let got = verdict(&auth, input, "config:read", &Context::new(at(1)));
        assert!(
            got.starts_with(want),
            "{input:.20}: got {got:?}, want {want:?}"
        );
    }
    // A token with one character changed is refused one way or another.
    let mut bytes = tok.clone().into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let got = auth.authorise(
        &tampered,
        &crate::request("config:read"),
        &Context::new(at(1)),
    );
    assert!(
        matches!(got, Err(Denied::Forged | Denied::Malformed(_))),
        "{got:?}"
    );
}

#[test]
fn verified_tokens_are_cached_and_the_cache_is_bounded() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let ctx = Context::new(at(1));
    let tok = token(&root, &["config:read"]);
    assert_eq!(auth.cached_tokens(), 0);
    assert_eq!(verdict(&auth, &tok, "config:read", &ctx), "allow");
    assert_eq!(verdict(&auth, &tok, "config:read", &ctx), "allow");
    assert_eq!(auth.cached_tokens(), 1);
    // Failures are not remembered.
    let other = token(&RootKey::generate(), &["config:read"]);
    assert_eq!(
        verdict(&auth, &other, "config:read", &ctx),
        "token is not signed by this cluster"
    );
    assert_eq!(auth.cached_tokens(), 1);
    // Revocation still applies to a cached token.
    let revoked: HashSet<String> = [inspect(&tok).unwrap().id].into();
    assert_eq!(
        verdict(&auth, &tok, "config:read", &ctx.with_revoked(&revoked)),
        "token was revoked"
    );
    for i in 0..noodle_caps::VERIFIED_CACHE_ENTRIES_MAX + 10 {
        let t = token(&root, &[&format!("config:read:/k{i}")]);
        assert_eq!(
            verdict(&auth, &t, &format!("config:read on /k{i}"), &ctx),
            "allow"
        );
    }
    assert_eq!(
        auth.cached_tokens(),
        noodle_caps::VERIFIED_CACHE_ENTRIES_MAX
    );
}

#[test]
fn authoriser_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authoriser>();
    assert_send_sync::<noodle_caps::Policy>();
}

#[test]
fn root_key_round_trips_and_hides_its_secret() {
    let root = RootKey::generate();
    let bytes = root.to_bytes();
    assert_eq!(bytes.len(), noodle_caps::KEY_BYTES);
    let back = RootKey::from_bytes(&bytes).unwrap();
    assert_eq!(back.public(), root.public());
    // A token minted by the restored key verifies against the original's public key.
    let tok = token(&back, &["config:read"]);
    assert_eq!(
        verdict(
            &authoriser(&root),
            &tok,
            "config:read",
            &Context::new(at(1))
        ),
        "allow"
    );
    let debug = format!("{root:?}");
    assert!(!debug.contains(&hex::encode(&bytes)), "{debug}");
    assert!(
        debug.contains(&hex::encode(root.public().to_bytes())),
        "{debug}"
    );
    assert_eq!(
        noodle_caps::PublicKey::from_bytes(&root.public().to_bytes()),
        Ok(root.public())
    );
    assert!(RootKey::from_bytes(&[0; 31]).is_err());
    assert!(noodle_caps::PublicKey::from_bytes(&[1; 33]).is_err());
}

#[test]
fn prefix_rights_match_whole_path_segments() {
    let root = RootKey::generate();
    let auth = authoriser(&root);
    let ctx = Context::new(at(1));
    let app = token(&root, &["fabric:read:/app"]);
    let dir = token(&root, &["fabric:read:/app/"]);
    let cases = [
        // (token, resource, allowed)
        (&app, "/app", true),
        (&app, "/app/x", true),
        (&app, "/app/x/y", true),
        (&app, "/apple", false),
        (&app, "/ap", false),
        (&dir, "/app/x", true),
        (&dir, "/app", false),
        (&dir, "/apple", false),
    ];
    for (tok, resource, allowed) in cases {
        let got = verdict(&auth, tok, &format!("fabric:read on {resource}"), &ctx);
        assert_eq!(got == "allow", allowed, "{resource}: {got}");
        // The plain model says the same.
        let right: noodle_caps::Right = if std::ptr::eq(tok, &app) {
            "fabric:read:/app".parse().unwrap()
        } else {
            "fabric:read:/app/".parse().unwrap()
        };
        assert_eq!(
            right.allows(&noodle_caps::Request::new("fabric", "read").on(resource)),
            allowed,
            "model on {resource}"
        );
    }
    // A narrowing to a sibling that only shares letters is a widening, and refused.
    assert!(
        noodle_caps::attenuate_at(&app, &rights(&["fabric:read:/apple"]), None, at(0)).is_err()
    );
    let child =
        noodle_caps::attenuate_at(&app, &rights(&["fabric:read:/app/x"]), None, at(0)).unwrap();
    assert_eq!(
        verdict(&auth, &child, "fabric:read on /app/x/1", &ctx),
        "allow"
    );
    assert_ne!(
        verdict(&auth, &child, "fabric:read on /app/xy", &ctx),
        "allow"
    );
    // Deeper than the authoriser looks: refused, never granted.
    let deep: String = (0..70).map(|i| format!("/{i}")).collect();
    let deep_prefix: String = (0..66).map(|i| format!("/{i}")).collect();
    let deep_token = token(&root, &[&format!("fabric:read:{deep_prefix}")]);
    assert_ne!(
        verdict(&auth, &deep_token, &format!("fabric:read on {deep}"), &ctx),
        "allow"
    );
}
