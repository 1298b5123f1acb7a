//! Kernel UDP sockets for the socket data plane: `SO_REUSEPORT` groups (one socket per worker
//! per listen address, so the kernel spreads flows over workers without a shared lock) and
//! batched IO with `recvmmsg(2)` / `sendmmsg(2)` (one syscall per batch instead of per datagram).
//!
//! Sockets bound to a wildcard address (`0.0.0.0`, `[::]`) get `IP_PKTINFO` /
//! `IPV6_RECVPKTINFO`: each datagram's real local address is reported to the engine, and a
//! reply is sent with that address as its source (`ipi_spec_dst` / `ipi6_addr`), so a
//! multi-homed host answers from the address the phone talked to (NATs and firewalls expect
//! that). Sockets bound to one address need neither.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 64;
/// Receive slot size. SIP over UDP stays well below this (RFC 3261 §18.1.1 moves requests
/// larger than the path MTU minus 200 bytes to TCP); longer datagrams are truncated and dropped.
pub const SLOT: usize = 9216;
/// Socket buffer we ask for; a storm is absorbed by our fair queues, this only smooths bursts.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Keep [::]:5060 and 0.0.0.0:5060 independent; both may be listed.
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps at net.core.rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    if addr.ip().is_unspecified() {
        let (level, opt) = if addr.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        let one: libc::c_int = 1;
        // SAFETY: plain int option on our socket.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                level,
                opt,
                &one as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One bound socket of a worker.
pub struct BoundSocket {
    pub socket: UdpSocket,
    /// Index into the configured listen addresses.
    pub listen: usize,
    /// The fair-queue class the kernel steers into this socket (`None`: unsteered, any class).
    pub class: Option<usize>,
}

/// Binds the sockets of every worker, indexed `[worker]`. Each listen address gets one
/// `SO_REUSEPORT` group. With `steering = Some((prefixes, classes))` the group holds one socket
/// per (class, worker) and a [`crate::steer`] program sends each datagram to its source's
/// class; if the program cannot be built or attached, that address falls back to one
/// unsteered socket per worker (logged). Port 0 is resolved by the first bind and reused for
/// the rest, so every socket of a group serves the same port.
pub fn bind_listen(
    listen: &[SocketAddr],
    workers: usize,
    steering: Option<(&[(ipnet::IpNet, usize)], usize)>,
) -> io::Result<Vec<Vec<BoundSocket>>> {
    let mut out: Vec<Vec<BoundSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let ctx = |addr: SocketAddr| {
        move |e: io::Error| io::Error::new(e.kind(), format!("bind {addr}: {e}"))
    };
    for (li, &addr) in listen.iter().enumerate() {
        ensure_port_free(addr).map_err(ctx(addr))?;
        if let Some((prefixes, classes)) = steering {
            match bind_steered(addr, workers, prefixes, classes) {
                Ok(socks) => {
                    for (i, s) in socks.into_iter().enumerate() {
                        out[i % workers].push(BoundSocket {
                            socket: s,
                            listen: li,
                            class: Some(i / workers),
                        });
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(ctx(addr)(e)),
                Err(e) => tracing::warn!(
                    listen = %addr,
                    error = %e,
                    "per-group kernel steering unavailable; one socket per worker (a flood can then \
                     overflow the shared receive buffer)"
                ),
            }
        }
        let first = bind_one(addr).map_err(ctx(addr))?;
        let actual = first.local_addr()?;
        out[0].push(BoundSocket {
            socket: first,
            listen: li,
            class: None,
        });
        for w in out.iter_mut().skip(1) {
            w.push(BoundSocket {
                socket: bind_one(actual).map_err(ctx(actual))?,
                listen: li,
                class: None,
            });
        }
    }
    Ok(out)
}

/// `SO_REUSEPORT` would let a second process (say, a forgotten instance whose state_dir was
/// wiped) silently share the port and take part of the traffic. A plain bind fails if anyone
/// holds the port, with or without reuseport, so probe with one first.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    match s.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use (another turnstile or SIP server is listening on it)",
        )),
        Err(e) => Err(e),
    }
}

