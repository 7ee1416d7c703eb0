//! End-to-end tests: real `noodle` processes, real QUIC on loopback, real files.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod bad_input;
mod bench;
mod browser;
mod cluster;
mod control;
mod dashboard;
mod fabric;
mod jobs;
mod members;
mod mount;
mod netns;
mod routes;
mod sandbox;
mod support;
