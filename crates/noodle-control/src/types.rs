//! What goes through the Raft log, and the types openraft is instantiated with.
//!
//! Everything here is stored with postcard, which is not self-describing: add enum variants at
//! the end only, never reorder or remove one.

use crate::machine::Rejection;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The control plane's openraft configuration.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = RaftId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::Runtime,
);

/// openraft's numeric node id: derived from the node id string (see [`raft_id`]).
pub type RaftId = u64;

/// A control-plane member as the Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node id (`hostname-uuid`).
    pub node_id: String,
    /// Its cluster address (`ip:port`).
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.addr)
    }
}

impl Member {
    /// The member of node `node_id` at `addr`. A node whose control-plane state was lost or
    /// damaged comes back as a new incarnation: a new Raft identity (`node_id#N`), so that it
    /// never votes with a log it no longer has.
    pub fn new(node_id: &str, incarnation: u64, addr: String) -> Member {
        let node_id = match incarnation {
            0 => node_id.to_string(),
            n => format!("{node_id}#{n}"),
        };
        Member { node_id, addr }
    }

    /// The node id without the incarnation.
    pub fn node(&self) -> &str {
        base_node_id(&self.node_id)
    }
}

/// `node-a#2` -> `node-a`.
pub fn base_node_id(member: &str) -> &str {
    member.split_once('#').map_or(member, |(node, _)| node)
}

/// The Raft id of a node: the first 8 bytes of the blake3 hash of its node id. Node ids carry a
/// random UUID, so two members colliding is a 2^-64 event per pair.
pub fn raft_id(node_id: &str) -> RaftId {
    let hash = blake3::hash(node_id.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(id)
}

/// A proposal a member sends the leader, with the capability token the write was made with
/// when a person (not the node itself) asked for it: the leader authorises it again
/// ([`ForwardGate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    pub proposal: Proposal,
    pub credential: Option<String>,
}

/// What the leader needs before it takes a command forwarded by a member that is not a voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// Nothing more: what a node proposes for itself (its key, its reports; checked already).
    Node,
    /// A person's capability token granting `subsystem:action` (on `resource`), whose quotas
    /// allow `amounts` (quota name, amount asked: a job's `cpus`).
    Right {
        subsystem: String,
        action: String,
        resource: Option<String>,
        amounts: Vec<(String, i64)>,
    },
    /// A voter: the leader's own work (placing jobs, the root key).
    Voter,
}

impl Needs {
    pub fn right(subsystem: &str, action: &str, resource: Option<&str>) -> Needs {
        Needs::Right {
            subsystem: subsystem.into(),
            action: action.into(),
            resource: resource.map(str::to_string),
            amounts: Vec::new(),
        }
    }

    /// The same need, within the token's quotas for `amounts`.
    pub fn within(mut self, amounts: &[(&str, i64)]) -> Needs {
        if let Needs::Right { amounts: a, .. } = &mut self {
            a.extend(amounts.iter().map(|(name, n)| ((*name).to_string(), *n)));
        }
        self
    }
}

/// The leader's check of a proposal another member forwards, after the checks of what a node
/// may propose for itself. The node sets its authoriser here; without one, every forwarded
/// proposal is taken. It may rewrite the proposal's audit record (to name the caller it
/// verified), never its command.
pub trait ForwardGate: Send + Sync + 'static {
    fn check(
        &self,
        caller: &str,
        caller_is_voter: bool,
        credential: Option<&str>,
        needs: &[Needs],
        proposal: &mut Proposal,
    ) -> Result<(), String>;
}

/// One write to the replicated state, with the audit record that describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Random, chosen once by the proposer and kept in every copy it sends: the state machine
    /// applies a proposal id once and answers a repeat with the first answer (see
    /// [`crate::state`]), so a copy resent after a lost answer or to a new leader is harmless.
    pub id: u128,
    pub command: Command,
    /// Appended to the audit chain in the same step as the command, so the log and the state
    /// never disagree. `None` for internal bookkeeping (checkpoints, node keys).
    pub audit: Option<noodle_audit::Record>,
}