/// `classes × workers` sockets in one reuseport group, in group order (index = class ×
/// workers + worker, the order the kernel keeps them in), with the steering program attached.
fn bind_steered(
    addr: SocketAddr,
    workers: usize,
    prefixes: &[(ipnet::IpNet, usize)],
    classes: usize,
) -> io::Result<Vec<UdpSocket>> {
    let mut prog = crate::steer::program(addr.is_ipv6(), prefixes, classes - 1, workers)
        .ok_or_else(|| io::Error::other("too many prefixes for the steering program"))?;
    let first = bind_one(addr)?;
    let actual = first.local_addr()?;
    let mut socks = vec![first];
    for _ in 1..classes * workers {
        socks.push(bind_one(actual)?);
    }
    crate::steer::attach(fd(&socks[0]), &mut prog)?;
    Ok(socks)
}

/// Binds `workers` unsteered sockets per listen address, indexed `[worker][listen index]`.
pub fn bind_reuseport_groups(
    listen: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<UdpSocket>>> {
    Ok(bind_listen(listen, workers, None)?
        .into_iter()
        .map(|w| w.into_iter().map(|b| b.socket).collect())
        .collect())
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large enough.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reusable `recvmmsg` state. Holds raw pointers into its own heap buffers (stable across
/// moves of the struct), so it is created and used on one thread.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Control (cmsg) space per message, u64 for cmsghdr alignment. Only reached through the
    /// raw pointers in `hdrs`; owned here so it lives as long as they do.
    #[allow(dead_code)]
    ctrl: Vec<u64>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        let mut bufs = vec![0u8; BATCH * SLOT];
        // SAFETY: all-zero is a valid sockaddr_storage / mmsghdr.
        let mut addrs: Vec<libc::sockaddr_storage> =
            (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: bufs[i * SLOT..].as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT,
            })
            .collect();
        let mut ctrl = vec![0u64; BATCH * CTRL_WORDS];
        let hdrs = (0..BATCH)
            .map(|i| {
                // SAFETY: zeroed mmsghdr is valid; pointers set below stay valid while the
                // Vecs live (they are never resized).
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = ctrl[i * CTRL_WORDS..].as_mut_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_controllen = CTRL_WORDS * 8;
                h
            })
            .collect();
        RecvBatch {
            bufs,
            addrs,
            ctrl,
            iovs,
            hdrs,
            n: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; `Ok(0)` when none are waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_hdr.msg_controllen = CTRL_WORDS * 8;
            h.msg_len = 0;
        }
        debug_assert_eq!(self.iovs.len(), BATCH);
        // SAFETY: hdrs point into live buffers owned by self; BATCH entries.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.n = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // ICMP errors queued on the socket (e.g. port unreachable for an earlier reply)
                // surface here; they are not fatal for a UDP server.
                _ if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(0),
                _ => Err(e),
            };
        }
        self.n = r as usize;
        Ok(self.n)
    }

    /// Datagram `i` of the last `recv`: `None` if it was truncated or has no usable source.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        self.get_with_local(i).map(|(src, data, _)| (src, data))
    }

    /// Same, plus the local (destination) address the kernel reported with `*_PKTINFO`
    /// (only on sockets bound to a wildcard address).
    pub fn get_with_local(&self, i: usize) -> Option<(SocketAddr, &[u8], Option<IpAddr>)> {
        if i >= self.n {
            return None;
        }
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let src = to_socket_addr(&self.addrs[i])?;
        let len = (h.msg_len as usize).min(SLOT);
        let local = if h.msg_hdr.msg_controllen > 0 {
            pktinfo_local(&h.msg_hdr)
        } else {
            None
        };
        Some((src, &self.bufs[i * SLOT..i * SLOT + len], local))
    }
}

/// Control space per message: enough for one in6_pktinfo (the larger) cmsg.
const CTRL_WORDS: usize = 8;

fn pktinfo_local(m: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// Writes a `*_PKTINFO` cmsg selecting `src` as the source address into `buf`; returns the
/// control length.
fn pktinfo_cmsg(src: IpAddr, buf: &mut [u64; CTRL_WORDS]) -> usize {
    // SAFETY: a msghdr pointing at our buffer lets CMSG_FIRSTHDR/CMSG_DATA address it; the
    // buffer is 64 bytes, more than CMSG_SPACE(in6_pktinfo) = 40.
    unsafe {
        let mut m: libc::msghdr = zeroed();
        m.msg_control = buf.as_mut_ptr() as *mut libc::c_void;
        m.msg_controllen = CTRL_WORDS * 8;
        let c = libc::CMSG_FIRSTHDR(&m);
        match src {
            IpAddr::V4(a) => {
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, info);
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
            }
            IpAddr::V6(a) => {
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, info);
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
            }
        }
    }
}

