//! `noodle run`, `noodle jobs`, `noodle logs`, `noodle wait` and `noodle cancel`.

use anyhow::{Context, Result, bail};
use clap::Args;
use noodle_api::{
    ChunkRoute, Client, ClientError, JobEvent, JobFollow, JobInfo, JobSubmit, output_frame,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exit code of a job that was cancelled, or of `noodle run` interrupted with Ctrl-C.
const EXIT_CANCELLED: i32 = 130;
/// Exit code of `noodle wait --timeout` when the job is still going.
const EXIT_TIMEOUT: i32 = 124;

/// Widest COMMAND shown by `noodle jobs`.
const COMMAND_WIDTH: usize = 60;
/// Widest NODE shown by `noodle jobs`.
const NODE_WIDTH: usize = 20;

const RUN_AFTER_HELP: &str = "\
The job is placed on a node that has the CPU slots, memory and GPUs it asks for (and every
--label), and its output is streamed here as it runs: its stdout to stdout, its stderr to
stderr, and notes from noodle itself to stderr as `noodle: ...`. `noodle run` exits with the
job's exit code; 130 if the job was cancelled; 1 if it was lost (its node died and it had no
retries left); 127 if the program was not found on the node.

Ctrl-C cancels the job (the program gets SIGTERM, then SIGKILL after the node's --kill-grace)
and waits until it has stopped; a second Ctrl-C stops waiting. If the stream breaks, noodle
waits for the job to end; `noodle logs JOB --follow` reattaches to its output.

Programs and files:
  CMD ARGS       CMD is looked up on the node that runs the job:
                   python train.py     `python` from the node's PATH
                   /opt/tool/bin/run   that absolute path on the node, as is
                   ./my_program        a relative path (with a `/`) is a file on THIS machine:
                                       it is shipped with the job and run as ./my_program
  --file PATH    ship a local file into the job's working directory under its file name
                 (`--file data/train.csv` appears as ./train.csv); it keeps its executable bit.
                 Two shipped files may not have the same file name.

--json:
  with --detach  print the submitted job as JSON instead of its id
  without        stream the output as usual, then print the final job as one line of JSON on
                 stdout, after the program's own output

Examples:
  noodle run -- python train.py --epochs 3
  noodle run --cpus 4 --mem 8G --gpus 1 --file train.py -- python train.py
  noodle run --label zone=lab --retries 2 -- ./simulate --steps 1000
  id=$(noodle run --detach -- ./long_job) && noodle logs \"$id\" --follow";

/// Run a program on the cluster: placed on a node with room for it, its output streamed here.
#[derive(Args, Debug)]
#[command(
    override_usage = "noodle run [OPTIONS] -- <CMD> [ARGS]...",
    after_long_help = RUN_AFTER_HELP
)]
pub(crate) struct RunArgs {
    /// CPU slots the job needs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    cpus: u32,
    /// Memory the job needs: bytes, or a number with K, M, G or T (powers of 1024, optionally
    /// followed by i, B or iB; any case): 512M, 8G, 1.5GiB. Default: no reservation.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    mem: Option<u64>,
    /// GPUs the job needs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    gpus: u32,
    /// Run only on a node with this label (`noodle up --label`); repeatable, all must match.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Run on this node (its name or id, as `noodle status` shows them), or on a node with this
    /// label (`K=V`, like --label).
    #[arg(long, value_name = "NODE|K=V")]
    on: Option<String>,
    /// Ship this local file into the job's working directory as ./FILE_NAME; repeatable.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Make the fabric's objects under PREFIX readable by the job at $NOODLE_FABRIC/PREFIX
    /// (needs fabric:read on it); repeatable.
    #[arg(long = "read", value_name = "PREFIX")]
    reads: Vec<String>,
    /// When the job ends, turn the files it left under $NOODLE_OUT into versions under PREFIX
    /// (needs fabric:write on it), tagged job=ID.
    #[arg(long = "write", value_name = "PREFIX")]
    write: Option<String>,
    /// Run the job again on another node up to N times if its node dies.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// Submit, print the job id and return at once.
    #[arg(long)]
    detach: bool,
    /// With --detach: print the job as JSON. Otherwise: after the output, print the final job
    /// as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// The program and its arguments (after `--`). A relative path with a `/` (./prog) is a
    /// local file, shipped with the job; anything else is found on the node.
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

/// List jobs: queued, running and recently ended ones.
#[derive(Args, Debug)]
#[command(after_long_help = "\
TIME is how long a job has been waiting (queued, placed), has been running so far (running),
or ran (ended). EXIT is the program's exit code once it has ended.")]
pub(crate) struct JobsArgs {
    /// List every job the cluster remembers, not only the recent ones.
    #[arg(long)]
    all: bool,
    /// Print `{"jobs": [...]}`.
    #[arg(long)]
    json: bool,
}

/// Print a job's output (stdout to stdout, stderr to stderr), as kept by its node.
#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// The job id (`noodle jobs`).
    #[arg(value_name = "JOB")]
    job: u64,
    /// Keep printing new output as the job writes it, until it ends.
    #[arg(long)]
    follow: bool,
}

