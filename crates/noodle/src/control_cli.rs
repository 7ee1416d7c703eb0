//! `noodle config`, `noodle cap`, `noodle policy` and `noodle audit`.

use crate::{AuditArgs, AuditCommand, CapCommand, ConfigCommand, PolicyCommand};
use anyhow::{Context, Result};
use noodle_api::{AuditEntry, CapRequest, Client, ClientError, PolicyEntry};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) async fn config(client: Client, c: ConfigCommand) -> Result<i32> {
    match c {
        ConfigCommand::Set { key, value, json } => {
            let e = client.config_set(&key, &value).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&e)?);
            }
        }
        ConfigCommand::Get { key, json } => match client.config_get(&key).await? {
            Some(e) if json => outln!("{}", serde_json::to_string_pretty(&e)?),
            Some(e) => outln!("{}", e.value),
            None => {
                eprintln!("error: config key {key:?} is not set");
                return Ok(1);
            }
        },
        ConfigCommand::Ls { json } => {
            let list = client.config_list().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for e in &list.entries {
                    outln!("{}={}", e.key, e.value);
                }
            }
        }
        ConfigCommand::Unset { key } => {
            client.config_unset(&key).await?;
        }
    }
    Ok(0)
}

pub(crate) async fn cap(
    client: impl FnOnce() -> Result<Client, ClientError>,
    c: CapCommand,
) -> Result<i32> {
    match c {
        CapCommand::Create {
            allow,
            quotas,
            ttl,
            holder,
            json,
        } => {
            // Check the spelling here so a typo fails before the node is asked.
            for a in &allow {
                a.parse::<noodle_caps::Right>()
                    .with_context(|| format!("--allow {a}"))?;
            }
            let resp = client()?
                .cap_create(&CapRequest {
                    allow,
                    quotas,
                    ttl_secs: ttl.as_secs().max(1),
                    holder,
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                outln!("{}", resp.token);
            }
        }
        CapCommand::Attenuate { token, allow, ttl } => {
            let mut rights = Vec::new();
            for a in &allow {
                rights.push(
                    a.parse::<noodle_caps::Right>()
                        .with_context(|| format!("--allow {a}"))?,
                );
            }
            outln!("{}", noodle_caps::attenuate(&token, &rights, ttl)?);
        }
        CapCommand::Inspect { token, json } => {
            let i = noodle_caps::inspect(&token)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                out!("{}", i.explain());
                if !i.explain().ends_with('\n') {
                    outln!();
                }
            }
        }
        CapCommand::Revoke { id } => {
            let r = client()?.cap_revoke(&id).await?;
            outln!("revoked {}", r.id);
        }
    }
    Ok(0)
}

pub(crate) async fn policy(client: Client, c: PolicyCommand) -> Result<i32> {
    match c {
        PolicyCommand::Add { file, name } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .context("the policy file has no name; pass --name")?,
            };
            // Parse here first: the error then points at the file.
            noodle_caps::Policy::parse(&name, &source)
                .with_context(|| format!("policy {}", file.display()))?;
            client.policy_add(&PolicyEntry { name, source }).await?;
        }
        PolicyCommand::Ls { json } => {
            let list = client.policies().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for p in &list.policies {
                    outln!("# {}\n{}\n", p.name, p.source.trim_end());
                }
            }
        }
        PolicyCommand::Rm { name } => {
            client.policy_remove(&name).await?;
        }
    }
    Ok(0)
}

/// `--since`: a duration back from now, or an RFC 3339 time.
fn parse_since(s: &str) -> Result<u64> {
    parse_when("--since", s)
}

/// The time option `flag` (`--since`, `--until`): a duration back from now, or an RFC 3339
/// time; milliseconds since 1970.
pub(crate) fn parse_when(flag: &str, s: &str) -> Result<u64> {
    let at = match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now()
            .checked_sub(d)
            .with_context(|| format!("{flag} goes back before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(s).with_context(|| {
            format!("{flag} {s:?} is neither a duration (10m) nor a time (2026-11-23T10:00:00Z)")
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

fn print_entry(e: &AuditEntry, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(e)?);
    } else {
        let outcome = match &e.reason {
            Some(r) => format!("{}: {r}", e.outcome),
            None => e.outcome.clone(),
        };
        let right = if e.right.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.right)
        };
        outln!(
            "#{:<6} {}  {}  {} {}{}  {}",
            e.seq,
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.at_ms)),
            e.actor,
            e.action,
            if e.target.is_empty() { "-" } else { &e.target },
            right,
            outcome
        );
    }
    Ok(())
}

pub(crate) async fn audit(
    client: impl FnOnce() -> Result<Client, ClientError>,
    a: AuditArgs,
) -> Result<i32> {
    if let Some(AuditCommand::Verify { db, json }) = a.command {
        let r = match db {
            Some(path) => noodle_node::verify_audit_file(&path)?,
            None => client()?.audit_verify().await?,
        };
        if json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else if r.ok {
            let checkpointed = match r.last_checkpoint_seq {
                Some(s) => format!("signed checkpoints up to #{s}"),
                None => "no signed checkpoint yet".into(),
            };
            outln!(
                "audit log verifies: {} entries, {} checkpoints ({checkpointed}), head #{} {}",
                r.entries,
                r.checkpoints,
                r.head_seq,
                r.head_hash
            );
        } else {
            outln!(
                "audit log does NOT verify: {}",
                r.error.as_deref().unwrap_or("unknown problem")
            );
        }
        return Ok(if r.ok { 0 } else { 1 });
    }
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let client = client()?;
    const PAGE: u32 = 500;
    let mut from = 1;
    loop {
        let page = client.audit(from, PAGE).await?;
        for e in &page.entries {
            if since.is_none_or(|s| e.at_ms >= s) {
                print_entry(e, a.json)?;
            }
        }
        if let Some(last) = page.entries.last() {
            from = last.seq + 1;
            continue;
        }
        if !a.follow {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
