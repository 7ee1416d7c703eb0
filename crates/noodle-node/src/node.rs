//! Start-up, the background loops and shutdown of a node.

use crate::control::ControlPlane;
use crate::datadir::{ClusterFile, DataDir, DataDirError, NodeFile, PeerRecord};
use crate::events::EventBus;
use crate::join::{self, JoinRequest, JoinResponse};
use crate::now_ms;
use bytes::Bytes;
use noodle_api::{
    EventKind, LinkStatus, NodeState, NodeStatus, StatusReport, TokenRequest, TokenResponse, Totals,
};
use noodle_control::{Control, PeerHealth};
use noodle_discovery::mdns::Mdns;
use noodle_discovery::{
    Effect, LinkSample, MemberId, Membership, MembershipConfig, NodeInfo, NodeTable, SyncMessage,
    Timer,
};
use noodle_link::{
    JoinPeer, Link, LinkConfig, LinkEvent, RemoteError, Service, ServiceFuture, TlsMaterial,
};
use noodle_security::{ClusterCa, JoinToken, NodeKey};
use rand::seq::SliceRandom;
use rustls_pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const SOFTWARE: &str = concat!("noodle ", env!("CARGO_PKG_VERSION"));
const MEMBERSHIP_QUEUE_MAX: usize = 4096;
/// How many peers one gossip round talks to.
const GOSSIP_FANOUT: usize = 3;
const GOSSIP_PERIOD: Duration = Duration::from_secs(1);
const PEERS_SAVED_MAX: usize = 64;
/// The label every node carries implicitly for the scheduler: its node id.
pub const NODE_LABEL: &str = "noodle.node";

/// How a node is started (`noodle up`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub join: Option<String>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Extra seed addresses, for networks without multicast.
    pub peers: Vec<SocketAddr>,
    pub mdns: bool,
    pub mdns_timeout: Duration,
    pub membership: MembershipConfig,
    pub control: noodle_control::ControlConfig,
    pub jobs: JobsConfig,
}

/// How a node runs jobs (`noodle run`).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// CPU slots this node offers to jobs; `None`: one per CPU.
    pub slots: Option<u32>,
    /// How long a node may be unreachable before the jobs it holds are declared lost (and
    /// run again elsewhere if they have retries left). An executor that cannot reach the
    /// control plane for half this time stops its jobs, so a job never runs twice at once.
    pub lease: Duration,
    /// How long a cancelled job has after SIGTERM before it is killed.
    pub kill_grace: Duration,
    /// Output kept per job for `noodle logs` (beyond it, output is dropped and counted).
    pub output_max_bytes: u64,
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            slots: None,
            lease: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            output_max_bytes: 16 << 20,
        }
    }
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            data_dir,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7070)),
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, 7071)),
            join: None,
            name: None,
            labels: BTreeMap::new(),
            peers: Vec::new(),
            mdns: true,
            mdns_timeout: Duration::from_secs(10),
            membership: MembershipConfig::default(),
            control: noodle_control::ControlConfig::default(),
            jobs: JobsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Join(#[from] crate::JoinError),
    #[error(transparent)]
    Link(#[from] noodle_link::LinkError),
    #[error("certificate: {0}")]
    Cert(#[from] noodle_security::CertError),
    #[error(
        "data directory {dir} already belongs to cluster {ours}; the token is for cluster {theirs} (use another --data-dir)"
    )]
    OtherCluster {
        dir: PathBuf,
        ours: String,
        theirs: String,
    },
    #[error("cannot serve the API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("membership: {0}")]
    Membership(String),
    #[error(transparent)]
    Control(#[from] crate::control::ControlPlaneError),
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsError),
}

enum MembershipInput {
    Datagram(Bytes),
    Timer(Timer),
    Announce(String, SocketAddr),
    Leave(oneshot::Sender<()>),
}

/// What every task of the node shares.
pub(crate) struct Shared {
    pub(crate) node_id: String,
    pub(crate) cluster_id: String,
    pub(crate) ca: ClusterCa,
    pub(crate) events: EventBus,
    pub(crate) credential: String,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    advertise: SocketAddr,
    link: OnceLock<Link>,
    view: Mutex<View>,
    membership_tx: mpsc::Sender<MembershipInput>,
    data_dir: DataDir,
    pub(crate) control: OnceLock<Arc<ControlPlane>>,
    pub(crate) jobs: OnceLock<Arc<crate::jobs::JobRuntime>>,
}

