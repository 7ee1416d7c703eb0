//! Unit tests of the engine: one per behaviour the runtime relies on, table-driven where a
//! behaviour has cases. Each feeds inputs and compares the effects asked for.

use super::*;
use crate::state::JobFile;

const LEASE_MS: u64 = 10_000;

fn cfg() -> EngineConfig {
    EngineConfig {
        lease_ms: LEASE_MS,
        started_retries: 2,
        started_retry_pause_ms: 200,
        slots: 4,
        gpus: vec![0, 1],
        self_fence: true,
    }
}

/// Node `a`, in touch with the control plane at time 0.
fn engine() -> Engine {
    engine_with(cfg())
}

fn engine_with(cfg: EngineConfig) -> Engine {
    let mut e = Engine::new("a", cfg);
    e.contact(0, true);
    e
}

fn spec(cpus: u32, gpus: u32) -> JobSpec {
    JobSpec {
        command: vec!["true".into()],
        cpus,
        mem_bytes: 0,
        gpus,
        labels: BTreeMap::new(),
        submitter: "admin@a".into(),
        retries: 1,
        origin: "a".into(),
        files: Vec::new(),
        reads: Vec::new(),
        writes: Vec::new(),
        held: Vec::new(),
    }
}

fn job(id: u64, state: JobState) -> JobRecord {
    let mut j = JobRecord::queued(id, spec(1, 0), 0);
    if let Some((node, epoch)) = state.placement() {
        j.epoch = epoch;
        j.node = Some(node.to_string());
    }
    j.state = state;
    j
}

fn placed(id: u64, node: &str, epoch: u64) -> JobRecord {
    job(
        id,
        JobState::Placed {
            node: node.into(),
            epoch,
        },
    )
}

fn running(id: u64, node: &str, epoch: u64) -> JobRecord {
    job(
        id,
        JobState::Running {
            node: node.into(),
            epoch,
        },
    )
}

fn follower() -> ClusterView {
    ClusterView {
        leader: false,
        alive: ["a".to_string()].into(),
        scheduler: None,
    }
}

fn leader(alive: &[&str], sched: Option<noodle_sched::Scheduler>) -> ClusterView {
    ClusterView {
        leader: true,
        alive: alive.iter().map(|s| s.to_string()).collect(),
        scheduler: sched,
    }
}

fn observe(e: &mut Engine, now_ms: u64, active: &[JobRecord]) -> Vec<Effect> {
    e.observe(now_ms, active, |_| None, follower());
    e.effects()
}

fn start(j: &JobRecord, epoch: u64, gpus: Vec<u32>) -> Effect {
    Effect::Start {
        job: Box::new(j.clone()),
        epoch,
        gpus,
    }
}

fn signal(id: u64, epoch: u64, signal: Signal) -> Effect {
    Effect::Signal { id, epoch, signal }
}

fn started(id: u64, epoch: u64, at_ms: u64) -> JobCommand {
    JobCommand::Started { id, epoch, at_ms }
}

fn ended(id: u64, epoch: u64, exit_code: i32, at_ms: u64) -> JobCommand {
    JobCommand::Ended {
        id,
        epoch,
        exit_code,
        at_ms,
    }
}

fn lost(id: u64, epoch: u64, at_ms: u64) -> JobCommand {
    JobCommand::Lost { id, epoch, at_ms }
}

fn propose(c: JobCommand) -> Effect {
    Effect::Propose(c)
}

/// Engine `a` running job 1 at epoch 1 (started at 10, start report applied).
fn running_one() -> (Engine, JobRecord) {
    let mut e = engine();
    let j = placed(1, "a", 1);
    assert_eq!(
        observe(&mut e, 0, std::slice::from_ref(&j)),
        vec![start(&j, 1, vec![])]
    );
    e.process_started(10, 1, 1);
    assert_eq!(e.effects(), vec![propose(started(1, 1, 10))]);
    e.reported(11, &started(1, 1, 10), Reported::Applied);
    assert_eq!(e.effects(), vec![]);
    (e, running(1, "a", 1))
}

