//! Measurements for `noodle bench`: what the job sandbox costs one job.

use crate::process::{JobProcess, OutputLog, ProcessSpec, Sandbox, SandboxConfig};
use std::path::Path;
use std::time::Instant;

/// Microseconds to start `true` as a job and see it end, `runs` times, in `scratch` (a node's
/// data directory stand-in): confined by a default sandbox, or not. The difference is the
/// sandbox's set-up per job (uid claim, ruleset, mount view, and the sweep of the uid after).
pub fn spawn_true_us(scratch: &Path, sandboxed: bool, runs: usize) -> Result<Vec<f64>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let sandbox = sandboxed
        .then(|| Sandbox::new(&SandboxConfig::default(), scratch))
        .transpose()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            let dir = scratch.join(format!("jobs/{i}.1"));
            let work = dir.join("work");
            std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
            let log = OutputLog::create(&dir.join("output.log"), 1 << 20)
                .map_err(|e| format!("output log: {e}"))?;
            let t = Instant::now();
            let confinement = sandbox
                .as_ref()
                .map(|s| s.confine(&work, &[]))
                .transpose()
                .map_err(|e| e.to_string())?;
            let spec = ProcessSpec {
                command: vec!["true".into()],
                workdir: work.clone(),
                env: Vec::new(),
                env_in_workdir: Vec::new(),
                path: None,
                cpus: 1,
                mem_bytes: 0,
                cgroup_parent: None,
            };
            let mut job = JobProcess::spawn(&spec, log, confinement).map_err(|e| e.to_string())?;
            let code = job.wait().await;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            if code != 0 {
                return Err(format!("`true` exited {code}"));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(samples)
    })
}
