//! The memory fabric's commands: `noodle put`, `get`, `ls`, `versions`, `rm`, `query`.

use anyhow::{Context, Result, bail};
use clap::Args;
use noodle_api::fabric::{FabricList, FabricObject, FabricPut, download, download_into};
use noodle_api::{ChunkRoute, Client};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// The local file.
    file: PathBuf,
    /// Where it goes in the fabric (`/models/resnet.bin`; a prefix such as `/models/` keeps
    /// the file's own name).
    path: String,
    /// A tag of the new version (repeatable): `key=value`, or `key`.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// Print the new version as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The object's path.
    path: String,
    /// Where to write it (default: its name, in the current directory; `-`: stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// A version other than the newest (`noodle versions` lists them).
    #[arg(long)]
    version: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    /// The prefix to list (ends with `/`).
    #[arg(default_value = "/")]
    prefix: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    path: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// A tag every result has (repeatable): `key=value`, or `key` for any value.
    #[arg(long = "tag", value_name = "K=V", required = true)]
    tags: Vec<String>,
    /// Only objects under this prefix.
    #[arg(long, default_value = "/")]
    prefix: String,
    /// At most this many results.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

fn parse_tags(raw: &[String]) -> BTreeMap<String, String> {
    raw.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (t.clone(), String::new()),
        })
        .collect()
}

fn print_object(o: &FabricObject, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(o)?);
    } else if o.exists {
        let tags: Vec<String> = o.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{:<40} {:>12}  {}  {}",
            o.path,
            noodle_api::format::format_bytes(o.size),
            o.version,
            tags.join(",")
        );
    } else {
        outln!("{:<40} {:>12}  {}  (removed)", o.path, "-", o.version);
    }
    Ok(())
}

fn print_list(list: &FabricList, json: bool) -> Result<()> {
    for o in &list.objects {
        print_object(o, json)?;
    }
    Ok(())
}

/// `noodle put FILE PATH`.
pub(crate) async fn put(client: Client, args: PutArgs) -> Result<i32> {
    if !args.file.is_file() {
        bail!("{} is not a file", args.file.display());
    }
    let path = if args.path.ends_with('/') {
        let Some(name) = args.file.file_name().and_then(|n| n.to_str()) else {
            bail!(
                "{} has no name to keep under {}",
                args.file.display(),
                args.path
            );
        };
        format!("{}{name}", args.path)
    } else {
        args.path.clone()
    };
    let to = ChunkRoute::Fabric { path: path.clone() };
    let name = path.rsplit('/').next().unwrap_or_default().to_string();
    let manifest = crate::ship_cli::upload(&client, &to, &args.file, &name, !args.json)
        .await
        .with_context(|| format!("uploading {}", args.file.display()))?;
    let put = FabricPut {
        manifest: manifest.id().to_hex(),
        tags: parse_tags(&args.tags),
    };
    let object = client.fabric_put(&path, &put).await?;
    if args.json {
        print_object(&object, true)?;
    } else {
        outln!(
            "{} ({}) version {} on {}",
            object.path,
            noodle_api::format::format_bytes(object.size),
            object.version,
            object.replicas.join(", ")
        );
    }
    Ok(0)
}

/// `noodle get PATH`.
pub(crate) async fn get(client: Client, args: GetArgs) -> Result<i32> {
    let object = client
        .fabric_object(&args.path, args.version.as_deref())
        .await?;
    if !object.exists {
        bail!("{} was removed at version {}", object.path, object.version);
    }
    let dest = match args.output {
        Some(p) => p,
        None => PathBuf::from(object.path.rsplit('/').next().unwrap_or("object")),
    };
    // A regular file appears whole, by rename; anything else (`-` for stdout, a device, a
    // pipe) is written into as it is, never replaced.
    let special = dest.exists() && !dest.is_file();
    // A bar on stderr for large objects, when stderr is a terminal (indicatif hides it
    // otherwise).
    let bar = (object.size >= crate::ship_cli::PROGRESS_MIN_BYTES)
        .then(|| crate::ship_cli::progress_bar(object.size, format!("reading {}", object.path)));
    let progress = |done: u64, _total: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    if dest.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        download_into(&client, &object, &mut stdout, &dest, progress).await?;
    } else if special {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .with_context(|| format!("opening {}", dest.display()))?;
        download_into(&client, &object, &mut out, &dest, progress).await?;
    } else {
        download(&client, &object, &dest, progress)
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(0)
}

/// `noodle ls [PREFIX]`.
pub(crate) async fn ls(client: Client, args: LsArgs) -> Result<i32> {
    let mut after: Option<String> = None;
    loop {
        let page = client
            .fabric_list(&args.prefix, after.as_deref(), 1000)
            .await?;
        print_list(&page, args.json)?;
        match page.objects.last() {
            Some(last) if page.objects.len() == 1000 => after = Some(last.path.clone()),
            _ => return Ok(0),
        }
    }
}

/// `noodle versions PATH`.
pub(crate) async fn versions(client: Client, args: PathArgs) -> Result<i32> {
    print_list(&client.fabric_versions(&args.path).await?, args.json)?;
    Ok(0)
}

/// `noodle rm PATH`.
pub(crate) async fn rm(client: Client, args: PathArgs) -> Result<i32> {
    let object = client.fabric_remove(&args.path).await?;
    if args.json {
        print_object(&object, true)?;
    } else {
        outln!("removed {} (version {})", object.path, object.version);
    }
    Ok(0)
}

/// `noodle query --tag K=V [--prefix P]`.
pub(crate) async fn query(client: Client, args: QueryArgs) -> Result<i32> {
    let list = client
        .fabric_query(&args.tags, &args.prefix, args.limit)
        .await?;
    print_list(&list, args.json)?;
    Ok(0)
}