/// Wait until a job has ended and exit with its exit code.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Exit code: the job's exit code; 130 if it was cancelled; 1 if it was lost (its node died and it
had no retries left); 124 if it is still queued or running after --timeout.")]
pub(crate) struct WaitArgs {
    /// The job id (`noodle jobs`).
    #[arg(value_name = "JOB")]
    job: u64,
    /// Give up after this long (`30s`, `10m`, `2h`). Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the job as JSON when it ends (or when the timeout passes).
    #[arg(long)]
    json: bool,
}

/// Cancel a job: a queued job never starts; a running one gets SIGTERM, then SIGKILL.
#[derive(Args, Debug)]
pub(crate) struct CancelArgs {
    /// The job id (`noodle jobs`).
    #[arg(value_name = "JOB")]
    job: u64,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
}

/// `noodle run`.
pub(crate) async fn run(
    client: impl FnOnce() -> Result<Client, ClientError>,
    args: RunArgs,
) -> Result<i32> {
    // Everything that can be checked here is checked before the node is asked.
    let mut labels = crate::parse_labels(&args.labels)?;
    let (command, ships) = plan_files(&args.command, &args.files)?;
    let client = client()?;
    match args.on.as_deref() {
        Some(on) if on.contains('=') => labels.extend(crate::parse_labels(&[on.to_string()])?),
        Some(node) => {
            let id = resolve_node(&client, node).await?;
            labels.insert(noodle_jobs::NODE_LABEL.to_string(), id);
        }
        None => {}
    }
    let mut files = Vec::with_capacity(ships.len());
    for s in &ships {
        let manifest =
            crate::ship_cli::upload(&client, &ChunkRoute::Jobs, &s.path, &s.name, !args.json)
                .await
                .with_context(|| format!("shipping {}", s.path.display()))?;
        files.push(noodle_api::JobFile {
            name: s.name.clone(),
            manifest: manifest.id().to_hex(),
            executable: s.executable,
            bytes: manifest.size(),
        });
    }
    let submit = JobSubmit {
        command,
        cpus: args.cpus,
        mem_bytes: args.mem.unwrap_or(0),
        gpus: args.gpus,
        labels,
        retries: args.retries,
        files,
        reads: args.reads,
        writes: args.write.into_iter().collect(),
    };
    let info = client.submit_job(&submit).await?;
    if args.detach {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            outln!("{}", info.id);
        }
        return Ok(0);
    }
    attach(&client, info.id, args.json).await
}

/// The id of the node `--on NODE` names: by id or by name.
async fn resolve_node(client: &Client, node: &str) -> Result<String> {
    let status = client.status().await?;
    let matching: Vec<&noodle_api::NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.id == node || n.name == node)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => {
            let known: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!("--on {node}: no such node (nodes: {})", known.join(", "))
        }
        _ => bail!("--on {node}: several nodes have that name; give the node id"),
    }
}

