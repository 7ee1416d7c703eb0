//! `noodle bench` rows of the control plane: commit latency and batched commits on three
//! local Raft members (real QUIC links, real redb files with fsync in the data directory), and
//! capability-token authorisations.

use crate::{BenchError, bench_link_with};
use bytes::Bytes;
use futures_util::StreamExt;
use noodle_caps::{Authoriser, Request, RootKey, TokenSpec};
use noodle_control::{Command, Control, ControlConfig, Member, PeerHealth, Proposal, Store};
use noodle_link::Peer;
use noodle_link::{JoinPeer, LinkEvent, RemoteError, Service, ServiceFuture};
use noodle_security::ClusterCa;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub(crate) struct Sizes {
    pub(crate) commits: usize,
    pub(crate) batch_runs: usize,
    pub(crate) batch_commits: usize,
    pub(crate) auth_runs: usize,
    pub(crate) revocations: usize,
}

pub(crate) struct Samples {
    pub(crate) commit_us: Vec<f64>,
    pub(crate) batched_per_s: Vec<f64>,
    pub(crate) authorisations_per_s: Vec<f64>,
    pub(crate) revocation_ms: Vec<f64>,
    pub(crate) removal_ms: Vec<f64>,
}

/// Proposals in flight at once in the batched run.
const CONCURRENCY: usize = 256;
const AUTH_RUN: Duration = Duration::from_millis(200);

#[derive(Default)]
struct RaftService {
    control: OnceLock<Control>,
}

impl Service for RaftService {
    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture {
        let control = self.control.get().cloned();
        let method = method.to_string();
        Box::pin(async move { serve_control(control.as_ref(), &from, &method, &body).await })
    }
    fn join(&self, _peer: JoinPeer, _body: Bytes) -> ServiceFuture {
        Box::pin(async { Err(RemoteError::new(RemoteError::FORBIDDEN, "bench")) })
    }
    fn datagram(&self, _from: &Peer, _data: Bytes) {}
    fn event(&self, _event: LinkEvent) {}
}

/// Answers a member's control-plane request (`None` while the member starts).
async fn serve_control(
    control: Option<&Control>,
    from: &Peer,
    method: &str,
    body: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    let Some(control) = control else {
        return Err(RemoteError::new(
            RemoteError::UNAVAILABLE,
            "control plane is starting",
        ));
    };
    control
        .serve(&from.node_id, method, body)
        .await
        .ok_or_else(|| {
            RemoteError::new(RemoteError::NOT_FOUND, format!("unknown method `{method}`"))
        })
}

fn set(i: usize) -> Proposal {
    Proposal::new(Command::ConfigSet {
        key: format!("bench/k{}", i % 1024),
        value: i.to_string(),
    })
}

/// Runs on a runtime of its own with two workers, like a node.
pub(crate) fn run(dir: &Path, s: Sizes) -> Result<Samples, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("starting the control-plane benchmark runtime", e))?;
    rt.block_on(bench(dir, s))
}

