//! `noodle cap inspect`: plain words and JSON, read offline.

use crate::{T0_UNIX, at, rights, token};
use noodle_caps::{RootKey, TokenError, TokenSpec, attenuate_at, inspect, mint_at};
use std::time::Duration;

#[test]
fn explain_in_plain_words() {
    let root = RootKey::generate();
    let tok = token(&root, &["config:read", "fabric:read:/datasets/"]);
    let child = attenuate_at(
        &tok,
        &rights(&["fabric:read:/datasets/public/"]),
        None,
        at(0),
    )
    .unwrap();
    let bearer = mint_at(
        &root,
        &TokenSpec {
            rights: rights(&["jobs:*"]),
            quotas: vec![],
            ttl: Duration::from_secs(90_000),
            holder: None,
        },
        at(0),
    )
    .unwrap();
    let id = |t: &str| inspect(t).unwrap().id;
    let cases = [
        (
            &tok,
            60,
            format!(
                "Token for alice, expires 2027-01-15 09:00:00 UTC (in 59m).\n\
                 May: read config; read fabric under /datasets/.\n\
                 Quotas: cpus 4.\n\
                 Revocation id: {}",
                id(&tok)
            ),
        ),
        (
            &child,
            7200,
            format!(
                "Token for alice, EXPIRED 2027-01-15 09:00:00 UTC (1h ago).\n\
                 May: read fabric under /datasets/public/.\n\
                 Quotas: cpus 4.\n\
                 Narrowed 1 time (first granted: read config; read fabric under /datasets/).\n\
                 Revocation id: {}",
                id(&child)
            ),
        ),
        (
            &bearer,
            0,
            format!(
                "Token for whoever holds it, expires 2027-01-16 09:00:00 UTC (in 1d 1h).\n\
                 May: do anything with jobs.\n\
                 Quotas: none.\n\
                 Revocation id: {}",
                id(&bearer)
            ),
        ),
    ];
    for (t, secs, want) in cases {
        assert_eq!(inspect(t).unwrap().explain_at(at(secs)), want);
    }
}

#[test]
fn inspection_fields_and_json() {
    let root = RootKey::generate();
    let tok = token(&root, &["config:read", "fabric:read:/datasets/"]);
    let child = attenuate_at(
        &tok,
        &rights(&["config:read"]),
        Some(Duration::from_secs(60)),
        at(0),
    )
    .unwrap();
    let i = inspect(&child).unwrap();
    assert_eq!(i.holder.as_deref(), Some("alice"));
    assert_eq!(i.rights, rights(&["config:read", "fabric:read:/datasets/"]));
    assert_eq!(i.effective_rights, rights(&["config:read"]));
    assert_eq!(i.quotas, vec!["cpus=4".parse().unwrap()]);
    assert_eq!(i.expires_at, Some(T0_UNIX as i64 + 60));
    assert_eq!(i.blocks, 2);
    assert_eq!(i.revocation_ids.len(), 2);
    assert_eq!(i.id, i.revocation_ids[1]);
    assert_eq!(i.id.len(), 128, "an ed25519 signature, hex");
    assert_eq!(i.attenuations.len(), 1);
    assert_eq!(i.attenuations[0].allow, Some(rights(&["config:read"])));
    assert_eq!(i.attenuations[0].expires_at, Some(T0_UNIX as i64 + 60));
    assert_eq!(i.attenuations[0].other_conditions, 0);

    let json: serde_json::Value = serde_json::to_value(&i).unwrap();
    assert_eq!(json["id"], i.id.as_str());
    assert_eq!(json["holder"], "alice");
    assert_eq!(json["rights"][1], "fabric:read:/datasets/");
    assert_eq!(json["quotas"][0]["name"], "cpus");
    assert_eq!(json["quotas"][0]["value"], 4);
    assert_eq!(json["attenuations"][0]["allow"][0], "config:read");
    // Whitespace around a pasted token is ignored.
    assert_eq!(inspect(&format!("  {child}\n")).unwrap(), i);
}

