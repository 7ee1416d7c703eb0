//! Unit tests of the harness's parts: the disk's crash model and the history checker. Each
//! checker is shown to reject a bad input, so a passing simulation means something.

use crate::disk::Disk;
use crate::history::{History, RegisterOp, RegisterRet};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

const T: TableDefinition<u64, u64> = TableDefinition::new("t");

fn put(db: &Database, k: u64, durability: Durability) {
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(durability).expect("durability");
    {
        let mut t = txn.open_table(T).expect("table");
        t.insert(k, k).expect("insert");
    }
    txn.commit().expect("commit");
}

fn keys(db: &Database) -> Vec<u64> {
    let txn = db.begin_read().expect("begin");
    let t = txn.open_table(T).expect("table");
    use redb::ReadableTable;
    t.iter()
        .expect("iter")
        .map(|r| r.expect("row").0.value())
        .collect()
}

#[test]
fn a_crash_keeps_synced_commits_and_loses_the_rest() {
    let disk = Disk::new();
    let db = Database::builder()
        .create_with_backend(disk.backend())
        .expect("create");
    put(&db, 1, Durability::Immediate);
    put(&db, 2, Durability::None);
    // redb may keep a non-durable commit in its own cache or write it out unsynced: either way
    // the crash loses it.
    disk.crash();
    // The dead process closes its database; nothing of that reaches the disk.
    drop(db);
    let db = Database::builder()
        .create_with_backend(disk.backend())
        .expect("reopen");
    assert_eq!(keys(&db), vec![1]);
    // A later synced commit makes earlier unsynced ones durable too.
    put(&db, 3, Durability::None);
    put(&db, 4, Durability::Immediate);
    disk.crash();
    drop(db);
    let db = Database::builder()
        .create_with_backend(disk.backend())
        .expect("reopen");
    assert_eq!(keys(&db), vec![1, 3, 4]);
}

#[test]
fn only_synced_writes_survive_a_crash() {
    use redb::StorageBackend;
    let disk = Disk::new();
    let b = disk.backend();
    b.set_len(3 * 4096).expect("grow");
    b.write(10, &[1; 8]).expect("write");
    b.sync_data().expect("sync");
    b.write(5000, &[2; 8]).expect("write");
    b.set_len(4 * 4096).expect("grow");
    assert!(disk.has_unsynced_writes());
    assert!(disk.crash() > 0);
    let b = disk.backend();
    assert_eq!(
        b.len().expect("len"),
        3 * 4096,
        "the unsynced growth is gone"
    );
    let mut buf = [9u8; 8];
    b.read(10, &mut buf).expect("read");
    assert_eq!(buf, [1; 8]);
    b.read(5000, &mut buf).expect("read");
    assert_eq!(buf, [0; 8], "the unsynced write is gone");
    assert!(!disk.has_unsynced_writes());
}

#[test]
fn a_dead_backend_writes_nothing() {
    use redb::StorageBackend;
    let disk = Disk::new();
    let old = disk.backend();
    old.set_len(8192).expect("grow");
    old.sync_data().expect("sync");
    disk.crash();
    old.write(0, &[7; 16]).expect("a dead disk swallows writes");
    old.sync_data().expect("and syncs");
    assert!(old.len().is_err(), "but it cannot be read");
    let new = disk.backend();
    let mut buf = [1u8; 16];
    new.read(0, &mut buf).expect("read");
    assert_eq!(buf, [0; 16]);
    assert_eq!(new.len().expect("len"), 8192);
}

fn cas(expected: Option<u64>, new: u64) -> RegisterOp {
    RegisterOp::Cas {
        expected,
        new: Some(new),
    }
}

#[test]
fn a_linearizable_history_passes() {
    let mut h = History::default();
    let a = h.invoke(0, 0, cas(None, 1));
    let b = h.invoke(1, 0, RegisterOp::Read);
    h.returned(b, RegisterRet::Value(None));
    h.returned(a, RegisterRet::CasOk);
    let c = h.invoke(1, 0, cas(Some(1), 2));
    h.returned(c, RegisterRet::CasOk);
    // Unknown: took effect (a later read sees it).
    let d = h.invoke(0, 0, cas(Some(2), 3));
    h.unknown(d);
    // Unknown and never seen: may not have happened.
    let e = h.invoke(2, 0, cas(Some(2), 4));
    h.unknown(e);
    let f = h.invoke(1, 0, RegisterOp::Read);
    h.returned(f, RegisterRet::Value(Some(3)));
    // Certainly not applied: left out.
    let g = h.invoke(1, 0, cas(Some(3), 5));
    h.not_applied(g);
    let i = h.invoke(0, 0, cas(Some(1), 6));
    h.returned(i, RegisterRet::CasFailed { current: Some(3) });
    assert_eq!(h.check(0), Ok(()));
}

