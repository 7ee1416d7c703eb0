//! The jobs' records in a real control plane (one member on a real redb file): durable,
//! fenced by placement epoch, bounded.

use noodle_control::{
    Command, Control, ControlConfig, Machines, Member, Proposal, Response, Store, Transport,
    TransportError, TransportFuture,
};
use noodle_jobs::machine::{self, JobsMachine};
use noodle_jobs::state::limits;
use noodle_jobs::{JobCommand, JobSpec, JobState};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A lone member has nobody to talk to.
struct Alone;

impl Transport for Alone {
    fn call(&self, _: &Member, _: &'static str, _: Vec<u8>, _: Duration) -> TransportFuture {
        Box::pin(async { Err(TransportError::Unreachable("alone".into())) })
    }
}

async fn start(dir: &Path) -> Control {
    let me = Member::new("n0", 0, "127.0.0.1:1".into());
    let store = Store::open(&dir.join("control.redb")).expect("open");
    let machines = Machines::new(vec![
        Arc::new(JobsMachine),
        Arc::new(noodle_fabric::machine::FabricMachine),
    ])
    .expect("machines");
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

fn job(command: &JobCommand) -> Proposal {
    Proposal::machine(machine::NAME, machine::encode(command))
}

fn spec(retries: u32) -> JobSpec {
    JobSpec {
        command: vec!["hostname".into()],
        cpus: 1,
        mem_bytes: 0,
        gpus: 0,
        labels: Default::default(),
        submitter: "admin@a".into(),
        retries,
        origin: "n0".into(),
        files: Vec::new(),
        reads: Vec::new(),
        writes: Vec::new(),
        held: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_durable_and_a_stale_executor_is_fenced_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(dir.path()).await;
    let submit = job(&JobCommand::Submit {
        spec: spec(1),
        at_ms: 1,
    });
    let Response::Created { id } = a.propose(submit.clone()).await.expect("submit") else {
        panic!("a submission creates a job");
    };
    // The same proposal again (a retried forward): the same job, not a second one.
    assert_eq!(
        a.propose(submit).await.expect("submit again"),
        Response::Created { id }
    );
    let active = a
        .read(|v| machine::view(v).active_jobs())
        .await
        .expect("read");
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
        let answer = a.propose(job(&command)).await.expect("propose");
        assert_eq!(
            answer == Response::Done,
            expect_done,
            "{command:?}: {answer:?}"
        );
    }
    // Durable: a restart reads the same record from disk.
    a.shutdown().await;
    drop(a);
    let a = start(dir.path()).await;
    let (record, active, recent) = a
        .read(|v| {
            let jobs = machine::view(v);
            Ok((jobs.job(id)?, jobs.active_jobs()?, jobs.recent_jobs(10)?))
        })
        .await
        .expect("read");
    let record = record.expect("the job");
    assert_eq!(record.state, JobState::Failed { exit_code: 3 });
    assert!(
        active.is_empty(),
        "an ended job left the active index: {active:?}"
    );
    assert_eq!(recent.len(), 1);
    assert_eq!((record.epoch, record.node.as_deref()), (2, Some("n2")));
    assert_eq!(record.retries_left, 0);
    // Garbage is refused before it is proposed; the state machine checks the bounds too.
    let before = a.status().commit_index;
    assert!(
        a.propose(Proposal::machine(machine::NAME, vec![0xff; 9]))
            .await
            .is_err()
    );
    assert_eq!(a.status().commit_index, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_beyond_the_newest_are_forgotten_and_active_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(dir.path()).await;
    let total = limits::JOBS_KEPT + 100;
    let batch = |commands: Vec<JobCommand>| {
        Proposal::new(Command::Batch(commands.iter().map(job).collect()))
    };
    let ids: Vec<u64> = (1..=total).collect();
    for chunk in ids.chunks(1000) {
        let submits = chunk
            .iter()
            .map(|_| JobCommand::Submit {
                spec: spec(0),
                at_ms: 1,
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
    let (first, second, newest_kept, oldest_kept, kept) = a
        .read(|v| {
            let jobs = machine::view(v);
            Ok((
                jobs.job(1)?,
                jobs.job(2)?,
                jobs.job(total)?,
                jobs.job(total - limits::JOBS_KEPT + 1)?,
                jobs.jobs(0, usize::MAX)?.len() as u64,
            ))
        })
        .await
        .expect("read");
    assert!(first.is_none(), "an old ended job was kept");
    assert!(second.is_some(), "a job that has not ended was forgotten");
    assert!(newest_kept.is_some() && oldest_kept.is_some());
    assert!(
        kept <= limits::JOBS_KEPT + 1,
        "{kept} jobs kept, at most {} expected",
        limits::JOBS_KEPT + 1
    );
    let again = a
        .propose(job(&JobCommand::Submit {
            spec: spec(0),
            at_ms: 3,
        }))
        .await
        .expect("submit");
    assert_eq!(again, Response::Created { id: total + 1 });
}

/// A job given `--write /out/` lets exactly the node it is placed on write versions under
/// `/out/` without a person's token, and only while it is placed there: a member cannot grant
/// itself a prefix, keep one after the job ends, or use another node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_job_grants_its_node_its_write_prefix_and_nothing_else() {
    use noodle_control::{Needs, StateMachine};
    use noodle_fabric::machine::{Content, FabricCommand, FabricMachine, Version, VersionId};
    assert_eq!(noodle_fabric::grants::HOLDER, machine::NAME);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(dir.path()).await;
    let write = |node: &str, path: &str| {
        noodle_fabric::machine::encode(&FabricCommand::Write {
            path: path.into(),
            version: Version {
                id: VersionId {
                    hlc: noodle_fabric::Hlc {
                        wall_ms: 1,
                        logical: 0,
                    },
                    node: node.into(),
                },
                creator: "alice".into(),
                tags: Default::default(),
                content: Some(Content {
                    manifest: [1; 32],
                    size: 1,
                    replicas: vec![node.into()],
                    bytes: None,
                }),
            },
        })
    };
    // Whether node `node` may forward a write of `path` with no person's token.
    let on_its_own = |a: &Control, node: &str, path: &str| {
        let needs = a
            .read_local(|v| {
                Ok(FabricMachine.forwarding(&v.machine("fabric"), node, &write(node, path)))
            })
            .expect("read");
        needs.iter().all(|n| *n == Needs::Node)
    };
    let mut with_writes = spec(0);
    with_writes.writes = vec!["/out/".into()];
    let Response::Created { id } = a
        .propose(job(&JobCommand::Submit {
            spec: with_writes,
            at_ms: 1,
        }))
        .await
        .expect("submit")
    else {
        panic!("a submission creates a job");
    };
    assert!(!on_its_own(&a, "n1", "/out/x"), "queued: no node has it");
    a.propose(job(&JobCommand::Place {
        id,
        node: "n1".into(),
    }))
    .await
    .expect("place");
    assert!(on_its_own(&a, "n1", "/out/x"));
    assert!(on_its_own(&a, "n1", "/out/deep/er"));
    for (node, path) in [("n1", "/outside"), ("n1", "/outx/y"), ("n2", "/out/x")] {
        assert!(!on_its_own(&a, node, path), "{node} {path}");
    }
    a.propose(job(&JobCommand::Started {
        id,
        epoch: 1,
        at_ms: 2,
    }))
    .await
    .expect("started");
    assert!(on_its_own(&a, "n1", "/out/x"), "still while it runs");
    a.propose(job(&JobCommand::Ended {
        id,
        epoch: 1,
        exit_code: 0,
        at_ms: 3,
    }))
    .await
    .expect("ended");
    assert!(!on_its_own(&a, "n1", "/out/x"), "gone once it ended");

    // Submitting such a job from a non-voter needs the person's fabric rights too.
    let mut reads_and_writes = spec(0);
    reads_and_writes.reads = vec!["/data/".into()];
    reads_and_writes.writes = vec!["/out/".into()];
    let needs = a
        .read_local(|v| {
            Ok(JobsMachine.forwarding(
                &v.machine(machine::NAME),
                "n1",
                &machine::encode(&JobCommand::Submit {
                    spec: reads_and_writes,
                    at_ms: 4,
                }),
            ))
        })
        .expect("read");
    for (action, prefix) in [("read", "/data/"), ("write", "/out/")] {
        assert!(
            needs.contains(&Needs::right("fabric", action, Some(prefix))),
            "{needs:?}"
        );
    }
}
