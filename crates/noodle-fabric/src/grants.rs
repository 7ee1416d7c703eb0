//! Write grants: a node may write versions under a prefix without a person's token while it
//! runs a job whose submitter had `fabric:write` on that prefix (`noodle run --write PREFIX`).
//!
//! The grants live in the replicated records of the subsystem that runs jobs ([`HOLDER`]),
//! which keeps them exactly while the job is placed on or running on the node, in this
//! layout (defined here, where they are checked):
//!
//! | key | value |
//! | --- | --- |
//! | `g/` + node + `\0` + job id (8 bytes, big-endian) | the job's write prefixes (postcard `Vec<String>`) |
//!
//! The fabric's state machine reads them when a member that is not a voter forwards a
//! version ([`crate::machine::FabricMachine`]'s `forwarding`): a member cannot grant itself
//! anything, since only the job's placement by the leader puts a grant under its name.

use crate::path::{ObjectPath, Prefix};
use noodle_control::MachineView;

/// The subsystem whose records hold the grants.
pub const HOLDER: &str = "jobs";

const GRANT: &[u8] = b"g/";

/// Grants of one node looked at, at most (one per job placed on it).
const GRANTS_SCANNED_MAX: usize = 4096;

fn node_prefix(node: &str) -> Vec<u8> {
    [node.as_bytes(), b"\0"].concat()
}

/// The key of job `id`'s grant to `node`.
pub fn key(node: &str, id: u64) -> Vec<u8> {
    [GRANT, &node_prefix(node), &id.to_be_bytes()].concat()
}

/// A grant's value: the prefixes the job may write under.
pub fn encode(prefixes: &[String]) -> Vec<u8> {
    // Our own in-memory type into a Vec: cannot fail.
    postcard::to_allocvec(prefixes).unwrap_or_default()
}

/// Whether a job placed on `node` may write `path`, by the grants in the [`HOLDER`]'s
/// records (`holder`).
pub fn granted(holder: &MachineView<'_>, node: &str, path: &str) -> bool {
    let Ok(path) = ObjectPath::parse(path) else {
        return false;
    };
    let under = [GRANT, &node_prefix(node)].concat();
    let Ok(grants) = holder.scan(&under, b"", GRANTS_SCANNED_MAX, false) else {
        return false;
    };
    grants.iter().any(|(_, value)| {
        postcard::from_bytes::<Vec<String>>(value).is_ok_and(|prefixes| {
            prefixes
                .iter()
                .filter_map(|p| Prefix::parse(p).ok())
                .any(|p| path.is_under(&p))
        })
    })
}