struct View {
    table: NodeTable,
    /// Latest membership snapshot: one entry per node id (newest incarnation).
    members: HashMap<String, (MemberId, NodeState)>,
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    shared: Arc<Shared>,
    api_url: String,
    mdns: Option<Mdns>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn now_unix() -> u64 {
    now_ms() / 1000
}

/// The address peers should use: the bound one, or for a wildcard bind the address a member saw
/// us come from, else the first non-loopback IPv4 address of this host.
fn advertise_addr(bound: SocketAddr, observed: Option<IpAddr>) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = observed
        .filter(|ip| !ip.is_unspecified())
        .or_else(|| {
            if_addrs::get_if_addrs()
                .ok()?
                .into_iter()
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port())
}

/// Starts a node: opens the data directory, creates or joins the cluster, binds the cluster
/// port and the API, and starts the background loops.
pub async fn start(
    cfg: NodeConfig,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<RunningNode, NodeError> {
    let dir = DataDir::open(&cfg.data_dir)?;

    // Identity: persistent node id and key.
    let node_file: NodeFile = if dir.exists("node.json") {
        dir.read_json("node.json")?
    } else {
        let host = host_name();
        let f = NodeFile {
            node_id: noodle_security::node_id_for_host(&host),
            name: host,
        };
        dir.write_json("node.json", &f, false)?;
        f
    };
    let name = cfg.name.clone().unwrap_or_else(|| node_file.name.clone());
    let key = if dir.exists("node.key") {
        let pem = dir.read_file("node.key")?;
        NodeKey::from_pem(&String::from_utf8_lossy(&pem)).map_err(|e| DataDirError::Corrupt {
            path: dir.path().join("node.key"),
            detail: e.to_string(),
        })?
    } else {
        let k = NodeKey::generate()?;
        dir.write_file("node.key", k.to_pem().as_bytes(), true)?;
        k
    };

    // Cluster: existing member, joiner, or founder.
    let mut observed_ip = None;
    let mut announce_to: Vec<PeerRecord> = Vec::new();
    let mut founded = false;
    let (cluster, ca) = if dir.exists("cluster.json") {
        let cluster: ClusterFile = dir.read_json("cluster.json")?;
        if let Some(text) = &cfg.join {
            let token = JoinToken::decode(text).map_err(crate::JoinError::from)?;
            if token.cluster_id() != cluster.cluster_id {
                return Err(NodeError::OtherCluster {
                    dir: cfg.data_dir.clone(),
                    ours: cluster.cluster_id,
                    theirs: token.cluster_id().to_string(),
                });
            }
            tracing::info!(
                "already a member of cluster {}; ignoring --join",
                cluster.cluster_id
            );
        }
        let ca_cert = CertificateDer::from(dir.read_file("ca.crt")?);
        let ca_key = dir.read_file("ca.key")?;
        let ca = ClusterCa::load(
            &cluster.cluster_id,
            ca_cert,
            &String::from_utf8_lossy(&ca_key),
        )
        .map_err(|e| DataDirError::Corrupt {
            path: dir.path().join("ca.key"),
            detail: e.to_string(),
        })?;
        announce_to.clone_from(&cluster.peers);
        (cluster, ca)
    } else if let Some(text) = &cfg.join {
        let token = JoinToken::decode(text).map_err(crate::JoinError::from)?;
        token
            .check_expiry(now_unix())
            .map_err(crate::JoinError::from)?;
        let mut seeds: Vec<SocketAddr> = token.seeds().to_vec();
        seeds.extend(cfg.peers.iter().copied());
        if seeds.is_empty() && cfg.mdns {
            tracing::info!(
                cluster = token.cluster_id(),
                "looking for the cluster on the LAN (mDNS)"
            );
            match Mdns::start() {
                Ok(m) => {
                    seeds = m.browse(token.cluster_id(), cfg.mdns_timeout).await;
                    m.shutdown();
                }
                Err(e) => tracing::warn!(error = %e, "mDNS unavailable"),
            }
        }
        if seeds.is_empty() {
            return Err(crate::JoinError::NoSeeds(token.cluster_id().to_string()).into());
        }
        let admission = join::join(&token, text, &seeds, &node_file.node_id, &name, &key).await?;
        let r = admission.response;
        tracing::info!(via = %admission.via, cluster = %r.cluster_id, "admitted");
        let ca = ClusterCa::load(
            &r.cluster_id,
            CertificateDer::from(r.ca_cert.clone()),
            &r.ca_key_pem,
        )?;
        observed_ip = Some(r.observed_addr.ip());
        dir.write_file("ca.crt", &r.ca_cert, false)?;
        dir.write_file("ca.key", r.ca_key_pem.as_bytes(), true)?;
        dir.write_file("node.crt", &r.node_cert, false)?;
        let peers: Vec<PeerRecord> = r
            .members
            .iter()
            .map(|(id, addr)| PeerRecord {
                id: id.clone(),
                addr: *addr,
            })
            .collect();
        let cluster = ClusterFile {
            cluster_id: r.cluster_id.clone(),
            peers: peers.clone(),
        };
        dir.write_json("cluster.json", &cluster, false)?;
        announce_to = peers;
        (cluster, ca)
    } else {
        let cluster_id = uuid::Uuid::new_v4().simple().to_string();
        let ca = ClusterCa::generate(&cluster_id)?;
        let cert = ca.issue_node_cert(&node_file.node_id, &key.public_key_raw())?;
        dir.write_file("ca.crt", ca.cert_der(), false)?;
        dir.write_file("ca.key", ca.key_pem().as_bytes(), true)?;
        dir.write_file("node.crt", &cert, false)?;
        let cluster = ClusterFile {
            cluster_id,
            peers: Vec::new(),
        };
        dir.write_json("cluster.json", &cluster, false)?;
        founded = true;
        (cluster, ca)
    };
    let node_cert = CertificateDer::from(dir.read_file("node.crt")?);
    let credential = dir.admin_credential()?;

    let local_control = crate::control::open_local_state(&dir)?;
    let (membership_tx, membership_rx) = mpsc::channel(MEMBERSHIP_QUEUE_MAX);
    let mut probe = noodle_mesh::ResourceProbe::new(dir.path());
    let resources = probe.sample();
    let job_slots = cfg.jobs.slots.unwrap_or(resources.cpus.max(1));
    let me = NodeInfo {
        id: node_file.node_id.clone(),
        name: name.clone(),
        addr: cfg.listen,
        version: now_ms(),
        software: SOFTWARE.into(),
        resources,
        labels: cfg.labels.clone(),
        links: Vec::new(),
        control_incarnation: local_control.incarnation,
        job_slots,
    };
    let mut shared = Shared {
        node_id: node_file.node_id.clone(),
        cluster_id: cluster.cluster_id.clone(),
        ca,
        events: EventBus::default(),
        credential,
        metrics,
        advertise: cfg.listen,
        link: OnceLock::new(),
        view: Mutex::new(View {
            table: NodeTable::new(me),
            members: HashMap::new(),
        }),
        membership_tx,
        data_dir: dir,
        control: OnceLock::new(),
        jobs: OnceLock::new(),
    };

    // Bind the cluster port.
    let tls = TlsMaterial {
        ca: shared.ca.cert_der().clone(),
        cert: node_cert,
        key: key.private_key_der(),
    };
    let service = Arc::new(NodeService {
        shared: OnceLock::new(),
    });
    let link = Link::bind(LinkConfig::new(cfg.listen), &tls, service.clone())?;
    shared.advertise = advertise_addr(link.local_addr(), observed_ip);
    {
        let view = shared.view.get_mut().unwrap_or_else(|e| e.into_inner());
        let advertise = shared.advertise;
        view.table.update_me(now_ms(), |me| me.addr = advertise);
    }
    let _ = shared.link.set(link.clone());
    let shared = Arc::new(shared);
    let _ = service.shared.set(shared.clone());

    // Control plane.
    let recovered = local_control.recovered.clone();
    let plane = Arc::new(
        ControlPlane::start(
            &shared.data_dir,
            local_control,
            &shared.node_id,
            shared.advertise.to_string(),
            name.clone(),
            link,
            founded,
            cfg.control.clone(),
        )
        .await?,
    );
    if let Some(note) = recovered {
        shared
            .events
            .emit(EventKind::ControlRecovered, &shared.node_id, note);
    }
    let _ = shared.control.set(plane.clone());
    let for_events = shared.clone();
    tokio::spawn(crate::control::watch_events(
        plane.clone(),
        move |kind, node, detail| for_events.events.emit(kind, node, detail),
        shared.node_id.clone(),
    ));
    tokio::spawn(upkeep_loop(shared.clone(), plane.clone()));
    let jobs = Arc::new(crate::jobs::JobRuntime::open(
        shared.data_dir.path(),
        cfg.jobs.clone(),
    )?);
    let _ = shared.jobs.set(jobs.clone());
    tokio::spawn(crate::jobs::run(
        shared.clone(),
        plane.clone(),
        jobs.clone(),
    ));
    tokio::spawn(crate::jobs::self_fence(plane, jobs));

    // Membership.
    let me_id = MemberId {
        node_id: shared.node_id.clone(),
        addr: shared.advertise,
        bump: now_ms(),
    };
    let membership = Membership::new(me_id, &cfg.membership, rand::random())
        .map_err(|e| NodeError::Membership(e.to_string()))?;
    tokio::spawn(membership_loop(shared.clone(), membership, membership_rx));
    tokio::spawn(gossip_loop(shared.clone(), probe, announce_to));

    // mDNS: advertise so that token-only joiners find us; failure only loses that convenience.
    let mdns = if cfg.mdns {
        match Mdns::start().and_then(|m| {
            m.advertise(&shared.cluster_id, &shared.node_id, shared.advertise.port())?;
            Ok(m)
        }) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "mDNS advertisement unavailable");
                None
            }
        }
    } else {
        None
    };

    // API.
    let listener = tokio::net::TcpListener::bind(cfg.api)
        .await
        .map_err(|source| NodeError::Api {
            addr: cfg.api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| NodeError::Api {
        addr: cfg.api,
        source,
    })?;
    let api_url = format!("http://{api_addr}");
    tokio::spawn(crate::api::serve(shared.clone(), listener));
    shared.data_dir.write_api_info(&noodle_api::ApiInfo {
        url: api_url.clone(),
        pid: std::process::id(),
        node_id: shared.node_id.clone(),
    })?;
    shared.events.emit(
        EventKind::NodeStarted,
        &shared.node_id,
        format!("cluster {} at {}", shared.cluster_id, shared.advertise),
    );
    Ok(RunningNode {
        shared,
        api_url,
        mdns,
    })
}

