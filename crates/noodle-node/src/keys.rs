//! The cluster's signing keys, which only voters hold, and this node's short-lived certificate.
//!
//! Two keys make a member powerful: the CA key (signs node certificates) and the capability
//! root key (signs tokens). Voters keep them in their data directories (`ca.key`, `root.key`,
//! mode 0600). The replicated state has only the root key's public half, and learners and
//! workers have neither key: a stolen non-voter's directory can mint nothing.
//!
//! About once a second ([`upkeep_loop`]):
//! - a voter that lacks the keys asks a voter that holds them (`node.keys`, which answers
//!   voters only, as the link authenticated them);
//! - a node that is no longer a voter deletes its copies;
//! - the leader of a cluster whose state has no root public key yet records it (moving the
//!   private key an older version kept in the replicated state into its own file first);
//! - a node whose certificate is past half its life gets a new one: a voter issues its own;
//!   any other node asks a voter (`node.renew`), which certifies the caller's node id, as its
//!   current certificate names it, and nothing else.

use crate::cluster::ClusterState;
use crate::control::ControlPlane;
use crate::datadir::{DataDir, DataDirError};
use noodle_api::EventKind;
use noodle_caps::RootKey;
use noodle_control::{Command, Control, Proposal};
use noodle_host::EventBus;
use noodle_link::{Link, RemoteError};
use noodle_security::{ClusterCa, cert_validity, node_id_of_cert};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub(crate) const KEYS_RECEIVED: EventKind = EventKind::new("keys_received");
pub(crate) const KEYS_HANDED_OVER: EventKind = EventKind::new("keys_handed_over");
pub(crate) const KEYS_DISCARDED: EventKind = EventKind::new("keys_discarded");
pub(crate) const CERT_RENEWED: EventKind = EventKind::new("cert_renewed");
pub(crate) const EVENT_KINDS: [EventKind; 4] = [
    KEYS_RECEIVED,
    KEYS_HANDED_OVER,
    KEYS_DISCARDED,
    CERT_RENEWED,
];

/// A voter asks another for the cluster's keys.
pub(crate) const NODE_KEYS: &str = "node.keys";
/// A node asks a voter for a new certificate.
pub(crate) const NODE_RENEW: &str = "node.renew";

const CA_KEY_FILE: &str = "ca.key";
const ROOT_KEY_FILE: &str = "root.key";
const NODE_CERT_FILE: &str = "node.crt";
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);
/// Pause after a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(10);
/// Shortest certificate lifetime `noodle up --cert-ttl` takes: renewal must have time to
/// happen however slow the machine.
pub const CERT_TTL_MIN: Duration = Duration::from_secs(60);

/// What a voter hands to a new voter.
#[derive(Serialize, Deserialize)]
struct Handover {
    ca_key_pem: String,
    root_key: Option<Vec<u8>>,
}

#[derive(Default)]
struct Held {
    ca: Option<Arc<ClusterCa>>,
    root: Option<Arc<RootKey>>,
}

/// What this node holds of the cluster's trust: the CA certificate, its own certificate, and,
/// on a voter, the two keys.
pub(crate) struct Keys {
    dir: Arc<DataDir>,
    node_id: String,
    cluster_id: String,
    ca_cert: CertificateDer<'static>,
    /// The raw public key of this node's own key pair, certified again on renewal.
    node_public: Vec<u8>,
    /// How long the certificates this node issues (as a voter) are valid.
    cert_ttl: Duration,
    held: RwLock<Held>,
    node_cert: RwLock<CertificateDer<'static>>,
}

fn corrupt(dir: &DataDir, name: &str, detail: impl ToString) -> DataDirError {
    DataDirError::Corrupt {
        path: dir.path().join(name),
        detail: detail.to_string(),
    }
}

fn unix_now() -> i64 {
    (noodle_host::now_ms() / 1000) as i64
}

