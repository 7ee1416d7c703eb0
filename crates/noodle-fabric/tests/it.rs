//! The fabric's records in a real control plane (one member on a real redb file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use noodle_control::{
    Control, ControlConfig, Machines, Member, Proposal, Response, Store, Transport, TransportError,
    TransportFuture,
};
use noodle_fabric::machine::{self, Content, FabricCommand, FabricMachine, Version, VersionId};
use noodle_fabric::{Hlc, ObjectPath, Prefix};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Alone;

impl Transport for Alone {
    fn call(&self, _: &Member, _: &'static str, _: Vec<u8>, _: Duration) -> TransportFuture {
        Box::pin(async { Err(TransportError::Unreachable("alone".into())) })
    }
}

async fn start(dir: &Path) -> Control {
    let me = Member::new("n0", 0, "127.0.0.1:1".into());
    let store = Store::open(&dir.join("control.redb")).expect("open");
    let machines = Machines::new(vec![Arc::new(FabricMachine)]).expect("machines");
    let control = Control::start(
        me,
        ControlConfig::default(),
        store,
        Arc::new(Alone),
        machines,
    )
    .await
    .expect("start");
    control.initialize().await.expect("initialize");
    control
}

fn id(wall_ms: u64, node: &str) -> VersionId {
    VersionId {
        hlc: Hlc {
            wall_ms,
            logical: 0,
        },
        node: node.into(),
    }
}

fn version(id: VersionId, size: u64, tags: &[(&str, &str)]) -> Version {
    Version {
        id,
        creator: "admin@n0".into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        content: Some(Content {
            manifest: [size as u8; 32],
            size,
            replicas: vec!["n0".into(), "n1".into()],
            bytes: None,
        }),
    }
}

/// A version of `bytes` kept in the records, changed by `f`.
fn kept(id: VersionId, bytes: Vec<u8>, f: impl FnOnce(&mut Content)) -> Version {
    let mut content = Content {
        manifest: machine::manifest_of(&bytes).id().0,
        size: bytes.len() as u64,
        replicas: Vec::new(),
        bytes: Some(bytes),
    };
    f(&mut content);
    Version {
        id,
        creator: "admin@n0".into(),
        tags: BTreeMap::new(),
        content: Some(content),
    }
}

fn write(path: &str, version: Version) -> Proposal {
    Proposal::machine(
        machine::NAME,
        machine::encode(&FabricCommand::Write {
            path: path.into(),
            version,
        }),
    )
}