impl RunningNode {
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }
    pub fn cluster_addr(&self) -> SocketAddr {
        self.shared.advertise
    }
    pub fn api_url(&self) -> &str {
        &self.api_url
    }
    /// The dashboard address with a one-click login.
    pub fn dashboard_url(&self) -> String {
        format!("{}/login?token={}", self.api_url, self.shared.credential)
    }

    /// Leaves the cluster politely and stops.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .membership_tx
            .send(MembershipInput::Leave(tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
        }
        if let Some(m) = &self.mdns {
            m.shutdown();
        }
        self.shared.data_dir.remove_api_info();
        if let Some(link) = self.shared.link.get() {
            link.shutdown().await;
        }
    }
}

impl Shared {
    pub(crate) fn link(&self) -> Option<&Link> {
        self.link.get()
    }

    /// The cluster address of node `id`, as gossiped.
    pub(crate) fn peer_addr(&self, id: &str) -> Option<SocketAddr> {
        if id == self.node_id {
            return Some(self.advertise);
        }
        self.lock_view().table.get(id).map(|e| e.addr)
    }

    /// Indices of this node's GPUs.
    pub(crate) fn own_gpu_indices(&self) -> Vec<u32> {
        self.lock_view()
            .table
            .get(&self.node_id)
            .map(|e| e.resources.gpus.iter().map(|g| g.index).collect())
            .unwrap_or_default()
    }