impl Keys {
    /// Loads what the data directory holds; a key file that does not match the CA certificate
    /// is an error.
    pub(crate) fn load(
        dir: Arc<DataDir>,
        node_id: &str,
        cluster_id: &str,
        node_public: Vec<u8>,
        cert_ttl: Duration,
    ) -> Result<Keys, DataDirError> {
        let ca_cert = CertificateDer::from(dir.read_file("ca.crt")?);
        let node_cert = CertificateDer::from(dir.read_file(NODE_CERT_FILE)?);
        let mut held = Held::default();
        if dir.exists(CA_KEY_FILE) {
            let pem = dir.read_file(CA_KEY_FILE)?;
            let ca = ClusterCa::load(cluster_id, ca_cert.clone(), &String::from_utf8_lossy(&pem))
                .map_err(|e| corrupt(&dir, CA_KEY_FILE, e))?;
            held.ca = Some(Arc::new(ca));
        }
        if dir.exists(ROOT_KEY_FILE) {
            let bytes = dir.read_file(ROOT_KEY_FILE)?;
            let root = RootKey::from_bytes(&bytes).map_err(|e| corrupt(&dir, ROOT_KEY_FILE, e))?;
            held.root = Some(Arc::new(root));
        }
        Ok(Keys {
            dir,
            node_id: node_id.to_string(),
            cluster_id: cluster_id.to_string(),
            ca_cert,
            node_public,
            cert_ttl,
            held: RwLock::new(held),
            node_cert: RwLock::new(node_cert),
        })
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|e| e.into_inner())
    }

    fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The CA, on a voter that holds its key.
    pub(crate) fn ca(&self) -> Option<Arc<ClusterCa>> {
        self.held().ca.clone()
    }

    /// The capability root key, on a voter that holds it.
    pub(crate) fn root(&self) -> Option<Arc<RootKey>> {
        self.held().root.clone()
    }

    pub(crate) fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub(crate) fn ca_fingerprint(&self) -> [u8; 32] {
        noodle_security::fingerprint(&self.ca_cert)
    }

    pub(crate) fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// A certificate for `node_id`'s key `public_key`, if this node holds the CA key.
    pub(crate) fn issue(&self, node_id: &str, public_key: &[u8]) -> Result<Vec<u8>, String> {
        let ca = self
            .ca()
            .ok_or("this node holds no CA key (only voters do)")?;
        ca.issue_node_cert(node_id, public_key, self.cert_ttl)
            .map(|c| c.to_vec())
            .map_err(|e| format!("cannot issue a certificate: {e}"))
    }

    fn set_ca(&self, ca: ClusterCa) -> Result<(), DataDirError> {
        self.dir
            .write_file(CA_KEY_FILE, ca.key_pem().as_bytes(), true)?;
        self.held_mut().ca = Some(Arc::new(ca));
        Ok(())
    }

    fn set_root(&self, root: RootKey) -> Result<Arc<RootKey>, DataDirError> {
        self.dir.write_file(ROOT_KEY_FILE, &root.to_bytes(), true)?;
        let root = Arc::new(root);
        self.held_mut().root = Some(root.clone());
        Ok(root)
    }

    /// Deletes both keys; whether there was anything to delete.
    fn discard(&self) -> Result<bool, DataDirError> {
        let had = {
            let mut held = self.held_mut();
            let had = held.ca.is_some() || held.root.is_some();
            *held = Held::default();
            had
        };
        let ca = self.dir.remove_file(CA_KEY_FILE)?;
        let root = self.dir.remove_file(ROOT_KEY_FILE)?;
        Ok(had || ca || root)
    }

    /// The founder's root key: made, kept in its file, and its public half recorded, before
    /// `noodle up` mints the owner token with it.
    pub(crate) async fn found_root(&self, control: &Control) -> Result<Arc<RootKey>, String> {
        let root = self
            .set_root(RootKey::generate())
            .map_err(|e| e.to_string())?;
        let key = root.public().to_bytes();
        control
            .propose(Proposal::new(Command::SetRootPublicKey { key }))
            .await
            .map_err(|e| e.to_string())?;
        Ok(root)
    }

    /// `node.keys`: the keys, to a voter only.
    pub(crate) fn answer_handover(
        &self,
        control: &Control,
        events: &EventBus,
        caller: &str,
    ) -> Result<Vec<u8>, RemoteError> {
        if !control.is_voter_node(caller) {
            tracing::warn!(
                caller,
                "refused the cluster's keys to a node that is not a voter"
            );
            return Err(RemoteError::new(
                RemoteError::FORBIDDEN,
                format!("the cluster's keys go to voters only, and {caller} is not one"),
            ));
        }
        let held = self.held();
        let Some(ca) = &held.ca else {
            return Err(RemoteError::new(
                RemoteError::UNAVAILABLE,
                "this node holds no keys",
            ));
        };
        let handover = Handover {
            ca_key_pem: ca.key_pem(),
            root_key: held.root.as_ref().map(|r| r.to_bytes()),
        };
        events.emit(
            KEYS_HANDED_OVER,
            caller,
            "the CA and root keys, to a new voter",
        );
        Ok(postcard::to_stdvec(&handover).unwrap_or_default())
    }

    /// `node.renew`: a new certificate for the calling node's id and the key in `body`.
    pub(crate) fn answer_renew(&self, caller: &str, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
        // A raw P-256 public key is one uncompressed point.
        if body.len() != 65 {
            return Err(RemoteError::new(
                RemoteError::BAD_REQUEST,
                "a renewal carries the node's raw P-256 public key",
            ));
        }
        self.issue(caller, body)
            .map_err(|e| RemoteError::new(RemoteError::UNAVAILABLE, e))
    }

    /// Takes the keys a voter handed over, once they check out against the CA certificate and
    /// the state's root public key.
    fn install(&self, bytes: &[u8], root_public: Option<&[u8]>) -> Result<(), String> {
        let handover: Handover =
            postcard::from_bytes(bytes).map_err(|_| "unreadable keys".to_string())?;
        let ca = ClusterCa::load(&self.cluster_id, self.ca_cert.clone(), &handover.ca_key_pem)
            .map_err(|e| e.to_string())?;
        let root = match &handover.root_key {
            Some(b) => Some(RootKey::from_bytes(b).map_err(|e| e.to_string())?),
            None => None,
        };
        if let (Some(root), Some(public)) = (&root, root_public)
            && root.public().to_bytes() != public
        {
            return Err("the root key does not match the cluster's".into());
        }
        self.set_ca(ca).map_err(|e| e.to_string())?;
        if let Some(root) = root {
            self.set_root(root).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// How long ago this node's certificate expired, if it has.
    pub(crate) fn cert_expired_ago(&self) -> Option<i64> {
        let cert = self.node_cert.read().unwrap_or_else(|e| e.into_inner());
        let (_, until) = cert_validity(&cert)?;
        let ago = unix_now() - until;
        (ago > 0).then_some(ago)
    }

    /// Whether this node's certificate is past half its life.
    fn renewal_due(&self) -> bool {
        let cert = self.node_cert.read().unwrap_or_else(|e| e.into_inner());
        noodle_security::renewal_due(&cert, unix_now())
    }

    /// Takes `cert` as this node's certificate if it names this node and lasts longer than
    /// the one it has: stored, then presented on new links.
    fn take_cert(&self, cert: Vec<u8>, link: &Link) -> Result<(), String> {
        noodle_security::check_node_cert(&self.ca_cert, &cert, &self.node_public)?;
        let cert = CertificateDer::from(cert);
        if node_id_of_cert(&cert).as_deref() != Some(self.node_id.as_str()) {
            return Err("the renewed certificate names another node".into());
        }
        let until = |c: &CertificateDer<'_>| cert_validity(c).map_or(i64::MIN, |(_, u)| u);
        if until(&cert) <= until(&self.node_cert.read().unwrap_or_else(|e| e.into_inner())) {
            return Err("the renewed certificate does not last longer".into());
        }
        self.dir
            .write_file(NODE_CERT_FILE, &cert, false)
            .map_err(|e| e.to_string())?;
        link.set_certificate(cert.clone())
            .map_err(|e| e.to_string())?;
        *self.node_cert.write().unwrap_or_else(|e| e.into_inner()) = cert;
        Ok(())
    }
}

/// What one node does about the keys and its certificate, about once a second.
pub(crate) async fn upkeep_loop(
    keys: Arc<Keys>,
    plane: Arc<ControlPlane>,
    link: Link,
    cluster: Arc<ClusterState>,
    events: EventBus,
) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a failed renewal, the next try waits a little (the certificate has half its life
    // left, and a voter may be briefly unreachable), so a failure is not logged every second.
    let mut renew_after = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let upkeep = Upkeep {
            keys: &keys,
            control: &plane.control,
            link: &link,
            cluster: &cluster,
            events: &events,
        };
        if let Err(e) = upkeep.keys().await {
            tracing::debug!(error = %e, "key upkeep");
        }
        if keys.renewal_due() && tokio::time::Instant::now() >= renew_after {
            match upkeep.renew().await {
                Ok(()) => events.emit(CERT_RENEWED, &cluster.node_id, "a new node certificate"),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing this node's certificate");
                    renew_after = tokio::time::Instant::now() + RENEW_RETRY;
                }
            }
        }
    }
}

