//! A crash-prone disk for redb: what a write produced is lost on a crash unless it was synced.
//!
//! A [`Disk`] lives outside the simulation (in the harness's registry), so it survives the
//! node's crashes and restarts. It holds two images of the database file: the *volatile* one
//! that writes change and reads see (the page cache), and the *durable* one that
//! [`StorageBackend::sync_data`] brings up to date (the platter). [`Disk::crash`] throws the
//! volatile image away and turns every backend handed out before into a dead one, whose writes
//! go nowhere: a crashed process cannot write anything more, not even while redb closes. The
//! next boot opens a backend on what was durable.
//!
//! The model is the strict one: nothing written after the last sync survives. Torn or reordered
//! writes between syncs are not modelled.

use redb::StorageBackend;
use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Dirty-tracking granularity: a sync copies the pages written since the last one.
const PAGE_BYTES: usize = 4096;

/// A database file bigger than this is a bug in the simulation (redb grows its file in regions;
/// a control plane of a few hundred entries stays far below).
const DISK_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, Default)]
struct Image {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Pages of `volatile` written since the last sync.
    dirty: BTreeSet<usize>,
    /// Bumped by every crash; a backend from an older epoch is dead.
    epoch: u64,
    syncs: u64,
}

/// One node's disk. Cheap to clone; every clone is the same disk.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    image: Arc<Mutex<Image>>,
}

fn lock(image: &Mutex<Image>) -> MutexGuard<'_, Image> {
    // A panic while holding the lock leaves plain bytes behind, still usable.
    image.lock().unwrap_or_else(|e| e.into_inner())
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    /// A backend for one boot of the node: it sees what survived the last crash.
    pub fn backend(&self) -> DiskBackend {
        DiskBackend {
            image: self.image.clone(),
            epoch: lock(&self.image).epoch,
        }
    }

    /// Power loss: every write since the last sync is gone, and backends handed out so far
    /// are dead. Returns how many bytes of unsynced pages were lost.
    pub fn crash(&self) -> usize {
        let mut image = lock(&self.image);
        let lost = image.dirty.len() * PAGE_BYTES;
        image.volatile = image.durable.clone();
        image.dirty.clear();
        image.epoch += 1;
        lost
    }

    /// How many times the disk was synced.
    pub fn syncs(&self) -> u64 {
        lock(&self.image).syncs
    }

    /// Whether writes are waiting for a sync.
    pub fn has_unsynced_writes(&self) -> bool {
        let image = lock(&self.image);
        !image.dirty.is_empty() || image.volatile.len() != image.durable.len()
    }
}

/// The [`StorageBackend`] of one boot. Dead once its disk crashed.
#[derive(Debug)]
pub struct DiskBackend {
    image: Arc<Mutex<Image>>,
    epoch: u64,
}

fn lost_power() -> io::Error {
    io::Error::other("the disk lost power")
}

fn out_of_range(offset: u64, len: usize, size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes at {offset} are beyond the end of the disk ({size} bytes)"),
    )
}

impl DiskBackend {
    /// The image if this backend is still alive.
    fn live(&self) -> Option<MutexGuard<'_, Image>> {
        let image = lock(&self.image);
        (image.epoch == self.epoch).then_some(image)
    }
}

impl StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        let image = self.live().ok_or_else(lost_power)?;
        Ok(image.volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let image = self.live().ok_or_else(lost_power)?;
        let size = image.volatile.len();
        let source = usize::try_from(offset)
            .ok()
            .and_then(|start| image.volatile.get(start..start.checked_add(out.len())?))
            .ok_or_else(|| out_of_range(offset, out.len(), size))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // A dead process's writes go nowhere, and it cannot tell.
        let Some(mut image) = self.live() else {
            return Ok(());
        };
        if len > DISK_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the simulated disk holds at most {DISK_BYTES_MAX} bytes, not {len}"),
            ));
        }
        let len = len as usize;
        let old = image.volatile.len();
        image.volatile.resize(len, 0);
        // Growing zero-fills pages that must reach the durable image on the next sync.
        if len > old {
            let pages = old / PAGE_BYTES..len.div_ceil(PAGE_BYTES);
            image.dirty.extend(pages);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let Some(mut image) = self.live() else {
            return Ok(());
        };
        let image = &mut *image;
        let len = image.volatile.len();
        image.durable.resize(len, 0);
        for page in std::mem::take(&mut image.dirty) {
            let start = page * PAGE_BYTES;
            if start >= len {
                continue;
            }
            let end = (start + PAGE_BYTES).min(len);
            image.durable[start..end].copy_from_slice(&image.volatile[start..end]);
        }
        image.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let Some(mut image) = self.live() else {
            return Ok(());
        };
        let size = image.volatile.len();
        let start = usize::try_from(offset).map_err(|_| out_of_range(offset, data.len(), size))?;
        let end = start
            .checked_add(data.len())
            .filter(|end| *end <= size)
            .ok_or_else(|| out_of_range(offset, data.len(), size))?;
        image.volatile[start..end].copy_from_slice(data);
        if end > start {
            image
                .dirty
                .extend(start / PAGE_BYTES..end.div_ceil(PAGE_BYTES));
        }
        Ok(())
    }
}
