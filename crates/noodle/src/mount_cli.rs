//! `noodle mount DIR`: the memory fabric as a directory (FUSE), in the foreground until Ctrl-C,
//! SIGTERM, or `fusermount3 -u DIR` from outside.

use anyhow::{Context, Result, bail};
use clap::Args;
use noodle_api::{Client, ClientError};
use noodle_mount::{MountOptions, Unmounted};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct MountArgs {
    /// The directory to show the fabric in: it must exist and be empty.
    dir: PathBuf,
    /// Where to keep fetched versions and files being written (default: the system's
    /// temporary directory; a fresh directory inside it is removed at unmount).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Most bytes of fetched versions kept for later reads.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "4G",
        value_parser = crate::jobs_cli::parse_size
    )]
    cache_size: u64,
}

/// `noodle mount DIR`.
pub(crate) async fn mount(client: Client, args: MountArgs) -> Result<i32> {
    // The directory first: its errors are the likely ones, and need no node.
    let dir = noodle_mount::check_mount_point(&args.dir)?;
    // A node that is not there would make a mount where every call fails: say so now. A
    // denial is fine: the mount shows what the credential may read.
    match client.fabric_list("/", None, 1).await {
        Ok(_) => {}
        Err(ClientError::Api(m)) if m.starts_with("denied") => {}
        Err(e) => return Err(e).context("asking the node for the fabric"),
    }
    let options = MountOptions {
        cache_dir: args.cache_dir,
        cache_bytes_max: args.cache_size,
        ..MountOptions::default()
    };
    let runtime = tokio::runtime::Handle::current();
    let target = dir.clone();
    let mounted =
        tokio::task::spawn_blocking(move || noodle_mount::mount(client, runtime, &target, options))
            .await
            .context("the mount task failed")??;
    outln!(
        "mounted the memory fabric on {} (Ctrl-C or `fusermount3 -u {}` unmounts it)",
        dir.display(),
        dir.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = mounted.ended() => {
            outln!("{} was unmounted", dir.display());
            return Ok(0);
        }
        signal = tokio::signal::ctrl_c() => signal.context("listening for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    let outcome = tokio::task::spawn_blocking(move || mounted.unmount())
        .await
        .context("the unmount task failed")?;
    match outcome {
        Ok(Unmounted::Clean) => outln!("unmounted {}", dir.display()),
        Ok(Unmounted::Detached) => outln!(
            "{} was in use: detached; programs still in it lose it now",
            dir.display()
        ),
        Err(e) => bail!("{e}"),
    }
    Ok(0)
}
