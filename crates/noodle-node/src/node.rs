//! Start-up and shutdown of a node: identity, founding or joining the cluster, the link, the
//! control plane, the subsystems, the background loops and the API. This module only wires:
//! what each part does lives in its own module or crate.

use crate::api::ApiState;
use crate::cluster::ClusterState;
use crate::control::{ControlPlane, ControlPlaneError};
use crate::datadir::{ClusterFile, DataDir, DataDirError, NodeFile, PeerRecord};
use crate::membership::{Gossip, MEMBERSHIP_QUEUE_MAX, MembershipInput};
use crate::service::{Dispatch, NodeService};
use noodle_api::EventKind;
use noodle_control::Machines;
use noodle_discovery::mdns::Mdns;
use noodle_discovery::{MemberId, Membership, MembershipConfig, NodeInfo};
use noodle_host::{Authz, EventBus, Host, RunningSubsystem, Subsystem, SystemClock, now_ms};
use noodle_link::{Link, LinkConfig, TlsMaterial};
use noodle_security::{ClusterCa, JoinToken, NodeKey};
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const SOFTWARE: &str = concat!("noodle ", env!("CARGO_PKG_VERSION"));
/// The node's own event kinds.
const EVENT_KINDS: [EventKind; 10] = [
    EventKind::NODE_STARTED,
    EventKind::NODE_JOINED,
    EventKind::NODE_SUSPECTED,
    EventKind::NODE_DEAD,
    EventKind::NODE_REJOINED,
    EventKind::LINK_UP,
    EventKind::LINK_DOWN,
    EventKind::JOIN_ADMITTED,
    EventKind::JOIN_REFUSED,
    EventKind::NODE_REMOVED,
];

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
    /// CPU slots this node offers to jobs; `None`: one per CPU.
    pub slots: Option<u32>,
    /// How long the node certificates this node issues as a voter are valid.
    pub cert_ttl: Duration,
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
            slots: None,
            cert_ttl: noodle_security::NODE_CERT_TTL,
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
    Control(#[from] ControlPlaneError),
    #[error("subsystems: {0}")]
    Subsystems(String),
    #[error(transparent)]
    Start(#[from] noodle_host::StartError),
    #[error("cannot mint the owner token: {0}")]
    Owner(String),
    #[error(
        "this node's certificate expired {0} s ago, and only a voter can issue a new one: join \
         again (`noodle token create` on a member, then `noodle up --join TOKEN` with a new data \
         directory)"
    )]
    CertificateExpired(i64),
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    node_id: String,
    cluster_id: String,
    advertise: SocketAddr,
    sessions: Arc<crate::session::Sessions>,
    api_url: String,
    link: Link,
    membership: mpsc::Sender<MembershipInput>,
    data_dir: Arc<DataDir>,
    mdns: Option<Mdns>,
    owner_token: Option<String>,
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
/// port, starts the control plane and `subsystems` (each registers its state machine, event
/// kinds, RPC methods, routes and panel), the background loops and the API.
/// What the node process asks of the kernel before it touches its keys: every file it creates
/// is its own alone (umask 077: the data directory may be made passable for jobs' own uids, so
/// nothing in it may rely on the directory's mode), and it is not dumpable (no core file with
/// its keys; its `/proc` files are root's, so a job or local user of the same uid cannot read
/// its memory, environment or descriptors).
fn harden_process() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(%error, "cannot make the node undumpable");
    }
}