#[test]
fn a_job_placed_here_starts_once() {
    let mut e = engine();
    let j = placed(1, "a", 1);
    let elsewhere = placed(2, "b", 1);
    let active = [j.clone(), elsewhere];
    assert_eq!(observe(&mut e, 0, &active), vec![start(&j, 1, vec![])]);
    assert_eq!(observe(&mut e, 250, &active), vec![], "running: not again");
    e.start_failed(300, 1, 1, 127, "no such program".into());
    e.effects();
    assert_eq!(
        observe(&mut e, 500, &active),
        vec![],
        "ended here: not again"
    );
    assert_eq!(e.running(), 0);
}

#[test]
fn a_job_recorded_running_here_that_does_not_run_here_is_lost() {
    let mut e = engine();
    let j = running(1, "a", 3);
    assert_eq!(
        observe(&mut e, 5, std::slice::from_ref(&j)),
        vec![propose(lost(1, 3, 5))]
    );
    assert_eq!(observe(&mut e, 250, &[j]), vec![], "reported once");
}

#[test]
fn the_start_report_is_retried_then_the_job_is_fenced() {
    let mut e = engine();
    let j = placed(1, "a", 1);
    observe(&mut e, 0, &[j]);
    e.process_started(10, 1, 1);
    let report = started(1, 1, 10);
    assert_eq!(e.effects(), vec![propose(report.clone())]);
    // Two retries (started_retries), 200 ms apart, each after the previous one failed.
    for (failed_at, due_at) in [(20, 220), (300, 500)] {
        e.reported(failed_at, &report, Reported::NotDelivered);
        e.tick(due_at - 1);
        assert_eq!(e.effects(), vec![], "not before the pause");
        e.tick(due_at);
        assert_eq!(e.effects(), vec![propose(report.clone())]);
    }
    e.reported(600, &report, Reported::NotDelivered);
    assert_eq!(e.effects(), vec![signal(1, 1, Signal::Fence)]);
    e.process_exited(650, 1, 1, 137);
    assert_eq!(e.effects(), vec![propose(lost(1, 1, 650))]);
}

/// A process that ends while its start report is on its way: the end is reported after the
/// start's answer (two reports proposed at once may be applied in either order, and an end
/// applied first would make the start refused and the record lose its start time).
#[test]
fn an_end_waits_for_the_answer_to_the_start_report() {
    let mut e = engine();
    observe(&mut e, 0, &[placed(1, "a", 1)]);
    e.process_started(10, 1, 1);
    assert_eq!(e.effects(), vec![propose(started(1, 1, 10))]);
    e.process_exited(12, 1, 1, 0);
    assert_eq!(e.effects(), vec![], "the end waits");
    e.reported(20, &started(1, 1, 10), Reported::Applied);
    assert_eq!(e.effects(), vec![propose(ended(1, 1, 0, 12))]);
    assert_eq!(e.running(), 0);

    // Not delivered: the end goes now, and the start is not sent again.
    let mut e = engine();
    observe(&mut e, 0, &[placed(1, "a", 1)]);
    e.process_started(10, 1, 1);
    e.effects();
    e.process_exited(12, 1, 1, 0);
    e.reported(20, &started(1, 1, 10), Reported::NotDelivered);
    assert_eq!(e.effects(), vec![propose(ended(1, 1, 0, 12))]);
    e.tick(1_000);
    assert_eq!(e.effects(), vec![]);

    // Cancelled meanwhile: the start is refused, the process is gone, nothing more to say.
    let mut e = engine();
    observe(&mut e, 0, &[placed(2, "a", 1)]);
    e.process_started(10, 2, 1);
    e.effects();
    e.process_exited(12, 2, 1, 0);
    e.reported(20, &started(2, 1, 10), Reported::Refused);
    assert_eq!(e.effects(), vec![]);
    assert_eq!(e.running(), 0);
}

