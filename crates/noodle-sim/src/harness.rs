//! The simulated cluster: five control-plane nodes, the clients, the checker and the nemesis.
//!
//! Everything a run shares across host restarts lives in [`Shared`], outside turmoil: the
//! disks, who is up, the leader seen in each term, the register history and the acknowledged
//! writes. The nemesis runs between simulation steps, because crashing and restarting hosts
//! are operations on the simulation itself.

use crate::disk::Disk;
use crate::history::{self, History, OpId, RegisterOp, RegisterRet};
use crate::net::{self, PORT, SimTransport};
use crate::{Failure, SimFailure, SimOptions, SimReport};
use noodle_control::{
    AppendDurability, Command, Control, ControlConfig, ControlError, Member, PeerHealth, Proposal,
    RaftId, Response, Store, TransportError,
};
use openraft::{RaftMetrics, ServerState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use turmoil::Sim;
use turmoil::net::TcpListener;

/// Control-plane nodes, `n0` to `n4`.
pub(crate) const NODES: usize = 5;

/// The one method nodes answer for clients, besides the control plane's own.
const CLIENT_METHOD: &str = "sim.request";

/// How long a client waits for an answer: longer than the control plane's request timeout,
/// so that most failures are answers rather than timeouts.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// A node gives up serving one connection after this long.
const SERVE_TIMEOUT: Duration = Duration::from_secs(8);
/// How often each node runs membership upkeep.
const MAINTAIN_EVERY: Duration = Duration::from_millis(250);
/// Faults start once the cluster had time to grow to five voters.
const WARMUP: Duration = Duration::from_millis(1500);
/// After healing, the checker waits this long before its final reads.
const SETTLE: Duration = Duration::from_millis(1000);
/// The final reads must succeed within this long after healing.
const RECOVERY_MAX: Duration = Duration::from_secs(15);
/// Lines of the trace a failure keeps.
const TRACE_TAIL_LINES: usize = 200;

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn member(i: usize) -> Member {
    Member {
        node_id: node_name(i),
        addr: format!("n{i}:{PORT}"),
    }
}

fn register_key(r: usize) -> String {
    format!("r{r}")
}

/// Timings scaled to the simulated network (1 to 20 ms a message).
fn control_config() -> ControlConfig {
    ControlConfig {
        heartbeat: Duration::from_millis(60),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        snapshot_every: 100,
        keep_logs: 20,
        request_timeout: Duration::from_secs(2),
        replace_dead_after: Duration::from_secs(3),
        ..ControlConfig::default()
    }
}

/// Simulated time, as the host running this code sees it.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What clients ask the nodes.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Cas {
        register: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    Write {
        key: String,
        value: String,
    },
    Read {
        register: String,
    },
    /// Every configuration key, through a linearizable read.
    Dump,
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Done,
    CasFailed {
        current: Option<Vec<u8>>,
    },
    Value(Option<Vec<u8>>),
    Dump {
        config: Vec<(String, String)>,
        commit_index: u64,
    },
    /// The request certainly changed nothing.
    NotApplied(String),
    /// The request may or may not have taken effect.
    Unknown(String),
}

#[derive(Debug, Default)]
struct Counts {
    writes_acknowledged: usize,
    writes_not_acknowledged: usize,
    crashes: usize,
    power_losses: usize,
    partitions: usize,
    delays: usize,
}

struct State {
    initialized: bool,
    up: [bool; NODES],
    /// Nodes seen as leader, by term.
    leaders: BTreeMap<u64, BTreeSet<usize>>,
    failures: Vec<Failure>,
    history: History,
    acknowledged: BTreeMap<String, String>,
    final_dump: Option<(Vec<(String, String)>, u64)>,
    clients_done: usize,
    counts: Counts,
    /// The Raft metrics of each running node, sampled after every step.
    metrics: Vec<Option<watch::Receiver<RaftMetrics<RaftId, Member>>>>,
    /// Voters in the leader's membership when the faults began.
    voters_before_faults: Option<usize>,
    fingerprint: blake3::Hasher,
    trace_tail: VecDeque<String>,
    trace: Option<Vec<String>>,
}