async fn bench(dir: &Path, s: Sizes) -> Result<Samples, BenchError> {
    let ca = ClusterCa::generate("bench")?;
    let mut members = Vec::new();
    let mut controls = Vec::new();
    let mut links = Vec::new();
    for i in 0..3 {
        let service = Arc::new(RaftService::default());
        let name = format!("bench-control-{i}");
        let link = bench_link_with(&ca, &name, service.clone())?;
        let me = Member {
            node_id: name,
            addr: link.local_addr().to_string(),
        };
        let store = Store::open(&dir.join(format!("bench-control-{i}.redb")))?;
        let transport = Arc::new(noodle_node::LinkTransport::new(link.clone()));
        let control = Control::start(
            me.clone(),
            ControlConfig::default(),
            store,
            transport,
            noodle_control::Machines::default(),
        )
        .await?;
        let _ = service.control.set(control.clone());
        members.push(me);
        controls.push(control);
        links.push(link);
    }
    let leader = controls[0].clone();
    leader.initialize().await?;
    let peers: Vec<PeerHealth> = members
        .iter()
        .map(|m| PeerHealth {
            member: m.clone(),
            alive: true,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.status().voters.len() < 3 {
        if Instant::now() >= deadline {
            return Err(BenchError::Failed(
                "the bench control plane did not reach 3 voters".into(),
            ));
        }
        let _ = leader.maintain_membership(&peers).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..50 {
        leader.propose(set(i)).await?;
    }

    let mut commit_us = Vec::with_capacity(s.commits);
    for i in 0..s.commits {
        let t = Instant::now();
        leader.propose(set(i)).await?;
        commit_us.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let mut batched_per_s = Vec::with_capacity(s.batch_runs);
    for _ in 0..s.batch_runs {
        let t = Instant::now();
        let mut results = futures_util::stream::iter(0..s.batch_commits)
            .map(|i| {
                let leader = leader.clone();
                async move { leader.propose(set(i)).await }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some(r) = results.next().await {
            r?;
        }
        batched_per_s.push(s.batch_commits as f64 / t.elapsed().as_secs_f64());
    }

    // Authorisation as the API does it: signature (cached), revocation list and policies
    // read from the replicated state, Datalog with run limits.
    let root = RootKey::generate();
    let spec = TokenSpec {
        rights: vec!["config:read".parse()?, "jobs:run".parse()?],
        quotas: vec!["cpus=4".parse()?],
        ttl: Duration::from_secs(3600),
        holder: Some("bench".into()),
    };
    let token = noodle_caps::mint(&root, &spec)?;
    let authoriser = Authoriser::new(root.public());
    let request = Request::new("config", "read").on("bench/k1");
    let mut authorisations_per_s = Vec::with_capacity(s.auth_runs);
    for _ in 0..s.auth_runs {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < AUTH_RUN {
            leader
                .read_local(|v| {
                    let revoked = |id: &str| v.is_revoked(id).unwrap_or(true);
                    let policies = Vec::new();
                    let _ = v.policies()?;
                    let ctx = noodle_caps::Context::new(SystemTime::now())
                        .with_revoked(&revoked)
                        .with_policies(&policies);
                    Ok(authoriser.authorise(&token, &request, &ctx))
                })?
                .map_err(BenchError::Refused)?;
            n += 1;
        }
        authorisations_per_s.push(n as f64 / t.elapsed().as_secs_f64());
    }

    // A revocation through the leader, until every other member refuses the token: what a
    // refusal on another node waits for (it reads its own applied state).
    let mut revocation_ms = Vec::with_capacity(s.revocations);
    for r in 0..s.revocations {
        let id = format!("bench-revoked-{r}");
        revocation_ms.push(
            everywhere(&controls, Command::Revoke { id: id.clone() }, |v| {
                v.is_revoked(&id)
            })
            .await?,
        );
    }
    // A node removal, until every other member has applied it: each node refuses the removed
    // node's links on the same wake-up (`noodle-node`'s `removal::enforce`).
    let mut removal_ms = Vec::with_capacity(s.revocations);
    for r in 0..s.revocations {
        let node_id = format!("bench-removed-{r}");
        removal_ms.push(
            everywhere(
                &controls,
                Command::RemoveNode {
                    node_id: node_id.clone(),
                },
                |v| Ok(v.removed_nodes()?.contains(&node_id)),
            )
            .await?,
        );
    }

    for c in &controls {
        c.shutdown().await;
    }
    for l in &links {
        l.shutdown().await;
    }
    Ok(Samples {
        commit_us,
        batched_per_s,
        authorisations_per_s,
        revocation_ms,
        removal_ms,
    })
}

/// Proposes `command` through the first member (the leader) and waits until every other member
/// has applied it (`applied` holds in its local state); returns how long that took, in ms.
async fn everywhere(
    controls: &[Control],
    command: Command,
    applied: impl Fn(&noodle_control::StateView) -> Result<bool, noodle_control::DbError>,
) -> Result<f64, BenchError> {
    let t = Instant::now();
    controls[0].propose(Proposal::new(command)).await?;
    for follower in &controls[1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !follower.read_local(&applied)? {
            if Instant::now() >= deadline {
                return Err(BenchError::Failed(
                    "a write did not reach every member within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}
