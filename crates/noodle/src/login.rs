//! `noodle login TOKEN` / `noodle logout`: a person's capability token kept in their own
//! config directory (not the node's data directory), used by every command when neither
//! `--token` nor `NOODLE_TOKEN` is given. On a node that is not a voter, cluster writes need
//! one: the node's admin credential is that node's, not the cluster's.

use anyhow::{Context, Result, bail};
use noodle_api::{Client, ClientError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `$XDG_CONFIG_HOME/noodle`, else `~/.config/noodle`.
fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("noodle"))
}

/// Where `noodle login` keeps the token.
fn token_path() -> Option<PathBuf> {
    Some(config_dir()?.join("token"))
}

/// Writes `token` to `path` (mode 0600, its directory 0700), replacing it at once.
fn write_private(path: &Path, token: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Keeps the owner token of the cluster `cluster_id` this `noodle up` founded, in the person's
/// config directory (`owner-<cluster>.token`): not used by commands on this machine, where the
/// node's admin credential works; on another machine, `noodle login` it.
pub(crate) fn keep_owner_token(cluster_id: &str, token: &str) -> Result<PathBuf> {
    let path = config_dir()
        .context("no HOME or XDG_CONFIG_HOME to keep the owner token in")?
        .join(format!("owner-{cluster_id}.token"));
    write_private(&path, token)?;
    Ok(path)
}

/// The token `noodle login` kept, if any.
pub(crate) fn saved_token() -> Option<String> {
    let text = std::fs::read_to_string(token_path()?).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Checks `token` with the node of `data_dir` and keeps it for later commands.
pub(crate) async fn login(data_dir: &Path, token: &str) -> Result<i32> {
    let token = token.trim();
    let client = Client::connect(data_dir, Some(token))?;
    // A token of this cluster passes authentication; one without `cluster:read` is then
    // refused the status (403), which is fine: it is still a credential here.
    match client.status().await {
        Ok(_) | Err(ClientError::Api(_)) => {}
        Err(e @ ClientError::Unauthenticated(_)) => bail!("{e}; nothing was saved"),
        Err(e) => return Err(e.into()),
    }
    let path = token_path().context("no HOME or XDG_CONFIG_HOME to keep the token in")?;
    write_private(&path, token)?;
    outln!(
        "logged in: every command uses this token unless --token or NOODLE_TOKEN says otherwise ({})",
        path.display()
    );
    Ok(0)
}

/// Forgets the kept token.
pub(crate) fn logout() -> Result<i32> {
    match token_path() {
        Some(path) if path.exists() => {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            outln!("logged out: commands use the node's admin credential again");
        }
        _ => outln!("not logged in"),
    }
    Ok(0)
}