#[test]
fn foreign_conditions_are_counted_not_hidden() {
    let root = RootKey::generate();
    let tok = token(&root, &["config:read"]);
    let block = biscuit_auth::BlockBuilder::new()
        .code(r#"check if operation($s, $a), $s.length() > 2;"#)
        .unwrap();
    let crafted = biscuit_auth::UnverifiedBiscuit::from_base64(&tok)
        .unwrap()
        .append(block)
        .unwrap()
        .to_base64()
        .unwrap();
    let i = inspect(&crafted).unwrap();
    assert_eq!(i.attenuations[0].other_conditions, 1);
    assert_eq!(i.attenuations[0].allow, None);
    assert!(
        i.explain_at(at(0))
            .contains("It also carries 1 condition noodle cannot describe; they still apply."),
        "{}",
        i.explain_at(at(0))
    );
}

#[test]
fn inspect_of_what_is_not_a_token_fails_cleanly() {
    let root = RootKey::generate();
    let tok = token(&root, &["config:read"]);
    for input in [
        "",
        "garbage",
        "!!!!",
        &tok[..tok.len() / 3],
        &"A".repeat(9000),
    ] {
        assert!(
            matches!(inspect(input), Err(TokenError::Malformed(_))),
            "{input:.20}: {:?}",
            inspect(input)
        );
    }
}

#[test]
fn rights_and_quotas_parse_and_print() {
    let ok = [
        "config:read",
        "config:write",
        "jobs:run",
        "fabric:read:/datasets/",
        "fabric:read:s3://bucket/a:b",
        "agents:spawn",
        "cap:create",
        "cap:revoke",
        "audit:read",
        "policy:write",
        "jobs:*",
        "fabric:*:/tmp/",
    ];
    for text in ok {
        let right: noodle_caps::Right = text.parse().unwrap();
        assert_eq!(right.to_string(), text);
    }
    let bad = [
        ("", "it has no action"),
        ("config", "it has no action"),
        ("config:", "the action must be"),
        (":read", "the subsystem must be"),
        ("Config:read", "the subsystem must be"),
        ("config:re ad", "the action must be"),
        ("*:read", "the subsystem must be"),
        ("fabric:read:", "the prefix after the second `:` is empty"),
        ("fabric:read:/a\"b", "it may not hold quotes"),
        ("fabric:read:/a\\b", "it may not hold quotes"),
        ("fabric:read:/a\nb", "it may not hold quotes"),
    ];
    for (text, reason) in bad {
        let err = text.parse::<noodle_caps::Right>().unwrap_err().to_string();
        assert!(err.contains(reason), "{text:?}: {err}");
    }
    let long = format!("fabric:read:/{}", "a".repeat(300));
    assert!(long.parse::<noodle_caps::Right>().is_err());
    let long_name = format!("{}:read", "a".repeat(33));
    assert!(long_name.parse::<noodle_caps::Right>().is_err());

    assert_eq!(
        "cpus=4".parse::<noodle_caps::Quota>().unwrap().to_string(),
        "cpus=4"
    );
    for bad in [
        "cpus",
        "cpus=-1",
        "cpus=x",
        "=4",
        "CPUS=4",
        "cpus=99999999999999999999",
    ] {
        assert!(bad.parse::<noodle_caps::Quota>().is_err(), "{bad}");
    }
}

#[test]
fn minting_refuses_bad_specs() {
    let root = RootKey::generate();
    let spec = |rights: Vec<noodle_caps::Right>,
                quotas: Vec<noodle_caps::Quota>,
                ttl: u64,
                holder: Option<&str>| TokenSpec {
        rights,
        quotas,
        ttl: Duration::from_secs(ttl),
        holder: holder.map(str::to_string),
    };
    let cpus = |v: i64| noodle_caps::Quota {
        name: "cpus".into(),
        value: v,
    };
    let many: Vec<_> = (0..65)
        .map(|i| format!("config:read:/{i}").parse().unwrap())
        .collect();
    let cases = [
        (
            spec(vec![], vec![], 60, None),
            "a token needs at least one right",
        ),
        (
            spec(rights(&["config:read"]), vec![], 0, None),
            "the lifetime must be between",
        ),
        (
            spec(rights(&["config:read"]), vec![], 11 * 366 * 86_400, None),
            "the lifetime must be between",
        ),
        (
            spec(rights(&["config:read"]), vec![cpus(1), cpus(2)], 60, None),
            "quota `cpus` is given twice",
        ),
        (
            spec(rights(&["config:read"]), vec![cpus(-1)], 60, None),
            "`cpus=-1` is not a quota",
        ),
        (
            spec(rights(&["config:read"]), vec![], 60, Some("al\"ice")),
            "`al\"ice` is not a holder name",
        ),
        (
            spec(many, vec![], 60, None),
            "65 rights is too many, the limit is 64",
        ),
        (
            spec(
                vec![noodle_caps::Right {
                    subsystem: "x y".into(),
                    action: "read".into(),
                    prefix: None,
                }],
                vec![],
                60,
                None,
            ),
            "`x y:read` is not a right",
        ),
    ];
    for (spec, want) in cases {
        let err = mint_at(&root, &spec, at(0)).unwrap_err().to_string();
        assert!(err.starts_with(want), "got {err:?}, want {want:?}");
    }
}