    /// How this node's membership view sees node `id` (`None`: not a member it knows).
    pub(crate) fn node_state(&self, id: &str) -> Option<NodeState> {
        if id == self.node_id {
            return Some(NodeState::Alive);
        }
        self.lock_view().members.get(id).map(|(_, s)| *s)
    }

    /// Ids of the nodes this node sees alive, itself included.
    pub(crate) fn alive_node_ids(&self) -> HashSet<String> {
        let view = self.lock_view();
        let mut alive: HashSet<String> = view
            .members
            .iter()
            .filter(|(_, (_, s))| *s == NodeState::Alive)
            .map(|(id, _)| id.clone())
            .collect();
        alive.insert(self.node_id.clone());
        alive
    }

    /// True when every alive member's gossiped entry (slots, labels) has arrived: until then a
    /// job that fits no known node may still fit one that just joined.
    pub(crate) fn every_alive_node_described(&self) -> bool {
        let alive = self.alive_node_ids();
        let view = self.lock_view();
        alive.iter().all(|id| view.table.get(id).is_some())
    }

    /// A job scheduler that knows the alive nodes: their CPU slots, memory, GPUs, labels and
    /// load, and the RTTs of their links.
    pub(crate) fn scheduler(&self) -> noodle_sched::Scheduler {
        let alive = self.alive_node_ids();
        let view = self.lock_view();
        let mut sched = noodle_sched::Scheduler::default();
        for e in view.table.iter().filter(|e| alive.contains(&e.id)) {
            // Every node also carries its id as a label, so `noodle run --on NODE` is a label.
            let mut labels = e.labels.clone();
            labels.insert(NODE_LABEL.into(), e.id.clone());
            let spec = noodle_sched::NodeSpec {
                id: e.id.clone(),
                cpus: e.job_slots,
                mem_bytes: e.resources.mem_total_bytes,
                gpus: e.resources.gpus.len() as u32,
                labels,
            };
            if sched.add_node(spec).is_ok() {
                sched.set_load(&e.id, e.resources.load_1m);
            }
            for l in &e.links {
                sched.set_rtt(&e.id, &l.peer, l.rtt_us);
            }
        }
        sched
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster as this node sees it.
    pub(crate) fn status(&self) -> StatusReport {
        let view = self.lock_view();
        let state_of = |id: &str| -> NodeState {
            if id == self.node_id {
                NodeState::Alive
            } else {
                view.members
                    .get(id)
                    .map(|(_, s)| *s)
                    .unwrap_or(NodeState::Suspect)
            }
        };
        let mut nodes: Vec<NodeStatus> = view
            .table
            .iter()
            .map(|e| NodeStatus {
                id: e.id.clone(),
                name: e.name.clone(),
                addr: e.addr.to_string(),
                state: state_of(&e.id),
                is_self: e.id == self.node_id,
                cpus: e.resources.cpus,
                slots: e.job_slots,
                mem_total_bytes: e.resources.mem_total_bytes,
                mem_available_bytes: e.resources.mem_available_bytes,
                load_1m: e.resources.load_1m,
                disk_total_bytes: e.resources.disk_total_bytes,
                disk_free_bytes: e.resources.disk_free_bytes,
                gpus: e.resources.gpus.len() as u32,
                gpu_list: e.resources.gpus.clone(),
                labels: e.labels.clone(),
                version: e.software.clone(),
                updated_at_ms: e.version,
            })
            .collect();
        // Members whose information has not arrived yet.
        for (id, (m, state)) in &view.members {
            if view.table.get(id).is_none() {
                nodes.push(NodeStatus {
                    id: id.clone(),
                    name: id.clone(),
                    addr: m.addr.to_string(),
                    state: *state,
                    is_self: false,
                    cpus: 0,
                    slots: 0,
                    mem_total_bytes: 0,
                    mem_available_bytes: 0,
                    load_1m: 0.0,
                    disk_total_bytes: 0,
                    disk_free_bytes: 0,
                    gpus: 0,
                    gpu_list: Vec::new(),
                    labels: BTreeMap::new(),
                    version: String::new(),
                    updated_at_ms: 0,
                });
            }
        }
        nodes.sort_by(|a, b| {
            b.is_self
                .cmp(&a.is_self)
                .then(a.name.cmp(&b.name))
                .then(a.id.cmp(&b.id))
        });
        let alive: HashSet<&str> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| n.id.as_str())
            .collect();
        let links = view
            .table
            .iter()
            .filter(|e| alive.contains(e.id.as_str()))
            .flat_map(|e| {
                e.links
                    .iter()
                    .filter(|l| alive.contains(l.peer.as_str()))
                    .map(|l| LinkStatus {
                        from: e.id.clone(),
                        peer: l.peer.clone(),
                        rtt_us: l.rtt_us,
                        kx_group: l.kx_group.clone(),
                    })
            })
            .collect();
        let mut totals = Totals::default();
        for n in &nodes {
            match n.state {
                NodeState::Alive => {
                    totals.nodes_alive += 1;
                    totals.cpus += n.cpus;
                    totals.mem_total_bytes += n.mem_total_bytes;
                    totals.mem_available_bytes += n.mem_available_bytes;
                    totals.gpus += n.gpus;
                }
                NodeState::Suspect => totals.nodes_suspect += 1,
                NodeState::Dead => totals.nodes_dead += 1,
            }
        }
        StatusReport {
            cluster_id: self.cluster_id.clone(),
            self_id: self.node_id.clone(),
            totals,
            nodes,
            links,
            control: self.control.get().map(|c| c.info()),
        }
    }