/// A local file that `noodle run` ships with the job.
#[derive(Debug, PartialEq, Eq)]
struct Ship {
    path: PathBuf,
    /// Its name in the job's working directory.
    name: String,
    executable: bool,
}

/// Whether CMD names a local program to ship: a relative path with a `/` in it.
fn ships_program(cmd: &str) -> bool {
    cmd.contains('/') && !cmd.starts_with('/')
}

/// The command as the node will run it and the local files to ship with it.
fn plan_files(command: &[String], files: &[PathBuf]) -> Result<(Vec<String>, Vec<Ship>)> {
    let mut command = command.to_vec();
    let mut ships: Vec<Ship> = Vec::new();
    if let Some(program) = command.first_mut()
        && ships_program(program)
    {
        let path = PathBuf::from(program.as_str());
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => bail!("{program} is not a file, so it cannot be shipped and run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{program}: no such file here (a program given as a relative path is shipped \
                 from this machine; give an absolute path for a program that is already on the \
                 node, or a bare name to find it on the node's PATH)"
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {program}")),
        }
        let name = file_name_of(&path)?;
        *program = format!("./{name}");
        ships.push(Ship {
            path,
            name,
            executable: true,
        });
    }
    for path in files {
        let meta = std::fs::metadata(path).with_context(|| format!("--file {}", path.display()))?;
        if !meta.is_file() {
            bail!("--file {} is not a file", path.display());
        }
        let name = file_name_of(path)?;
        if let Some(other) = ships.iter().find(|s| s.name == name) {
            if same_file(&other.path, path) {
                continue;
            }
            bail!(
                "{} and {} would both be shipped as ./{name} (a shipped file keeps only its file \
                 name); rename one of them",
                other.path.display(),
                path.display()
            );
        }
        ships.push(Ship {
            path: path.clone(),
            name,
            executable: is_executable(&meta),
        });
    }
    Ok((command, ships))
}

fn file_name_of(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    name.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: the file name is not UTF-8", path.display()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

/// Streams the output of job `id` until it ends; returns the exit code `noodle run` exits with.
async fn attach(client: &Client, id: u64, json: bool) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};

    // From here on Ctrl-C no longer kills the process: it cancels the job.
    let mut sigint = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut cancelling = false;
    let mut follow = JobFollow::new(client.clone(), id);
    if let Err(e) = follow.open_output().await {
        eprintln!(
            "noodle: cannot stream the output of job {id} ({e}); waiting for it to end \
             (`noodle logs {id} --follow` reattaches)"
        );
    }
    loop {
        let event = tokio::select! {
            event = follow.next() => event,
            _ = sigint.recv() => {
                if cancelling {
                    eprintln!("noodle: not waiting any longer; job {id} stays cancelled");
                    return Ok(EXIT_CANCELLED);
                }
                cancelling = true;
                eprintln!("noodle: cancelling job {id}");
                let client = client.clone();
                // In the background, so that a second Ctrl-C is heard at once.
                tokio::spawn(async move {
                    if let Err(e) = client.cancel_job(id).await {
                        eprintln!("noodle: cancelling job {id} failed: {e}");
                    }
                });
                continue;
            }
        };
        let event = event.with_context(|| {
            format!("waiting for job {id} (`noodle wait {id}` waits for it again)")
        })?;
        match event {
            JobEvent::Output { kind, payload } => {
                if write_frame(kind, &payload).is_err() {
                    // Whoever read our stdout is gone (`noodle run -- yes | head`): like a local
                    // program that gets SIGPIPE, the job stops.
                    let _ = client.cancel_job(id).await;
                    return Ok(0);
                }
            }
            JobEvent::OutputLost(e) => eprintln!(
                "noodle: lost the output stream of job {id} ({e}); waiting for the job to \
                 end (`noodle logs {id} --follow` reattaches to its output)"
            ),
            JobEvent::Ended(info) => {
                if json {
                    outln!("{}", serde_json::to_string(&info)?);
                }
                let code = report_end(&info);
                return Ok(if cancelling { EXIT_CANCELLED } else { code });
            }
        }
    }
}

