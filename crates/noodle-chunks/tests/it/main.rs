//! Integration tests for `noodle-chunks`: chunking, manifests and the store, driven through the
//! public API only.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use noodle_chunks::{
    Checked, ChunkError, ChunkId, Chunker, MANIFEST_VERSION, MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES,
    MAX_OBJECT_BYTES, MIN_CHUNK_BYTES, Manifest, ManifestError, Store,
};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// Damages a stored chunk's bytes.
type Damage = fn(&mut Vec<u8>);
/// Changes a file on disk.
type Mutation = fn(&Path) -> io::Result<()>;

const MB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, data)?;
    Ok(path)
}

/// All regular files under `dir`, recursively: what the store holds on disk, temp files included.
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn manifest_of(data: &[u8]) -> Result<Manifest, ChunkError> {
    Chunker::new(data, data.len() as u64, "mem")?.finish()
}

fn store(dir: &Path) -> Result<Store, ChunkError> {
    Store::open(dir.join("store"), u64::MAX)
}

/// A source shorter than the largest chunk is chunked with a buffer its own size (cheaper),
/// and cut exactly where fastcdc cuts the whole input with the full maximum.
#[test]
fn short_sources_are_cut_as_with_the_full_buffer() -> TestResult {
    use noodle_chunks::AVG_CHUNK_BYTES;
    let data = bytes(7, 9 * MB);
    for len in [
        0,
        1,
        1000,
        300 << 10,
        3 * MB / 2,
        3 * MB,
        4 * MB - 1,
        4 * MB,
        4 * MB + 1,
        9 * MB,
    ] {
        let ours: Vec<usize> = manifest_of(&data[..len])?
            .chunks()
            .iter()
            .map(|(_, l)| *l as usize)
            .collect();
        let full: Vec<usize> = fastcdc::v2020::FastCDC::new(
            &data[..len],
            MIN_CHUNK_BYTES,
            AVG_CHUNK_BYTES,
            MAX_CHUNK_BYTES,
        )
        .map(|c| c.length)
        .collect();
        assert_eq!(ours, full, "{len} bytes");
    }
    Ok(())
}

#[test]
fn chunking_is_deterministic_and_bounded() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = bytes(1, 10 * MB);
    let a = Chunker::open(&write(tmp.path(), "a", &data)?)?.finish()?;
    let b = Chunker::open(&write(tmp.path(), "b", &data)?)?.finish()?;
    let c = manifest_of(&data)?;
    assert_eq!(a, b);
    assert_eq!(a.id(), c.id());
    assert_eq!(a.size(), data.len() as u64);
    assert!(
        a.chunks().len() >= 3,
        "10 MB gave only {} chunks",
        a.chunks().len()
    );
    let (last, rest) = a.chunks().split_last().ok_or("no chunks")?;
    for &(_, len) in rest {
        assert!(
            (MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&(len as usize)),
            "chunk of {len}"
        );
    }
    assert!(last.1 as usize <= MAX_CHUNK_BYTES);
    let other = manifest_of(&bytes(2, 10 * MB))?;
    assert_ne!(a.id(), other.id());
    Ok(())
}

#[test]
fn one_byte_change_moves_at_most_two_chunks() -> TestResult {
    let data = bytes(3, 10 * MB);
    let before = manifest_of(&data)?;
    // Data-driven: an overwrite, an insertion and a deletion in the middle.
    let mut overwrite = data.clone();
    overwrite[5 * MB] ^= 0xFF;
    let mut insert = data.clone();
    insert.insert(5 * MB, 7);
    let mut delete = data.clone();
    delete.remove(5 * MB);
    for (what, edited) in [
        ("overwrite", overwrite),
        ("insert", insert),
        ("delete", delete),
    ] {
        let after = manifest_of(&edited)?;
        let old = before.chunk_ids();
        let new_chunks = after
            .chunk_ids()
            .into_iter()
            .filter(|id| !old.contains(id))
            .count();
        assert!(
            (1..=2).contains(&new_chunks),
            "{what}: {new_chunks} new chunks"
        );
        assert_ne!(before.id(), after.id(), "{what}");
    }
    Ok(())
}

