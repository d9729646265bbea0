//! Talking to systemd (`Type=notify`): readiness, reloads, stopping, a status line, and
//! the watchdog. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug)]
pub struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    pub fn from_env() -> Systemd {
        Systemd { watchdog: sd_notify::watchdog_enabled() }
    }

    /// Startup or a reload is done: the rules are what the files say (or why not is in `status`).
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins; `MONOTONIC_USEC` lets systemd tell this reload from an earlier one.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping; rules left in place")]);
    }

    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// How often to ping the watchdog, if systemd wants pings: half its timeout, as
    /// `sd_watchdog_enabled(3)` advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }
}

fn send(states: &[NotifyState]) {
    // Once is enough to say the socket is broken; the status is sent every few seconds.
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            log::warn!("cannot notify systemd ({}): {e}", std::env::var("NOTIFY_SOCKET").unwrap_or_default());
        }
    }
}
