//! TCP keepalive on every connection to PostgreSQL, as every Redis connection has (see
//! `redis::tls`): a connection whose peer went silent is closed by the kernel rather than kept
//! for the next transaction. sqlx 0.9 opens its sockets itself and has no setting for it (its
//! issue 3540), so each new connection's socket is found among the process's own: a TCP socket
//! whose peer is the server's port and whose keepalive is still off. Another of the process's
//! sockets to that port (a pool's other connection) gets the same settings, which is what it
//! should have anyway.

use std::time::Duration;

/// Keepalive with `deadline` as its idle time (probes a third of it apart, 3 of them) and
/// `TCP_USER_TIMEOUT` at it, on the sockets connected to `port` that have none yet. Returns how
/// many it set.
pub(super) fn apply(port: u16, deadline: Duration) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let idle = deadline.as_secs().max(1) as libc::c_int;
    let mut set = 0;
    for fd in fds.flatten() {
        let is_socket =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if is_socket
            && peer_port(fd) == Some(port)
            && option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE) == Some(0)
        {
            let user_timeout = deadline.as_millis().min(i32::MAX as u128) as libc::c_int;
            let ok = [
                (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
                (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
                (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (idle / 3).max(1)),
                (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
                (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout),
            ]
            .into_iter()
            .all(|(level, name, value)| set_option(fd, level, name, value));
            set += usize::from(ok);
        }
    }
    set
}

/// The peer's port of a TCP socket (IPv4 or IPv6); None for anything else.
fn peer_port(fd: i32) -> Option<u16> {
    if option(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: getpeername writes at most `len` bytes into the zeroed storage it is given; a
    // descriptor closed or reused meanwhile only makes it fail or answer for another socket.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return None;
        }
        match addr.ss_family as libc::c_int {
            libc::AF_INET => {
                let a: &libc::sockaddr_in = &*(&raw const addr).cast();
                Some(u16::from_be(a.sin_port))
            }
            libc::AF_INET6 => {
                let a: &libc::sockaddr_in6 = &*(&raw const addr).cast();
                Some(u16::from_be(a.sin6_port))
            }
            _ => None,
        }
    }
}

fn option(fd: i32, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (r == 0).then_some(value)
}

fn set_option(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt reads `len` bytes from `value`.
    unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_to_the_port_gets_keepalive_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
        assert_eq!(option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), Some(0));
        assert_eq!(apply(port, Duration::from_secs(15)), 1);
        assert_eq!(option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), Some(1));
        assert_eq!(option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), Some(15));
        assert_eq!(option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), Some(5));
        assert_eq!(
            option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            Some(15_000)
        );
        assert_eq!(apply(port, Duration::from_secs(15)), 0, "already on");
    }
}
