//! holdfast-tests: the multi-node test harness (real `holdfast serve` processes on 127.0.0.1)
//! and the safety checkers the cluster tests share.

pub mod checkers;
pub mod cluster;
pub mod proxy;
