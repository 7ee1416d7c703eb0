//! The seam between a node and its subsystems.
//!
//! A subsystem (jobs, and later the memory fabric, agents, models) is a crate that implements
//! [`Subsystem`]. The node lists the subsystems it runs; for each it registers the state
//! machine that keeps the subsystem's replicated records (before the control plane starts),
//! the event kinds it emits, and then starts it with a [`Host`]: the handles it may use (the
//! link, the control plane, the authoriser, the event bus, its data directory, the cluster
//! view, a clock). A started subsystem ([`RunningSubsystem`]) contributes its cluster RPC
//! methods (under its own prefixes), its HTTP routes (one axum router, each handler naming the
//! right it needs first) and its dashboard panel. Adding a subsystem touches its own crate and
//! the one line where the node's binary lists them.
//!
//! This crate holds only the seam and what every subsystem shares: the one authoriser
//! ([`Authz`]), the event bus ([`EventBus`]), the HTTP answer helpers ([`api`]). It must never
//! know a particular subsystem.

pub mod api;
mod authz;
mod cluster;
mod denials;
mod events;
mod subsystem;

pub use authz::{Actor, Authz, Caller, Permission, STREAM_RECHECK, verify_audit, while_allowed};
pub use cluster::{Clock, ClusterView, SystemClock};
pub use events::EventBus;
pub use noodle_caps::Request;
pub use subsystem::{
    Host, Panel, RunningSubsystem, StartError, Subsystem, SubsystemFuture, not_found,
};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds as `2023-11-14 22:13:20 UTC`, as the dashboard and the CLI show times. UTC
/// so that a render does not depend on the machine's time zone; the calendar arithmetic is the
/// audit log's ([`noodle_audit::format_utc_ms`], `2023-11-14T22:13:20.999Z`).
pub fn format_utc_ms(unix_ms: u64) -> String {
    let rfc3339 = noodle_audit::format_utc_ms(unix_ms);
    let seconds = rfc3339.split_once('.').map_or(rfc3339.as_str(), |(s, _)| s);
    format!("{} UTC", seconds.replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_time() {
        assert_eq!(super::format_utc_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::format_utc_ms(1_700_000_000_999),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(
            super::format_utc_ms(951_782_400_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
