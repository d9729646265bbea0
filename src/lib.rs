//! iptproxy: keeps the kernel's iptables rules equal to the services described in TOML files,
//! with the smallest change each time.
//!
//! The flow: [`config`] -> [`render`] -> desired [`ruleset`]; [`save`] parses the live one
//! and [`compare`] diffs it with the config as it streams; [`plan`] diffs two rulesets and
//! [`incremental`] two configs; [`edits`] orders the changes safely; [`restore`] writes the
//! `iptables-restore` input and [`apply`] runs it in bounded transactions through [`exec`]
//! ([`backend`] picks which iptables); [`reconcile`] strings one pass together; [`report`]
//! shows a plan; [`confirm`] rolls back an apply nobody confirmed; [`cli`] is the command
//! line. [`daemon`] is `iptproxyd`, which keeps the rules equal to the files; [`status`]
//! shows what it did and the traffic per service.

pub mod apply;
pub mod backend;
pub mod chains;
pub mod cli;
pub mod compare;
pub mod config;
pub mod confirm;
pub mod conntrack;
pub mod daemon;
pub mod edits;
pub mod exec;
pub mod incremental;
pub mod logging;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod report;
pub mod restore;
pub mod ruleset;
pub mod save;
pub mod spec;
pub mod status;
#[cfg(test)]
mod testing;