/// The other voters this node can reach, the leader first.
pub(crate) fn reachable_voters(
    control: &Control,
    cluster: &ClusterState,
) -> Vec<(String, SocketAddr)> {
    let leader = control.status().leader;
    let mut voters: Vec<(String, SocketAddr)> = cluster
        .live_members()
        .into_iter()
        .filter(|(id, _)| control.is_voter_node(id))
        .collect();
    voters.sort_by_key(|(id, _)| Some(id.as_str()) != leader.as_deref());
    voters
}

struct Upkeep<'a> {
    keys: &'a Keys,
    control: &'a Control,
    link: &'a Link,
    cluster: &'a ClusterState,
    events: &'a EventBus,
}

impl Upkeep<'_> {
    async fn keys(&self) -> Result<(), String> {
        let (keys, control) = (self.keys, self.control);
        let (public, legacy) = control
            .read_local(|v| Ok((v.root_public_key()?, v.legacy_root_key()?)))
            .map_err(|e| e.to_string())?;
        if !control.is_voter_node(&self.cluster.node_id) {
            // Only once this node knows the cluster's membership: a node that has not caught
            // up yet does not know whether it is a voter.
            if control.status().leader.is_some() && keys.discard().map_err(|e| e.to_string())? {
                self.events.emit(
                    KEYS_DISCARDED,
                    &self.cluster.node_id,
                    "no longer a voter: the CA and root keys are deleted here",
                );
            }
            return Ok(());
        }
        // A cluster made by an older version keeps the private root key in its state: each
        // voter moves it into its own file before the leader removes it from there.
        if let Some(private) = &legacy
            && keys.root().is_none()
        {
            let root = RootKey::from_bytes(private).map_err(|e| e.to_string())?;
            keys.set_root(root).map_err(|e| e.to_string())?;
        }
        if public.is_none() && control.is_leader() {
            let root = match keys.root() {
                Some(root) => root,
                None if legacy.is_none() => keys
                    .set_root(RootKey::generate())
                    .map_err(|e| e.to_string())?,
                None => return Ok(()),
            };
            let key = root.public().to_bytes();
            control
                .propose(Proposal::new(Command::SetRootPublicKey { key }))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let root_matches = match (&public, keys.root()) {
            (Some(public), Some(root)) => root.public().to_bytes() == *public,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if keys.ca().is_none() || !root_matches {
            self.fetch(public.as_deref()).await?;
        }
        Ok(())
    }

    /// Asks the voters for the keys until one hands them over.
    async fn fetch(&self, root_public: Option<&[u8]>) -> Result<(), String> {
        let mut failures = Vec::new();
        for (id, addr) in reachable_voters(self.control, self.cluster) {
            let answer = self.link.request(addr, NODE_KEYS, b"").await;
            match answer
                .map_err(|e| e.to_string())
                .and_then(|bytes| self.keys.install(&bytes, root_public))
            {
                Ok(()) => {
                    self.events.emit(
                        KEYS_RECEIVED,
                        &self.cluster.node_id,
                        format!("the CA and root keys, from {id}"),
                    );
                    return Ok(());
                }
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        Err(format!(
            "a voter without the cluster's keys found none to hand them over: {}",
            failures.join("; ")
        ))
    }

    /// A new certificate: issued here on a voter, by a voter otherwise.
    async fn renew(&self) -> Result<(), String> {
        let keys = self.keys;
        if keys.ca().is_some() {
            let cert = keys.issue(&self.cluster.node_id, &keys.node_public)?;
            return keys.take_cert(cert, self.link);
        }
        let mut failures = Vec::new();
        for (id, addr) in reachable_voters(self.control, self.cluster) {
            let answer = self.link.request(addr, NODE_RENEW, &keys.node_public).await;
            match answer
                .map_err(|e| e.to_string())
                .and_then(|cert| keys.take_cert(cert.to_vec(), self.link))
            {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        Err(format!("no voter renewed it: {}", failures.join("; ")))
    }
}