/// Writes one output frame where it belongs. An error means stdout is gone.
fn write_frame(kind: u8, payload: &[u8]) -> std::io::Result<()> {
    match kind {
        output_frame::STDOUT => {
            let mut out = std::io::stdout().lock();
            out.write_all(payload)?;
            out.flush()
        }
        output_frame::STDERR => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(payload).and_then(|()| err.flush());
            Ok(())
        }
        output_frame::NOTICE => {
            let text = String::from_utf8_lossy(payload);
            eprintln!("noodle: {}", text.trim_end());
            Ok(())
        }
        // A kind from a newer node: nothing this CLI knows how to show.
        _ => Ok(()),
    }
}

/// Says on stderr why an ended job did not succeed; returns the exit code for it.
fn report_end(info: &JobInfo) -> i32 {
    match info.state.as_str() {
        "succeeded" => info.exit_code.unwrap_or(0),
        "failed" => {
            if let Some(error) = &info.error {
                eprintln!("error: {error}");
            }
            info.exit_code.filter(|c| *c != 0).unwrap_or(1)
        }
        "cancelled" => EXIT_CANCELLED,
        "lost" => {
            eprintln!(
                "error: job {} was lost (node {} died and it had no retries left)",
                info.id,
                info.node.as_deref().unwrap_or("?")
            );
            1
        }
        other => {
            eprintln!("error: job {} ended in an unknown state {other:?}", info.id);
            1
        }
    }
}

/// `noodle jobs`. With `names`, node ids are shown as node names (one more request).
pub(crate) async fn jobs(client: Client, args: JobsArgs, names: bool) -> Result<i32> {
    let list = client.jobs(args.all).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.jobs.is_empty() {
        if args.all {
            outln!("no jobs");
        } else {
            outln!(
                "no jobs queued, running or recently ended (`noodle jobs --all` lists every job)"
            );
        }
        return Ok(0);
    }
    // Only with the admin credential: a token without `cluster:read` would be refused, and
    // every refusal is audited.
    let names: BTreeMap<String, String> = if names {
        match client.status().await {
            Ok(report) => report.nodes.into_iter().map(|n| (n.id, n.name)).collect(),
            Err(_) => BTreeMap::new(),
        }
    } else {
        BTreeMap::new()
    };
    out!("{}", render_jobs(&list.jobs, &names, now_ms()));
    Ok(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `noodle jobs` table.
fn render_jobs(jobs: &[JobInfo], names: &BTreeMap<String, String>, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<9}  {:<NODE_WIDTH$}  {:>4}  {:>4}  {:>7}  COMMAND",
        "ID", "STATE", "NODE", "EXIT", "CPUS", "TIME"
    );
    for j in jobs {
        let node = match &j.node {
            Some(id) => names.get(id).cloned().unwrap_or_else(|| short_node_id(id)),
            None => "-".into(),
        };
        let exit = j
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:>6}  {:<9}  {:<NODE_WIDTH$}  {:>4}  {:>4}  {:>7}  {}",
            j.id,
            j.state,
            truncate(&node, NODE_WIDTH),
            exit,
            j.cpus,
            format_span(job_time_ms(j, now_ms)),
            truncate(
                &noodle_api::format::format_command(&j.command),
                COMMAND_WIDTH
            )
        );
    }
    out
}

/// How long the job has waited (not started yet), has been running, or ran (ended).
fn job_time_ms(j: &JobInfo, now_ms: u64) -> u64 {
    match (j.started_at_ms, j.ended_at_ms) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        (Some(start), None) => now_ms.saturating_sub(start),
        // Ended without ever starting (cancelled while queued, program not found): how long
        // it existed.
        (None, Some(end)) => end.saturating_sub(j.submitted_at_ms),
        (None, None) => now_ms.saturating_sub(j.submitted_at_ms),
    }
}

