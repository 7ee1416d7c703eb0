#![no_main]
//! Records read back from disk or a peer: chunk manifests, audit entries and checkpoints.
//! Decoding never panics; a manifest round-trips, and audit records (strictly canonical)
//! encode back to the very bytes they were decoded from.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = noodle_chunks::Manifest::decode(data) {
        let again = noodle_chunks::Manifest::decode(&m.encode()).expect("re-decodes");
        assert_eq!(again.id(), m.id());
    }
    if let Ok(e) = noodle_audit::Entry::decode(data) {
        assert_eq!(e.encode(), data);
    }
    if let Ok(c) = noodle_audit::Checkpoint::decode(data) {
        assert_eq!(c.encode(), data);
    }
});
