//! Local resource measurement: what this node has (CPUs, memory, load, the data dir's disk, GPUs),
//! sampled about once a second and gossiped to the mesh as [`noodle_api::Resources`].
//!
//! This crate must never panic or fail because a probe is missing: no GPU driver, an unreadable
//! `/proc` file or an unknown mount all read as zeros or an empty list, never as an error. It must
//! stay cheap and blocking-free enough to run every second: it refreshes only the figures it
//! reports and never does network I/O.

#[cfg(test)]
mod tests;

use noodle_api::{GpuInfo, Resources};
use nvml_wrapper::Nvml;
use std::fmt;
use std::path::{Path, PathBuf};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};

/// How many samples go by between two readings of the mount table. Mounts change rarely; reading
/// `/proc/mounts` every second would be wasted work, but a data dir created or mounted after
/// start-up must still be found within about a minute.
const DISK_RELIST_SAMPLES: u32 = 60;

/// Samples this node's resources. Create one per node and call [`ResourceProbe::sample`]
/// periodically; it keeps the OS handles between calls so that each sample is cheap.
pub struct ResourceProbe {
    /// `None` only where sysinfo cannot work on this platform; memory then reads as zero.
    system: Option<System>,
    /// `None` only where sysinfo cannot list disks on this platform; the disk then reads as zero.
    disks: Option<Disks>,
    data_dir: PathBuf,
    /// Index into `disks` of the disk that holds `data_dir`, from the last reading of the mounts.
    disk_index: Option<usize>,
    samples_until_relist: u32,
    /// Logical CPUs; read once, they do not change while the node runs.
    cpus: u32,
    /// Read once at creation: GPU names and memory sizes do not change while the node runs.
    gpus: Vec<GpuInfo>,
    load_error_logged: bool,
}

impl ResourceProbe {
    /// Opens the probes. Never fails: whatever cannot be measured here reads as zero or empty.
    pub fn new(data_dir: &Path) -> ResourceProbe {
        let mut system = match System::new() {
            Ok(system) => Some(system),
            Err(error) => {
                tracing::warn!(%error, "cannot read system information; memory will read as zero");
                None
            }
        };
        let disks = match Disks::new() {
            Ok(disks) => Some(disks),
            Err(error) => {
                tracing::warn!(%error, "cannot list disks; disk space will read as zero");
                None
            }
        };
        let cpus = count_cpus(system.as_mut());
        let mut probe = ResourceProbe {
            system,
            disks,
            data_dir: data_dir.to_path_buf(),
            disk_index: None,
            samples_until_relist: 0,
            cpus,
            gpus: list_gpus(),
            load_error_logged: false,
        };
        probe.relist_disks();
        probe
    }

    /// Measures the node now. Refreshes memory and the data dir's disk; everything else is
    /// either read once (CPU count, GPUs) or computed by the OS on demand (load average).
    pub fn sample(&mut self) -> Resources {
        let (mem_total_bytes, mem_available_bytes) = match &mut self.system {
            Some(system) => {
                system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                (system.total_memory(), system.available_memory())
            }
            None => (0, 0),
        };

        let load_1m = match System::load_average() {
            Ok(load) => load.one,
            Err(error) => {
                // Once: this runs every second and the cause will not go away by itself.
                if !self.load_error_logged {
                    tracing::debug!(%error, "cannot read load average; reporting 0");
                    self.load_error_logged = true;
                }
                0.0
            }
        };

        let (disk_total_bytes, disk_free_bytes) = self.sample_disk();

        Resources {
            cpus: self.cpus,
            mem_total_bytes,
            mem_available_bytes,
            load_1m,
            disk_total_bytes,
            disk_free_bytes,
            gpus: self.gpus.clone(),
        }
    }

    /// Total and free bytes of the disk that holds the data dir; `(0, 0)` if none does.
    fn sample_disk(&mut self) -> (u64, u64) {
        if self.samples_until_relist == 0 {
            self.relist_disks();
        } else {
            self.samples_until_relist -= 1;
            if let Some(disk) = self.selected_disk_mut() {
                // statvfs of that one mount point only.
                disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            }
        }
        match self.selected_disk_mut() {
            Some(disk) => (disk.total_space(), disk.available_space()),
            None => (0, 0),
        }
    }

