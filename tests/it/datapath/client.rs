//! Clients: code that runs inside a namespace, and the questions clients ask the backends.
//!
//! A socket belongs to the network namespace of the thread that created it, for life. So a
//! short-lived thread enters the namespace (`setns(2)` moves only the calling thread), opens
//! the socket, and hands it back; the test's own threads never change namespace.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::harness::Netns;

/// How long a client waits for a connection or an answer. Generous on purpose: a working path
/// answers in milliseconds, so only a broken one ever waits this long, and then the test fails
/// on the error it gets, never on the time it took.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `f` on a thread inside the namespace and returns what it returns.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let path = format!("/var/run/netns/{}", ns.name);
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// What a backend answers: its name and the address the client's packets came from, as it
/// saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub backend: String,
    pub source: SocketAddr,
}

impl Answer {
    fn parse(line: &str) -> io::Result<Answer> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an answer: {line:?}"));
        let (backend, source) = line.trim_end().split_once(' ').ok_or_else(bad)?;
        Ok(Answer { backend: backend.to_string(), source: source.parse().map_err(|_| bad())? })
    }
}

/// An open TCP connection to a service, to ask again later on the same connection.
pub struct Conversation(BufReader<TcpStream>);

impl Conversation {
    pub fn ask(&mut self) -> io::Result<Answer> {
        self.0.get_mut().write_all(b"who are you?\n")?;
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed without an answer"));
        }
        Answer::parse(&line)
    }
}

/// Opens a TCP connection from inside `ns`.
pub fn open(ns: &Netns, to: SocketAddr) -> io::Result<Conversation> {
    in_netns(ns, || connect(to))
}

fn connect(to: SocketAddr) -> io::Result<Conversation> {
    let stream = TcpStream::connect_timeout(&to, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    Ok(Conversation(BufReader::new(stream)))
}

/// `n` TCP connections one after the other from inside `ns`, one question each. Each
/// connection has a source port of its own, so each is a new conntrack entry and goes through
/// the nat rules afresh.
pub fn tcp_many(ns: &Netns, to: SocketAddr, n: usize) -> io::Result<Vec<Answer>> {
    in_netns(ns, || (0..n).map(|_| connect(to)?.ask()).collect())
}

/// `n` UDP questions from inside `ns`, each from a socket (so a source port) of its own.
pub fn udp_many(ns: &Netns, to: SocketAddr, n: usize) -> io::Result<Vec<Answer>> {
    in_netns(ns, || (0..n).map(|_| udp_ask(to)).collect())
}

fn udp_ask(to: SocketAddr) -> io::Result<Answer> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("a literal address");
    let socket = UdpSocket::bind(any)?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(PATIENCE))?;
    socket.send(b"who are you?\n")?;
    let mut buf = [0; 512];
    let n = socket.recv(&mut buf)?;
    Answer::parse(&String::from_utf8_lossy(&buf[..n]))
}

/// Sends a TCP SYN from inside `ns` without waiting for the outcome: the socket is
/// non-blocking and its connect stays in flight until the returned descriptor is dropped.
/// For traffic that is meant to be dropped, where waiting would only mean waiting for a timeout.
pub fn syn(ns: &Netns, to: SocketAddr) -> io::Result<OwnedFd> {
    in_netns(ns, || {
        let family = if to.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
        let socket = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK, None)?;
        match rustix::net::connect(&socket, &to) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Ok(socket),
            Err(e) => Err(e.into()),
        }
    })
}