impl Proposal {
    pub fn new(command: Command) -> Proposal {
        Proposal {
            id: crate::runtime::random_u128(),
            command,
            audit: None,
        }
    }

    pub fn audited(command: Command, record: noodle_audit::Record) -> Proposal {
        Proposal {
            audit: Some(record),
            ..Proposal::new(command)
        }
    }

    /// A subsystem's command (see [`crate::StateMachine`]).
    pub fn machine(name: &str, command: Vec<u8>) -> Proposal {
        Proposal::new(Command::Machine {
            name: name.to_string(),
            command,
        })
    }
}

/// A state change. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Records only the proposal's audit record (a denial, for example).
    Nothing,
    /// Sets a user-visible configuration key (`noodle config set`).
    ConfigSet { key: String, value: String },
    /// Removes a configuration key.
    ConfigUnset { key: String },
    /// Writes `new` into an internal register if it currently holds `expected`.
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    /// What clusters before the root key left the replicated state stored: the capability
    /// root key itself. Nothing proposes it any more; old logs still apply it, and the first
    /// [`Command::SetRootPublicKey`] forgets it.
    SetRootKey { key: Vec<u8> },
    /// Adds a token revocation id to the revocation list.
    Revoke { id: String },
    /// Adds or replaces a cluster-wide policy.
    PolicySet { name: String, source: String },
    /// Removes a policy.
    PolicyRemove { name: String },
    /// Records the key a node signs audit checkpoints with.
    RegisterNode {
        node_id: String,
        audit_key: [u8; 32],
    },
    /// A signed audit checkpoint.
    Checkpoint(noodle_audit::Checkpoint),
    /// Several proposals committed as one log entry (group commit); applied in order.
    Batch(Vec<Proposal>),
    /// A subsystem's command, applied by its [`crate::StateMachine`] (jobs, later the
    /// fabric's metadata). This variant replaced `Job` at the same place in format 2.
    Machine {
        name: String,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// Removes a node from the cluster for good (`noodle node remove`): every member refuses
    /// its links, and it leaves the Raft membership.
    RemoveNode { node_id: String },
    /// Forgets the audit entries up to `upto_seq`, where a signed checkpoint is: the checkpoint
    /// stays and vouches for them, so the rest of the log still verifies from it.
    PruneAudit { upto_seq: u64 },
    /// Stores the public half of the cluster's capability root key unless one is stored
    /// already, and forgets a private key an older version stored ([`Command::SetRootKey`]).
    /// The private half never enters the log: only voters hold it, each in its own file.
    SetRootPublicKey { key: Vec<u8> },
}

/// The state machine's answer to one proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Done,
    /// A compare-and-set found another value: nothing was written.
    CasFailed {
        current: Option<Vec<u8>>,
    },
    /// The command was invalid for the current state: nothing was written.
    Rejected(String),
    /// One answer per proposal of a [`Command::Batch`].
    Batch(Vec<Response>),
    /// A new record was created (a job's id).
    Created {
        id: u64,
    },
}

/// Bounds on what a proposal may carry, checked before it is proposed and again when applied.
pub mod limits {
    pub const CONFIG_KEY_CHARS_MAX: usize = 128;
    pub const CONFIG_VALUE_BYTES_MAX: usize = 4096;
    pub const REGISTER_BYTES_MAX: usize = 64 << 10;
    pub const POLICY_BYTES_MAX: usize = 16 << 10;
    pub const POLICIES_MAX: usize = 64;
    /// Longest encoded subsystem command.
    pub const MACHINE_COMMAND_BYTES_MAX: usize = 1 << 20;
}

