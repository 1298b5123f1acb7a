//! The null responder: answers every request with `200 OK` (RFC 3261 §8.2.6 header copy)
//! and keeps no state. It measures the ceiling of the generator + kernel UDP path: no
//! registrar can be faster on this machine than the do-nothing server.
//!
//! `threads` sockets bound to the same address with SO_REUSEPORT (the kernel hashes
//! source ports over them), each drained with `recvmmsg` and answered with `sendmmsg`.

use crate::sip;
use crate::storm::RecvBufs;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct NullResponder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handles: Vec<JoinHandle<()>>,
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a fresh fd we own.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: i32 = 1;
        let sz: i32 = 8 << 20;
        let l = std::mem::size_of::<i32>() as libc::socklen_t;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const _ as *const _,
            l,
        );
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &sz as *const _ as *const _,
            l,
        ) != 0
        {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &sz as *const _ as *const _,
                l,
            );
        }
        // 100 ms receive timeout so the thread notices `stop`.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let (sa, len) = sockaddr(addr);
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is large enough for both families.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin = &mut ss as *mut _ as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as _;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                (ss, std::mem::size_of::<libc::sockaddr_in>() as _)
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut ss as *mut _ as *mut libc::sockaddr_in6;
                (*sin6).sin6_family = libc::AF_INET6 as _;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr.s6_addr = a.ip().octets();
                (ss, std::mem::size_of::<libc::sockaddr_in6>() as _)
            }
        }
    }
}

fn local_addr(fd: i32) -> std::io::Result<SocketAddr> {
    // Borrow the fd as a std socket just to read its address, without taking ownership.
    let s = std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
    s.local_addr()
}

impl NullResponder {
    /// Binds `threads` SO_REUSEPORT sockets on `addr` (port 0 picks one free port for all).
    pub fn spawn(addr: SocketAddr, threads: usize) -> std::io::Result<NullResponder> {
        let first = reuseport_socket(addr)?;
        let addr = local_addr(first.as_raw_fd())?;
        let mut fds = vec![first];
        for _ in 1..threads.max(1) {
            fds.push(reuseport_socket(addr)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let handles = fds
            .into_iter()
            .map(|fd| {
                let stop = stop.clone();
                let answered = answered.clone();
                std::thread::spawn(move || serve(fd, &stop, &answered))
            })
            .collect();
        Ok(NullResponder {
            addr,
            stop,
            answered,
            handles,
        })
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }

    /// Stops and joins the threads (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for NullResponder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(fd: OwnedFd, stop: &AtomicBool, answered: &AtomicU64) {
    let fd = fd.as_raw_fd();
    let mut rx = RecvBufs::new();
    let mut out: Vec<Vec<u8>> = (0..RecvBufs::BATCH)
        .map(|_| Vec::with_capacity(1024))
        .collect();
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(RecvBufs::BATCH);
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(RecvBufs::BATCH);
    while !stop.load(Relaxed) {
        // Blocking with SO_RCVTIMEO; MSG_WAITFORONE returns as soon as one arrived.
        let n = rx.recv_flags(fd, libc::MSG_WAITFORONE);
        if n == 0 {
            continue;
        }
        iov.clear();
        hdrs.clear();
        let mut k = 0;
        for i in 0..n {
            if !sip::null_200(rx.data(i), &mut out[k]) {
                continue;
            }
            iov.push(libc::iovec {
                iov_base: out[k].as_ptr() as *mut _,
                iov_len: out[k].len(),
            });
            let (name, namelen) = rx.name(i);
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = name as *const _ as *mut _;
            h.msg_hdr.msg_namelen = namelen;
            hdrs.push(h);
            k += 1;
        }
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        if !hdrs.is_empty() {
            // SAFETY: headers point into `out`, `iov` and `rx`, all alive here.
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
            if r > 0 {
                answered.fetch_add(r as u64, Relaxed);
            }
        }
    }
}
