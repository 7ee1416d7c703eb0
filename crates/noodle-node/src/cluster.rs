//! The node's view of the cluster: the gossiped node table and the membership layer's verdict
//! on each member. Eventually consistent; the control plane, not this, decides anything that
//! must be agreed on. Subsystems see it through [`noodle_host::ClusterView`].

use noodle_api::{ControlInfo, LinkStatus, NodeState, NodeStatus, StatusReport, Totals};
use noodle_audit::{AuditKey, AuditPublicKey};
use noodle_discovery::{MemberId, NodeInfo, NodeTable};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

struct View {
    table: NodeTable,
    /// Latest membership snapshot: one entry per node id (newest incarnation).
    members: HashMap<String, (MemberId, NodeState)>,
    /// Nodes removed from the cluster: their entries are dropped and never taken again.
    removed: HashSet<String>,
    /// Each node's signing key, from the control plane: an entry is taken only with its own
    /// node's signature.
    keys: HashMap<String, AuditPublicKey>,
}

impl View {
    /// Takes an entry only with its node's signature; an entry of a node whose key is not
    /// registered yet (it joined a moment ago) only straight from that node (`from`).
    fn merge(&mut self, mut entries: Vec<NodeInfo>, from: Option<&str>, own: &AuditKey) {
        entries.retain(|e| !self.removed.contains(&e.id));
        let keys = &self.keys;
        let authentic = |e: &NodeInfo| match keys.get(&e.id) {
            Some(key) => key.verifies_in_context(GOSSIP_CONTEXT, &e.signed_bytes(), &e.signature),
            None => from == Some(e.id.as_str()),
        };
        let version = self.table.me().version;
        self.table.merge(entries, authentic);
        if self.table.me().version != version {
            self.table.seal_me(|me| sign(me, own));
        }
    }
}

/// What a node's signature over its gossiped entry starts with.
const GOSSIP_CONTEXT: &[u8] = b"noodle gossip entry v1";

fn sign(me: &mut NodeInfo, key: &AuditKey) {
    me.signature = key
        .sign_in_context(GOSSIP_CONTEXT, &me.signed_bytes())
        .to_vec();
}

/// This node's view of the cluster.
pub(crate) struct ClusterState {
    pub(crate) node_id: String,
    pub(crate) cluster_id: String,
    /// The address peers reach this node at.
    pub(crate) advertise: SocketAddr,
    /// Signs this node's own entry.
    key: AuditKey,
    view: Mutex<View>,
}