/// What a run keeps across host crashes and restarts.
pub(crate) struct Shared {
    seed: u64,
    opts: SimOptions,
    disks: Vec<Disk>,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(seed: u64, opts: SimOptions) -> Shared {
        let keep_trace = opts.keep_trace;
        Shared {
            seed,
            opts,
            disks: (0..NODES).map(|_| Disk::new()).collect(),
            state: Mutex::new(State {
                initialized: false,
                up: [false; NODES],
                leaders: BTreeMap::new(),
                failures: Vec::new(),
                history: History::default(),
                acknowledged: BTreeMap::new(),
                final_dump: None,
                clients_done: 0,
                counts: Counts::default(),
                metrics: vec![None; NODES],
                voters_before_faults: None,
                fingerprint: blake3::Hasher::new(),
                trace_tail: VecDeque::new(),
                trace: keep_trace.then(Vec::new),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // One thread runs the simulation; a poisoned lock only means a host panicked, and the
        // state is still the record of what happened.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chaos_end(&self) -> Duration {
        WARMUP + self.opts.chaos
    }
}

#[cfg(test)]
impl Shared {
    pub(crate) fn watch_node(
        &self,
        i: usize,
        metrics: watch::Receiver<RaftMetrics<RaftId, Member>>,
    ) {
        self.state().metrics[i] = Some(metrics);
    }

    pub(crate) fn acknowledge(&self, key: &str, value: &str) {
        self.state().acknowledged.insert(key.into(), value.into());
    }

    pub(crate) fn set_final_dump(&self, config: &[(&str, &str)]) {
        let config = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.state().final_dump = Some((config, 1));
    }
}

impl State {
    /// Records an event: it goes into the run's fingerprint and the trace kept for failures.
    fn trace(&mut self, at: Duration, event: String) {
        let line = format!("{:>6}ms {event}", at.as_millis());
        self.fingerprint.update(line.as_bytes());
        self.fingerprint.update(b"\n");
        if self.trace_tail.len() == TRACE_TAIL_LINES {
            self.trace_tail.pop_front();
        }
        if let Some(trace) = &mut self.trace {
            trace.push(line.clone());
        }
        self.trace_tail.push_back(line);
    }

    fn fail(&mut self, at: Duration, failure: Failure) {
        self.trace(at, format!("FAILURE {failure}"));
        self.failures.push(failure);
    }
}

// ---- nodes ----

/// The software of node `i`, started again on every restart.
async fn node(shared: Arc<Shared>, i: usize) -> turmoil::Result {
    let name = node_name(i);
    let mut store = Store::with_backend(shared.disks[i].backend())
        .map_err(|e| format!("{name} cannot open its database: {e}"))?;
    if shared.opts.ack_before_fsync {
        store.set_append_durability(AppendDurability::UnsafeAckBeforeFsync);
    }
    let transport = Arc::new(SimTransport::start());
    let control = Control::start(
        member(i),
        control_config(),
        store,
        transport,
        noodle_control::Machines::default(),
    )
    .await
    .map_err(|e| format!("{name} cannot start its control plane: {e}"))?;
    let founder = i == 0 && !shared.state().initialized;
    if founder {
        control
            .initialize()
            .await
            .map_err(|e| format!("{name} cannot initialize the cluster: {e}"))?;
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT))).await?;
    {
        let mut state = shared.state();
        state.initialized |= founder;
        state.up[i] = true;
        state.metrics[i] = Some(control.member_metrics());
        state.trace(now(), format!("{name} up"));
    }
    // LocalSet tasks, for the reason in `net`'s module comment.
    tokio::task::spawn_local(maintain_membership(shared.clone(), control.clone()));
    loop {
        let (stream, _) = listener.accept().await?;
        let control = control.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(SERVE_TIMEOUT, serve(stream, control)).await;
        });
    }
}

/// Answers one connection: a Raft message from a peer or a client's request.
async fn serve(mut stream: turmoil::net::TcpStream, control: Control) {
    let Ok((method, body)) = net::read_request(&mut stream).await else {
        return;
    };
    // Who calls, as the node's link would tell from the certificate: here, the host's name.
    let caller = stream
        .peer_addr()
        .ok()
        .and_then(|a| turmoil::reverse_lookup(a.ip()))
        .unwrap_or_default();
    let answer = if method == CLIENT_METHOD {
        let answer = match postcard::from_bytes(&body) {
            Ok(request) => answer(&control, request).await,
            Err(e) => Answer::NotApplied(format!("malformed request: {e}")),
        };
        postcard::to_allocvec(&answer).map_err(|e| e.to_string())
    } else {
        control
            .serve(&caller, &method, &body)
            .await
            .ok_or_else(|| format!("unknown method {method:?}"))
    };
    let _ = net::write_answer(&mut stream, answer.as_deref().map_err(|e| e.as_str())).await;
}