/// Reusable `sendmmsg` state.
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of [`SendBatch::send`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendResult {
    pub sent: usize,
    pub failed: usize,
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            // SAFETY: all-zero is valid for these C structs.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            ctrl: vec![[0u64; CTRL_WORDS]; BATCH],
            iovs: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Sends every `(dst, payload, source ip)`; a source IP (only meaningful on a socket bound
    /// to a wildcard address) goes out as a `*_PKTINFO` cmsg; a full socket buffer is waited for briefly, a datagram the
    /// kernel refuses (unreachable, bad address) is skipped and counted as failed.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        items: impl ExactSizeIterator<Item = (SocketAddr, &'a [u8], Option<IpAddr>)>,
    ) -> SendResult {
        let mut res = SendResult::default();
        let mut items = items.peekable();
        while items.peek().is_some() {
            let mut n = 0;
            for (dst, payload, src_ip) in items.by_ref().take(BATCH) {
                let len = from_socket_addr(&dst, &mut self.addrs[n]);
                self.iovs[n] = libc::iovec {
                    iov_base: payload.as_ptr() as *mut libc::c_void,
                    iov_len: payload.len(),
                };
                let h = &mut self.hdrs[n].msg_hdr;
                h.msg_name = &mut self.addrs[n] as *mut _ as *mut libc::c_void;
                h.msg_namelen = len;
                h.msg_iov = &mut self.iovs[n];
                h.msg_iovlen = 1;
                match src_ip {
                    Some(ip) if ip.is_ipv6() == dst.is_ipv6() => {
                        h.msg_controllen = pktinfo_cmsg(ip, &mut self.ctrl[n]) as _;
                        h.msg_control = self.ctrl[n].as_mut_ptr() as *mut libc::c_void;
                    }
                    _ => {
                        h.msg_control = std::ptr::null_mut();
                        h.msg_controllen = 0;
                    }
                }
                h.msg_flags = 0;
                n += 1;
            }
            let mut off = 0;
            let mut waits = 0;
            while off < n {
                // SAFETY: hdrs[off..n] point at live addresses and payload slices borrowed for 'a.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[off..].as_mut_ptr(),
                        (n - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r > 0 {
                    off += r as usize;
                    res.sent += r as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock if waits < 10 => {
                        waits += 1;
                        let mut p = libc::pollfd {
                            fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, 1) };
                    }
                    io::ErrorKind::WouldBlock => {
                        res.failed += n - off;
                        off = n;
                    }
                    _ => {
                        // The first datagram of the rest was refused; skip it, keep the others.
                        res.failed += 1;
                        off += 1;
                    }
                }
            }
        }
        res
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: valid pollfd array of the given length.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
}

/// The raw fd of a socket (for the batch calls).
pub fn fd(s: &UdpSocket) -> RawFd {
    s.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_round_trip() {
        for a in ["127.0.0.1:5060", "[::1]:5062", "[2001:db8::7]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: zeroed storage is valid.
            let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
            from_socket_addr(&a, &mut ss);
            assert_eq!(to_socket_addr(&ss), Some(a));
        }
    }

    #[test]
    fn wildcard_socket_reports_and_uses_the_local_address() {
        let groups = bind_reuseport_groups(&["0.0.0.0:0".parse().unwrap()], 1).unwrap();
        let port = groups[0][0].local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut rx = RecvBatch::new();
        let mut tx = SendBatch::new();
        for local in ["127.0.0.1", "127.0.0.3"] {
            let local: IpAddr = local.parse().unwrap();
            client.send_to(b"ping", (local, port)).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let (src, data, got_local) = loop {
                if rx.recv(fd(&groups[0][0])).unwrap() > 0 {
                    let (s, d, l) = rx.get_with_local(0).unwrap();
                    break (s, d.to_vec(), l);
                }
                assert!(std::time::Instant::now() < deadline, "nothing received");
                poll_readable(&[fd(&groups[0][0])], 10);
            };
            assert_eq!(data, b"ping");
            assert_eq!(
                got_local,
                Some(local),
                "pktinfo gives the address the client used"
            );
            // The reply leaves from that same address.
            let res = tx.send(
                fd(&groups[0][0]),
                [(src, &b"pong"[..], got_local)].into_iter(),
            );
            assert_eq!(res.sent, 1);
            let mut buf = [0u8; 16];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"pong");
            assert_eq!(from, SocketAddr::new(local, port));
        }
    }

    #[test]
    fn a_port_held_by_another_reuseport_group_is_refused() {
        let held = bind_reuseport_groups(&["127.0.0.1:0".parse().unwrap()], 1).unwrap();
        let addr = held[0][0].local_addr().unwrap();
        let e = bind_listen(&[addr], 1, None)
            .err()
            .expect("must refuse a port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("already in use"), "{e}");
        drop(held);
        assert!(bind_listen(&[addr], 2, None).is_ok());
    }

    #[test]
    fn steered_group_separates_classes_in_the_kernel() {
        let prefixes = vec![("127.0.0.2/32".parse().unwrap(), 0usize)];
        let workers =
            bind_listen(&["127.0.0.1:0".parse().unwrap()], 2, Some((&prefixes, 2))).unwrap();
        assert_eq!(workers.len(), 2);
        assert!(
            workers.iter().all(|w| w.len() == 2),
            "one socket per class per worker"
        );
        let addr = workers[0][0].socket.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.2:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..20u8 {
            a.send_to(&[b'a', i], addr).unwrap();
            b.send_to(&[b'b', i], addr).unwrap();
        }
        let mut rx = RecvBatch::new();
        let mut seen = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.values().map(Vec::len).sum::<usize>() < 40
            && std::time::Instant::now() < deadline
        {
            for w in &workers {
                for s in w {
                    let n = rx.recv(fd(&s.socket)).unwrap();
                    for i in 0..n {
                        let (_, data) = rx.get(i).unwrap();
                        seen.entry(s.class.unwrap())
                            .or_insert_with(Vec::new)
                            .push(data[0]);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen.get(&0).map(Vec::len), Some(20));
        assert!(
            seen[&0].iter().all(|&c| c == b'a'),
            "127.0.0.2 steered to class 0"
        );
        assert_eq!(seen.get(&1).map(Vec::len), Some(20));
        assert!(
            seen[&1].iter().all(|&c| c == b'b'),
            "others to the unclassified class"
        );
        assert!(crate::steer::kernel_drops(fd(&workers[0][0].socket)).is_some());
    }

    #[test]
    fn steering_program_runs_in_the_kernel_for_ipv6() {
        if UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("skipping: no IPv6 loopback");
            return;
        }
        for (prefix, want) in [("::1/128", 0usize), ("2001:db8::/32", 1)] {
            let prefixes = vec![(prefix.parse().unwrap(), 0usize)];
            let workers =
                bind_listen(&["[::1]:0".parse().unwrap()], 1, Some((&prefixes, 2))).unwrap();
            assert!(
                workers[0].iter().all(|s| s.class.is_some()),
                "steering attached"
            );
            let addr = workers[0][0].socket.local_addr().unwrap();
            let c = UdpSocket::bind("[::1]:0").unwrap();
            for _ in 0..5 {
                c.send_to(b"x", addr).unwrap();
            }
            let mut rx = RecvBatch::new();
            let mut per = [0usize; 2];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while per.iter().sum::<usize>() < 5 && std::time::Instant::now() < deadline {
                for s in &workers[0] {
                    per[s.class.unwrap()] += rx.recv(fd(&s.socket)).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(per[want], 5, "{prefix}: {per:?}");
        }
    }

    #[test]
    fn reuseport_group_batches_loopback() {
        let groups = bind_reuseport_groups(&["127.0.0.1:0".parse().unwrap()], 2).unwrap();
        let a = groups[0][0].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(
            groups[1][0].local_addr().unwrap(),
            a,
            "port 0 resolved once for the group"
        );

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let caddr = client.local_addr().unwrap();
        let mut tx = SendBatch::new();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10 + i as usize]).collect();
        let res = tx.send(
            fd(&client),
            payloads
                .iter()
                .map(|p| (a, p.as_slice(), None))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        assert_eq!(
            res,
            SendResult {
                sent: 100,
                failed: 0
            }
        );

        // One client flow hashes to one socket of the group; read both until all 100 arrive.
        let mut rx = RecvBatch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 100 && std::time::Instant::now() < deadline {
            for w in &groups {
                let n = rx.recv(fd(&w[0])).unwrap();
                for i in 0..n {
                    let (src, data) = rx.get(i).unwrap();
                    assert_eq!(src, caddr);
                    got.push(data.to_vec());
                }
            }
            poll_readable(&[fd(&groups[0][0]), fd(&groups[1][0])], 10);
        }
        assert_eq!(got, payloads, "all datagrams, in order, intact");
    }
}
