#![no_main]
//! Node-table gossip as a member receives it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = postcard::from_bytes::<noodle_discovery::SyncMessage>(data) {
        let me = noodle_discovery::NodeInfo {
            id: "me".into(),
            name: "me".into(),
            addr: "127.0.0.1:1".parse().expect("literal address"),
            version: 1,
            software: String::new(),
            resources: Default::default(),
            labels: Default::default(),
            links: Vec::new(),
            control_incarnation: 0,
            job_slots: 1,
            control_up: true,
        };
        let mut table = noodle_discovery::NodeTable::new(me);
        let _ = table.newer_than(&msg.entries);
        table.merge(msg.entries);
        assert!(table.iter().count() <= noodle_discovery::table::NODES_MAX);
    }
});
