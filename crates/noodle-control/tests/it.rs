//! Control planes of several members in one process, on real redb files, talking through an
//! in-process transport that can cut members off.

use noodle_control::{
    Applied, Command, Control, ControlConfig, DbError, MachineTable, Machines, Member, PeerHealth,
    Proposal, Rejection, Response, Role, StateMachine, Store, Transport, TransportError,
    TransportFuture,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Net {
    members: Mutex<HashMap<String, Control>>,
}

/// The transport of the member of node `.1` (the caller every request it sends names).
struct Via(Arc<Net>, String);

impl Transport for Via {
    fn call(
        &self,
        to: &Member,
        method: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let target = self
            .0
            .members
            .lock()
            .ok()
            .and_then(|m| m.get(&to.addr).cloned());
        let caller = self.1.clone();
        Box::pin(async move {
            let Some(c) = target else {
                return Err(TransportError::Unreachable(format!(
                    "{} is down",
                    to_string(method)
                )));
            };
            match tokio::time::timeout(timeout, c.serve(&caller, method, &body)).await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(TransportError::Failed(format!("unknown method {method}"))),
                Err(_) => Err(TransportError::Failed("timed out".into())),
            }
        })
    }
}

/// A subsystem's state machine, as a subsystem crate would write one: counters under its own
/// keys. A command is a counter name; applying it adds one and answers the new value.
struct Counters;

impl StateMachine for Counters {
    fn name(&self) -> &'static str {
        "counters"
    }
    fn validate(&self, command: &[u8]) -> Result<(), Rejection> {
        if command.is_empty() || command.len() > 64 {
            return Err(Rejection("a counter name is 1 to 64 bytes".into()));
        }
        Ok(())
    }
    fn apply(&self, t: &mut MachineTable<'_, '_>, command: &[u8]) -> Result<Applied, DbError> {
        if command == b"forbidden" {
            return Ok(Applied::Rejected(Rejection("not this one".into())));
        }
        let n = t
            .get(command)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        t.insert(command, &n.to_be_bytes())?;
        Ok(Applied::Created(n))
    }
}

fn count(name: &str) -> Proposal {
    Proposal::machine("counters", name.as_bytes().to_vec())
}