    /// Re-reads the mount table, picks the disk that holds the data dir and reads its space.
    fn relist_disks(&mut self) {
        self.samples_until_relist = DISK_RELIST_SAMPLES;
        let Some(disks) = &mut self.disks else {
            self.disk_index = None;
            return;
        };
        // Only the list: the space of the one disk that matters is read below.
        disks.refresh_specifics(true, DiskRefreshKind::nothing());
        let data_dir = resolve_path(&self.data_dir);
        let index = longest_mount_prefix(disks.iter().map(|disk| disk.mount_point()), &data_dir);
        if index != self.disk_index {
            let mount_point = index
                .and_then(|i| disks.get(i))
                .map(|disk| disk.mount_point());
            tracing::debug!(
                data_dir = %data_dir.display(),
                mount_point = ?mount_point,
                "data dir disk selected"
            );
        }
        self.disk_index = index;
        if let Some(disk) = self.selected_disk_mut() {
            disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
        }
    }

    fn selected_disk_mut(&mut self) -> Option<&mut sysinfo::Disk> {
        let index = self.disk_index?;
        self.disks.as_mut()?.get_mut(index)
    }
}

impl fmt::Debug for ResourceProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mount_point = self
            .disk_index
            .and_then(|i| self.disks.as_ref()?.get(i))
            .map(|disk| disk.mount_point());
        f.debug_struct("ResourceProbe")
            .field("data_dir", &self.data_dir)
            .field("mount_point", &mount_point)
            .field("cpus", &self.cpus)
            .field("gpus", &self.gpus)
            .finish_non_exhaustive()
    }
}

/// Logical CPUs as the OS lists them; what this process may use if the OS lists none.
fn count_cpus(system: Option<&mut System>) -> u32 {
    let listed = match system {
        Some(system) => {
            system.refresh_cpu_list(CpuRefreshKind::nothing());
            system.cpus().len()
        }
        None => 0,
    };
    let cpus = if listed > 0 {
        listed
    } else {
        std::thread::available_parallelism().map_or(0, |n| n.get())
    };
    u32::try_from(cpus).unwrap_or(u32::MAX)
}

/// NVIDIA GPUs through NVML; empty where there is no driver (the usual case) or NVML fails.
fn list_gpus() -> Vec<GpuInfo> {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(error) => {
            tracing::debug!(%error, "nvml unavailable; reporting no nvidia gpus");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%error, "nvml cannot count gpus; reporting none");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(error) => {
                tracing::warn!(index, %error, "nvml cannot open gpu; skipping it");
                continue;
            }
        };
        let name = device.name().unwrap_or_else(|error| {
            tracing::debug!(index, %error, "nvml cannot read gpu name");
            String::new()
        });
        let mem_total_bytes = match device.memory_info() {
            Ok(memory) => memory.total,
            Err(error) => {
                tracing::debug!(index, %error, "nvml cannot read gpu memory; reporting 0");
                0
            }
        };
        gpus.push(GpuInfo {
            index,
            name,
            mem_total_bytes,
            vendor: "nvidia".to_owned(),
        });
    }
    gpus
}

/// The absolute, symlink-free form of `path`. A path that does not exist yet is resolved through
/// its nearest existing ancestor, so a data dir created later still lands on the right disk.
fn resolve_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for ancestor in absolute.ancestors() {
        if let Ok(canonical) = ancestor.canonicalize() {
            return match absolute.strip_prefix(ancestor) {
                Ok(rest) => canonical.join(rest),
                Err(_) => canonical,
            };
        }
    }
    absolute
}

/// Index of the mount point that is the longest (component-wise) prefix of `path`. Where the same
/// mount point is listed twice the last one wins: it is the mount stacked on top, the one in use.
fn longest_mount_prefix<'a>(
    mount_points: impl IntoIterator<Item = &'a Path>,
    path: &Path,
) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, mount_point) in mount_points.into_iter().enumerate() {
        if !path.starts_with(mount_point) {
            continue;
        }
        let depth = mount_point.components().count();
        if best.is_none_or(|(_, best_depth)| depth >= best_depth) {
            best = Some((index, depth));
        }
    }
    best.map(|(index, _)| index)
}