    /// Mints a join token; seeds are the alive members' cluster addresses unless left out.
    pub(crate) fn create_token(&self, req: &TokenRequest) -> TokenResponse {
        let seeds: Vec<SocketAddr> = if req.no_addresses {
            Vec::new()
        } else {
            let view = self.lock_view();
            let mut seeds = vec![self.advertise];
            seeds.extend(
                view.members
                    .values()
                    .filter(|(_, s)| *s == NodeState::Alive)
                    .map(|(m, _)| m.addr)
                    .take(7),
            );
            seeds
        };
        let expires = now_unix().saturating_add(req.ttl_secs);
        let token = JoinToken::mint(&self.ca, expires, seeds.clone());
        TokenResponse {
            token: token.encode(),
            expires_at_unix: expires,
            seeds: seeds.iter().map(ToString::to_string).collect(),
        }
    }

    fn handle_join(&self, peer: &JoinPeer, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let req: JoinRequest = postcard::from_bytes(body)
            .map_err(|_| RemoteError::new(RemoteError::BAD_REQUEST, "unreadable join request"))?;
        match join::admit(&self.ca, &req, now_unix()) {
            Ok(node_cert) => {
                let mut members: Vec<(String, SocketAddr)> =
                    vec![(self.node_id.clone(), self.advertise)];
                {
                    let view = self.lock_view();
                    members.extend(
                        view.members
                            .values()
                            .filter(|(_, s)| *s != NodeState::Dead)
                            .map(|(m, _)| (m.node_id.clone(), m.addr)),
                    );
                }
                let response = JoinResponse {
                    cluster_id: self.cluster_id.clone(),
                    ca_cert: self.ca.cert_der().to_vec(),
                    ca_key_pem: self.ca.key_pem(),
                    node_cert,
                    observed_addr: peer.remote,
                    members,
                };
                self.events.emit(
                    EventKind::JoinAdmitted,
                    &req.node_id,
                    format!("{} ({}) from {}", req.name, req.node_id, peer.remote),
                );
                Ok(postcard::to_stdvec(&response).unwrap_or_default())
            }
            Err(reason) => {
                metrics::counter!("noodle_join_refused_total").increment(1);
                self.events.emit(
                    EventKind::JoinRefused,
                    &req.node_id,
                    format!("from {}: {reason}", peer.remote),
                );
                Err(RemoteError::new(RemoteError::FORBIDDEN, reason))
            }
        }
    }
}

