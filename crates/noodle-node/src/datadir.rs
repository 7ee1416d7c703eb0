//! The data directory: identity, cluster membership material, API address and credential.
//!
//! Layout (secrets are mode 0600, the directory 0700):
//!
//! | file | content |
//! | --- | --- |
//! | `lock` | held (flock) by the running node; holds its pid |
//! | `node.json` | node id and name |
//! | `node.key` | the node's private key (PEM) |
//! | `node.crt` | the node's certificate, issued by the cluster CA (DER), short-lived and renewed |
//! | `ca.crt` | the cluster CA certificate (DER) |
//! | `ca.key`, `root.key` | voters only: the CA key (PEM) and the capability root key (raw) |
//! | `cluster.json` | cluster id and the last known peers, for rejoining after a restart |
//! | `api.json`, `admin.credential` | where the API listens and the credential clients present |

use noodle_api::{ADMIN_CREDENTIAL_FILE, API_FILE, ApiInfo};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path} is not usable: {source}")]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another noodle node is already running on data directory {path}{pid}")]
    Locked { path: PathBuf, pid: String },
    #[error("cannot write {path}: {source} (is the disk full or read-only?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeFile {
    pub node_id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PeerRecord {
    pub id: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ClusterFile {
    pub cluster_id: String,
    pub peers: Vec<PeerRecord>,
}

/// Takes group and other rights off everything directly in `dir` (files written before the
/// node set its umask): the directory itself may be made passable later.
fn tighten_entries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if let Ok(meta) = entry.path().symlink_metadata()
            && !meta.is_symlink()
            && meta.permissions().mode() & 0o077 != 0
        {
            let mode = meta.permissions().mode() & 0o700;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
        }
    }
}

/// An opened, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (if needed) and locks `path`. Fails if another node holds it or it is not
    /// writable.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let unusable = |source| DataDirError::Unusable {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(unusable)?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        tighten_entries(path);
        let lock_path = path.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(unusable)?;
        if lock.try_lock().is_err() {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            return Err(DataDirError::Locked {
                path: path.to_path_buf(),
                pid,
            });
        }
        lock.set_len(0).map_err(unusable)?;
        write!(lock, "{}", std::process::id()).map_err(unusable)?;
        lock.sync_all().map_err(unusable)?;
        let dir = DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        };
        // Prove now that the directory takes writes, not halfway through joining.
        dir.write_file("write-check", b"ok", false)?;
        let _ = std::fs::remove_file(path.join("write-check"));
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path.join(name).exists()
    }

    /// Writes `name` atomically (temp file, fsync, rename), mode 0600 when `secret`.
    pub fn write_file(&self, name: &str, bytes: &[u8], secret: bool) -> Result<(), DataDirError> {
        let target = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(if secret { 0o600 } else { 0o644 })
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            DataDirError::Write {
                path: target.clone(),
                source,
            }
        })
    }

    /// Removes `name` if it exists, durably; whether it existed.
    pub fn remove_file(&self, name: &str) -> Result<bool, DataDirError> {
        let target = self.path.join(name);
        let remove = || -> std::io::Result<bool> {
            match std::fs::remove_file(&target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                other => other?,
            }
            File::open(&self.path)?.sync_all()?;
            Ok(true)
        };
        remove().map_err(|source| DataDirError::Write {
            path: target.clone(),
            source,
        })
    }

    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, DataDirError> {
        let path = self.path.join(name);
        std::fs::read(&path).map_err(|source| DataDirError::Read { path, source })
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, DataDirError> {
        let bytes = self.read_file(name)?;
        serde_json::from_slice(&bytes).map_err(|e| DataDirError::Corrupt {
            path: self.path.join(name),
            detail: e.to_string(),
        })
    }

    pub fn write_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        secret: bool,
    ) -> Result<(), DataDirError> {
        // Serialising our own plain structs to JSON cannot fail.
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        self.write_file(name, &bytes, secret)
    }

    /// The admin credential, created on first use.
    pub fn admin_credential(&self) -> Result<String, DataDirError> {
        if self.exists(ADMIN_CREDENTIAL_FILE) {
            let raw = self.read_file(ADMIN_CREDENTIAL_FILE)?;
            let cred = String::from_utf8_lossy(&raw).trim().to_string();
            if cred.len() >= 32 {
                return Ok(cred);
            }
        }
        let cred = hex::encode(rand::random::<[u8; 32]>());
        self.write_file(ADMIN_CREDENTIAL_FILE, cred.as_bytes(), true)?;
        Ok(cred)
    }

    pub fn write_api_info(&self, info: &ApiInfo) -> Result<(), DataDirError> {
        self.write_json(API_FILE, info, false)
    }

    pub fn remove_api_info(&self) {
        let _ = std::fs::remove_file(self.path.join(API_FILE));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn secrets_are_private_and_writes_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let cred = d.admin_credential().unwrap();
        assert_eq!(d.admin_credential().unwrap(), cred);
        let mode = std::fs::metadata(dir.path().join(ADMIN_CREDENTIAL_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        d.write_json(
            "x.json",
            &NodeFile {
                node_id: "a".into(),
                name: "b".into(),
            },
            false,
        )
        .unwrap();
        let back: NodeFile = d.read_json("x.json").unwrap();
        assert_eq!(back.node_id, "a");
        std::fs::write(dir.path().join("bad.json"), b"{").unwrap();
        assert!(matches!(
            d.read_json::<NodeFile>("bad.json"),
            Err(DataDirError::Corrupt { .. })
        ));
    }
}
