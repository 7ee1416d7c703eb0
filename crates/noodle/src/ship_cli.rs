//! `noodle run --file`, the terminal side: ships a file with [`noodle_api::upload`] and draws its
//! progress bar on stderr.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use noodle_api::upload::{UploadError, UploadProgress, upload_file};
use noodle_api::{ChunkRoute, Client};
use noodle_chunks::Manifest;

/// Files at least this large get a progress bar (when asked for).
pub(crate) const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// Ships the local file at `path` (called `name` on the bar) for `to` (see [`upload_file`]).
/// Shows a progress bar on stderr for files of at least 8 MiB when `progress` is true (and
/// stderr is a terminal); prints nothing otherwise.
pub(crate) async fn upload(
    client: &Client,
    to: &ChunkRoute,
    path: &Path,
    name: &str,
    progress: bool,
) -> Result<Manifest, UploadError> {
    let bar = Arc::new(OnceLock::<ProgressBar>::new());
    let uploading = Arc::new(AtomicBool::new(false));
    let on_progress = {
        let (bar, uploading, name) = (bar.clone(), uploading.clone(), name.to_owned());
        move |p: UploadProgress| match p {
            UploadProgress::Hashing {
                done_bytes,
                total_bytes,
            } => {
                if let Some(bar) = bar.get() {
                    bar.set_position(done_bytes);
                } else if progress && total_bytes >= PROGRESS_MIN_BYTES {
                    let _ = bar.set(progress_bar(total_bytes, format!("hashing {name}")));
                }
            }
            UploadProgress::Uploading {
                done_bytes,
                total_bytes,
            } => {
                let Some(bar) = bar.get() else { return };
                if !uploading.swap(true, Ordering::Relaxed) {
                    bar.set_message(format!("uploading {name}"));
                    bar.set_length(total_bytes);
                }
                bar.set_position(done_bytes);
            }
        }
    };
    let result = upload_file(client, to, path, on_progress).await;
    if let Some(bar) = bar.get() {
        match &result {
            Ok(_) => bar.finish_and_clear(),
            // A bar that failed while uploading stays where it stopped; one that failed
            // earlier is finished when dropped, as it always was.
            Err(_) if uploading.load(Ordering::Relaxed) => bar.abandon(),
            Err(_) => {}
        }
    }
    result
}

pub(crate) fn progress_bar(len: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    // A fixed template that always parses; fall back to the default style if it ever does not.
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}
