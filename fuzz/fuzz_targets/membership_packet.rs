#![no_main]
//! SWIM datagrams as they arrive over QUIC.
use std::sync::Mutex;

static MEMBERSHIP: Mutex<Option<noodle_discovery::Membership>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut guard = MEMBERSHIP.lock().unwrap_or_else(|e| e.into_inner());
    let m = guard.get_or_insert_with(|| {
        let id = noodle_discovery::MemberId {
            node_id: "fuzz".into(),
            addr: "127.0.0.1:1".parse().expect("literal address"),
            bump: 1,
        };
        noodle_discovery::Membership::new(id, &Default::default(), 1).expect("default config")
    });
    let _ = m.handle_datagram(data);
    let _ = m.effects();
});