/// Checks a configuration key: 1..=128 of `[A-Za-z0-9._/-]`, not starting with `/` or `.`.
pub fn validate_config_key(key: &str) -> Result<(), Rejection> {
    config_key(key).map_err(Rejection)
}

fn config_key(key: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
    if key.is_empty() || key.len() > limits::CONFIG_KEY_CHARS_MAX {
        return Err(format!(
            "config key must be 1 to {} characters",
            limits::CONFIG_KEY_CHARS_MAX
        ));
    }
    if !key.chars().all(ok_char) || key.starts_with(['/', '.']) {
        return Err(format!(
            "config key {key:?} may hold only letters, digits, '.', '_', '-' and '/', and may not start with '/' or '.'"
        ));
    }
    Ok(())
}

impl Proposal {
    /// Roughly how many bytes the proposal takes in the log (for bounding batches).
    pub(crate) fn approx_bytes(&self) -> usize {
        let command = match &self.command {
            Command::ConfigSet { key, value } => key.len() + value.len(),
            Command::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
            }
            Command::PolicySet { name, source } => name.len() + source.len(),
            Command::SetRootKey { key } | Command::SetRootPublicKey { key } => key.len(),
            Command::Machine { name, command } => name.len() + command.len(),
            Command::Batch(ps) => ps.iter().map(Proposal::approx_bytes).sum(),
            _ => 128,
        };
        let audit = self.audit.as_ref().map_or(0, |r| {
            r.actor.len() + r.action.len() + r.target.len() + r.right.len() + 64
        });
        command + audit + 16
    }
}

impl Command {
    /// Checks the bounds of a command before it is proposed; the state machine checks again.
    /// A subsystem's command is checked here for its size only; its own machine checks the
    /// rest ([`crate::Control::propose`] does both).
    pub fn validate(&self) -> Result<(), Rejection> {
        self.check().map_err(Rejection)
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Command::ConfigSet { key, value } => {
                config_key(key)?;
                if value.len() > limits::CONFIG_VALUE_BYTES_MAX {
                    return Err(format!(
                        "config value is {} bytes, the limit is {}",
                        value.len(),
                        limits::CONFIG_VALUE_BYTES_MAX
                    ));
                }
                Ok(())
            }
            Command::ConfigUnset { key } => config_key(key),
            Command::Cas { key, expected, new } => {
                let too_big = |v: &Option<Vec<u8>>| {
                    v.as_ref()
                        .is_some_and(|v| v.len() > limits::REGISTER_BYTES_MAX)
                };
                if key.is_empty() || key.len() > 256 || too_big(expected) || too_big(new) {
                    return Err("register key or value out of bounds".into());
                }
                Ok(())
            }
            Command::PolicySet { name, source } => {
                if source.len() > limits::POLICY_BYTES_MAX {
                    return Err(format!(
                        "policy {name:?} is {} bytes, the limit is {}",
                        source.len(),
                        limits::POLICY_BYTES_MAX
                    ));
                }
                Ok(())
            }
            Command::SetRootPublicKey { key } if key.is_empty() || key.len() > 256 => {
                Err("a root public key must be 1 to 256 bytes".into())
            }
            Command::Revoke { id } if id.is_empty() || id.len() > 256 => {
                Err("revocation id must be 1 to 256 characters".into())
            }
            Command::RemoveNode { node_id } if node_id.is_empty() || node_id.len() > 128 => {
                Err("a node id must be 1 to 128 characters".into())
            }
            Command::Batch(ps) => {
                if ps.iter().any(|p| matches!(p.command, Command::Batch(_))) {
                    return Err("a batch may not contain a batch".into());
                }
                Ok(())
            }
            Command::Machine { name, command } => {
                if name.len() > crate::machine::MACHINE_NAME_BYTES_MAX
                    || command.len() > limits::MACHINE_COMMAND_BYTES_MAX
                {
                    return Err(format!(
                        "a {name:.32} command of {} bytes is out of bounds",
                        command.len()
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