/// A short span: `850ms`, `42s`, `3m12s`, `2h05m`, `3d04h`.
fn format_span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `host-4b1e…` for a node id `host-<uuid>`: the host part and enough of the rest to tell
/// nodes of one host apart.
fn short_node_id(id: &str) -> String {
    // `-` and a 36-character UUID at the end: keep the host and the UUID's first part.
    const UUID_LEN: usize = 36;
    if id.len() > UUID_LEN + 1 && id.is_char_boundary(id.len() - UUID_LEN) {
        let (host, uuid) = id.split_at(id.len() - UUID_LEN);
        if host.ends_with('-') && uuid.is_ascii() && uuid.as_bytes()[8] == b'-' {
            return format!("{host}{}", &uuid[..8]);
        }
    }
    id.to_string()
}

/// `s` cut to `width` characters, the last one `…` when something was cut.
fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `noodle logs`.
pub(crate) async fn logs(client: Client, args: LogsArgs) -> Result<i32> {
    let mut stream = client.job_output(args.job, args.follow).await?;
    while let Some((kind, payload)) = stream.next().await? {
        if write_frame(kind, &payload).is_err() {
            // Stdout is gone (`noodle logs 7 | head`).
            return Ok(0);
        }
    }
    Ok(0)
}

/// `noodle wait`.
pub(crate) async fn wait(client: Client, args: WaitArgs) -> Result<i32> {
    let id = args.job;
    let info = client.wait_job_ended(id, args.timeout).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    }
    if info.is_done() {
        return Ok(report_end(&info));
    }
    eprintln!(
        "error: job {id} still {} after {}",
        info.state,
        humantime::format_duration(args.timeout.unwrap_or_default())
    );
    Ok(EXIT_TIMEOUT)
}

/// `noodle cancel`.
pub(crate) async fn cancel(client: Client, args: CancelArgs) -> Result<i32> {
    let info = client.cancel_job(args.job).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        outln!("cancelled job {}", info.id);
    }
    Ok(0)
}