#[test]
fn a_lost_write_is_not_linearizable() {
    let mut h = History::default();
    let a = h.invoke(0, 0, cas(None, 1));
    h.returned(a, RegisterRet::CasOk);
    // Read after the acknowledged write, but it is gone.
    let b = h.invoke(1, 0, RegisterOp::Read);
    h.returned(b, RegisterRet::Value(None));
    let err = h
        .check(0)
        .expect_err("a read after an acknowledged write must see it");
    assert!(err.contains("cas(none -> 1)"), "{err}");
}

#[test]
fn a_stale_cas_failure_is_not_linearizable() {
    let mut h = History::default();
    let a = h.invoke(0, 0, cas(None, 1));
    h.returned(a, RegisterRet::CasOk);
    let b = h.invoke(0, 0, cas(Some(1), 2));
    h.returned(b, RegisterRet::CasOk);
    // Reports a value that was replaced before it started.
    let c = h.invoke(1, 0, cas(Some(7), 3));
    h.returned(c, RegisterRet::CasFailed { current: Some(1) });
    assert!(h.check(0).is_err());
}

#[test]
fn an_unknown_write_chain_seen_only_at_its_end_passes() {
    // Two unknown writes, the second replacing the first; only the second is ever read.
    let mut h = History::default();
    let a = h.invoke(0, 0, cas(None, 1));
    h.unknown(a);
    let b = h.invoke(1, 0, cas(Some(1), 2));
    h.unknown(b);
    let c = h.invoke(2, 0, RegisterOp::Read);
    h.returned(c, RegisterRet::Value(Some(2)));
    assert_eq!(h.check(0), Ok(()));
}

#[test]
fn registers_are_checked_apart() {
    let mut h = History::default();
    let a = h.invoke(0, 0, cas(None, 1));
    h.returned(a, RegisterRet::CasOk);
    let b = h.invoke(0, 1, RegisterOp::Read);
    h.returned(b, RegisterRet::Value(None));
    assert_eq!(h.check(0), Ok(()));
    assert_eq!(h.check(1), Ok(()));
}

mod invariants {
    use crate::harness::{Shared, finish};
    use crate::{Failure, SimOptions};
    use noodle_control::{Member, RaftId};
    use openraft::{RaftMetrics, ServerState};
    use std::time::Duration;
    use tokio::sync::watch;

    fn leader_of(term: u64) -> RaftMetrics<RaftId, Member> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_term = term;
        m
    }

    #[test]
    fn two_leaders_in_one_term_fail_the_run() {
        let shared = Shared::new(7, SimOptions::default());
        let (n0, n0_rx) = watch::channel(leader_of(3));
        let (n1, n1_rx) = watch::channel(RaftMetrics::new_initial(2));
        shared.watch_node(0, n0_rx);
        shared.watch_node(1, n1_rx);
        shared.sample_metrics(Duration::from_millis(10));
        // n0 steps down; n1 leads term 4: one leader per term so far.
        n0.send_modify(|m| m.state = ServerState::Follower);
        n1.send_replace(leader_of(4));
        shared.sample_metrics(Duration::from_millis(20));
        let report = finish(7, &shared, Duration::ZERO).expect("one leader per term");
        assert_eq!(report.leaders.len(), 2);
        // n0 leads term 4 as well.
        n0.send_replace(leader_of(4));
        shared.sample_metrics(Duration::from_millis(30));
        let failure = finish(7, &shared, Duration::ZERO).expect_err("two leaders in term 4");
        assert_eq!(
            failure.failures,
            vec![Failure::TwoLeaders {
                term: 4,
                first: "n1".into(),
                second: "n0".into()
            }]
        );
        assert_eq!(
            failure.to_string(),
            "seed 7: two leaders in term 4: n1 and n0"
        );
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_fails_the_run() {
        let shared = Shared::new(9, SimOptions::default());
        shared.acknowledge("w/0/1", "a");
        shared.acknowledge("w/0/2", "b");
        shared.acknowledge("w/1/1", "c");
        shared.set_final_dump(&[("w/0/1", "a"), ("w/1/1", "other")]);
        let failure = finish(9, &shared, Duration::ZERO).expect_err("two writes are not there");
        assert_eq!(failure.failures.len(), 2);
        let shown = failure.to_string();
        assert!(
            shown.starts_with("seed 9: acknowledged write w/0/2=b was lost"),
            "{shown}"
        );
        assert!(
            shown.contains("w/1/1=c was lost: the cluster has w/1/1=other"),
            "{shown}"
        );
    }

    #[test]
    fn a_fatal_raft_error_fails_the_run() {
        let shared = Shared::new(1, SimOptions::default());
        let mut m = RaftMetrics::new_initial(1);
        m.running_state = Err(openraft::error::Fatal::Stopped);
        let (_n2, rx) = watch::channel(m);
        shared.watch_node(2, rx);
        shared.sample_metrics(Duration::from_millis(5));
        let failure = finish(1, &shared, Duration::ZERO).expect_err("n2 stopped");
        assert!(matches!(&failure.failures[0], Failure::NodeFatal { node, .. } if node == "n2"));
    }
}
