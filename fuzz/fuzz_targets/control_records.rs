#![no_main]
//! Control-plane records as a member reads them back from its database or a peer: proposals
//! (Raft log entries, subsystem commands among them) and job records. Decoding and validating
//! never panic, and a job record survives a round trip.
use noodle_control::StateMachine;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = postcard::from_bytes::<noodle_control::Proposal>(data) {
        let _ = p.command.validate();
    }
    // A job command as the jobs state machine checks it before it is proposed and applied.
    let _ = noodle_jobs::machine::JobsMachine.validate(data);
    if let Ok(job) = postcard::from_bytes::<noodle_jobs::JobRecord>(data) {
        let _ = job.state.to_string();
        let bytes = postcard::to_allocvec(&job).expect("encodes");
        let again: noodle_jobs::JobRecord = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(again, job);
    }
});