async fn answer(control: &Control, request: Request) -> Answer {
    match request {
        Request::Cas {
            register,
            expected,
            new,
        } => {
            let command = Command::Cas {
                key: register,
                expected,
                new,
            };
            proposal_answer(control.propose(Proposal::new(command)).await)
        }
        Request::Write { key, value } => {
            let command = Command::ConfigSet { key, value };
            proposal_answer(control.propose(Proposal::new(command)).await)
        }
        Request::Read { register } => match control.read(|v| v.register(&register)).await {
            Ok(v) => Answer::Value(v),
            Err(e) => Answer::NotApplied(e.to_string()),
        },
        Request::Dump => match control.read(|v| v.config_list()).await {
            Ok(config) => Answer::Dump {
                config,
                commit_index: control.status().commit_index,
            },
            Err(e) => Answer::NotApplied(e.to_string()),
        },
    }
}

/// Which proposal errors say for certain that nothing was written.
fn proposal_answer(result: Result<Response, ControlError>) -> Answer {
    match result {
        Ok(Response::Done) => Answer::Done,
        Ok(Response::CasFailed { current }) => Answer::CasFailed { current },
        // Applied as a no-op: nothing changed.
        Ok(Response::Rejected(why)) => Answer::NotApplied(why),
        // Only a batch is answered with a batch: not knowing what happened is all we can say.
        Ok(other @ (Response::Batch(_) | Response::Created { .. })) => {
            Answer::Unknown(format!("unexpected answer {other:?}"))
        }
        // Every attempt was refused before it reached a leader's log, or the command was
        // invalid before it was proposed.
        Err(e @ (ControlError::NoLeader(_) | ControlError::Rejected(_))) => {
            Answer::NotApplied(e.to_string())
        }
        Err(e) => Answer::Unknown(e.to_string()),
    }
}

impl Shared {
    /// Looks at every running node's Raft metrics, between two simulation steps: leadership
    /// per term, and fatal errors. (Sampling here rather than in a task waiting on the metrics
    /// channel: tokio wakes a channel's waiters in an order no seed controls.)
    pub(crate) fn sample_metrics(&self, at: Duration) {
        let mut state = self.state();
        let seen: Vec<(usize, Option<u64>, Option<String>, usize)> = state
            .metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let m = m.as_ref()?.borrow();
                let leader_of = (m.state == ServerState::Leader).then_some(m.current_term);
                let fatal = m.running_state.as_ref().err().map(|e| e.to_string());
                let voters = m.membership_config.membership().voter_ids().count();
                Some((i, leader_of, fatal, voters))
            })
            .collect();
        if at >= WARMUP && state.voters_before_faults.is_none() {
            let voters = seen.iter().filter(|s| s.1.is_some()).map(|s| s.3).max();
            state.voters_before_faults = Some(voters.unwrap_or(0));
        }
        for (i, leader_of, fatal, _) in seen {
            if let Some(error) = fatal {
                let node = node_name(i);
                let known = state
                    .failures
                    .iter()
                    .any(|f| matches!(f, Failure::NodeFatal { node: n, .. } if *n == node));
                if !known {
                    state.fail(at, Failure::NodeFatal { node, error });
                }
            }
            let Some(term) = leader_of else {
                continue;
            };
            let leaders = state.leaders.entry(term).or_default();
            if !leaders.insert(i) {
                continue;
            }
            let first = leaders.iter().copied().find(|n| *n != i);
            state.trace(at, format!("n{i} leads term {term}"));
            if let Some(first) = first {
                let failure = Failure::TwoLeaders {
                    term,
                    first: node_name(first),
                    second: node_name(i),
                };
                state.fail(at, failure);
            }
        }
    }
}

/// Membership upkeep, with the harness's knowledge of who is up as the health report.
async fn maintain_membership(shared: Arc<Shared>, control: Control) {
    loop {
        tokio::time::sleep(MAINTAIN_EVERY).await;
        let up = shared.state().up;
        let peers: Vec<PeerHealth> = (0..NODES)
            .map(|i| PeerHealth {
                member: member(i),
                alive: up[i],
            })
            .collect();
        // A membership change waits for a quorum that a partition may withhold.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), control.maintain_membership(&peers)).await;
    }
}