#[test]
fn put_get_round_trip() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let data = bytes(4, 1000);
    let id = ChunkId::of(&data);
    assert!(!store.has(&id));
    assert!(matches!(store.get(&id), Err(ChunkError::NotFound(got)) if got == id));
    assert!(store.put(&id, &data)?, "first put writes");
    assert!(!store.put(&id, &data)?, "second put is a no-op");
    assert!(store.has(&id));
    assert_eq!(store.get(&id)?, data);
    assert_eq!(store.total_bytes(), 1000);
    let path = store.chunk_path(&id);
    let hex = id.to_string();
    assert_eq!(
        path,
        store.dir().join(&hex[..2]).join(&hex),
        "fan-out by first byte"
    );
    assert_eq!(files_under(store.dir())?, vec![path]);
    Ok(())
}

#[test]
fn forged_or_oversized_chunks_are_refused_and_not_stored() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let claimed = ChunkId::of(b"the real bytes");
    match store.put(&claimed, b"other bytes") {
        Err(ChunkError::HashMismatch { id, actual }) => {
            assert_eq!(id, claimed);
            assert_eq!(actual, ChunkId::of(b"other bytes"));
        }
        other => panic!("forged chunk accepted: {other:?}"),
    }
    // Checked bytes are made only by hashing them: a forged pair never becomes one.
    assert!(matches!(
        Checked::new(claimed, &b"other bytes"[..]),
        Err(ChunkError::HashMismatch { .. })
    ));
    let big = vec![0u8; MAX_OBJECT_BYTES + 1];
    let err = store.put(&ChunkId::of(&big), &big);
    assert!(
        matches!(err, Err(ChunkError::ChunkTooLarge { .. })),
        "{err:?}"
    );
    let err = store.put_checked(&Checked::hashed(&big[..]));
    assert!(
        matches!(err, Err(ChunkError::ChunkTooLarge { .. })),
        "{err:?}"
    );
    assert!(!store.has(&claimed));
    assert!(files_under(store.dir())?.is_empty());
    assert_eq!(store.total_bytes(), 0);
    Ok(())
}

#[test]
fn corrupt_stored_chunk_is_detected_and_removable() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    // Data-driven: each way a chunk file can go bad on disk.
    let damage: [(&str, Damage); 3] = [
        ("bit flip", |d| d[10] ^= 1),
        ("truncated", |d| d.truncate(5)),
        ("oversized", |d| d.resize(MAX_CHUNK_BYTES + 2, 0)),
    ];
    for (i, (what, damage)) in damage.into_iter().enumerate() {
        let data = bytes(10 + i as u64, 100);
        let id = ChunkId::of(&data);
        store.put(&id, &data)?;
        let mut bad = data.clone();
        damage(&mut bad);
        fs::write(store.chunk_path(&id), &bad)?;
        match store.get(&id) {
            Err(ChunkError::Corrupt { id: got, path }) => {
                assert_eq!((got, path), (id, store.chunk_path(&id)), "{what}");
            }
            other => panic!("{what}: corrupt chunk read as {other:?}"),
        }
        assert!(store.remove(&id)?, "{what}");
        assert!(!store.has(&id), "{what}");
        assert!(!store.remove(&id)?, "{what}: second remove");
    }
    Ok(())
}

#[test]
fn missing_lists_exactly_the_absent_ids() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let id = |n: u8| ChunkId::of(&[n]);
    for n in [1, 3] {
        store.put(&id(n), &[n])?;
    }
    let cases: &[(&[u8], &[u8])] = &[
        (&[], &[]),
        (&[1, 3], &[]),
        (&[2], &[2]),
        (&[1, 2, 3, 4], &[2, 4]),
        (&[4, 2, 4, 1, 2], &[4, 2]), // first-seen order, each once
    ];
    for &(asked, want) in cases {
        let asked: Vec<_> = asked.iter().map(|&n| id(n)).collect();
        let want: Vec<_> = want.iter().map(|&n| id(n)).collect();
        assert_eq!(store.missing(&asked), want, "asked {asked:?}");
    }
    Ok(())
}