#[test]
fn what_an_execution_reports_depends_on_how_it_ends() {
    // (start report's answer, signal sent, how it ends, the report)
    type Case = (
        Reported,
        Option<Signal>,
        Result<i32, ()>,
        Option<JobCommand>,
    );
    let failed = |error: &str| JobCommand::StartFailed {
        id: 1,
        epoch: 1,
        exit_code: 127,
        error: error.into(),
        at_ms: 900,
    };
    let cases: [Case; 9] = [
        (Reported::Applied, None, Ok(0), Some(ended(1, 1, 0, 900))),
        (Reported::Applied, None, Ok(3), Some(ended(1, 1, 3, 900))),
        (
            Reported::Applied,
            Some(Signal::Terminate),
            Ok(143),
            Some(ended(1, 1, 143, 900)),
        ),
        (Reported::Applied, Some(Signal::Kill), Ok(137), None),
        (
            Reported::Applied,
            Some(Signal::Fence),
            Ok(137),
            Some(lost(1, 1, 900)),
        ),
        // Refused: cancelled or placed elsewhere meanwhile; killed, nothing reported.
        (Reported::Refused, None, Ok(137), None),
        // Never spawned: a start failure, or a signal that came first.
        (Reported::Applied, None, Err(()), Some(failed("boom"))),
        (Reported::Applied, Some(Signal::Kill), Err(()), None),
        (
            Reported::Applied,
            Some(Signal::Fence),
            Err(()),
            Some(lost(1, 1, 900)),
        ),
    ];
    for (i, (answer, sent, end, report)) in cases.into_iter().enumerate() {
        let mut e = engine();
        observe(&mut e, 0, &[placed(1, "a", 1)]);
        if end.is_ok() {
            e.process_started(10, 1, 1);
            e.effects();
            e.reported(11, &started(1, 1, 10), answer);
            if answer == Reported::Refused {
                assert_eq!(e.effects(), vec![signal(1, 1, Signal::Kill)], "case {i}");
            }
        }
        if let Some(s) = sent {
            e.signal(1, s);
            assert_eq!(e.effects(), vec![signal(1, 1, s)], "case {i}");
        }
        match end {
            Ok(code) => e.process_exited(900, 1, 1, code),
            Err(()) => e.start_failed(900, 1, 1, 127, "boom".into()),
        }
        assert_eq!(
            e.effects(),
            report.into_iter().map(propose).collect::<Vec<_>>(),
            "case {i}"
        );
        assert_eq!(e.running(), 0, "case {i}");
    }
}

#[test]
fn a_start_failure_is_cut_to_the_limit_at_a_character_boundary() {
    let mut e = engine();
    observe(&mut e, 0, &[placed(1, "a", 1)]);
    e.start_failed(5, 1, 1, 126, "é".repeat(limits::ERROR_BYTES_MAX));
    let [Effect::Propose(JobCommand::StartFailed { error, .. })] = &e.effects()[..] else {
        panic!("one start failure");
    };
    assert!(error.len() <= limits::ERROR_BYTES_MAX - 8);
    assert!(error.len() >= limits::ERROR_BYTES_MAX - 9);
    assert!(error.chars().all(|c| c == 'é'));
}

#[test]
fn a_report_that_did_not_get_through_is_sent_again_while_the_job_waits_for_it() {
    let (mut e, j) = running_one();
    e.process_exited(100, 1, 1, 0);
    let report = ended(1, 1, 0, 100);
    assert_eq!(e.effects(), vec![propose(report.clone())]);
    e.reported(110, &report, Reported::NotDelivered);
    assert_eq!(e.effects(), vec![]);
    // Still waited for (the record holds this node's placement at epoch 1): again, each time
    // it does not get through.
    assert_eq!(
        observe(&mut e, 250, std::slice::from_ref(&j)),
        vec![propose(report.clone())]
    );
    e.reported(260, &report, Reported::NotDelivered);
    assert_eq!(observe(&mut e, 500, &[j]), vec![propose(report.clone())]);
    e.reported(510, &report, Reported::NotDelivered);
    // The job moved on (declared lost by the leader and placed on b): dropped.
    assert_eq!(observe(&mut e, 750, &[placed(1, "b", 2)]), vec![]);
    assert_eq!(observe(&mut e, 1000, &[running(1, "a", 1)]), vec![]);
}

