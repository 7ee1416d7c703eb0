//! The memory fabric's commands: `noodle put` (also `--vector`), `get`, `ls`, `versions`, `rm`,
//! `query` (by tag or `--near-vector`).

use anyhow::{Context, Result, bail};
use clap::Args;
use noodle_api::fabric::{
    FabricList, FabricNear, FabricObject, FabricPut, FabricVector, download, download_into,
};
use noodle_api::{ChunkRoute, Client};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
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
    /// FILE is an embedding (little-endian float32 values, no header) to attach to the
    /// existing object PATH, replacing the one it had; every object under one top-level
    /// prefix has embeddings of one dimension.
    #[arg(long, conflicts_with = "tags")]
    vector: bool,
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
    #[arg(long, conflicts_with = "snapshot")]
    version: Option<String>,
    /// The version the path showed in this snapshot (`noodle snapshot ls`).
    #[arg(long, value_name = "ID")]
    snapshot: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum SnapshotCommand {
    /// Take a snapshot of a prefix; prints its id. Its versions are kept until it is removed.
    Create {
        /// The prefix (ends with `/`).
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots of prefixes under PREFIX.
    Ls {
        #[arg(default_value = "/")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot (its versions may then be collected).
    Rm { id: u64 },
}

/// `noodle snapshot ...`.
pub(crate) async fn snapshot(client: Client, command: SnapshotCommand) -> Result<i32> {
    let print = |s: &noodle_api::fabric::FabricSnapshot, json: bool| -> Result<()> {
        if json {
            outln!("{}", serde_json::to_string(s)?);
        } else {
            outln!(
                "{:>6}  {:<40} {}  {}",
                s.id,
                s.prefix,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.created_at_ms)
                ),
                s.creator
            );
        }
        Ok(())
    };
    match command {
        SnapshotCommand::Create { prefix, json } => {
            let s = client.fabric_snapshot(&prefix).await?;
            if json {
                print(&s, true)?;
            } else {
                outln!("{}", s.id);
            }
        }
        SnapshotCommand::Ls { prefix, json } => {
            for s in client.fabric_snapshots(&prefix).await?.snapshots {
                print(&s, json)?;
            }
        }
        SnapshotCommand::Rm { id } => {
            let s = client.fabric_snapshot_remove(id).await?;
            outln!("removed snapshot {} of {}", s.id, s.prefix);
        }
    }
    Ok(0)
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
    #[arg(
        long = "tag",
        value_name = "K=V",
        required_unless_present_any = ["near_vector", "since", "until"]
    )]
    tags: Vec<String>,
    /// Only objects whose current version was written since then: a duration back from now
    /// (10m) or a time (2026-11-23T10:00:00Z).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only objects whose current version was written before then (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// The objects whose embeddings (`noodle put --vector`) are nearest to the one in this
    /// file (little-endian float32), best first, with their cosine similarity.
    #[arg(long, value_name = "FILE", conflicts_with = "tags")]
    near_vector: Option<PathBuf>,
    /// With --near-vector: how many.
    #[arg(long, default_value_t = 10)]
    k: u32,
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

/// Where a version's bytes are, for a person.
fn held_by(o: &FabricObject) -> String {
    if o.in_records {
        "in the records (every node)".to_string()
    } else {
        format!("on {}", o.replicas.join(", "))
    }
}

fn print_list(list: &FabricList, json: bool) -> Result<()> {
    for o in &list.objects {
        print_object(o, json)?;
    }
    Ok(())
}

/// A vector file: little-endian float32 values.
fn read_vector(file: &Path) -> Result<Vec<f32>> {
    let max = noodle_fabric::vector::DIM_MAX as u64 * 4;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", file.display()))?;
    noodle_fabric::vector::decode_f32(&bytes).with_context(|| file.display().to_string())
}

/// `noodle put FILE PATH`.
pub(crate) async fn put(client: Client, args: PutArgs) -> Result<i32> {
    if !args.file.is_file() {
        bail!("{} is not a file", args.file.display());
    }
    if args.vector {
        let vector = read_vector(&args.file)?;
        let dim = vector.len();
        let object = client
            .fabric_set_vector(&args.path, &FabricVector { vector })
            .await?;
        if args.json {
            print_object(&object, true)?;
        } else {
            outln!("{}: a {dim}-dimensional vector attached", object.path);
        }
        return Ok(0);
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
    noodle_fabric::ObjectPath::parse(&path).with_context(|| format!("{path:?}"))?;
    let len = std::fs::metadata(&args.file)
        .with_context(|| args.file.display().to_string())?
        .len();
    let object = if len <= noodle_api::fabric::INLINE_MAX as u64 {
        // A small file goes in one request.
        let bytes = std::fs::read(&args.file).with_context(|| args.file.display().to_string())?;
        client
            .fabric_put_small(&path, bytes, &parse_tags(&args.tags))
            .await?
    } else {
        let to = ChunkRoute::Fabric { path: path.clone() };
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        let manifest = crate::ship_cli::upload(&client, &to, &args.file, &name, !args.json)
            .await
            .with_context(|| format!("uploading {}", args.file.display()))?;
        let put = FabricPut {
            manifest: manifest.id().to_hex(),
            tags: parse_tags(&args.tags),
        };
        client.fabric_put(&path, &put).await?
    };
    if args.json {
        print_object(&object, true)?;
    } else {
        outln!(
            "{} ({}) version {} {}",
            object.path,
            noodle_api::format::format_bytes(object.size),
            object.version,
            held_by(&object)
        );
    }
    Ok(0)
}

/// `noodle get PATH`.
pub(crate) async fn get(client: Client, args: GetArgs) -> Result<i32> {
    let object = match args.snapshot {
        Some(id) => client.fabric_object_in(&args.path, id).await?,
        None => {
            client
                .fabric_object(&args.path, args.version.as_deref())
                .await?
        }
    };
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
    if let Some(file) = &args.near_vector {
        let near = FabricNear {
            vector: read_vector(file)?,
            k: args.k,
            prefix: args.prefix.clone(),
        };
        for hit in client.fabric_near(&near).await?.hits {
            if args.json {
                outln!("{}", serde_json::to_string(&hit)?);
            } else {
                outln!("{:.4}  {}", hit.score, hit.object.path);
            }
        }
        return Ok(0);
    }
    let when = |flag, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| crate::control_cli::parse_when(flag, v))
            .transpose()
    };
    let (since, until) = (when("--since", &args.since)?, when("--until", &args.until)?);
    let list = client
        .fabric_query(&args.tags, &args.prefix, (since, until), args.limit)
        .await?;
    print_list(&list, args.json)?;
    Ok(0)
}