#[test]
fn second_put_file_stores_nothing_new() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let path = write(tmp.path(), "prog", &bytes(5, 3 * MB + 123))?;
    let first = store.put_file(&path, |_, _| {})?;
    let files = files_under(store.dir())?;
    let used = store.total_bytes();
    assert_eq!(files.len(), first.chunk_ids().len());
    assert_eq!(used, first.size());
    assert!(store.missing(&first.chunk_ids()).is_empty());

    let second = store.put_file(&path, |_, _| {})?;
    assert_eq!(first, second);
    assert_eq!(files_under(store.dir())?, files);
    assert_eq!(store.total_bytes(), used);
    Ok(())
}

#[test]
fn progress_is_monotonic_and_complete() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let path = write(tmp.path(), "f", &bytes(6, 3 * MB))?;
    let mut seen = Vec::new();
    let manifest = store.put_file(&path, |done, total| seen.push((done, total)))?;
    let mut seen_back = Vec::new();
    store.assemble(&manifest, &tmp.path().join("out"), |d, t| {
        seen_back.push((d, t))
    })?;
    for seen in [seen, seen_back] {
        assert_eq!(seen.first(), Some(&(0, manifest.size())));
        assert_eq!(seen.last(), Some(&(manifest.size(), manifest.size())));
        assert!(
            seen.windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1),
            "{seen:?}"
        );
        assert_eq!(seen.len(), manifest.chunks().len() + 1);
    }
    Ok(())
}

#[test]
fn assemble_reproduces_the_file_and_refuses_when_chunks_are_missing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let data = bytes(7, 5 * MB);
    let src = write(tmp.path(), "src", &data)?;
    let manifest = store.put_file(&src, |_, _| {})?;
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir)?;
    let dest = out_dir.join("copy");
    store.assemble(&manifest, &dest, |_, _| {})?;
    assert!(fs::read(&dest)? == data, "assembled file differs");

    let gone = [manifest.chunk_ids()[1], manifest.chunk_ids()[3]];
    for id in &gone {
        store.remove(id)?;
    }
    let dest2 = out_dir.join("copy2");
    match store.assemble(&manifest, &dest2, |_, _| {}) {
        Err(ChunkError::Missing(ids)) => assert_eq!(ids, gone),
        other => panic!("assembled with chunks missing: {other:?}"),
    }
    assert_eq!(
        files_under(&out_dir)?,
        vec![dest],
        "no partial or temp file left"
    );
    Ok(())
}

#[test]
fn assemble_fails_cleanly_on_a_corrupt_chunk() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let src = write(tmp.path(), "src", &bytes(8, 2 * MB))?;
    let manifest = store.put_file(&src, |_, _| {})?;
    let last = *manifest.chunk_ids().last().ok_or("no chunks")?;
    fs::write(store.chunk_path(&last), b"garbage")?;
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir)?;
    let err = store.assemble(&manifest, &out_dir.join("copy"), |_, _| {});
    assert!(
        matches!(err, Err(ChunkError::Corrupt { id, .. }) if id == last),
        "{err:?}"
    );
    assert!(
        files_under(&out_dir)?.is_empty(),
        "no partial or temp file left"
    );
    Ok(())
}

/// A reader that serves `data`, then fails with an I/O error if `fail` is set.
struct Source {
    data: io::Cursor<Vec<u8>>,
    fail: bool,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 if self.fail => Err(io::Error::other("disk went away")),
            n => Ok(n),
        }
    }
}