struct NodeService {
    shared: OnceLock<Arc<Shared>>,
}

impl Service for NodeService {
    fn call(&self, _from: SocketAddr, method: &str, body: Bytes) -> ServiceFuture {
        let shared = self.shared.get().cloned();
        let method = method.to_string();
        Box::pin(async move {
            let Some(shared) = shared else {
                return Err(RemoteError::new(
                    RemoteError::UNAVAILABLE,
                    "node is starting",
                ));
            };
            if Control::is_control_method(&method) {
                let control = shared.control.get().map(|p| &p.control);
                return crate::control::serve_control(control, &method, &body).await;
            }
            match method.as_str() {
                "jobs.output" => match shared.jobs.get() {
                    Some(jobs) => crate::jobs::serve_output(jobs, &body).await,
                    None => Err(RemoteError::new(
                        RemoteError::UNAVAILABLE,
                        "node is starting",
                    )),
                },
                "chunks.get" => match shared.jobs.get() {
                    Some(jobs) => {
                        let jobs = jobs.clone();
                        tokio::task::spawn_blocking(move || jobs.shipping.serve_get(&body))
                            .await
                            .map_err(|e| RemoteError::new(RemoteError::INTERNAL, e.to_string()))?
                    }
                    None => Err(RemoteError::new(
                        RemoteError::UNAVAILABLE,
                        "node is starting",
                    )),
                },
                "gossip.sync" => {
                    let msg: SyncMessage = postcard::from_bytes(&body).map_err(|_| {
                        metrics::counter!("noodle_gossip_bad_messages_total").increment(1);
                        RemoteError::new(RemoteError::BAD_REQUEST, "unreadable gossip")
                    })?;
                    let answer = {
                        let mut view = shared.lock_view();
                        let answer = view.table.newer_than(&msg.entries);
                        view.table.merge(msg.entries);
                        answer
                    };
                    Ok(postcard::to_stdvec(&SyncMessage { entries: answer }).unwrap_or_default())
                }
                "node.ping" => Ok(body.to_vec()),
                _ => Err(RemoteError::new(
                    RemoteError::NOT_FOUND,
                    format!("unknown method `{method}`"),
                )),
            }
        })
    }