fn counter(c: &Control, name: &str) -> u64 {
    c.read_local(|v| v.machine("counters").get(name.as_bytes()))
        .expect("read")
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

fn to_string(s: &str) -> String {
    s.to_string()
}

fn cfg() -> ControlConfig {
    ControlConfig {
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(200),
        election_timeout_max: Duration::from_millis(400),
        snapshot_every: 20,
        keep_logs: 5,
        replace_dead_after: Duration::from_millis(500),
        ..ControlConfig::default()
    }
}

struct Cluster {
    net: Arc<Net>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            net: Arc::default(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn member(i: usize) -> Member {
        Member {
            node_id: format!("node-{i}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
        }
    }

    async fn start(&self, i: usize) -> Control {
        self.start_as(Self::member(i), i).await
    }

    async fn start_as(&self, me: Member, i: usize) -> Control {
        let store = Store::open(&self.dir.path().join(format!("{i}.redb"))).expect("open store");
        let machines = Machines::new(vec![Arc::new(Counters)]).expect("machines");
        let c = Control::start(
            me.clone(),
            cfg(),
            store,
            Arc::new(Via(self.net.clone(), me.node().to_string())),
            machines,
        )
        .await
        .expect("start");
        self.net
            .members
            .lock()
            .expect("lock")
            .insert(me.addr, c.clone());
        c
    }

    async fn kill(&self, i: usize) {
        let c = self
            .net
            .members
            .lock()
            .expect("lock")
            .remove(&Self::member(i).addr);
        if let Some(c) = c {
            c.shutdown().await;
        }
    }

    fn health(&self, n: usize) -> Vec<PeerHealth> {
        let up = self.net.members.lock().expect("lock");
        (0..n)
            .map(|i| PeerHealth {
                member: Self::member(i),
                alive: up.contains_key(&Self::member(i).addr),
            })
            .collect()
    }

    /// Runs membership upkeep on whichever member leads until `done` holds.
    async fn settle(
        &self,
        n: usize,
        done: impl Fn(&noodle_control::ControlStatus) -> bool,
    ) -> noodle_control::ControlStatus {
        for _ in 0..1200 {
            let members: Vec<Control> = self
                .net
                .members
                .lock()
                .expect("lock")
                .values()
                .cloned()
                .collect();
            for c in &members {
                let _ = c.maintain_membership(&self.health(n)).await;
            }
            if let Some(s) = members
                .iter()
                .map(|c| c.status())
                .find(|s| s.role == Role::Leader)
                && done(&s)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cluster did not settle");
    }
}

fn set(key: &str, value: &str) -> Proposal {
    Proposal::new(Command::ConfigSet {
        key: key.into(),
        value: value.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_and_read_linearizably_from_followers() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let b = cl.start(1).await;
    let c = cl.start(2).await;
    let s = cl.settle(3, |s| s.voters.len() == 3).await;
    assert_eq!(s.leader.as_deref(), Some("node-0"));

    // A write through a follower is forwarded to the leader.
    assert_eq!(
        b.propose(set("retries", "3")).await.expect("propose"),
        Response::Done
    );
    for node in [&a, &b, &c] {
        let v = node.read(|v| v.config_get("retries")).await.expect("read");
        assert_eq!(v.as_deref(), Some("3"));
    }
    // Enough writes to snapshot and purge; the log stays bounded and state survives.
    for i in 0..60 {
        c.propose(set(&format!("k{i}"), &i.to_string()))
            .await
            .expect("propose");
    }
    let all = a.read(|v| v.config_list()).await.expect("list");
    assert_eq!(all.len(), 61);
    for node in [&a, &b, &c] {
        let m = node.watch().borrow().clone();
        let purged = m.purged.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        assert!(m.snapshot.is_some(), "no snapshot was built");
        assert!(
            last - purged <= 2 * 20 + 5,
            "the log is not bounded: entries {purged}..{last}"
        );
    }
    let bad = a.propose(set("/bad", "x")).await;
    assert!(
        bad.is_err(),
        "an invalid key is refused before it is proposed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_make_five_voters_and_a_dead_voter_is_replaced() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    for i in 1..5 {
        cl.start(i).await;
    }
    let s = cl.settle(5, |s| s.voters.len() == 5).await;
    assert_eq!(s.learners.len(), 0);
    // A sixth node is a learner; kill a voter and it takes the place.
    cl.start(5).await;
    cl.settle(6, |s| s.learners.len() == 1).await;
    cl.kill(1).await;
    let s = cl
        .settle(6, |s| {
            s.voters.len() == 5 && !s.voters.contains(&"node-1".to_string())
        })
        .await;
    assert!(s.voters.contains(&"node-5".to_string()), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_keeps_its_state_and_rejoins() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    a.propose(set("x", "1")).await.expect("propose");
    cl.kill(0).await;
    drop(a);
    let a = cl.start(0).await;
    // A single voter elects itself again from its own log.
    let v = a
        .read(|v| v.config_get("x"))
        .await
        .expect("read after restart");
    assert_eq!(v.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_group_committed_and_all_answered() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    cl.start(1).await;
    cl.start(2).await;
    cl.settle(3, |s| s.voters.len() == 3).await;
    let before = a.status().commit_index;
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.propose(set(&format!("g{i}"), &i.to_string())).await })
        })
        .collect();
    for w in writes {
        assert_eq!(w.await.expect("join").expect("propose"), Response::Done);
    }
    // A compare-and-set inside a batch still sees the writes before it.
    let cas = |expected: Option<&str>, new: &str| {
        Proposal::new(Command::Cas {
            key: "r".into(),
            expected: expected.map(|e| e.as_bytes().to_vec()),
            new: Some(new.as_bytes().to_vec()),
        })
    };
    assert_eq!(
        a.propose(cas(None, "1")).await.expect("cas"),
        Response::Done
    );
    assert!(matches!(
        a.propose(cas(None, "2")).await.expect("cas"),
        Response::CasFailed { .. }
    ));
    // A forwarded proposal the transport sends twice (its connection broke after the first
    // copy went out) is applied once: the second copy gets the first copy's answer.
    let with_id = |id: u128, p: Proposal| Proposal { id, ..p };
    let fwd = |proposal: Proposal| {
        postcard::to_allocvec(&noodle_control::Forwarded {
            proposal,
            credential: None,
        })
        .expect("encode")
    };
    let forwarded = fwd(with_id(7, cas(None, "fwd")));
    let first = a
        .serve("node-9", "control.propose", &forwarded)
        .await
        .expect("served");
    let again = a
        .serve("node-9", "control.propose", &forwarded)
        .await
        .expect("served");
    assert_eq!(first, again);
    let answer: Result<Response, noodle_control::WireError> =
        postcard::from_bytes(&first).expect("answer");
    assert!(
        matches!(answer, Ok(Response::CasFailed { .. })),
        "{answer:?}"
    );
    let fresh = fwd(with_id(8, cas(Some("1"), "3")));
    let done = a
        .serve("node-9", "control.propose", &fresh)
        .await
        .expect("served");
    let resent = a
        .serve("node-9", "control.propose", &fresh)
        .await
        .expect("served");
    assert_eq!(done, resent, "a resent copy was applied again");
    let answer: Result<Response, noodle_control::WireError> =
        postcard::from_bytes(&done).expect("answer");
    assert_eq!(answer.expect("applied"), Response::Done);
    let all = a.read(|v| v.config_list()).await.expect("list");
    assert_eq!(all.len(), 300);
    let used = a.status().commit_index - before;
    assert!(
        used < 300,
        "300 concurrent writes took {used} log entries: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_on_another_address_catches_up() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    cl.start(1).await;
    let c = cl.start(2).await;
    cl.settle(3, |s| s.voters.len() == 3).await;
    cl.kill(2).await;
    drop(c);
    a.propose(set("while-away", "1"))
        .await
        .expect("propose with 2 of 3");
    let moved = Member {
        node_id: "node-2".into(),
        addr: "127.0.0.1:7999".into(),
    };
    let c = cl.start_as(moved.clone(), 2).await;
    let mut health = cl.health(3);
    health[2] = PeerHealth {
        member: moved,
        alive: true,
    };
    for _ in 0..1200 {
        for m in [&a, &c] {
            let _ = m.maintain_membership(&health).await;
        }
        if c.read_local(|v| v.config_get("while-away"))
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the member on its new address never caught up: {:?}",
        c.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsystem_state_machine_keeps_its_records_under_its_own_name() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let b = cl.start(1).await;
    cl.start(2).await;
    cl.settle(3, |s| s.voters.len() == 3).await;
    for want in 1..=3 {
        let got = b.propose(count("jobs")).await.expect("propose");
        assert_eq!(got, Response::Created { id: want });
    }
    assert_eq!(
        a.propose(count("forbidden")).await.expect("propose"),
        Response::Rejected("not this one".into())
    );
    // Bounds are the machine's own, checked before anything is proposed.
    let before = a.status().commit_index;
    assert!(matches!(
        a.propose(count("")).await,
        Err(noodle_control::ControlError::Rejected(_))
    ));
    assert!(matches!(
        a.propose(Proposal::machine("nobody", b"x".to_vec())).await,
        Err(noodle_control::ControlError::Rejected(_))
    ));
    assert_eq!(
        a.status().commit_index,
        before,
        "a refused command was logged"
    );
    // Its keys are its own: the control plane's own records do not see them.
    let read = a.read(|v| v.machine("counters").get(b"jobs")).await;
    assert_eq!(read.expect("read"), Some(3u64.to_be_bytes().to_vec()));
    assert!(a.read(|v| v.config_list()).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_sent_again_is_applied_once_also_after_a_restart() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let b = cl.start(1).await;
    cl.start(2).await;
    cl.settle(3, |s| s.voters.len() == 3).await;
    let p = count("once");
    assert_eq!(
        b.propose(p.clone()).await.expect("propose"),
        Response::Created { id: 1 }
    );
    // The same proposal again, through the leader and through a follower: the first answer,
    // and nothing applied.
    for via in [&a, &b] {
        assert_eq!(
            via.propose(p.clone()).await.expect("again"),
            Response::Created { id: 1 }
        );
    }
    assert_eq!(counter(&a, "once"), 1);
    // The answer is durable: the whole cluster restarts and a late copy still changes nothing.
    for i in 0..3 {
        cl.kill(i).await;
    }
    drop((a, b));
    let a = cl.start(0).await;
    let b = cl.start(1).await;
    cl.start(2).await;
    cl.settle(3, |s| s.voters.len() == 3).await;
    assert_eq!(
        b.propose(p.clone()).await.expect("late copy"),
        Response::Created { id: 1 }
    );
    assert_eq!(
        a.propose(count("once")).await.expect("a new proposal"),
        Response::Created { id: 2 }
    );
    assert_eq!(counter(&a, "once"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_ids_beyond_the_newest_kept_are_forgotten_oldest_first() {
    use noodle_control::state::PROPOSAL_IDS_KEPT;
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    const BATCH: u64 = 1000;
    let batches = PROPOSAL_IDS_KEPT / BATCH + 2;
    let mut first = None;
    let mut last = None;
    for _ in 0..batches {
        let proposals: Vec<Proposal> = (0..BATCH).map(|_| count("bulk")).collect();
        first.get_or_insert_with(|| proposals[0].clone());
        last = proposals.last().cloned();
        a.propose(Proposal::new(Command::Batch(proposals)))
            .await
            .expect("batch");
    }
    assert_eq!(counter(&a, "bulk"), batches * BATCH);
    // The newest ids are remembered: a copy changes nothing.
    let last = last.expect("a proposal");
    assert_eq!(
        a.propose(last).await.expect("again"),
        Response::Created {
            id: batches * BATCH
        }
    );
    assert_eq!(counter(&a, "bulk"), batches * BATCH);
    // The oldest were forgotten with their log entry's record: a copy is a new proposal.
    a.propose(first.expect("a proposal"))
        .await
        .expect("the oldest again");
    assert_eq!(counter(&a, "bulk"), batches * BATCH + 1);
}

/// Sends `req` as a raw Raft message to `to`, from the node `caller` (what the transport
/// authenticated) naming `sender` as the member it comes from; the answer's error, if any.
async fn raw_raft<T: serde::Serialize>(
    to: &Control,
    caller: &str,
    method: &str,
    sender: &str,
    req: &T,
) -> Result<(), noodle_control::WireError> {
    let body = postcard::to_allocvec(&(&to.me().node_id, sender, req)).expect("encode");
    let answer = to
        .serve(caller, method, &body)
        .await
        .expect("a Raft method");
    // An accepted message answers `Ok(<openraft's answer>)`; only the refusal matters here.
    match postcard::from_bytes::<Result<(), noodle_control::WireError>>(&answer) {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// A member may not disturb Raft: a learner (what a stolen worker is) can neither lead nor
/// call an election, and no member can send a message in another member's name. Each attempt
/// is refused and changes neither term nor leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_come_only_from_voters_speaking_for_themselves() {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, Vote};
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let b = cl.start(1).await;
    let _c = cl.start(2).await;
    let _d = cl.start(3).await;
    let before = cl
        .settle(4, |s| s.voters.len() == 3 && s.learners.len() == 1)
        .await;
    let learner = before.learners[0].clone();
    let target = if learner == "node-1" { &a } else { &b };
    let term = before.term;
    let id = noodle_control::raft_id;
    let high = Vote::new(term + 10, id(&learner));
    let far = LogId::new(CommittedLeaderId::new(term + 10, id(&learner)), 1_000_000);
    let append = |vote: Vote<u64>| AppendEntriesRequest::<noodle_control::TypeConfig> {
        vote,
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };

    let refused = |r: Result<(), noodle_control::WireError>, why: &str| {
        let e = r.expect_err("the message was accepted");
        assert!(e.to_string().contains(why), "{e}");
    };
    // The learner claims leadership of a later term.
    refused(
        raw_raft(target, &learner, "raft.append", &learner, &append(high)).await,
        "is not a voter",
    );
    // It calls an election.
    let vote = VoteRequest::new(high, Some(far));
    refused(
        raw_raft(target, &learner, "raft.vote", &learner, &vote).await,
        "is not a voter",
    );
    // It names a voter as the sender.
    refused(
        raw_raft(target, &learner, "raft.append", "node-0", &append(high)).await,
        "may not speak for member node-0",
    );
    // A voter claims another voter's leadership.
    let voter = before
        .voters
        .iter()
        .find(|v| **v != target.me().node_id)
        .expect("another voter")
        .clone();
    let other = if voter == "node-0" {
        "node-2"
    } else {
        "node-0"
    };
    let forged = append(Vote::new(term + 10, id(other)));
    refused(
        raw_raft(target, &voter, "raft.append", &voter, &forged).await,
        "in another member's name",
    );

    let after = cl.settle(4, |_| true).await;
    assert_eq!((after.term, &after.leader), (term, &before.leader));
    assert_eq!(target.status().term, term);
    assert_eq!(
        a.propose(set("still", "working")).await.expect("propose"),
        Response::Done
    );
}

/// A member forwards proposals to the leader, which takes one that speaks for another node
/// (its key, its checkpoint) or sets the root key from no member: each is refused and nothing
/// is written, while the same proposal for the member itself goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_may_forward_only_what_it_may_propose_for_itself() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let _b = cl.start(1).await;
    cl.settle(2, |s| s.voters.len() == 1 && s.learners.len() == 1)
        .await;
    let forward = |proposal: Proposal| {
        postcard::to_allocvec(&noodle_control::Forwarded {
            proposal,
            credential: None,
        })
        .expect("encode")
    };
    let answer = |bytes: Vec<u8>| {
        postcard::from_bytes::<Result<Response, noodle_control::WireError>>(&bytes)
            .expect("an answer")
    };
    let register = |node: &str| {
        Proposal::new(Command::RegisterNode {
            node_id: node.into(),
            audit_key: [9; 32],
        })
    };
    for (p, why) in [
        (register("node-0"), "may not register a key for node node-0"),
        (
            Proposal::new(Command::SetRootKey { key: vec![1; 32] }),
            "may not set the capability root key",
        ),
        (
            Proposal::new(Command::Batch(vec![register("node-2")])),
            "may not register a key for node node-2",
        ),
    ] {
        let got = answer(
            a.serve("node-1", "control.propose", &forward(p))
                .await
                .expect("served"),
        );
        let e = got.expect_err("refused");
        assert!(e.to_string().contains(why), "{e}");
    }
    let keys = a.read(|v| v.node_keys()).await.expect("read");
    assert!(keys.values().all(|k| *k != [9; 32]), "{keys:?}");
    let own = answer(
        a.serve("node-1", "control.propose", &forward(register("node-1")))
            .await
            .expect("served"),
    );
    assert_eq!(own.expect("accepted"), Response::Done);
    let keys = a.read(|v| v.node_keys()).await.expect("read");
    assert_eq!(keys.get("node-1"), Some(&[9; 32]));
}

/// The audit log is pruned only at a signed checkpoint, never backwards, and a bounded
/// distance at a time: anything else is refused and prunes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_pruned_only_at_a_checkpoint() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let audited = |i: u64| {
        let record = noodle_audit::Record::new(
            i,
            "admin@a",
            "config.set",
            "k",
            "",
            noodle_audit::Outcome::Allowed,
        );
        Proposal::audited(Command::Nothing, record)
    };
    for i in 0..6 {
        a.propose(audited(i)).await.expect("propose");
    }
    let prune = |upto_seq| Proposal::new(Command::PruneAudit { upto_seq });
    for (upto, why) in [
        (3, "no signed checkpoint at #3"),
        (0, "pruned up to #0"),
        (noodle_control::AUDIT_PRUNE_ENTRIES_MAX + 1, "at most"),
    ] {
        match a.propose(prune(upto)).await.expect("answered") {
            Response::Rejected(r) => assert!(r.contains(why), "{upto}: {r}"),
            other => panic!("{upto}: {other:?}"),
        }
    }
    let kept = a.read(|v| v.audit_entries(1, 100)).await.expect("read");
    assert_eq!(kept.len(), 6);
    assert_eq!(a.read(|v| v.audit_pruned()).await.expect("read"), 0);
}

/// The replicated state keeps only the public half of the capability root key: the first one
/// stays, and a private key an older version stored is forgotten when the public one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_keeps_the_root_public_key_and_forgets_a_legacy_private_one() {
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let read = |c: &Control| {
        c.read_local(|v| Ok((v.root_public_key()?, v.legacy_root_key()?)))
            .expect("read")
    };
    // A cluster made by an older version: the private key in the state.
    a.propose(Proposal::new(Command::SetRootKey { key: vec![1; 32] }))
        .await
        .expect("propose");
    assert_eq!(read(&a), (None, Some(vec![1; 32])));
    for key in [vec![2; 32], vec![3; 32]] {
        a.propose(Proposal::new(Command::SetRootPublicKey { key }))
            .await
            .expect("propose");
        assert_eq!(read(&a), (Some(vec![2; 32]), None), "the first stays");
    }
    match a
        .propose(Proposal::new(Command::SetRootPublicKey { key: Vec::new() }))
        .await
    {
        Err(e) => assert!(e.to_string().contains("1 to 256 bytes"), "{e}"),
        Ok(other) => panic!("{other:?}"),
    }
}