#[test]
fn a_stream_that_differs_from_its_expected_length_is_reported() -> TestResult {
    let len = 2 * MB;
    // (what, bytes served, expected length, read error at the end, expected outcome)
    let cases = [
        ("exact", len, len, false, "ok"),
        ("ends early", len - 1, len, false, "changed"),
        (
            "ends very early",
            MIN_CHUNK_BYTES / 2,
            len,
            false,
            "changed",
        ),
        ("runs long", len + 1, len, false, "changed"),
        ("runs much longer", 3 * len, len, false, "changed"),
        ("read error", len / 2, len, true, "io"),
        ("empty", 0, 0, false, "ok"),
    ];
    for (what, served, expected, fail, want) in cases {
        let source = Source {
            data: io::Cursor::new(bytes(9, served)),
            fail,
        };
        let mut chunker = Chunker::new(source, expected as u64, "label")?;
        let mut yielded = 0u64;
        let outcome = loop {
            match chunker.next_chunk() {
                Ok(Some(chunk)) => yielded += chunk.data().len() as u64,
                Ok(None) => break chunker.finish(),
                Err(err) => {
                    assert!(
                        chunker.next_chunk().is_err(),
                        "{what}: went on after an error"
                    );
                    assert!(
                        chunker.next().is_none(),
                        "{what}: iterator goes on after an error"
                    );
                    break Err(err);
                }
            }
        };
        // No byte past the expected end is ever handed out (it would be stored and shipped).
        assert!(
            yielded <= expected as u64,
            "{what}: yielded {yielded} of {expected} bytes"
        );
        let got = match outcome {
            Ok(m) => {
                assert_eq!(m.size(), expected as u64, "{what}");
                "ok"
            }
            Err(ChunkError::Changed { path, .. }) if path == Path::new("label") => "changed",
            Err(ChunkError::Io { path, .. }) if path == Path::new("label") => "io",
            Err(other) => panic!("{what}: {other}"),
        };
        assert_eq!(got, want, "{what}");
    }
    Ok(())
}

#[test]
fn a_file_changed_or_removed_while_chunking_is_reported() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Data-driven: what happens to the file after the first chunk has been read.
    let mutations: [(&str, Mutation); 4] = [
        ("truncated", |p| {
            fs::OpenOptions::new()
                .write(true)
                .open(p)?
                .set_len(MB as u64)
        }),
        ("grown", |p| {
            fs::OpenOptions::new()
                .append(true)
                .open(p)
                .and_then(|mut f| io::Write::write_all(&mut f, &[1; 10]))
        }),
        ("removed", |p| fs::remove_file(p)),
        ("rewritten same size", |p| fs::write(p, bytes(99, 10 * MB))),
    ];
    for (what, mutate) in mutations {
        let path = write(tmp.path(), what, &bytes(10, 10 * MB))?;
        let mut chunker = Chunker::open(&path)?;
        chunker.next_chunk()?.ok_or("no first chunk")?;
        mutate(&path)?;
        // Make sure a same-size rewrite is visible through the modification time even on
        // filesystems with coarse timestamps.
        if what == "rewritten same size" {
            let f = fs::File::options().write(true).open(&path)?;
            f.set_modified(std::time::SystemTime::UNIX_EPOCH)?;
        }
        match chunker.finish() {
            Err(ChunkError::Changed { path: got, .. }) => assert_eq!(got, path, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn put_file_of_a_changing_or_absent_file_leaves_the_store_unchanged() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path())?;
    let path = write(tmp.path(), "f", &bytes(11, 10 * MB))?;
    let mut calls = 0;
    let err = store.put_file(&path, |_, _| {
        calls += 1;
        if calls == 2 {
            // After the first chunk is stored: cut the file short.
            let _ = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(10));
        }
    });
    assert!(matches!(err, Err(ChunkError::Changed { .. })), "{err:?}");
    assert!(
        files_under(store.dir())?.is_empty(),
        "chunks of a failed put_file remain"
    );
    assert_eq!(store.total_bytes(), 0);

    let absent = tmp.path().join("absent");
    let err = store.put_file(&absent, |_, _| {});
    assert!(
        matches!(&err, Err(ChunkError::Io { path, .. }) if *path == absent),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn store_cap_is_enforced_and_size_survives_reopen() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, 250)?;
    let chunk = |n: u64| {
        let d = bytes(n, 100);
        (ChunkId::of(&d), d)
    };
    for n in 0..2 {
        let (id, d) = chunk(n);
        store.put(&id, &d)?;
    }
    let (id, d) = chunk(2);
    match store.put(&id, &d) {
        Err(ChunkError::StoreFull {
            needed_bytes: 100,
            used_bytes: 200,
            cap_bytes: 250,
        }) => {}
        other => panic!("over-cap put: {other:?}"),
    }
    assert!(!store.has(&id));
    assert_eq!(store.total_bytes(), 200);
    drop(store);

    // A crash mid-write leaves a temp file: reopening removes it and recounts the chunks.
    let (id0, _) = chunk(0);
    let stale = dir.join(&id0.to_string()[..2]).join(".tmp-left-by-crash");
    fs::write(&stale, b"partial")?;
    let store = Store::open(&dir, 250)?;
    assert_eq!(store.total_bytes(), 200);
    assert!(!stale.exists());
    store.remove(&id0)?;
    assert_eq!(store.total_bytes(), 100);
    assert!(store.put(&id, &d)?, "fits after a remove");
    Ok(())
}

