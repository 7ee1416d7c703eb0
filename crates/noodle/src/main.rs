//! `noodle`: the one binary. `noodle up` runs a node; every other command is a client of the
//! local node's API, found through the data directory.
//!
//! This is the only crate that knows about argv, stdout and exit codes.
#![allow(clippy::print_stderr)]

/// `println!` that ends the process quietly when stdout is gone (`noodle status | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `print!` with the same behaviour as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod control_cli;
mod fabric_cli;
mod jobs_cli;
mod login;
mod mount_cli;
mod ship_cli;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use noodle_api::format::{format_bytes, format_rtt_us};
use noodle_api::{Client, Event, NodeState, StatusReport, TokenRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "noodle",
    version,
    about = "Many machines as one secure computer for AI work"
)]
struct Cli {
    /// Data directory of the node (default ~/.local/share/noodle).
    #[arg(long, global = true, env = "NOODLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Act with this capability token instead of the node's admin credential.
    #[arg(long, global = true, env = "NOODLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: form a new cluster, or join one with --join TOKEN.
    Up(Box<UpArgs>),
    /// Join tokens for other machines.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Keep a capability token in your config directory; every command then uses it.
    Login {
        /// The token (from `noodle cap create` on a voter).
        token: String,
    },
    /// Forget the token `noodle login` kept.
    Logout,
    /// The cluster as one machine.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The node's event stream.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the dashboard URL with a one-time login code (valid 15 minutes, once).
    Dashboard,
    Run(jobs_cli::RunArgs),
    Jobs(jobs_cli::JobsArgs),
    Logs(jobs_cli::LogsArgs),
    Wait(jobs_cli::WaitArgs),
    Cancel(jobs_cli::CancelArgs),
    /// Store a file in the memory fabric as a new version of PATH.
    Put(fabric_cli::PutArgs),
    /// Read an object of the fabric into a file.
    Get(fabric_cli::GetArgs),
    /// List the fabric's objects under a prefix.
    Ls(fabric_cli::LsArgs),
    /// An object's versions, newest first.
    Versions(fabric_cli::PathArgs),
    /// Remove an object (its old versions stay).
    Rm(fabric_cli::PathArgs),
    /// Find objects by tag, or by the nearness of their embeddings to a vector.
    Query(fabric_cli::QueryArgs),
    /// Snapshots of a prefix: every path as it was when it was taken.
    #[command(subcommand)]
    Snapshot(fabric_cli::SnapshotCommand),
    /// Show the fabric as a directory (FUSE) until Ctrl-C or `fusermount3 -u DIR`.
    Mount(mount_cli::MountArgs),
    /// Cluster-wide configuration, kept by the control plane.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Capability tokens: create, narrow, explain, revoke.
    #[command(subcommand)]
    Cap(CapCommand),
    /// Cluster-wide authorisation policies (Datalog).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The tamper-evident audit log.
    Audit(AuditArgs),
    /// Microbenchmarks of this machine and the transport.
    Bench {
        /// Fewer iterations: finishes in well under 30 s.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Cluster (QUIC) address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// HTTP API and dashboard address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    api: SocketAddr,
    /// Join the cluster of this token instead of forming a new one.
    #[arg(long, env = "NOODLE_JOIN")]
    join: Option<String>,
    /// Display name of this node (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// User label, `key=value`; repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Extra seed address of a member; repeatable (for networks without multicast).
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<SocketAddr>,
    /// Do not use mDNS (no LAN advertisement or discovery).
    #[arg(long)]
    no_mdns: bool,
    /// How long a token-only joiner looks for the cluster on the LAN.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    mdns_timeout: Duration,
    /// Failure detector: how often one peer is probed.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    probe_period: Duration,
    /// Failure detector: how long to wait for a direct probe answer.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// Failure detector: how long a suspect has before it is declared dead.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    suspect_timeout: Duration,
    /// Fabric: copies of each version this node writes (fewer on a smaller cluster); a write
    /// is acknowledged once min(2, this) hold it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    fabric_replicas: u64,
    /// Fabric retention: the newest versions of each path always kept.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    fabric_keep_versions: u64,
    /// Fabric retention: versions younger than this are always kept (older ones beyond
    /// --fabric-keep-versions are collected unless a snapshot holds them).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    fabric_keep_for: Duration,
    /// Fabric: how often this node collects chunks no version refers to.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    fabric_gc_every: Duration,
    /// Fabric: an uploaded chunk that no version refers to is collected once this old.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    fabric_upload_grace: Duration,
    /// Fabric: bytes of small objects (16 KiB at most each) kept in the replicated records,
    /// on every node, rather than in chunks on a few: such a put is durable once its record
    /// commits (at most 64 MiB; 0 keeps every object in chunks).
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    fabric_records_bytes: u64,
    /// Control plane: a voter dead this long is replaced by a healthy learner.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    voter_replace_after: Duration,
    /// Control plane: the leader signs an audit checkpoint every this many entries.
    #[arg(long, default_value_t = 64)]
    audit_checkpoint_every: u64,
    /// Control plane: audit entries kept at least; older ones are pruned up to a signed
    /// checkpoint, which still vouches for them.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    audit_keep: u64,
    /// Node certificates this node issues as a voter are valid this long; every node renews
    /// its own once half of it has passed, so a node away for longer must join again.
    #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
    /// Jobs: CPU slots this node offers to `noodle run` (default: one per CPU; 0: it runs no
    /// jobs).
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Jobs: a node unreachable this long loses its jobs (they run again elsewhere if they have
    /// retries left); a node that cannot reach the control plane for half of it stops its jobs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    job_lease: Duration,
    /// Jobs: how long a cancelled job has after SIGTERM before it is killed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Jobs: memory bound of a job that gives no `--mem`.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = jobs_cli::parse_size)]
    job_mem: u64,
    /// Jobs: bound on one job's working directory (also the largest file it may write).
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = jobs_cli::parse_size)]
    job_disk: u64,
    /// Jobs: processes (threads included) one job may have at once.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    job_processes: u64,
    /// Jobs: a host path that jobs may read and execute from (a shared venv or conda
    /// directory); repeatable. Jobs see nothing of the host but the system directories,
    /// their own working directory and these paths.
    #[arg(long = "job-ro", value_name = "PATH")]
    job_ro: Vec<PathBuf>,
    /// Jobs: a host path that jobs may also write to (a shared results directory); repeatable.
    #[arg(long = "job-rw", value_name = "PATH")]
    job_rw: Vec<PathBuf>,
    /// Jobs: run them without the sandbox, as this node's own user. DANGEROUS: any job, from
    /// any token holder, can then read this node's keys and act as the cluster's admin.
    #[arg(long)]
    unsandboxed_jobs: bool,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a one-line join token (single-use unless --uses says otherwise).
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Put no seed addresses in the token: joiners find the cluster by mDNS.
        #[arg(long)]
        no_addresses: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the join tokens the cluster still accepts.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: no node admits anyone with it any more.
    Revoke {
        /// The token's id (from `noodle token ls` or `token create --json`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Evict a node for good: every node refuses its links, and it leaves the control plane.
    Remove {
        /// The node's id, or a name only one node has.
        node: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Set KEY to VALUE on every node.
    Set {
        key: String,
        value: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the value of KEY (exit 1 if it is not set).
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// List every key.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove KEY.
    Unset { key: String },
}

#[derive(Subcommand, Debug)]
enum CapCommand {
    /// Mint a token with the given rights.
    Create {
        /// `SUBSYSTEM:ACTION[:PREFIX]`, e.g. `config:read`, `jobs:run`, `fabric:read:/datasets/`;
        /// repeatable.
        #[arg(long = "allow", value_name = "RIGHT", required = true)]
        allow: Vec<String>,
        /// `NAME=VALUE`, e.g. `cpus=4`; repeatable.
        #[arg(long = "quota", value_name = "Q")]
        quotas: Vec<String>,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who the token is for (shown in the audit log).
        #[arg(long = "for", value_name = "NAME")]
        holder: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Narrow a token offline: the result allows only what both allow.
    Attenuate {
        token: String,
        #[arg(long = "allow", value_name = "RIGHT", required = true)]
        allow: Vec<String>,
        /// Expire sooner than the original.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Explain a token in plain words (offline).
    Inspect {
        token: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (and every token narrowed from it) on every node.
    Revoke {
        /// The `id` that `noodle cap inspect` prints.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Add (or replace) a policy from a Datalog file; it applies on every node.
    Add {
        file: PathBuf,
        /// Policy name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
    },
    /// List policies.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a policy.
    Rm { name: String },
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Keep printing new entries as they are appended.
    #[arg(long)]
    follow: bool,
    /// Only entries newer than this: a duration (`10m`) or a time (`2026-11-23T10:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Recompute the hash chain and checkpoint signatures; name the first entry that fails.
    Verify {
        /// Verify this control-plane database file (of a stopped node, or a copy) instead of
        /// asking the running node.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/noodle"),
        None => PathBuf::from(".noodle"),
    }
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NOODLE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,openraft=error,noodle_node=info,noodle_host=info,noodle_jobs=info",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    runtime.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

async fn join_token(client: Client, command: TokenCommand) -> Result<i32> {
    match command {
        TokenCommand::Create {
            ttl,
            uses,
            no_addresses,
            json,
        } => {
            let resp = client
                .create_token(&TokenRequest {
                    ttl_secs: ttl.as_secs().max(1),
                    no_addresses,
                    uses,
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                outln!("{}", resp.token);
            }
        }
        TokenCommand::Ls { json } => {
            let list = client.join_tokens().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.tokens.is_empty() {
                outln!("no join tokens (create one with `noodle token create`)");
            } else {
                outln!(
                    "{:<14} {:>9}  {:<20}  CREATED BY",
                    "ID",
                    "USES LEFT",
                    "EXPIRES"
                );
                for t in &list.tokens {
                    outln!(
                        "{:<14} {:>9}  {:<20}  {}",
                        t.id,
                        t.uses_left,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_secs(t.expires_at_unix)
                        ),
                        t.created_by
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let revoked = client.revoke_join_token(&id).await?;
            outln!(
                "revoked join token {} ({} use(s) were left)",
                revoked.id,
                revoked.uses_left
            );
        }
    }
    Ok(0)
}

async fn run(cli: Cli) -> Result<i32> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    let token = cli.token.clone().or_else(login::saved_token);
    let client = || Client::connect(&data_dir, token.as_deref());
    match cli.command {
        Command::Run(a) => jobs_cli::run(client, a).await,
        Command::Jobs(a) => jobs_cli::jobs(client()?, a, token.is_none()).await,
        Command::Logs(a) => jobs_cli::logs(client()?, a).await,
        Command::Wait(a) => jobs_cli::wait(client()?, a).await,
        Command::Cancel(a) => jobs_cli::cancel(client()?, a).await,
        Command::Put(a) => fabric_cli::put(client()?, a).await,
        Command::Get(a) => fabric_cli::get(client()?, a).await,
        Command::Ls(a) => fabric_cli::ls(client()?, a).await,
        Command::Versions(a) => fabric_cli::versions(client()?, a).await,
        Command::Rm(a) => fabric_cli::rm(client()?, a).await,
        Command::Query(a) => fabric_cli::query(client()?, a).await,
        Command::Snapshot(c) => fabric_cli::snapshot(client()?, c).await,
        Command::Mount(a) => mount_cli::mount(client()?, a).await,
        Command::Config(c) => control_cli::config(client()?, c).await,
        Command::Cap(c) => control_cli::cap(client, c).await,
        Command::Policy(c) => control_cli::policy(client()?, c).await,
        Command::Audit(a) => control_cli::audit(client, a).await,
        Command::Up(args) => up(data_dir, *args).await,
        Command::Token(command) => join_token(client()?, command).await,
        Command::Login { token } => login::login(&data_dir, &token).await,
        Command::Logout => login::logout(),
        Command::Node(NodeCommand::Remove { node, json }) => {
            let removed = client()?.remove_node(&node).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                outln!(
                    "removed node {} ({}): every node refuses its links",
                    removed.id,
                    removed.name
                );
            }
            Ok(0)
        }
        Command::Status { json } => {
            let report = client()?.status().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", render_status(&report));
            }
            Ok(0)
        }
        Command::Events { follow, json } => {
            let client = client()?;
            let print = |e: &Event| -> Result<()> {
                if json {
                    outln!("{}", serde_json::to_string(e)?);
                } else {
                    outln!(
                        "{}  {:<15} {:<40} {}",
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms)
                        ),
                        e.kind.as_str(),
                        e.node,
                        e.detail
                    );
                }
                Ok(())
            };
            if follow {
                // Subscribe first, then print history, so nothing falls in between.
                let mut stream = client.follow_events().await?;
                let history = client.events().await?;
                let last_seq = history.last().map(|e| e.seq).unwrap_or(0);
                for e in &history {
                    print(e)?;
                }
                while let Some(e) = stream.next().await? {
                    if e.seq > last_seq {
                        print(&e)?;
                    }
                }
                bail!("the node closed the event stream (did it stop?)");
            }
            for e in client.events().await? {
                print(&e)?;
            }
            Ok(0)
        }
        Command::Dashboard => {
            let client = Client::from_data_dir(&data_dir)?;
            let link = client.dashboard_link().await?;
            outln!("{}{}", client.base_url(), link.path);
            Ok(0)
        }
        Command::Bench { quick, json } => {
            let opts = noodle_bench::BenchOptions {
                quick,
                data_dir: data_dir.clone(),
                noodle_exe: std::env::current_exe().context("cannot find the noodle binary")?,
            };
            let rows = noodle_bench::run(&opts).await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?
                );
            } else {
                out!("{}", noodle_bench::render(&rows));
            }
            Ok(0)
        }
    }
}

fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for l in raw {
        let Some((k, v)) = l.split_once('=') else {
            bail!("label `{l}` must look like key=value");
        };
        noodle_discovery::validate_label(k, v)?;
        labels.insert(k.to_string(), v.to_string());
    }
    if labels.len() > noodle_discovery::table::LABELS_MAX {
        bail!("at most {} labels", noodle_discovery::table::LABELS_MAX);
    }
    Ok(labels)
}

async fn up(data_dir: PathBuf, args: UpArgs) -> Result<i32> {
    let mut cfg = noodle_node::NodeConfig::new(data_dir);
    cfg.listen = args.listen;
    cfg.api = args.api;
    cfg.join = args.join;
    cfg.name = args.name;
    cfg.labels = parse_labels(&args.labels)?;
    cfg.peers = args.peers;
    cfg.mdns = !args.no_mdns;
    cfg.mdns_timeout = args.mdns_timeout;
    cfg.membership.probe_period = args.probe_period;
    cfg.membership.probe_rtt = args.probe_timeout;
    cfg.membership.suspect_to_down_after = args.suspect_timeout;
    cfg.control.replace_dead_after = args.voter_replace_after;
    if args.audit_checkpoint_every == 0 {
        bail!("--audit-checkpoint-every must be at least 1");
    }
    cfg.control.checkpoint_every = args.audit_checkpoint_every;
    cfg.control.audit_keep = args.audit_keep;
    if args.cert_ttl < noodle_node::CERT_TTL_MIN {
        bail!(
            "--cert-ttl must be at least {}",
            humantime::format_duration(noodle_node::CERT_TTL_MIN)
        );
    }
    cfg.cert_ttl = args.cert_ttl;
    if args.job_lease.is_zero() {
        bail!("--job-lease must be longer than 0s");
    }
    cfg.slots = args.slots;
    if args.job_processes == 0 || args.job_disk == 0 || args.job_mem == 0 {
        bail!("--job-processes, --job-disk and --job-mem must be more than 0");
    }
    if args.unsandboxed_jobs {
        eprintln!(
            "WARNING: --unsandboxed-jobs: jobs run as this node's user and can read its keys; \
             anyone allowed to run a job here is this cluster's admin"
        );
    }
    let jobs = noodle_jobs::JobsConfig {
        lease: args.job_lease,
        kill_grace: args.kill_grace,
        default_mem_bytes: args.job_mem,
        sandbox: noodle_jobs::SandboxConfig {
            enabled: !args.unsandboxed_jobs,
            read_only: args.job_ro,
            read_write: args.job_rw,
            processes_max: args.job_processes,
            disk_max_bytes: args.job_disk,
        },
        ..noodle_jobs::JobsConfig::default()
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    // The subsystems this node runs besides its own (membership, control plane, API).
    if args.fabric_gc_every.is_zero() {
        bail!("--fabric-gc-every must be more than 0");
    }
    let fabric = noodle_fabric::Fabric::new(noodle_fabric::FabricConfig {
        replicas: usize::try_from(args.fabric_replicas).unwrap_or(3),
        keep_versions: usize::try_from(args.fabric_keep_versions).unwrap_or(usize::MAX),
        keep_for: args.fabric_keep_for,
        gc_every: args.fabric_gc_every,
        upload_grace: args.fabric_upload_grace,
        records_bytes: args.fabric_records_bytes,
        ..noodle_fabric::FabricConfig::default()
    });
    // The fabric starts first: jobs keep their shipped files in its chunk store.
    let jobs = noodle_jobs::Jobs::new(jobs).with_fabric(fabric.handle());
    let subsystems: Vec<Box<dyn noodle_host::Subsystem>> = vec![Box::new(fabric), Box::new(jobs)];
    let node = noodle_node::start(cfg, subsystems, metrics).await?;
    outln!("noodle node {} is up", node.node_id());
    outln!("  cluster    {}", node.cluster_id());
    outln!(
        "  listening  {} (QUIC, mutual TLS, X25519MLKEM768)",
        node.cluster_addr()
    );
    outln!("  api        {}", node.api_url());
    outln!("  dashboard  {}", node.dashboard_url());
    if let Some(token) = node.owner_token() {
        // Printed once: the cluster was founded by this start.
        outln!("  owner token (every right, for you on any machine: `noodle login TOKEN` there)");
        outln!("    {token}");
        match login::keep_owner_token(node.cluster_id(), token) {
            Ok(path) => outln!("    kept in {}", path.display()),
            Err(e) => {
                eprintln!("warning: the owner token was not kept ({e:#}); copy it from above")
            }
        }
    }
    outln!("next: `noodle token create` prints a join token for another machine");
    wait_for_signal().await;
    eprintln!("shutting down");
    node.shutdown().await;
    Ok(0)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = &r.totals;
    let name_of = |id: &str| {
        r.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let _ = writeln!(out, "cluster {}", r.cluster_id);
    let _ = writeln!(
        out,
        "  {} nodes alive, {} suspect, {} dead · {} CPUs · {} memory ({} free) · {} GPUs",
        t.nodes_alive,
        t.nodes_suspect,
        t.nodes_dead,
        t.cpus,
        format_bytes(t.mem_total_bytes),
        format_bytes(t.mem_available_bytes),
        t.gpus
    );
    if let Some(c) = &r.control {
        let leader = c
            .leader
            .as_deref()
            .map(&name_of)
            .unwrap_or_else(|| "none (electing)".into());
        let voters: Vec<String> = c.voters.iter().map(|v| name_of(v)).collect();
        let _ = writeln!(
            out,
            "  control plane: leader {leader} · voters {} · commit index {} · term {}",
            voters.join(", "),
            c.commit_index,
            c.term
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<2}{:<16} {:<44} {:<8} {:<22} {:>4} {:>5} {:>10} {:>5} {:>10} {:>4}  LABELS",
        "",
        "NAME",
        "ID",
        "STATE",
        "ADDRESS",
        "CPUS",
        "SLOTS",
        "MEMORY",
        "LOAD",
        "DISK FREE",
        "GPUS"
    );
    for n in &r.nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "  {:<2}{:<16} {:<44} {:<8} {:<22} {:>4} {:>5} {:>10} {:>5.2} {:>10} {:>4}  {}",
            if n.is_self { "*" } else { "" },
            n.name,
            n.id,
            n.state.as_str(),
            n.addr,
            n.cpus,
            n.slots,
            format_bytes(n.mem_total_bytes),
            n.load_1m,
            format_bytes(n.disk_free_bytes),
            n.gpus,
            labels.join(",")
        );
    }
    if !r.links.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<34} {:>10}  KEY EXCHANGE", "LINK", "RTT");
        for l in &r.links {
            let _ = writeln!(
                out,
                "  {:<34} {:>10}  {}",
                format!("{} -> {}", name_of(&l.from), name_of(&l.peer)),
                format_rtt_us(l.rtt_us),
                l.kx_group
            );
        }
    }
    let dead = r
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Dead)
        .count();
    if dead > 0 {
        let _ = writeln!(
            out,
            "\n  {dead} node(s) dead: they stopped answering probes"
        );
    }
    out
}