// ---- clients ----

async fn ask(node: usize, request: &Request) -> Answer {
    let body = match postcard::to_allocvec(request) {
        Ok(body) => body,
        Err(e) => return Answer::NotApplied(format!("cannot encode the request: {e}")),
    };
    match net::call(&member(node).addr, CLIENT_METHOD, &body, CLIENT_TIMEOUT).await {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .unwrap_or_else(|e| Answer::Unknown(format!("malformed answer: {e}"))),
        Err(TransportError::Unreachable(e)) => Answer::NotApplied(e),
        Err(TransportError::Failed(e)) => Answer::Unknown(e),
    }
}

/// Seeds one host's generator: each host draws from its own stream.
fn rng_for(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// One register operation: recorded, sent to `node`, and its outcome recorded.
async fn register_op(
    shared: &Shared,
    client: usize,
    node: usize,
    register: usize,
    op: RegisterOp,
) -> Option<RegisterRet> {
    let id: OpId = shared.state().history.invoke(client, register, op);
    let request = match op {
        RegisterOp::Read => Request::Read {
            register: register_key(register),
        },
        RegisterOp::Cas { expected, new } | RegisterOp::CasUnknown { expected, new } => {
            Request::Cas {
                register: register_key(register),
                expected: history::encode(expected),
                new: history::encode(new),
            }
        }
    };
    let answer = ask(node, &request).await;
    let at = now();
    let mut state = shared.state();
    let ret = match (op, answer) {
        (RegisterOp::Read, Answer::Value(v)) => Some(RegisterRet::Value(history::decode(v))),
        (RegisterOp::Cas { .. }, Answer::Done) => Some(RegisterRet::CasOk),
        (RegisterOp::Cas { .. }, Answer::CasFailed { current }) => Some(RegisterRet::CasFailed {
            current: history::decode(current),
        }),
        (_, Answer::NotApplied(why)) => {
            state.history.not_applied(id);
            state.trace(
                at,
                format!("c{client} r{register} {op:?} via n{node}: not applied: {why}"),
            );
            return None;
        }
        (_, answer) => {
            state.history.unknown(id);
            state.trace(
                at,
                format!("c{client} r{register} {op:?} via n{node}: unknown: {answer:?}"),
            );
            return None;
        }
    };
    if let Some(ret) = ret {
        state.history.returned(id, ret);
        state.trace(
            at,
            format!("c{client} r{register} {op:?} via n{node}: {ret:?}"),
        );
    }
    ret
}

/// A workload client: random reads, compare-and-sets and acknowledged writes against random
/// nodes until the faults stop.
async fn client(shared: Arc<Shared>, c: usize) -> turmoil::Result {
    let mut rng = rng_for(shared.seed, 0x100 + c as u64);
    let registers = shared.opts.registers;
    // The value this client last saw in each register, and a few older ones.
    let mut last_seen: Vec<Option<u64>> = vec![None; registers];
    let mut older: Vec<Vec<u64>> = vec![Vec::new(); registers];
    let mut sequence: u64 = 0;
    while now() < shared.chaos_end() {
        let think = rng.random_range(0..=shared.opts.think_ms_max);
        tokio::time::sleep(Duration::from_millis(think)).await;
        let node = rng.random_range(0..NODES);
        let roll = rng.random_range(0..100u32);
        sequence += 1;
        if roll < 25 {
            // A write to a key of its own, to check that no acknowledged write is lost.
            let key = format!("w/{c}/{sequence}");
            let value = format!("{}.{c}.{sequence}", shared.seed);
            let answer = ask(
                node,
                &Request::Write {
                    key: key.clone(),
                    value: value.clone(),
                },
            )
            .await;
            let at = now();
            let mut state = shared.state();
            match answer {
                Answer::Done => {
                    state.trace(at, format!("c{c} wrote {key} via n{node}"));
                    state.counts.writes_acknowledged += 1;
                    state.acknowledged.insert(key, value);
                }
                other => {
                    state.trace(at, format!("c{c} write {key} via n{node}: {other:?}"));
                    state.counts.writes_not_acknowledged += 1;
                }
            }
            continue;
        }
        let register = rng.random_range(0..registers);
        let op = if roll < 60 {
            RegisterOp::Read
        } else {
            let expected = if rng.random_bool(0.8) || older[register].is_empty() {
                last_seen[register]
            } else {
                let n = rng.random_range(0..older[register].len());
                Some(older[register][n])
            };
            // Unique: the client in the high half, its sequence number in the low.
            let new = Some(((c as u64 + 1) << 32) | sequence);
            RegisterOp::Cas { expected, new }
        };
        let seen = match (op, register_op(&shared, c, node, register, op).await) {
            (_, Some(RegisterRet::Value(v))) | (_, Some(RegisterRet::CasFailed { current: v })) => {
                v
            }
            (RegisterOp::Cas { new, .. }, Some(RegisterRet::CasOk)) => new,
            _ => continue,
        };
        if let Some(previous) = last_seen[register]
            && seen != last_seen[register]
        {
            older[register].push(previous);
            if older[register].len() > 8 {
                older[register].remove(0);
            }
        }
        last_seen[register] = seen;
    }
    shared.state().clients_done += 1;
    Ok(())
}

/// After healing: reads every register once more and reads back every configuration key.
async fn checker(shared: Arc<Shared>) -> turmoil::Result {
    let start = shared.chaos_end() + SETTLE;
    loop {
        let done = shared.state().clients_done == shared.opts.clients;
        if done && now() >= start {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = now() + RECOVERY_MAX;
    let final_client = shared.opts.clients;
    let mut attempt = 0;
    for register in 0..shared.opts.registers {
        loop {
            attempt += 1;
            let node = attempt % NODES;
            if register_op(&shared, final_client, node, register, RegisterOp::Read)
                .await
                .is_some()
            {
                break;
            }
            if now() >= deadline {
                let what = format!("no node answered a read of register r{register}");
                shared.state().fail(now(), Failure::NoRecovery { what });
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        attempt += 1;
        let node = attempt % NODES;
        let answer = ask(node, &Request::Dump).await;
        let at = now();
        {
            let mut state = shared.state();
            match answer {
                Answer::Dump {
                    config,
                    commit_index,
                } => {
                    let keys = config.len();
                    state.trace(
                        at,
                        format!("n{node} dumped {keys} keys at index {commit_index}"),
                    );
                    state.final_dump = Some((config, commit_index));
                    return Ok(());
                }
                other => state.trace(at, format!("dump via n{node}: {other:?}")),
            }
            if at >= deadline {
                let what = "no node answered a linearizable read of the configuration".to_string();
                state.fail(at, Failure::NoRecovery { what });
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- nemesis ----

#[derive(Debug)]
enum NetworkFault {
    /// Links cut between the two sides.
    Partition(Vec<String>, Vec<String>),
    /// Messages held on these links, then delivered at once.
    Hold(Vec<(String, String)>),
}

/// Injects faults at random times between simulation steps, from its own seeded generator.
struct Nemesis {
    rng: StdRng,
    next_fault: Duration,
    network: Option<(NetworkFault, Duration)>,
    /// Crashed nodes and when they come back.
    restarts: BTreeMap<usize, Duration>,
    healed: bool,
    hosts: Vec<String>,
}

impl Nemesis {
    fn new(seed: u64, clients: usize) -> Nemesis {
        let mut hosts: Vec<String> = (0..NODES).map(node_name).collect();
        hosts.extend((0..clients).map(|c| format!("c{c}")));
        Nemesis {
            rng: rng_for(seed, 0xFA17),
            next_fault: WARMUP,
            network: None,
            restarts: BTreeMap::new(),
            healed: false,
            hosts,
        }
    }

    fn step(&mut self, sim: &mut Sim<'_>, shared: &Shared) {
        let at = sim.elapsed();
        if at >= shared.chaos_end() {
            if !self.healed {
                self.heal(sim, shared, at);
            }
            return;
        }
        if self.network.as_ref().is_some_and(|(_, until)| at >= *until) {
            self.end_network_fault(sim, shared, at);
        }
        let due: Vec<usize> = self
            .restarts
            .iter()
            .filter(|(_, when)| at >= **when)
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            self.restart(sim, shared, at, n);
        }
        if at < self.next_fault {
            return;
        }
        self.next_fault = at + Duration::from_millis(self.rng.random_range(150..=600));
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..30 if self.network.is_none() => self.partition(sim, shared, at),
            30..55 if self.network.is_none() => self.hold(sim, shared, at),
            55..85 => self.crash_one(sim, shared, at),
            85..100 => self.power_loss(sim, shared, at),
            _ => {}
        }
    }

    fn partition(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        // A minority of one or two nodes against the rest; each client lands on a side.
        let minority = self.rng.random_range(1..=2usize);
        let mut nodes: Vec<usize> = (0..NODES).collect();
        let mut cut = Vec::new();
        for _ in 0..minority {
            let n = self.rng.random_range(0..nodes.len());
            cut.push(nodes.remove(n));
        }
        let mut a: Vec<String> = cut.iter().copied().map(node_name).collect();
        let mut b: Vec<String> = nodes.into_iter().map(node_name).collect();
        for host in &self.hosts[NODES..] {
            if self.rng.random_bool(0.5) {
                a.push(host.clone());
            } else {
                b.push(host.clone());
            }
        }
        for x in &a {
            for y in &b {
                sim.partition(x.as_str(), y.as_str());
            }
        }
        let until = at + Duration::from_millis(self.rng.random_range(300..=1500));
        let mut state = shared.state();
        state.counts.partitions += 1;
        state.trace(at, format!("nemesis: partition {a:?} from {b:?}"));
        self.network = Some((NetworkFault::Partition(a, b), until));
    }

    fn hold(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        // Every message to and from one node waits, then all arrive at once.
        let n = self.rng.random_range(0..NODES);
        let links: Vec<(String, String)> = (0..NODES)
            .filter(|m| *m != n)
            .map(|m| (node_name(n), node_name(m)))
            .collect();
        for (x, y) in &links {
            sim.hold(x.as_str(), y.as_str());
        }
        let until = at + Duration::from_millis(self.rng.random_range(50..=400));
        let mut state = shared.state();
        state.counts.delays += 1;
        state.trace(at, format!("nemesis: hold messages of n{n}"));
        self.network = Some((NetworkFault::Hold(links), until));
    }

    fn end_network_fault(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        let Some((fault, _)) = self.network.take() else {
            return;
        };
        match &fault {
            NetworkFault::Partition(a, b) => {
                for x in a {
                    for y in b {
                        sim.repair(x.as_str(), y.as_str());
                    }
                }
            }
            NetworkFault::Hold(links) => {
                for (x, y) in links {
                    sim.release(x.as_str(), y.as_str());
                }
            }
        }
        shared
            .state()
            .trace(at, format!("nemesis: end of {fault:?}"));
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|n| !self.restarts.contains_key(n))
            .collect()
    }

    fn crash(
        &mut self,
        sim: &mut Sim<'_>,
        shared: &Shared,
        at: Duration,
        n: usize,
        down_for: Duration,
    ) {
        // The disk first: nothing the dying process does from here on reaches it.
        let lost = shared.disks[n].crash();
        sim.crash(node_name(n));
        self.restarts.insert(n, at + down_for);
        let mut state = shared.state();
        state.up[n] = false;
        state.metrics[n] = None;
        state.counts.crashes += 1;
        state.trace(
            at,
            format!("nemesis: crash n{n}, {lost} unsynced bytes lost"),
        );
    }

    fn crash_one(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        let up = self.up_nodes();
        if up.is_empty() {
            return;
        }
        let n = up[self.rng.random_range(0..up.len())];
        let down_for = Duration::from_millis(self.rng.random_range(200..=2000));
        self.crash(sim, shared, at, n, down_for);
    }

    /// Several nodes lose power at once: a majority, or all of them.
    fn power_loss(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        let mut up = self.up_nodes();
        let k = self.rng.random_range(3..=NODES).min(up.len());
        shared.state().counts.power_losses += 1;
        for _ in 0..k {
            let n = up.remove(self.rng.random_range(0..up.len()));
            let down_for = Duration::from_millis(self.rng.random_range(100..=800));
            self.crash(sim, shared, at, n, down_for);
        }
    }

    fn restart(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration, n: usize) {
        self.restarts.remove(&n);
        sim.bounce(node_name(n));
        shared.state().trace(at, format!("nemesis: restart n{n}"));
    }

    /// Ends every fault: the network is whole again and every node runs.
    fn heal(&mut self, sim: &mut Sim<'_>, shared: &Shared, at: Duration) {
        self.healed = true;
        self.end_network_fault(sim, shared, at);
        let down: Vec<usize> = self.restarts.keys().copied().collect();
        for n in down {
            self.restart(sim, shared, at, n);
        }
        sim.set_fail_rate(0.0);
        for x in &self.hosts {
            for y in &self.hosts {
                if x < y {
                    sim.repair(x.as_str(), y.as_str());
                }
            }
        }
        shared.state().trace(at, "nemesis: healed".into());
    }
}

// ---- the run ----

pub(crate) fn run(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    // openraft's election timeouts come from this thread's generator, and the whole simulation
    // runs on this thread: one seed for all hosts, drawn in a deterministic order.
    noodle_control::runtime::seed_thread_rng(seed);
    let shared = Arc::new(Shared::new(seed, opts.clone()));
    let duration = shared.chaos_end() + SETTLE + RECOVERY_MAX + Duration::from_secs(10);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration)
        .tick_duration(opts.tick)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .fail_rate(opts.message_fail_rate)
        .repair_rate(0.2)
        .build();
    for i in 0..NODES {
        let shared = shared.clone();
        sim.host(node_name(i), move || node(shared.clone(), i));
    }
    for c in 0..opts.clients {
        sim.client(format!("c{c}"), client(shared.clone(), c));
    }
    sim.client("check", checker(shared.clone()));
    let mut nemesis = Nemesis::new(seed, opts.clients);
    loop {
        nemesis.step(&mut sim, &shared);
        let stepped = sim.step();
        shared.sample_metrics(sim.elapsed());
        match stepped {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let at = sim.elapsed();
                shared.state().fail(at, Failure::Simulation(e.to_string()));
                break;
            }
        }
    }
    let simulated = sim.elapsed();
    drop(sim);
    finish(seed, &shared, simulated)
}

/// The checks at the end of a run, and its report.
pub(crate) fn finish(
    seed: u64,
    shared: &Shared,
    simulated: Duration,
) -> Result<SimReport, SimFailure> {
    let mut state = shared.state();
    let state = &mut *state;
    if let Some((config, _)) = &state.final_dump {
        let config: BTreeMap<&str, &str> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let lost: Vec<Failure> = state
            .acknowledged
            .iter()
            .filter(|(k, v)| config.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| Failure::LostWrite {
                key: k.clone(),
                value: v.clone(),
                found: config.get(k.as_str()).map(|v| v.to_string()),
            })
            .collect();
        state.failures.extend(lost);
    }
    for register in 0..shared.opts.registers {
        if let Err(history) = state.history.check(register) {
            state.failures.push(Failure::NotLinearizable {
                register: register_key(register),
                history,
            });
        }
    }
    if !state.failures.is_empty() {
        let mut failures = std::mem::take(&mut state.failures);
        failures.sort_by_key(Failure::rank);
        return Err(SimFailure {
            seed,
            failures,
            trace_tail: state.trace_tail.iter().cloned().collect(),
        });
    }
    let ops = state.history.ops();
    let count = |f: fn(&history::Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let counts = &state.counts;
    Ok(SimReport {
        seed,
        register_ops_returned: count(|o| matches!(o, history::Outcome::Returned { .. })),
        register_ops_not_applied: count(|o| matches!(o, history::Outcome::NotApplied)),
        register_ops_unknown: count(|o| {
            matches!(o, history::Outcome::Unknown | history::Outcome::Pending)
        }),
        writes_acknowledged: counts.writes_acknowledged,
        writes_not_acknowledged: counts.writes_not_acknowledged,
        leaders: state
            .leaders
            .iter()
            .filter_map(|(term, nodes)| Some((*term, node_name(*nodes.first()?))))
            .collect(),
        crashes: counts.crashes,
        power_losses: counts.power_losses,
        partitions: counts.partitions,
        delays: counts.delays,
        voters_before_faults: state.voters_before_faults.unwrap_or(0),
        final_commit_index: state.final_dump.as_ref().map_or(0, |(_, index)| *index),
        simulated,
        fingerprint: state.fingerprint.finalize().to_hex().to_string(),
        trace: state.trace.take().unwrap_or_default(),
    })
}