#[test]
fn manifest_round_trips_and_rejects_bad_input() -> TestResult {
    let good = manifest_of(&bytes(12, 3 * MB))?;
    let enc = good.encode();
    assert_eq!(enc[0], MANIFEST_VERSION);
    let back = Manifest::decode(&enc)?;
    assert_eq!(back, good);
    assert_eq!(back.id(), ChunkId::of(&enc));

    let id = ChunkId::of(b"x");
    let body = |size: u64, chunks: &[(ChunkId, u32)]| -> Result<Vec<u8>, postcard::Error> {
        let mut v = vec![MANIFEST_VERSION];
        v.extend(postcard::to_allocvec(&(size, chunks))?);
        Ok(v)
    };
    let mut trailing = enc.clone();
    trailing.push(0);
    let mut wrong_version = enc.clone();
    wrong_version[0] = MANIFEST_VERSION + 1;
    // A count prefix claiming u32::MAX chunks with nothing behind it.
    let mut huge_count = vec![MANIFEST_VERSION, 0];
    huge_count.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "Empty"),
        ("wrong version", wrong_version, "Version"),
        ("truncated", enc[..enc.len() - 1].to_vec(), "Decode"),
        ("trailing byte", trailing, "Trailing"),
        ("random garbage", bytes(13, 200), "Version"),
        (
            "garbage body",
            [&[MANIFEST_VERSION][..], &bytes(14, 200)].concat(),
            "Decode",
        ),
        ("huge count", huge_count, "Decode"),
        (
            "too long",
            vec![MANIFEST_VERSION; MAX_MANIFEST_BYTES + 1],
            "TooLong",
        ),
        ("zero-length chunk", body(0, &[(id, 0)])?, "BadChunkLen"),
        (
            "oversized chunk",
            body(5 << 20, &[(id, 5 << 20)])?,
            "BadChunkLen",
        ),
        ("size mismatch", body(11, &[(id, 10)])?, "SizeMismatch"),
        ("empty file", body(0, &[])?, "ok"),
    ];
    for (what, input, want) in cases {
        let got = match Manifest::decode(&input) {
            Ok(_) => "ok",
            Err(ManifestError::Empty) => "Empty",
            Err(ManifestError::Version(_)) => "Version",
            Err(ManifestError::TooLong { .. }) => "TooLong",
            Err(ManifestError::Decode(_)) => "Decode",
            Err(ManifestError::Trailing(_)) => "Trailing",
            Err(ManifestError::TooManyChunks(_)) => "TooManyChunks",
            Err(ManifestError::BadChunkLen { .. }) => "BadChunkLen",
            Err(ManifestError::SizeMismatch { .. }) => "SizeMismatch",
        };
        assert_eq!(got, want, "{what}");
    }
    Ok(())
}

#[test]
fn error_messages_name_what_they_are_about() -> TestResult {
    let id = ChunkId::of(b"a");
    let cases = [
        (ChunkError::NotFound(id).to_string(), id.to_string()),
        (
            ChunkError::Missing(vec![id, id]).to_string(),
            format!("2 chunk(s) missing, first {id}"),
        ),
        (
            ChunkError::Changed {
                path: "/bin/prog".into(),
                detail: "it was removed".into(),
            }
            .to_string(),
            "/bin/prog changed while it was being read (it was removed)".to_owned(),
        ),
    ];
    for (message, want) in cases {
        assert!(message.contains(&want), "{message:?} lacks {want:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn assemble_of_put_file_is_identity(seed in any::<u64>(), len in 0usize..(MB + MB / 2)) {
        let tmp = tempfile::tempdir()?;
        let store = store(tmp.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let data = bytes(seed, len);
        let src = write(tmp.path(), "src", &data)?;
        let manifest = store.put_file(&src, |_, _| {}).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(manifest.size(), len as u64);
        let dest = tmp.path().join("dest");
        store.assemble(&manifest, &dest, |_, _| {}).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(fs::read(&dest)? == data);
    }
}
