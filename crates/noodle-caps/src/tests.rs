//! Unit tests for the internals: Datalog shapes read back, the source guard, right sets.
#![allow(clippy::unwrap_used)]

use crate::datalog::{self, guard_source, intersect_sets, minimise};
use crate::right::Right;

fn rights(list: &[&str]) -> Vec<Right> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

#[test]
fn guard_refuses_what_could_overflow_the_parser() {
    let cases: Vec<(String, Result<(), &str>)> = vec![
        ("allow if true;".into(), Ok(())),
        (
            format!("allow if {}true{};", "(".repeat(32), ")".repeat(32)),
            Ok(()),
        ),
        (
            format!("allow if {}true{};", "(".repeat(33), ")".repeat(33)),
            Err("it nests brackets more than 32 deep"),
        ),
        // Brackets inside strings and comments do not count.
        (format!("allow if \"{}\" == \"\";", "(".repeat(100)), Ok(())),
        (format!("// {}\nallow if true;", "(".repeat(100)), Ok(())),
        (
            format!("/* {} \" */ allow if true;", "(".repeat(100)),
            Ok(()),
        ),
        // An escaped quote does not end a string.
        (
            format!("allow if \"\\\"{}\" == \"\";", "(".repeat(100)),
            Ok(()),
        ),
        (
            format!("allow if {}true;", "!".repeat(17)),
            Err("a statement has more than 16 negations"),
        ),
        (
            format!(
                "allow if {}true; allow if {}true;",
                "!".repeat(16),
                "!".repeat(16)
            ),
            Ok(()),
        ),
        (
            format!("allow if {} == 0;", vec!["1"; 600].join(" + ")),
            Err("a statement has more than 512 operators"),
        ),
        (
            "allow if true trusting ed25519/00;".into(),
            Err("it names an invalid public key"),
        ),
        (
            format!(
                "allow if true trusting ed25519/{};",
                hex::encode(crate::RootKey::generate().public().to_bytes())
            ),
            Ok(()),
        ),
    ];
    for (source, want) in cases {
        assert_eq!(
            guard_source(&source),
            want.map_err(str::to_string),
            "{source:.60}"
        );
    }
}

#[test]
fn noodle_shapes_read_back() {
    let allow = rights(&[
        "config:read",
        "fabric:*:/datasets/",
        "jobs:*",
        "agents:spawn:/a/",
    ]);
    let block = biscuit_auth::BlockBuilder::new()
        .check(datalog::rights_check(&allow))
        .unwrap()
        .check(datalog::expiry_check(1_800_000_000))
        .unwrap()
        .fact(datalog::holder_fact("alice"))
        .unwrap()
        .fact(datalog::right_fact(&allow[1]))
        .unwrap();
    let view = datalog::read_block(&block.to_string()).unwrap();
    assert_eq!(view.allow, Some(minimise(allow.clone())));
    assert_eq!(view.expires_at, Some(1_800_000_000));
    assert_eq!(view.holder.as_deref(), Some("alice"));
    assert_eq!(view.rights, vec![allow[1].clone()]);
    assert_eq!(view.other_checks, 0);
}

#[test]
fn look_alike_checks_are_not_taken_for_noodle_shapes() {
    let cases = [
        r#"check if operation("config", "read"), $x == 1;"#,
        r#"check all operation("config", "read");"#,
        r#"reject if operation("config", "read");"#,
        r#"check if operation("config", $r), resource($r), $r.starts_with("/a");"#,
        r#"check if operation("config", "read"), resource($r), $r.ends_with("/a");"#,
        r#"check if time($t), $t >= 2030-01-01T00:00:00Z;"#,
        r#"check if time($t), $u <= 2030-01-01T00:00:00Z, time($u);"#,
        r#"check if operation("config", "read") trusting previous;"#,
    ];
    for source in cases {
        let view = datalog::read_block(source).unwrap();
        assert_eq!(
            (view.allow, view.expires_at, view.other_checks),
            (None, None, 1),
            "{source}"
        );
    }
}

#[test]
fn right_sets_intersect_exactly() {
    let cases: [(&[&str], &[&str], &[&str]); 7] = [
        (&["a:r"], &["a:r"], &["a:r"]),
        (&["a:r"], &["a:w"], &[]),
        (&["a:*"], &["a:w:/x"], &["a:w:/x"]),
        (&["a:r:/x"], &["a:r:/x/y", "a:r:/z"], &["a:r:/x/y"]),
        (&["a:r:/x/y"], &["a:*:/x"], &["a:r:/x/y"]),
        (&["a:r", "b:r"], &["b:*"], &["b:r"]),
        (&["a:r", "a:r:/x", "a:*"], &["a:r:/q"], &["a:r:/q"]),
    ];
    for (x, y, want) in cases {
        assert_eq!(
            intersect_sets(&rights(x), &rights(y)),
            rights(want),
            "{x:?} ∩ {y:?}"
        );
    }
    assert_eq!(
        minimise(rights(&["a:r:/x/y", "a:r:/x", "a:*", "b:r", "b:r"])),
        rights(&["a:*", "b:r"])
    );
}

#[test]
fn default_policies_parse() {
    let root = crate::RootKey::generate();
    let _ = crate::Authoriser::new(root.public());
}