    fn join(&self, peer: JoinPeer, body: Bytes) -> ServiceFuture {
        let shared = self.shared.get().cloned();
        Box::pin(async move {
            match shared {
                Some(shared) => shared.handle_join(&peer, &body),
                None => Err(RemoteError::new(
                    RemoteError::UNAVAILABLE,
                    "node is starting",
                )),
            }
        })
    }

    fn datagram(&self, _from: SocketAddr, data: Bytes) {
        if let Some(shared) = self.shared.get()
            && shared
                .membership_tx
                .try_send(MembershipInput::Datagram(data))
                .is_err()
        {
            metrics::counter!("noodle_gossip_dropped_total").increment(1);
        }
    }

    fn event(&self, event: LinkEvent) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        match event {
            LinkEvent::Up {
                addr,
                peer_id,
                kx_group,
            } => {
                let who = peer_id.unwrap_or_else(|| addr.to_string());
                shared
                    .events
                    .emit(EventKind::LinkUp, &who, format!("{addr} {kx_group}"));
            }
            LinkEvent::Down {
                addr,
                peer_id,
                reason,
            } => {
                let who = peer_id.unwrap_or_else(|| addr.to_string());
                shared
                    .events
                    .emit(EventKind::LinkDown, &who, format!("{addr}: {reason}"));
            }
        }
    }
}

/// Control-plane upkeep once a second, fed with the membership layer's view of who is alive.
async fn upkeep_loop(shared: Arc<Shared>, plane: Arc<ControlPlane>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A peer is known to the control plane once its gossiped entry (which carries its
        // control-plane incarnation) has arrived.
        let peers: Vec<PeerHealth> = {
            let view = shared.lock_view();
            view.members
                .values()
                .filter_map(|(m, state)| {
                    let info = view.table.get(&m.node_id)?;
                    Some(PeerHealth {
                        member: noodle_control::Member::new(
                            &m.node_id,
                            info.control_incarnation,
                            m.addr.to_string(),
                        ),
                        alive: *state == NodeState::Alive,
                    })
                })
                .collect()
        };
        if let Err(e) = plane.upkeep(&peers).await {
            tracing::debug!(error = %e, "control-plane upkeep");
        }
    }
}

/// Owns the SWIM state machine: feeds it datagrams and timers, carries out its effects, and
/// turns membership changes into events.
async fn membership_loop(
    shared: Arc<Shared>,
    mut membership: Membership,
    mut rx: mpsc::Receiver<MembershipInput>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut previous: HashMap<String, (NodeState, u64)> = HashMap::new();
    let mut ever_seen: HashSet<String> = HashSet::new();
    let mut leaving: Option<oneshot::Sender<()>> = None;
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                None => break,
                Some(MembershipInput::Datagram(data)) => {
                    if let Err(e) = membership.handle_datagram(&data) {
                        metrics::counter!("noodle_gossip_bad_packets_total").increment(1);
                        tracing::trace!(error = %e, "gossip packet dropped");
                    }
                }
                Some(MembershipInput::Timer(timer)) => membership.handle_timer(timer),
                Some(MembershipInput::Announce(id, addr)) => membership.announce(&id, addr),
                Some(MembershipInput::Leave(done)) => {
                    membership.leave();
                    leaving = Some(done);
                }
            },
            _ = tick.tick() => {
                observe(&shared, &membership, &mut previous, &mut ever_seen);
            }
        }
        for effect in membership.effects() {
            match effect {
                Effect::Send(addr, data) => {
                    if let Some(link) = shared.link() {
                        link.send_datagram(addr, data);
                    }
                }
                Effect::Schedule(after, timer) => {
                    let tx = shared.membership_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(MembershipInput::Timer(timer)).await;
                    });
                }
            }
        }
        if let Some(done) = leaving.take() {
            // Let the leave notices go out before the caller closes the link.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = done.send(());
            break;
        }
    }
}