#[test]
fn an_execution_that_is_no_longer_ours_is_stopped() {
    // (the job's record now, or its ended state, and the signal)
    let cases: [(Option<JobRecord>, Option<JobState>, Signal); 5] = [
        (None, Some(JobState::Cancelled), Signal::Terminate),
        (
            None,
            Some(JobState::Succeeded { exit_code: 0 }),
            Signal::Kill,
        ),
        (None, None, Signal::Kill),
        (Some(job(1, JobState::Queued)), None, Signal::Kill),
        (Some(placed(1, "b", 2)), None, Signal::Kill),
    ];
    for (i, (record, ended_state, expected)) in cases.into_iter().enumerate() {
        let (mut e, _) = running_one();
        let active: Vec<JobRecord> = record.into_iter().collect();
        let state = ended_state.clone();
        e.observe(300, &active, |_| state.clone(), follower());
        assert_eq!(e.effects(), vec![signal(1, 1, expected)], "case {i}");
        e.observe(550, &active, |_| ended_state.clone(), follower());
        assert_eq!(e.effects(), vec![], "case {i}: signalled once");
        assert_eq!(e.running(), 1, "case {i}: until its process exits");
    }
}

#[test]
fn a_node_that_loses_the_control_plane_for_half_the_lease_fences_its_jobs() {
    for self_fence in [true, false] {
        let mut e = engine_with(EngineConfig {
            self_fence,
            ..cfg()
        });
        observe(&mut e, 0, &[placed(1, "a", 1)]);
        e.process_started(10, 1, 1);
        e.reported(11, &started(1, 1, 10), Reported::Applied);
        e.effects();
        e.contact(2_000, true);
        e.contact(4_000, false);
        e.tick(2_000 + LEASE_MS / 2 - 1);
        assert_eq!(e.effects(), vec![], "in touch until half the lease");
        e.tick(2_000 + LEASE_MS / 2);
        let fenced = if self_fence {
            vec![signal(1, 1, Signal::Fence)]
        } else {
            vec![]
        };
        assert_eq!(e.effects(), fenced, "self_fence {self_fence}");
        e.tick(60_000);
        assert_eq!(e.effects(), vec![], "once");
    }
}

#[test]
fn nothing_starts_without_recent_contact() {
    let j = placed(1, "a", 1);
    let mut e = Engine::new("a", cfg());
    assert!(!e.wants_contact());
    assert_eq!(
        observe(&mut e, 0, std::slice::from_ref(&j)),
        vec![],
        "no contact since it started"
    );
    assert!(e.wants_contact(), "a job waits for contact");
    e.contact(100, false);
    assert_eq!(observe(&mut e, 250, std::slice::from_ref(&j)), vec![]);
    e.contact(300, true);
    // Contact half a lease old is too old.
    assert_eq!(
        observe(&mut e, 300 + LEASE_MS / 2, std::slice::from_ref(&j)),
        vec![]
    );
    e.contact(20_000, true);
    assert_eq!(
        observe(&mut e, 20_100, std::slice::from_ref(&j)),
        vec![start(&j, 1, vec![])]
    );
    assert!(
        e.wants_contact(),
        "something runs: self-fencing needs contact"
    );
}

#[test]
fn a_new_job_waits_while_a_stopped_one_still_holds_the_slots() {
    let mut e = engine();
    let big = |id, epoch| {
        let mut j = placed(id, "a", epoch);
        j.spec = spec(3, 0);
        j
    };
    let (first, second) = (big(1, 1), big(2, 1));
    observe(&mut e, 0, std::slice::from_ref(&first));
    e.process_started(10, 1, 1);
    e.reported(11, &started(1, 1, 10), Reported::Applied);
    e.effects();
    // Job 1 is cancelled and job 2 placed here in its slots, seen at the same look.
    let effects = {
        e.observe(
            300,
            std::slice::from_ref(&second),
            |_| Some(JobState::Cancelled),
            follower(),
        );
        e.effects()
    };
    assert_eq!(
        effects,
        vec![signal(1, 1, Signal::Terminate)],
        "3 + 3 CPUs > 4 slots"
    );
    assert_eq!(observe(&mut e, 550, std::slice::from_ref(&second)), vec![]);
    e.process_exited(600, 1, 1, 143);
    e.effects();
    assert_eq!(
        observe(&mut e, 800, std::slice::from_ref(&second)),
        vec![start(&second, 1, vec![])]
    );
}

