//! Backends: a TCP and UDP server in a namespace that answers every line (TCP) or datagram
//! (UDP) with its own name and the source address it saw, `b1 198.19.10.2:41234`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::client::{PATIENCE, in_netns};
use crate::harness::Netns;

/// A running backend. Dropping it stops it (within one poll interval) and closes its sockets.
pub struct Server {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `port`, TCP and UDP, on each of `addrs`, inside `ns`.
    pub fn start(ns: &Netns, name: &'static str, addrs: &[IpAddr], port: u16) -> Server {
        let sockets = in_netns(ns, || {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for &ip in addrs {
                let at = SocketAddr::new(ip, port);
                tcp.push(TcpListener::bind(at).unwrap_or_else(|e| panic!("{name}: listen on tcp {at}: {e}")));
                udp.push(UdpSocket::bind(at).unwrap_or_else(|e| panic!("{name}: bind udp {at}: {e}")));
            }
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || serve(name, sockets.0, sockets.1, &s, &n));
        Server { stop, seen, thread: Some(thread) }
    }

    /// How many TCP connections and UDP datagrams this backend has received so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(name: &'static str, tcp: Vec<TcpListener>, udp: Vec<UdpSocket>, stop: &AtomicBool, seen: &AtomicUsize) {
    for socket in &tcp {
        let _ = socket.set_nonblocking(true);
    }
    for socket in &udp {
        let _ = socket.set_nonblocking(true);
    }
    // Wakes up this often to notice `stop`.
    let interval = Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd> = tcp
            .iter()
            .map(|s| PollFd::new(s, PollFlags::IN))
            .chain(udp.iter().map(|s| PollFd::new(s, PollFlags::IN)))
            .collect();
        if poll(&mut fds, Some(&interval)).is_err() {
            continue; // EINTR
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        for (listener, _) in tcp.iter().zip(&ready).filter(|(_, r)| **r) {
            if let Ok((stream, peer)) = listener.accept() {
                seen.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || converse(name, stream, peer));
            }
        }
        for (socket, _) in udp.iter().zip(&ready[tcp.len()..]).filter(|(_, r)| **r) {
            let mut buf = [0; 512];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(format!("{name} {peer}\n").as_bytes(), peer);
            }
        }
    }
}

/// Answers each line on one connection until the client closes it (or goes silent for
/// longer than any test would).
fn converse(name: &str, stream: TcpStream, peer: SocketAddr) {
    let answer = format!("{name} {peer}\n");
    let (Ok(()), Ok(mut writer)) = (stream.set_read_timeout(Some(PATIENCE * 4)), stream.try_clone()) else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        match line {
            Ok(_) if writer.write_all(answer.as_bytes()).is_ok() => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}