fn observe(
    shared: &Shared,
    membership: &Membership,
    previous: &mut HashMap<String, (NodeState, u64)>,
    ever_seen: &mut HashSet<String>,
) {
    let mut current: HashMap<String, (MemberId, NodeState)> = HashMap::new();
    for (m, state) in membership.members() {
        let newer = current
            .get(&m.node_id)
            .is_none_or(|(old, _)| m.bump > old.bump);
        if newer {
            current.insert(m.node_id.clone(), (m, state));
        }
    }
    for (id, (m, state)) in &current {
        let before = previous.get(id).copied();
        let event = match (before, *state) {
            (None, NodeState::Alive | NodeState::Suspect) => Some(if ever_seen.contains(id) {
                EventKind::NodeRejoined
            } else {
                EventKind::NodeJoined
            }),
            (Some((NodeState::Dead, _)), NodeState::Alive) => Some(EventKind::NodeRejoined),
            (Some((_, bump)), NodeState::Alive) if bump != m.bump => Some(EventKind::NodeRejoined),
            (Some((NodeState::Alive, _)), NodeState::Suspect) => Some(EventKind::NodeSuspected),
            (Some((old, _)), NodeState::Dead) if old != NodeState::Dead => {
                Some(EventKind::NodeDead)
            }
            _ => None,
        };
        if let Some(kind) = event {
            shared
                .events
                .emit(kind, id, format!("{} incarnation {}", m.addr, m.bump));
            if kind == EventKind::NodeDead
                && let Some(link) = shared.link()
            {
                link.disconnect(m.addr);
            }
        }
        if *state != NodeState::Dead {
            ever_seen.insert(id.clone());
        }
    }
    *previous = current
        .iter()
        .map(|(id, (m, s))| (id.clone(), (*s, m.bump)))
        .collect();
    shared.lock_view().members = current;
}

/// Once a second: measure resources and links, publish them in our entry, exchange the node
/// table with a few random peers, re-announce when alone, and remember peers for restarts.
async fn gossip_loop(
    shared: Arc<Shared>,
    mut probe: noodle_mesh::ResourceProbe,
    mut known_peers: Vec<PeerRecord>,
) {
    let mut tick = tokio::time::interval(GOSSIP_PERIOD);
    let mut round: u64 = 0;
    for p in &known_peers {
        let _ = shared
            .membership_tx
            .send(MembershipInput::Announce(p.id.clone(), p.addr))
            .await;
    }
    loop {
        tick.tick().await;
        round += 1;
        let Some(link) = shared.link() else { continue };
        let resources = probe.sample();
        let links = link.links();
        let (targets, entries, alone, alive_peers) = {
            let mut view = shared.lock_view();
            let samples: Vec<LinkSample> = links
                .iter()
                .filter_map(|l| {
                    Some(LinkSample {
                        peer: l.peer_id.clone()?,
                        rtt_us: l.rtt.as_micros() as u64,
                        kx_group: l.kx_group.clone(),
                    })
                })
                .collect();
            view.table.update_me(now_ms(), |me| {
                me.resources = resources;
                me.links = samples;
            });
            let mut alive: Vec<(String, SocketAddr)> = view
                .members
                .values()
                .filter(|(_, s)| *s != NodeState::Dead)
                .map(|(m, _)| (m.node_id.clone(), m.addr))
                .collect();
            alive.sort();
            let mut targets: Vec<SocketAddr> = alive.iter().map(|(_, a)| *a).collect();
            targets.shuffle(&mut rand::rng());
            targets.truncate(GOSSIP_FANOUT);
            (targets, view.table.entries(), alive.is_empty(), alive)
        };
        let request = postcard::to_stdvec(&SyncMessage { entries }).unwrap_or_default();
        for addr in targets {
            let shared = shared.clone();
            let link = link.clone();
            let request = request.clone();
            tokio::spawn(async move {
                match link.request(addr, "gossip.sync", &request).await {
                    Ok(answer) => match postcard::from_bytes::<SyncMessage>(&answer) {
                        Ok(msg) => {
                            shared.lock_view().table.merge(msg.entries);
                        }
                        Err(_) => {
                            metrics::counter!("noodle_gossip_bad_messages_total").increment(1);
                        }
                    },
                    Err(e) => tracing::debug!(%addr, error = %e, "gossip round failed"),
                }
            });
        }
        if alone && round.is_multiple_of(2) {
            for p in &known_peers {
                let _ = shared
                    .membership_tx
                    .try_send(MembershipInput::Announce(p.id.clone(), p.addr));
            }
        }
        if round.is_multiple_of(5) && !alive_peers.is_empty() {
            let mut peers: Vec<PeerRecord> = alive_peers
                .into_iter()
                .map(|(id, addr)| PeerRecord { id, addr })
                .collect();
            peers.truncate(PEERS_SAVED_MAX);
            if peers != known_peers {
                let file = ClusterFile {
                    cluster_id: shared.cluster_id.clone(),
                    peers: peers.clone(),
                };
                match shared.data_dir.write_json("cluster.json", &file, false) {
                    Ok(()) => known_peers = peers,
                    Err(e) => tracing::warn!(error = %e, "cannot save peer list"),
                }
            }
        }
    }
}