#[test]
fn gpus_are_handed_out_once_and_a_job_that_finds_too_few_fails() {
    let mut e = engine();
    let with_gpus = |id, gpus| {
        let mut j = placed(id, "a", 1);
        j.spec = spec(1, gpus);
        j
    };
    let (one, two, three) = (with_gpus(1, 1), with_gpus(2, 1), with_gpus(3, 1));
    let effects = observe(&mut e, 0, &[one.clone(), two.clone(), three.clone()]);
    let failed = JobCommand::StartFailed {
        id: 3,
        epoch: 1,
        exit_code: 126,
        error: "node a has 0 free GPUs; the job asks for 1".into(),
        at_ms: 0,
    };
    assert_eq!(
        effects,
        vec![
            start(&one, 1, vec![0]),
            start(&two, 1, vec![1]),
            propose(failed)
        ]
    );
    e.start_failed(5, 1, 1, 127, "no such program".into());
    e.effects();
    let again = with_gpus(4, 1);
    assert_eq!(
        observe(&mut e, 250, &[two, again.clone()]),
        vec![start(&again, 1, vec![0])]
    );
}

#[test]
fn the_leader_declares_lost_the_jobs_of_a_node_gone_for_a_lease() {
    let mut e = engine();
    let on_b = running(1, "b", 4);
    let active = [on_b.clone(), placed(2, "c", 1)];
    let look = |e: &mut Engine, now, leading: bool| {
        let view = if leading {
            leader(&["a", "c"], None)
        } else {
            follower()
        };
        e.observe(now, &active, |_| None, view);
        e.effects()
    };
    assert_eq!(
        look(&mut e, 1_000, true),
        vec![],
        "b first seen gone at 1 s"
    );
    assert_eq!(look(&mut e, 1_000 + LEASE_MS - 1, true), vec![]);
    assert_eq!(
        look(&mut e, 1_000 + LEASE_MS, true),
        vec![propose(lost(1, 4, 11_000))]
    );
    assert_eq!(
        look(&mut e, 11_250, true),
        vec![],
        "not again while proposed"
    );
    e.reported(11_300, &lost(1, 4, 11_000), Reported::NotDelivered);
    assert_eq!(
        look(&mut e, 11_500, true),
        vec![propose(lost(1, 4, 11_500))],
        "again"
    );
    e.reported(11_600, &lost(1, 4, 11_500), Reported::Applied);
    // Leadership lost and won back: the timer starts again.
    assert_eq!(look(&mut e, 12_000, false), vec![]);
    assert_eq!(look(&mut e, 13_000, true), vec![]);
    assert_eq!(look(&mut e, 13_000 + LEASE_MS - 1, true), vec![]);
    assert_eq!(
        look(&mut e, 13_000 + LEASE_MS, true),
        vec![propose(lost(1, 4, 23_000))]
    );
}

