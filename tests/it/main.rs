//! Integration tests: the real binaries, the real iptables, in throwaway namespaces.
//! Each module is one area; `harness` is the bench they share.

mod bench;
mod cli;
mod confirm;
mod core;
mod daemon;
mod datapath;
mod faults;
mod fixtures;
mod golden;
mod harness;
mod hostile;
mod injection;
mod packaging;