pub async fn start(
    cfg: NodeConfig,
    subsystems: Vec<Box<dyn Subsystem>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<RunningNode, NodeError> {
    harden_process();
    let dir = DataDir::open(&cfg.data_dir)?;

    // Identity: persistent node id and key.
    // A new node's id is written once it is known: a joiner's is the one the cluster assigns.
    let mut node_file: NodeFile = if dir.exists("node.json") {
        dir.read_json("node.json")?
    } else {
        let host = host_name();
        NodeFile {
            node_id: noodle_security::node_id_for_host(&host),
            name: host,
        }
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
    let cluster = if dir.exists("cluster.json") {
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
        announce_to.clone_from(&cluster.peers);
        cluster
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
        let admission = crate::join::join(&token, text, &seeds, &name, &key).await?;
        let r = admission.response;
        tracing::info!(via = %admission.via, cluster = %r.cluster_id, node = %r.node_id, "admitted");
        // The cluster, not the joiner, names the node (its certificate says so).
        node_file.node_id.clone_from(&r.node_id);
        crate::join::check_admission(&r, &token, &node_file.node_id)?;
        observed_ip = Some(r.observed_addr.ip());
        // The CA certificate and this node's own certificate: never a key of the cluster's.
        dir.write_file("ca.crt", &r.ca_cert, false)?;
        dir.write_file("node.crt", &r.node_cert, false)?;
        dir.write_json("node.json", &node_file, false)?;
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
        cluster
    } else {
        let cluster_id = uuid::Uuid::new_v4().simple().to_string();
        let ca = ClusterCa::generate(&cluster_id)?;
        let cert = ca.issue_node_cert(&node_file.node_id, &key.public_key_raw(), cfg.cert_ttl)?;
        dir.write_file("ca.crt", ca.cert_der(), false)?;
        dir.write_file("ca.key", ca.key_pem().as_bytes(), true)?;
        dir.write_file("node.crt", &cert, false)?;
        let cluster = ClusterFile {
            cluster_id,
            peers: Vec::new(),
        };
        dir.write_json("cluster.json", &cluster, false)?;
        founded = true;
        cluster
    };
    if !dir.exists("node.json") {
        dir.write_json("node.json", &node_file, false)?;
    }
    let credential = dir.admin_credential()?;

    let local_control = crate::control::open_local_state(&dir)?;
    let recovered = local_control.recovered.clone();
    let (membership_tx, membership_rx) = mpsc::channel(MEMBERSHIP_QUEUE_MAX);
    let mut probe = noodle_mesh::ResourceProbe::new(dir.path());
    let resources = probe.sample();
    let me = NodeInfo {
        id: node_file.node_id.clone(),
        name: name.clone(),
        addr: cfg.listen,
        version: now_ms(),
        software: SOFTWARE.into(),
        job_slots: cfg.slots.unwrap_or(resources.cpus.max(1)),
        resources,
        labels: cfg.labels.clone(),
        links: Vec::new(),
        control_incarnation: local_control.incarnation,
        control_up: true,
        signature: Vec::new(),
    };

    // Bind the cluster port.
    let dir = Arc::new(dir);
    let keys = Arc::new(crate::keys::Keys::load(
        dir.clone(),
        &node_file.node_id,
        &cluster.cluster_id,
        key.public_key_raw(),
        cfg.cert_ttl,
    )?);
    // A voter renews its own certificate; any other node needs a valid one to reach a voter.
    if let Some(ago) = keys.cert_expired_ago()
        && keys.ca().is_none()
    {
        return Err(NodeError::CertificateExpired(ago));
    }
    let tls = TlsMaterial {
        ca: keys.ca_cert().clone(),
        cert: CertificateDer::from(dir.read_file("node.crt")?),
        key: key.private_key_der(),
    };
    let service = Arc::new(NodeService::default());
    let link = Link::bind(LinkConfig::new(cfg.listen), &tls, service.clone())?;
    let advertise = advertise_addr(link.local_addr(), observed_ip);
    let audit_key = crate::control::audit_key(&dir)?;
    let cluster = Arc::new(ClusterState::new(
        cluster.cluster_id,
        advertise,
        me,
        audit_key.clone(),
    ));
    let events = EventBus::default();
    events.register(EVENT_KINDS);
    events.register(crate::control::EVENT_KINDS);
    events.register(crate::keys::EVENT_KINDS);
    for s in &subsystems {
        events.register(s.event_kinds());
    }

    // Control plane, with the subsystems' state machines.
    let machines = Machines::new(
        subsystems
            .iter()
            .filter_map(|s| s.state_machine())
            .collect(),
    )
    .map_err(|e| NodeError::Subsystems(e.to_string()))?;
    let plane = Arc::new(
        ControlPlane::start(
            local_control,
            &cluster.node_id,
            advertise.to_string(),
            link.clone(),
            founded,
            cfg.control.clone(),
            machines,
            audit_key,
        )
        .await?,
    );
    if let Some(note) = recovered {
        events.emit(crate::control::CONTROL_RECOVERED, &cluster.node_id, note);
    }
    let authz = Arc::new(Authz::new(plane.control.clone(), name.clone()));
    plane.control.set_gate(authz.clone());
    let owner_token = if founded {
        let root = keys
            .found_root(&plane.control)
            .await
            .map_err(|e| NodeError::Owner(format!("cannot make the cluster's root key: {e}")))?;
        Some(owner_token(&root)?)
    } else {
        None
    };
    tokio::spawn(authz.clone().flush_denials_forever());

    // Subsystems.
    let host = Host {
        node_id: cluster.node_id.clone(),
        node_name: name,
        data_dir: dir.path().to_path_buf(),
        link: link.clone(),
        control: plane.control.clone(),
        authz: authz.clone(),
        events: events.clone(),
        cluster: cluster.clone(),
        clock: Arc::new(SystemClock::default()),
    };
    let mut running: Vec<Arc<dyn RunningSubsystem>> =
        vec![Arc::new(crate::control_api::ControlApi {
            plane: plane.clone(),
            authz: authz.clone(),
            keys: keys.clone(),
        })];
    for s in subsystems {
        running.push(s.start(host.clone()).await?);
    }
    crate::service::check_prefixes(&running).map_err(NodeError::Subsystems)?;
    let _ = service.dispatch.set(Arc::new(Dispatch {
        cluster: cluster.clone(),
        admitter: Arc::new(crate::join::Admitter {
            keys: keys.clone(),
            link: link.clone(),
            cluster: cluster.clone(),
            control: plane.control.clone(),
            events: events.clone(),
            limiter: std::sync::Mutex::new(crate::join::JoinLimiter::new()),
        }),
        events: events.clone(),
        membership: membership_tx.clone(),
        subsystems: running.clone(),
    }));
    tokio::spawn(crate::control::watch_events(
        plane.clone(),
        events.clone(),
        cluster.node_id.clone(),
    ));
    tokio::spawn(crate::control::upkeep_loop(cluster.clone(), plane.clone()));
    tokio::spawn(crate::keys::upkeep_loop(
        keys.clone(),
        plane.clone(),
        link.clone(),
        cluster.clone(),
        events.clone(),
    ));
    tokio::spawn(crate::removal::enforce(
        plane.clone(),
        link.clone(),
        cluster.clone(),
        events.clone(),
    ));

    // Membership.
    let me_id = MemberId {
        node_id: cluster.node_id.clone(),
        addr: advertise,
        bump: now_ms(),
    };
    let membership = Membership::new(me_id, &cfg.membership, rand::random())
        .map_err(|e| NodeError::Membership(e.to_string()))?;
    let gossip = Arc::new(Gossip {
        cluster: cluster.clone(),
        link: link.clone(),
        events: events.clone(),
        tx: membership_tx.clone(),
        data_dir: dir.clone(),
    });
    tokio::spawn(crate::membership::membership_loop(
        gossip.clone(),
        membership,
        membership_rx,
    ));
    tokio::spawn(crate::membership::gossip_loop(gossip, probe, announce_to));

    // mDNS: advertise so that token-only joiners find us; failure only loses that convenience.
    let mdns = if cfg.mdns {
        match Mdns::start().and_then(|m| {
            m.advertise(&cluster.cluster_id, &cluster.node_id, advertise.port())?;
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
    let sessions = Arc::new(crate::session::Sessions::default());
    let state = Arc::new(ApiState {
        cluster: cluster.clone(),
        keys,
        events: events.clone(),
        authz,
        plane,
        credential: credential.clone(),
        metrics,
        subsystems: running,
        sessions: sessions.clone(),
        routes: std::sync::OnceLock::new(),
    });
    tokio::spawn(crate::api::serve(state, listener));
    dir.write_api_info(&noodle_api::ApiInfo {
        url: api_url.clone(),
        pid: std::process::id(),
        node_id: cluster.node_id.clone(),
    })?;
    events.emit(
        EventKind::NODE_STARTED,
        &cluster.node_id,
        format!("cluster {} at {advertise}", cluster.cluster_id),
    );
    Ok(RunningNode {
        node_id: cluster.node_id.clone(),
        cluster_id: cluster.cluster_id.clone(),
        advertise,
        sessions,
        api_url,
        link,
        membership: membership_tx,
        data_dir: dir,
        mdns,
        owner_token,
    })
}

/// Rights of the founder's owner token: every action of every subsystem the cluster has.
const OWNER_RIGHTS: [&str; 7] = [
    "cluster:*",
    "config:*",
    "cap:*",
    "policy:*",
    "audit:*",
    "jobs:*",
    "fabric:*",
];
/// How long the owner token lives.
const OWNER_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The founder's owner token, minted with the new cluster's root key: a person's credential
/// for every machine, where a node's admin credential is only that node's.
fn owner_token(root: &noodle_caps::RootKey) -> Result<String, NodeError> {
    let failed = |e: String| NodeError::Owner(e);
    let rights = OWNER_RIGHTS
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e: noodle_caps::SpecError| failed(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spec = noodle_caps::TokenSpec {
        rights,
        quotas: Vec::new(),
        ttl: OWNER_TOKEN_TTL,
        holder: Some("owner".into()),
    };
    noodle_caps::mint(root, &spec).map_err(|e| failed(e.to_string()))
}

impl RunningNode {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    /// The owner token of a cluster this start founded (`None` on every later start).
    pub fn owner_token(&self) -> Option<&str> {
        self.owner_token.as_deref()
    }
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
    pub fn cluster_addr(&self) -> SocketAddr {
        self.advertise
    }
    pub fn api_url(&self) -> &str {
        &self.api_url
    }
    /// The dashboard address with a one-time login code (valid for 15 minutes, once).
    pub fn dashboard_url(&self) -> String {
        format!("{}/login?code={}", self.api_url, self.sessions.issue_code())
    }

    /// Leaves the cluster politely and stops.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .membership
            .send(MembershipInput::Leave(tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
        }
        if let Some(m) = &self.mdns {
            m.shutdown();
        }
        self.data_dir.remove_api_info();
        self.link.shutdown().await;
    }
}