#[test]
fn the_leader_places_queued_jobs_around_the_placed_ones() {
    let sched = || {
        let mut s = noodle_sched::Scheduler::default();
        for (id, cpus) in [("a", 2), ("b", 1)] {
            let node = noodle_sched::NodeSpec {
                id: id.into(),
                cpus,
                mem_bytes: 1 << 30,
                gpus: 0,
                labels: BTreeMap::new(),
            };
            s.add_node(node).expect("a node");
        }
        Some(s)
    };
    let mut e = engine();
    // b's slot and one of a's are held by placed and running jobs; room for one job.
    let active = [
        running(1, "b", 1),
        placed(2, "a", 1),
        job(3, JobState::Queued),
        job(4, JobState::Queued),
    ];
    e.observe(0, &active, |_| None, leader(&["a", "b"], sched()));
    let place = JobCommand::Place {
        id: 3,
        node: "a".into(),
    };
    let effects = e.effects();
    assert_eq!(effects[1..], [propose(place.clone())], "{effects:?}");
    // No new round while the placement is not answered.
    e.observe(250, &active, |_| None, leader(&["a", "b"], sched()));
    assert_eq!(e.effects(), vec![]);
    e.reported(300, &place, Reported::Applied);
    let mut now = active.clone();
    now[2] = placed(3, "a", 1);
    e.observe(500, &now, |_| None, leader(&["a", "b"], sched()));
    assert_eq!(
        e.effects(),
        vec![start(&now[2], 1, vec![])],
        "full: 4 waits"
    );
}

#[test]
fn sched_spec_carries_the_shipped_bytes_as_input_on_the_origin() {
    let mut s = spec(2, 1);
    assert_eq!(sched_spec(9, &s).inputs, vec![]);
    s.files = vec![
        JobFile {
            name: "a".into(),
            manifest: "0".repeat(64),
            executable: false,
            bytes: 10,
        },
        JobFile {
            name: "b".into(),
            manifest: "1".repeat(64),
            executable: true,
            bytes: 5,
        },
    ];
    let j = sched_spec(9, &s);
    assert_eq!((j.id, j.cpus, j.gpus), (9, 2, 1));
    assert_eq!(j.inputs, vec![("a".to_string(), 15)]);
}

/// A job reading fabric data goes to a node that holds it rather than to an equal one that
/// would fetch it.
#[test]
fn a_job_is_placed_where_its_fabric_input_is() {
    for holder in ["b", "c"] {
        let mut s = noodle_sched::Scheduler::default();
        for id in ["a", "b", "c"] {
            let node = noodle_sched::NodeSpec {
                id: id.into(),
                cpus: 4,
                mem_bytes: 1 << 30,
                gpus: 0,
                labels: BTreeMap::new(),
            };
            s.add_node(node).expect("a node");
        }
        for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
            s.set_rtt(x, y, 1_000);
            s.set_rtt(y, x, 1_000);
        }
        let mut j = spec(1, 0);
        j.reads = vec!["/data/".into()];
        j.held = vec![(holder.to_string(), 8 << 30)];
        s.submit(sched_spec(1, &j)).expect("submit");
        let placed = s.place();
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].node, holder);
    }
}

#[test]
fn gpus_are_picked_from_the_free_ones() {
    let all = [0, 1, 2, 3];
    // (this node's GPUs, those in use, how many the job asks for, the pick)
    type Case<'a> = (&'a [u32], &'a [u32], u32, Option<Vec<u32>>);
    let cases: [Case; 5] = [
        (&all, &[], 0, Some(vec![])),
        (&all, &[], 2, Some(vec![0, 1])),
        (&all, &[0, 2], 2, Some(vec![1, 3])),
        (&all, &[0, 2], 3, None),
        (&[], &[], 1, None),
    ];
    for (all, in_use, n, expected) in cases {
        assert_eq!(
            pick_gpus(all, in_use, n),
            expected,
            "{all:?} {in_use:?} {n}"
        );
    }
}

#[test]
fn a_process_that_exits_while_its_start_report_is_retried_reports_its_end() {
    let mut e = engine();
    observe(&mut e, 0, &[placed(1, "a", 1)]);
    e.process_started(10, 1, 1);
    e.effects();
    e.reported(20, &started(1, 1, 10), Reported::NotDelivered);
    e.process_exited(100, 1, 1, 0);
    // Ended is accepted from a placed job too: no need to report the start first.
    assert_eq!(e.effects(), vec![propose(ended(1, 1, 0, 100))]);
    e.tick(1_000);
    assert_eq!(e.effects(), vec![], "no start report after the end");
}