impl ClusterState {
    pub(crate) fn new(
        cluster_id: String,
        advertise: SocketAddr,
        mut me: NodeInfo,
        key: AuditKey,
    ) -> ClusterState {
        me.addr = advertise;
        sign(&mut me, &key);
        let own_key = key.public_key();
        ClusterState {
            node_id: me.id.clone(),
            cluster_id,
            advertise,
            view: Mutex::new(View {
                keys: HashMap::from([(me.id.clone(), own_key)]),
                table: NodeTable::new(me),
                members: HashMap::new(),
                removed: HashSet::new(),
            }),
            key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes this node's own entry (and raises its version).
    pub(crate) fn update_me(&self, now_ms: u64, change: impl FnOnce(&mut NodeInfo)) {
        self.update_me_if(now_ms, |_| true, change);
    }

    /// Changes this node's own entry if `stale` says it must.
    pub(crate) fn update_me_if(
        &self,
        now_ms: u64,
        stale: impl FnOnce(&noodle_discovery::NodeInfo) -> bool,
        change: impl FnOnce(&mut NodeInfo),
    ) {
        let mut view = self.lock();
        if stale(view.table.me()) {
            view.table.update_me(now_ms, change);
            view.table.seal_me(|me| sign(me, &self.key));
        }
    }

    /// Merges the entries the node `from` (authenticated by the link) sent; returns what we
    /// know newer than them.
    pub(crate) fn exchange(&self, from: &str, theirs: Vec<NodeInfo>) -> Vec<NodeInfo> {
        let mut view = self.lock();
        let answer = view.table.newer_than(&theirs);
        view.merge(theirs, Some(from), &self.key);
        answer
    }

    /// Merges relayed entries (a peer's answer): only those their own node signed.
    pub(crate) fn merge(&self, entries: Vec<NodeInfo>) {
        self.lock().merge(entries, None, &self.key);
    }

    /// The nodes' signing keys, as the control plane has them registered.
    pub(crate) fn set_keys(&self, keys: &BTreeMap<String, [u8; 32]>) {
        let mut view = self.lock();
        view.keys = keys
            .iter()
            .filter_map(|(id, k)| Some((id.clone(), AuditPublicKey::from_bytes(*k).ok()?)))
            .collect();
        view.keys
            .insert(self.node_id.clone(), self.key.public_key());
    }

    /// Forgets the nodes in `removed` (the control plane's list) and refuses their entries
    /// from now on.
    pub(crate) fn set_removed(&self, removed: &std::collections::BTreeSet<String>) {
        let mut view = self.lock();
        for id in removed {
            view.table.remove(id);
            view.members.remove(id);
        }
        view.removed = removed.iter().cloned().collect();
    }

    pub(crate) fn entries(&self) -> Vec<NodeInfo> {
        self.lock().table.entries()
    }

    pub(crate) fn set_members(&self, mut members: HashMap<String, (MemberId, NodeState)>) {
        let mut view = self.lock();
        members.retain(|id, _| !view.removed.contains(id));
        view.members = members;
    }

    /// Members in a state `keep` accepts: (node id, cluster address), by id.
    pub(crate) fn members_where(
        &self,
        keep: impl Fn(NodeState) -> bool,
    ) -> Vec<(String, SocketAddr)> {
        let mut members: Vec<(String, SocketAddr)> = self
            .lock()
            .members
            .values()
            .filter(|(_, s)| keep(*s))
            .map(|(m, _)| (m.node_id.clone(), m.addr))
            .collect();
        members.sort();
        members
    }

    /// Members not declared dead.
    pub(crate) fn live_members(&self) -> Vec<(String, SocketAddr)> {
        self.members_where(|s| s != NodeState::Dead)
    }

    /// Each member with its gossiped entry (once that arrived) and whether it is alive.
    pub(crate) fn member_health(&self) -> Vec<(MemberId, NodeInfo, bool)> {
        let view = self.lock();
        view.members
            .values()
            .filter_map(|(m, state)| {
                let info = view.table.get(&m.node_id)?;
                Some((m.clone(), info.clone(), *state == NodeState::Alive))
            })
            .collect()
    }

    /// Indices of this node's GPUs.
    pub(crate) fn own_gpu_indices(&self) -> Vec<u32> {
        self.lock()
            .table
            .get(&self.node_id)
            .map(|e| e.resources.gpus.iter().map(|g| g.index).collect())
            .unwrap_or_default()
    }

    /// The cluster as this node sees it.
    pub(crate) fn status(&self, control: Option<ControlInfo>) -> StatusReport {
        let view = self.lock();
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
            control,
        }
    }
}

impl noodle_host::ClusterView for ClusterState {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn alive_node_ids(&self) -> HashSet<String> {
        let view = self.lock();
        let mut alive: HashSet<String> = view
            .members
            .iter()
            .filter(|(_, (_, s))| *s == NodeState::Alive)
            .map(|(id, _)| id.clone())
            .collect();
        alive.insert(self.node_id.clone());
        alive
    }

    fn node_state(&self, id: &str) -> Option<NodeState> {
        if id == self.node_id {
            return Some(NodeState::Alive);
        }
        self.lock().members.get(id).map(|(_, s)| *s)
    }

    fn peer_addr(&self, id: &str) -> Option<SocketAddr> {
        if id == self.node_id {
            return Some(self.advertise);
        }
        self.lock().table.get(id).map(|e| e.addr)
    }

    fn nodes(&self) -> Vec<(NodeInfo, NodeState)> {
        let alive = self.alive_node_ids();
        let view = self.lock();
        view.table
            .iter()
            .map(|e| {
                let state = if alive.contains(&e.id) {
                    NodeState::Alive
                } else {
                    view.members
                        .get(&e.id)
                        .map_or(NodeState::Suspect, |(_, s)| *s)
                };
                (e.clone(), state)
            })
            .collect()
    }

    fn own_gpu_indices(&self) -> Vec<u32> {
        ClusterState::own_gpu_indices(self)
    }

    fn every_alive_node_described(&self) -> bool {
        let alive = self.alive_node_ids();
        let view = self.lock();
        alive.iter().all(|id| view.table.get(id).is_some())
    }
}