/// A size in bytes: a whole number of bytes (`1048576`), or a number, possibly with a fraction,
/// and a unit K, M, G or T, optionally followed by `i`, `B` or `iB`, in any case (`512M`,
/// `8G`, `1.5GiB`, `64kb`). Every unit is a power of 1024; fractions of a byte are dropped.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    const EXAMPLES: &str = "e.g. 1048576, 512M, 8G or 1.5GiB";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!(
            "the size is empty: give bytes or a number and a unit, {EXAMPLES}"
        ));
    }
    if t.starts_with('-') {
        return Err(format!("size {s:?} is negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!(
            "size {s:?} does not start with a number ({EXAMPLES})"
        ));
    }
    let shift: u32 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "size {s:?} has an unknown unit {unit:?}: use K, M, G or T (powers of 1024), \
                 optionally followed by i, B or iB"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(format!("size {s:?} is not a number ({EXAMPLES})"));
    }
    if !fraction.is_empty() && shift == 0 {
        return Err(format!(
            "size {s:?}: a number of bytes must be whole (or give a unit: {EXAMPLES})"
        ));
    }
    let too_large = || format!("size {s:?} is too large (the most is 16 EiB - 1 byte)");
    let unit_bytes = 1u128 << shift;
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(unit_bytes).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // 18 digits are more than a byte's worth of precision for any unit up to T.
        let digits = &fraction[..fraction.len().min(18)];
        let numerator: u128 = digits.parse().map_err(|_| too_large())?;
        let denominator = 10u128.pow(digits.len() as u32);
        bytes += numerator * unit_bytes / denominator;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: [(&str, u64); 16] = [
            ("0", 0),
            ("1048576", 1 << 20),
            ("512B", 512),
            ("1K", 1024),
            ("64kb", 64 << 10),
            ("512M", 512 << 20),
            ("512 MiB", 512 << 20),
            ("8G", 8 << 30),
            ("8g", 8 << 30),
            ("8Gi", 8 << 30),
            ("1.5GiB", 3 << 29),
            ("0.5K", 512),
            (".5K", 512),
            ("1.1K", 1126),
            ("2T", 2 << 40),
            (" 3M ", 3 << 20),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input:?}");
        }
        assert_eq!(parse_size("16777215T"), Ok(16_777_215u64 << 40));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_sizes() {
        let cases: [(&str, &str); 12] = [
            ("", "empty"),
            ("   ", "empty"),
            ("-1", "negative"),
            ("-1G", "negative"),
            ("12Q", "unknown unit \"Q\""),
            ("1e9", "unknown unit"),
            ("G", "does not start with a number"),
            (".", "not a number"),
            ("1.2.3M", "not a number"),
            ("1.5", "must be whole"),
            ("18446744073709551616", "too large"),
            ("16777216T", "too large"),
        ];
        for (input, want) in cases {
            let err = parse_size(input).unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        let huge = "9".repeat(60);
        assert!(parse_size(&huge).unwrap_err().contains("too large"));
    }

    #[test]
    fn which_programs_are_shipped() {
        assert!(ships_program("./my_program"));
        assert!(ships_program("../bin/tool"));
        assert!(ships_program("build/release/tool"));
        assert!(!ships_program("/usr/bin/python3"));
        assert!(!ships_program("python"));
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plans_shipped_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog");
        std::fs::write(&prog, b"#!/bin/sh\necho hi\n").unwrap();
        let data = dir.path().join("data.csv");
        std::fs::write(&data, b"a,b\n").unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Bare names and absolute paths run on the node as given; nothing is shipped.
        let (cmd, ships) = plan_files(&strings(&["python", "x.py"]), &[]).unwrap();
        assert_eq!(cmd, strings(&["python", "x.py"]));
        assert!(ships.is_empty());
        let (cmd, ships) = plan_files(&strings(&["/no/such/tool", "-v"]), &[]).unwrap();
        assert_eq!(cmd, strings(&["/no/such/tool", "-v"]));
        assert!(ships.is_empty());

        // A relative path is shipped and run as ./NAME; --file keeps its executable bit.
        let rel = pathdiff(&prog);
        let (cmd, ships) =
            plan_files(&strings(&[&rel, "--n", "3"]), &[data.clone(), tool.clone()]).unwrap();
        assert_eq!(cmd, strings(&["./prog", "--n", "3"]));
        assert_eq!(
            ships,
            vec![
                Ship {
                    path: PathBuf::from(&rel),
                    name: "prog".into(),
                    executable: true
                },
                Ship {
                    path: data.clone(),
                    name: "data.csv".into(),
                    executable: false
                },
                Ship {
                    path: tool.clone(),
                    name: "tool".into(),
                    executable: true
                },
            ]
        );

        // The program named again with --file is shipped once.
        let (_, ships) = plan_files(&strings(&[&rel]), std::slice::from_ref(&prog)).unwrap();
        assert_eq!(ships.len(), 1);

        // Two different files with one name.
        let other = dir.path().join("sub");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("data.csv"), b"").unwrap();
        let err = plan_files(&strings(&["true"]), &[data.clone(), other.join("data.csv")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both be shipped as ./data.csv"), "{err}");

        // Missing program, missing file, a directory.
        let err = plan_files(&strings(&["./surely/not/here"]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file here"), "{err}");
        let err = plan_files(&strings(&["true"]), &[dir.path().join("nope")]).unwrap_err();
        assert!(format!("{err:#}").contains("--file"), "{err:#}");
        let err = plan_files(&strings(&["true"]), std::slice::from_ref(&other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a file"), "{err}");
    }

    /// `path` relative to the current directory (`../../tmp/x/prog`), as a user would type it.
    fn pathdiff(path: &Path) -> String {
        let cwd = std::env::current_dir().unwrap();
        let ups = cwd.components().count() - 1;
        let mut rel = "../".repeat(ups);
        rel.push_str(path.strip_prefix("/").unwrap().to_str().unwrap());
        rel
    }

    fn job(id: u64, state: &str) -> JobInfo {
        JobInfo {
            id,
            state: state.into(),
            node: None,
            exit_code: None,
            command: strings(&["python", "train.py"]),
            submitted_at: String::new(),
            started_at: None,
            ended_at: None,
            submitted_at_ms: 1_000_000,
            started_at_ms: None,
            ended_at_ms: None,
            cpus: 1,
            mem_bytes: 0,
            gpus: 0,
            labels: BTreeMap::new(),
            submitter: "admin".into(),
            retries_left: 0,
            epoch: 0,
            error: None,
        }
    }

    #[test]
    fn job_table() {
        let now = 1_000_000 + 200_000;
        let queued = job(1, "queued");
        let mut running = job(2, "running");
        running.node = Some("gpu-box-0b9c2f3e-1111-4222-8333-444455556666".into());
        running.started_at_ms = Some(1_010_000);
        running.cpus = 4;
        let mut done = job(3, "failed");
        done.node = Some("n1".into());
        done.started_at_ms = Some(1_010_000);
        done.ended_at_ms = Some(1_010_000 + 3_723_000);
        done.exit_code = Some(2);
        done.command = vec!["sh".into(), "-c".into(), "echo 'hi there'; ".repeat(10)];
        let names = BTreeMap::from([("n1".to_string(), "laptop".to_string())]);
        let table = render_jobs(&[queued, running, done], &names, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("    ID  STATE"), "{table}");
        assert!(
            lines[1].contains("queued") && lines[1].contains("3m20s"),
            "{table}"
        );
        assert!(lines[2].contains("gpu-box-0b9c2f3e "), "{table}");
        assert!(
            lines[2].contains("3m10s") && lines[2].contains("   4  "),
            "{table}"
        );
        assert!(
            lines[3].contains("laptop") && lines[3].contains("1h02m"),
            "{table}"
        );
        assert!(lines[3].contains("     2  "), "{table}");
        let command = lines[3].split("  ").last().unwrap();
        assert_eq!(command.chars().count(), COMMAND_WIDTH, "{table}");
        assert!(command.starts_with("sh -c 'echo '\\''hi there"), "{table}");
        assert!(command.ends_with('…'));
    }

    #[test]
    fn spans_and_ids() {
        assert_eq!(format_span(850), "850ms");
        assert_eq!(format_span(42_000), "42s");
        assert_eq!(format_span(192_000), "3m12s");
        assert_eq!(format_span(7_500_000), "2h05m");
        assert_eq!(format_span(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(
            short_node_id("box-0b9c2f3e-1111-4222-8333-444455556666"),
            "box-0b9c2f3e"
        );
        assert_eq!(short_node_id("n1"), "n1");
        assert_eq!(
            noodle_api::format::format_command(&strings(&["a", "", "b c"])),
            "a '' 'b c'"
        );
    }

    #[test]
    fn exit_codes() {
        let mut j = job(5, "succeeded");
        j.exit_code = Some(0);
        assert_eq!(report_end(&j), 0);
        j.state = "failed".into();
        j.exit_code = Some(3);
        assert_eq!(report_end(&j), 3);
        j.exit_code = Some(127);
        j.error = Some("no such program `foo` on node n1".into());
        assert_eq!(report_end(&j), 127);
        j.exit_code = None;
        assert_eq!(report_end(&j), 1);
        j.state = "cancelled".into();
        assert_eq!(report_end(&j), EXIT_CANCELLED);
        j.state = "lost".into();
        assert_eq!(report_end(&j), 1);
    }
}
