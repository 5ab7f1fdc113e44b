//! Cluster tests: real `holdfast serve` processes on 127.0.0.1, one file per behaviour.

mod auth;
mod authoring;
mod backup;
mod bad_input;
mod cli;
mod client;
mod console;
mod disk_full;
mod divergence;
mod elections;
mod membership;
mod mutual_exclusion;
mod observability;
mod policies;
mod python;
mod quorum;
mod restart;
mod sessions;
mod support;
mod tls;
mod torture;
mod waiting;
mod watch;
