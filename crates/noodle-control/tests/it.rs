//! Control planes of several members in one process, on real redb files, talking through an
//! in-process transport that can cut members off.

use noodle_control::{
    Command, Control, ControlConfig, Member, PeerHealth, Proposal, Response, Store, Transport,
    TransportError, TransportFuture,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Net {
    members: Mutex<HashMap<String, Control>>,
}

struct Via(Arc<Net>);

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
        Box::pin(async move {
            let Some(c) = target else {
                return Err(TransportError::Unreachable(format!(
                    "{} is down",
                    to_string(method)
                )));
            };
            match tokio::time::timeout(timeout, c.serve(method, &body)).await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(TransportError::Failed(format!("unknown method {method}"))),
                Err(_) => Err(TransportError::Failed("timed out".into())),
            }
        })
    }
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
        let c = Control::start(me.clone(), cfg(), store, Arc::new(Via(self.net.clone())))
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
        for _ in 0..200 {
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
                .find(|s| s.role == "leader")
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
    let forwarded = postcard::to_allocvec(&(7u128, cas(None, "fwd"))).expect("encode");
    let first = a
        .serve("control.propose", &forwarded)
        .await
        .expect("served");
    let again = a
        .serve("control.propose", &forwarded)
        .await
        .expect("served");
    assert_eq!(first, again);
    let answer: Result<Response, noodle_control::WireError> =
        postcard::from_bytes(&first).expect("answer");
    assert!(
        matches!(answer, Ok(Response::CasFailed { .. })),
        "{answer:?}"
    );
    let fresh = postcard::to_allocvec(&(8u128, cas(Some("1"), "3"))).expect("encode");
    let done = a.serve("control.propose", &fresh).await.expect("served");
    let resent = a.serve("control.propose", &fresh).await.expect("served");
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
    for _ in 0..200 {
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
async fn jobs_are_durable_and_a_stale_executor_is_fenced_off() {
    use noodle_control::jobs::{JobCommand, JobSpec, JobState};
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let job = |c: JobCommand| Proposal::new(Command::Job(c));
    let spec = JobSpec {
        command: vec!["hostname".into()],
        cpus: 1,
        mem_bytes: 0,
        gpus: 0,
        labels: Default::default(),
        submitter: "admin@a".into(),
        retries: 1,
        origin: "n0".into(),
        files: Vec::new(),
    };
    let submit = job(JobCommand::Submit {
        spec,
        at_ms: 1,
        submission: 42,
    });
    let Response::Created { id } = a.propose(submit.clone()).await.expect("submit") else {
        panic!("a submission creates a job");
    };
    // The same submission again (a retried forward): the same job, not a second one.
    assert_eq!(
        a.propose(submit).await.expect("submit again"),
        Response::Created { id }
    );
    let active = a.read(|v| v.active_jobs()).await.expect("read");
    assert_eq!(active.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    for (command, expect_done) in [
        (
            JobCommand::Place {
                id,
                node: "n1".into(),
            },
            true,
        ),
        (
            JobCommand::Started {
                id,
                epoch: 1,
                at_ms: 2,
            },
            true,
        ),
        (
            JobCommand::Lost {
                id,
                epoch: 1,
                at_ms: 3,
            },
            true,
        ),
        (
            JobCommand::Place {
                id,
                node: "n2".into(),
            },
            true,
        ),
        // The first executor's late report: refused, nothing changes.
        (
            JobCommand::Ended {
                id,
                epoch: 1,
                exit_code: 0,
                at_ms: 4,
            },
            false,
        ),
        (
            JobCommand::Ended {
                id,
                epoch: 2,
                exit_code: 3,
                at_ms: 5,
            },
            true,
        ),
    ] {
        let answer = a.propose(job(command.clone())).await.expect("propose");
        assert_eq!(
            answer == Response::Done,
            expect_done,
            "{command:?}: {answer:?}"
        );
    }
    // Durable: a restart reads the same record from disk.
    cl.kill(0).await;
    drop(a);
    let a = cl.start(0).await;
    let record = a.read(|v| v.job(id)).await.expect("read").expect("the job");
    assert_eq!(record.state, JobState::Failed { exit_code: 3 });
    let active = a.read(|v| v.active_jobs()).await.expect("read");
    assert!(
        active.is_empty(),
        "an ended job left the active index: {active:?}"
    );
    let recent = a.read(|v| v.recent_jobs(10)).await.expect("read");
    assert_eq!(recent.len(), 1);
    assert_eq!((record.epoch, record.node.as_deref()), (2, Some("n2")));
    assert_eq!(record.retries_left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_beyond_the_newest_are_forgotten_and_active_ones_kept() {
    use noodle_control::jobs::{JobCommand, JobSpec, limits};
    let cl = Cluster::new();
    let a = cl.start(0).await;
    a.initialize().await.expect("initialize");
    let spec = JobSpec {
        command: vec!["true".into()],
        cpus: 1,
        mem_bytes: 0,
        gpus: 0,
        labels: Default::default(),
        submitter: "admin@a".into(),
        retries: 0,
        origin: "n0".into(),
        files: Vec::new(),
    };
    let total = limits::JOBS_KEPT + 100;
    let batch = |commands: Vec<JobCommand>| {
        Proposal::new(Command::Batch(
            commands
                .into_iter()
                .map(|c| Proposal::new(Command::Job(c)))
                .collect(),
        ))
    };
    let ids: Vec<u64> = (1..=total).collect();
    for chunk in ids.chunks(1000) {
        let submits = chunk
            .iter()
            .map(|n| JobCommand::Submit {
                spec: spec.clone(),
                at_ms: 1,
                submission: 1_000_000 + n,
            })
            .collect();
        a.propose(batch(submits)).await.expect("submit");
    }
    // Job 2 stays queued; every other job ends.
    for chunk in ids.chunks(1000) {
        let cancels = chunk
            .iter()
            .filter(|id| **id != 2)
            .map(|id| JobCommand::Cancel { id: *id, at_ms: 2 })
            .collect();
        a.propose(batch(cancels)).await.expect("cancel");
    }
    let (first, second, newest_kept, oldest_kept) = a
        .read(|v| {
            Ok((
                v.job(1)?,
                v.job(2)?,
                v.job(total)?,
                v.job(total - limits::JOBS_KEPT + 1)?,
            ))
        })
        .await
        .expect("read");
    assert!(first.is_none(), "an old ended job was kept");
    assert!(second.is_some(), "a job that has not ended was forgotten");
    assert!(newest_kept.is_some() && oldest_kept.is_some());
    let kept = a.read(|v| v.jobs(0, usize::MAX)).await.expect("read").len() as u64;
    assert!(
        kept <= limits::JOBS_KEPT + 1,
        "{kept} jobs kept, at most {} expected",
        limits::JOBS_KEPT + 1
    );
    // The forgotten job's submission number is forgotten with it: it queues a new job.
    let again = a
        .propose(Proposal::new(Command::Job(JobCommand::Submit {
            spec,
            at_ms: 3,
            submission: 1_000_001,
        })))
        .await
        .expect("submit");
    assert_eq!(again, Response::Created { id: total + 1 });
}