fn p(s: &str) -> ObjectPath {
    ObjectPath::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_heads_tags_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let propose = |proposal: Proposal| {
        let c = c.clone();
        async move { c.propose(proposal).await.expect("propose") }
    };
    assert_eq!(
        propose(write(
            "/m/a.bin",
            version(id(10, "n0"), 1, &[("kind", "weights")])
        ))
        .await,
        Response::Done
    );
    // A newer version from another node takes the path, with its own tags.
    propose(write(
        "/m/a.bin",
        version(id(20, "n1"), 2, &[("task", "vision")]),
    ))
    .await;
    // An older one arriving late (a concurrent writer) is kept, but the path stays newer.
    propose(write(
        "/m/a.bin",
        version(id(15, "n2"), 3, &[("kind", "old")]),
    ))
    .await;
    // The same version again: nothing changes.
    propose(write("/m/a.bin", version(id(15, "n2"), 99, &[]))).await;
    propose(write(
        "/m/b.bin",
        version(id(11, "n0"), 4, &[("task", "vision")]),
    ))
    .await;
    propose(write(
        "/other/c",
        version(id(12, "n0"), 5, &[("task", "vision")]),
    ))
    .await;

    let read = c
        .read(|v| {
            let f = machine::view(v);
            let root = Prefix::root();
            let m = Prefix::parse("/m/").unwrap();
            Ok((
                f.head(&p("/m/a.bin"))?,
                f.versions(&p("/m/a.bin"), 10)?,
                f.list(&m, None, 10)?,
                f.tagged("task", Some("vision"), &m, 10)?,
                f.tagged("kind", None, &root, 10)?,
                f.tagged("task", None, &root, 2)?,
            ))
        })
        .await
        .unwrap();
    let (head, versions, list, vision_in_m, kind, task_first_two) = read;
    assert_eq!(head.unwrap().content.unwrap().size, 2);
    let sizes: Vec<u64> = versions
        .iter()
        .map(|v| v.content.as_ref().unwrap().size)
        .collect();
    assert_eq!(sizes, vec![2, 3, 1], "newest first, the late one kept once");
    let listed: Vec<&str> = list.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(listed, vec!["/m/a.bin", "/m/b.bin"]);
    assert_eq!(vision_in_m, vec![p("/m/a.bin"), p("/m/b.bin")]);
    assert!(
        kind.is_empty(),
        "tags go with the version the path shows: {kind:?}"
    );
    assert_eq!(task_first_two.len(), 2);

    // Removal: a tombstone version; the path is gone from heads, lists and tags, and its
    // versions are all still there.
    let tombstone = Version {
        id: id(30, "n0"),
        creator: "admin@n0".into(),
        tags: BTreeMap::new(),
        content: None,
    };
    propose(write("/m/a.bin", tombstone)).await;
    let (head, versions, list, tagged) = c
        .read(|v| {
            let f = machine::view(v);
            let m = Prefix::parse("/m/").unwrap();
            Ok((
                f.head(&p("/m/a.bin"))?,
                f.versions(&p("/m/a.bin"), 10)?,
                f.list(&m, None, 10)?,
                f.tagged("task", Some("vision"), &m, 10)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(head, None);
    assert_eq!(versions.len(), 4);
    assert_eq!(list.len(), 1);
    assert_eq!(tagged, vec![p("/m/b.bin")]);

    // Replicas move after a repair; a version that does not exist, or a removal, has none.
    let set = |path: &str, id: VersionId, replicas: Vec<&str>| {
        Proposal::machine(
            machine::NAME,
            machine::encode(&FabricCommand::SetReplicas {
                path: path.into(),
                id,
                replicas: replicas.into_iter().map(String::from).collect(),
            }),
        )
    };
    assert_eq!(
        propose(set("/m/b.bin", id(11, "n0"), vec!["n3", "n4"])).await,
        Response::Done
    );
    for (path, vid) in [("/m/b.bin", id(12, "n0")), ("/m/a.bin", id(30, "n0"))] {
        match propose(set(path, vid, vec!["n3"])).await {
            Response::Rejected(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let head = c
        .read(|v| machine::view(v).head(&p("/m/b.bin")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.content.unwrap().replicas, vec!["n3", "n4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let long_tag = "x".repeat(300);
    let many_tags: Vec<(String, String)> =
        (0..33).map(|i| (format!("k{i}"), String::new())).collect();
    let mut many = version(id(1, "n0"), 1, &[]);
    many.tags = many_tags.into_iter().collect();
    let mut no_replicas = version(id(1, "n0"), 1, &[]);
    no_replicas.content.as_mut().unwrap().replicas.clear();
    let mut tagged_tombstone = version(id(1, "n0"), 1, &[("a", "b")]);
    tagged_tombstone.content = None;
    // Objects kept in the records: their manifest and size are those of their bytes, they
    // have no replicas, and they are small.
    let lying_manifest = kept(id(1, "n0"), b"abc".to_vec(), |c| c.manifest = [9; 32]);
    let lying_size = kept(id(1, "n0"), b"abc".to_vec(), |c| c.size = 2);
    let with_replicas = kept(id(1, "n0"), b"abc".to_vec(), |c| {
        c.replicas = vec!["n0".into()]
    });
    let too_big = kept(
        id(1, "n0"),
        vec![1; machine::limits::KEPT_BYTES_MAX + 1],
        |_| {},
    );
    let cases: Vec<(&str, Version, &str)> = vec![
        ("/a/../b", version(id(1, "n0"), 1, &[]), "`.` or `..`"),
        ("relative", version(id(1, "n0"), 1, &[]), "starts with `/`"),
        ("/dir/", version(id(1, "n0"), 1, &[]), "prefix"),
        (
            "/a",
            version(id(1, "n0"), 1, &[("k", &long_tag)]),
            "tag value",
        ),
        ("/a", version(id(1, "n0"), 1, &[("a=b", "c")]), "tag key"),
        ("/a", many, "at most 32 tags"),
        ("/a", version(id(1, ""), 1, &[]), "node id"),
        ("/a", no_replicas, "at least one node"),
        ("/a", tagged_tombstone, "no tags"),
        ("/a", lying_manifest, "manifest of its bytes"),
        ("/a", lying_size, "manifest of its bytes"),
        ("/a", with_replicas, "no replicas"),
        ("/a", too_big, "at most 16384 bytes"),
    ];
    for (path, v, why) in cases {
        match c.propose(write(path, v)).await {
            Err(e) => assert!(e.to_string().contains(why), "{path}: {e}"),
            Ok(other) => panic!("{path}: {other:?}"),
        }
    }
    let garbage = Proposal::machine(machine::NAME, vec![0xff; 8]);
    assert!(c.propose(garbage).await.is_err());
    let listed = c
        .read(|v| machine::view(v).list(&Prefix::root(), None, 10))
        .await
        .unwrap();
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_many_paths_and_skips_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    for i in 0..60u64 {
        c.propose(write(
            &format!("/d/{i:03}"),
            version(id(i + 1, "n0"), i, &[]),
        ))
        .await
        .unwrap();
    }
    for i in (0..60u64).filter(|i| i % 3 == 0) {
        let tomb = Version {
            id: id(1000 + i, "n0"),
            creator: "admin@n0".into(),
            tags: BTreeMap::new(),
            content: None,
        };
        c.propose(write(&format!("/d/{i:03}"), tomb)).await.unwrap();
    }
    let d = Prefix::parse("/d/").unwrap();
    let mut seen = Vec::new();
    let mut after: Option<ObjectPath> = None;
    loop {
        let page = c
            .read(|v| machine::view(v).list(&d, after.as_ref(), 7))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|(p, _)| p.clone());
        seen.extend(page.into_iter().map(|(p, _)| p.as_str().to_string()));
    }
    let want: Vec<String> = (0..60u64)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("/d/{i:03}"))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_kept_in_the_records_are_counted_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let kept_bytes = || async { c.read(|v| machine::view(v).kept_bytes()).await.unwrap() };
    c.propose(write("/k", kept(id(1, "n0"), vec![1; 1000], |_| {})))
        .await
        .unwrap();
    // Sent again (a proposal retried): counted once.
    c.propose(write("/k", kept(id(1, "n0"), vec![1; 1000], |_| {})))
        .await
        .unwrap();
    c.propose(write("/k", kept(id(2, "n0"), vec![2; 500], |_| {})))
        .await
        .unwrap();
    // A version in chunks is not counted.
    c.propose(write("/k", version(id(3, "n0"), 7000, &[])))
        .await
        .unwrap();
    assert_eq!(kept_bytes().await, 1500);
    let head = c.read(|v| machine::view(v).head(&p("/k"))).await.unwrap();
    assert_eq!(head.unwrap().id, id(3, "n0"));
    let forget = FabricCommand::Forget {
        path: "/k".into(),
        ids: vec![id(1, "n0")],
    };
    c.propose(Proposal::machine(machine::NAME, machine::encode(&forget)))
        .await
        .unwrap();
    assert_eq!(kept_bytes().await, 500);
    let versions = c
        .read(|v| machine::view(v).versions(&p("/k"), 10))
        .await
        .unwrap();
    let kept_one = versions.iter().find(|v| v.id == id(2, "n0")).unwrap();
    assert_eq!(
        kept_one.content.as_ref().unwrap().bytes.as_deref(),
        Some(&[2u8; 500][..])
    );
    // Its copies are not "made again" elsewhere: it has none.
    let set = FabricCommand::SetReplicas {
        path: "/k".into(),
        id: id(2, "n0"),
        replicas: vec!["n1".into()],
    };
    let answer = c
        .propose(Proposal::machine(machine::NAME, machine::encode(&set)))
        .await;
    assert!(
        matches!(&answer, Ok(Response::Rejected(why)) if why.contains("kept in the records")),
        "{answer:?}"
    );
}
