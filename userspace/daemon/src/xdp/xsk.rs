//! AF_XDP sockets for one rx queue: one UMEM per queue shared (XDP_SHARED_UMEM) by one
//! socket per class, so the XDP program can steer each IP Group's packets into its own RX
//! ring while all classes of the queue share a single fill/completion ring pair.
//!
//! Built on `xdpilone` 1.x (ring mmap/offset handling, socket setup and bind; no libbpf, no
//! C). We own everything above the rings: frame accounting, batching, wakeups, replies.
//! Hand-rolling the ring setup would duplicate ~600 lines of unsafe code that xdpilone
//! already gets right; its one sharp edge — `insert(iter)` silently consumes one item too
//! many when the ring has fewer free slots than the iterator yields — is avoided by
//! only ever offering `capacity()` items.
//!
//! Frame ownership (every frame is in exactly one place, checked by `frame_accounting`):
//! - `free`: owned by us, unused;
//! - fill ring / kernel: posted for RX (`fill_out`);
//! - `held`: received, handed to the worker as `RxPacket`;
//! - tx ring / kernel: queued for TX until it shows up on the completion ring (`tx_out`),
//!   plus `tx_pending` not yet accepted by a full TX ring.
//!
//! Rings may accept fewer slots than asked (fill ring full, TX ring full): the remainder stays
//! in `free` / `tx_pending` and is retried on the next `flush`, so frames never leak.

use std::{ffi::CString, net::SocketAddr, num::NonZeroU32, os::fd::RawFd, ptr::NonNull};

use turnstile_common::{XdpMeta, MAX_CLASSES, META_MAGIC};
use xdpilone::{
    xdp::XdpDesc, CompletionQueue, FillQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem,
    UmemConfig, User,
};

use super::error::XdpError;
use super::loader::XdpDataplane;
use super::packet::{parse_udp, write_reply, UdpFrame};

const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const META_LEN: u64 = core::mem::size_of::<XdpMeta>() as u64;

/// Copy vs zero-copy: veth only supports copy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Let the kernel pick (zero-copy if the driver supports it).
    #[default]
    Auto,
    Copy,
    ZeroCopy,
}

/// Copy mode: most `sendto` kicks per socket per `flush` (each sends up to 32 descriptors).
const MAX_TX_KICKS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Frame (chunk) size, a power of two in 2048..=4096.
    pub frame_size: u32,
    /// Frames in this queue's UMEM (memory = frames × frame_size, charged to RLIMIT_MEMLOCK
    /// unless CAP_IPC_LOCK).
    pub frames: u32,
    /// Size of every ring (RX/TX per socket, fill/completion per queue), a power of two.
    pub ring_size: u32,
    /// Sockets (classes) on this queue, 1..=MAX_CLASSES.
    pub classes: u8,
    pub bind_mode: BindMode,
    /// Frames kept back from the fill ring for `send_frame` (forwarded requests).
    pub tx_reserve: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 4096,
            frames: 4096,
            ring_size: 2048,
            classes: 1,
            bind_mode: BindMode::Auto,
            tx_reserve: 256,
        }
    }
}

/// A received packet, owned by the caller until `release`d or consumed by `reply`.
/// Deliberately neither `Copy` nor `Clone`: it stands for a UMEM frame, and giving the same
/// frame back twice would hand one buffer to the kernel twice.
#[derive(Debug)]
pub struct RxPacket {
    /// UMEM address of the first packet byte.
    pub addr: u64,
    pub len: u32,
    /// The rx queue (the `XskQueue`) the frame belongs to.
    pub queue: u32,
    pub class: u8,
    /// XDP metadata, when the program wrote it (magic checked).
    pub meta: Option<XdpMeta>,
    /// Parsed headers; `None` for frames that are not unfragmented UDP over IP (should not
    /// happen behind the Turnstile program, but the worker must not trust that).
    pub udp: Option<UdpFrame>,
}

impl RxPacket {
    pub fn group_id(&self) -> Option<u16> {
        self.meta.map(|m| m.group_id)
    }
    pub fn src(&self) -> Option<SocketAddr> {
        self.udp.map(|u| u.src)
    }
    pub fn dst(&self) -> Option<SocketAddr> {
        self.udp.map(|u| u.dst)
    }
}

/// Kernel statistics of one socket (`getsockopt(XDP_STATISTICS)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// Where the frames are (sum == total frames, always).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameAccounting {
    pub total: u32,
    pub free: u32,
    pub fill_out: u32,
    pub held: u32,
    pub tx_pending: u32,
    pub tx_out: u32,
}

struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Self, XdpError> {
        // SAFETY: anonymous private mapping, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XdpError::Xsk {
                op: "mmap UMEM",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Area {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL without MAP_FAILED"),
            len,
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping created in `new`; the kernel keeps its own page references
        // until the UMEM socket closes (sockets are dropped before the area).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

struct ClassSocket {
    rx: RingRx,
    tx: RingTx,
    user: User,
    tx_pending: Vec<XdpDesc>,
}

/// AF_XDP sockets of one (interface, rx queue): `classes` sockets sharing one UMEM.
pub struct XskQueue {
    // Drop order: sockets and rings first, then the UMEM socket, then the memory.
    sockets: Vec<ClassSocket>,
    fq: FillQueue,
    cq: CompletionQueue,
    umem: Umem,
    area: Area,
    queue_id: u32,
    frame_size: u32,
    frames: u32,
    free: Vec<u64>,
    fill_out: u32,
    held: u32,
    /// Frames in TX rings / in flight, not yet on the completion ring.
    tx_out: u32,
    tx_reserve: u32,
    copy_mode_wake: bool,
}

// SAFETY: every raw pointer inside (UMEM area, ring mmaps) points to memory owned by this
// value and is only accessed through `&mut self` / `&self`; moving the whole queue to the
// worker thread that drives it is sound. It is deliberately not `Sync`.
unsafe impl Send for XskQueue {}

fn xerr(op: &'static str, e: xdpilone::Errno) -> XdpError {
    let n = e.get_raw().abs();
    match n {
        libc::EPERM => XdpError::NotPermitted { op: op.into() },
        libc::ENOBUFS | libc::ENOMEM => XdpError::Memlock {
            op: op.into(),
            errno: if n == libc::ENOBUFS {
                "ENOBUFS"
            } else {
                "ENOMEM"
            },
        },
        _ => XdpError::Xsk {
            op,
            source: std::io::Error::from_raw_os_error(n),
        },
    }
}

/// Number of rx queues of `iface` in the caller's network namespace (thread), via
/// `ETHTOOL_GCHANNELS` (rx + combined channels). sysfs is only a fallback: it shows the
/// namespace of whoever mounted /sys, not the calling thread's.
pub fn rx_queue_count(iface: &str) -> Result<u32, XdpError> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    let name = CString::new(iface).map_err(|_| XdpError::NoSuchInterface(iface.into()))?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return Err(XdpError::NoSuchInterface(iface.into()));
    }
    // SAFETY: valid C string.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(XdpError::NoSuchInterface(iface.into()));
    }
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: a plain ifreq with ifr_data pointing at `ch`, which outlives the ioctl; the
    // socket is closed before returning.
    let n = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            -1
        } else {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
                *d = *s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
            let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
            libc::close(fd);
            if r == 0 {
                (ch.rx_count + ch.combined_count) as i64
            } else {
                -1
            }
        }
    };
    if n > 0 {
        return Ok(n as u32);
    }
    let dir = format!("/sys/class/net/{iface}/queues");
    match std::fs::read_dir(&dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count()
            .max(1) as u32),
        // The interface exists (checked above) but reports no channels: one queue.
        Err(_) => Ok(1),
    }
}

impl XskQueue {
    /// Create the UMEM and `cfg.classes` sockets bound to (`iface`, `queue_id`), in the
    /// caller's network namespace. Register them with [`XskQueue::register`] afterwards.
    pub fn open(iface: &str, queue_id: u32, cfg: &XskConfig) -> Result<Self, XdpError> {
        if !(cfg.frame_size == 2048 || cfg.frame_size == 4096) {
            return Err(XdpError::InvalidParam(
                "frame_size must be 2048 or 4096".into(),
            ));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size == 0 {
            return Err(XdpError::InvalidParam(
                "ring_size must be a power of two".into(),
            ));
        }
        if cfg.classes == 0 || u32::from(cfg.classes) > MAX_CLASSES {
            return Err(XdpError::InvalidParam(format!(
                "classes must be 1..={MAX_CLASSES}"
            )));
        }
        if cfg.frames < 2 * cfg.tx_reserve.max(1) {
            return Err(XdpError::InvalidParam(
                "frames must be at least twice tx_reserve".into(),
            ));
        }
        let area = Area::new(cfg.frames as usize * cfg.frame_size as usize)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: page-aligned mapping of the right size, kept alive by `area`, which is
        // dropped after the UMEM socket (field order).
        let umem = unsafe { Umem::new(umem_cfg, slice) }.map_err(|e| xerr("register UMEM", e))?;

        let cname = CString::new(iface).map_err(|_| XdpError::NoSuchInterface(iface.into()))?;
        let mut info = IfInfo::invalid();
        info.from_name(&cname)
            .map_err(|_| XdpError::NoSuchInterface(iface.into()))?;
        info.set_queue(queue_id);

        let ring = NonZeroU32::new(cfg.ring_size).expect("checked non-zero");
        let mode_flags = match cfg.bind_mode {
            BindMode::Auto => 0,
            BindMode::Copy => XDP_COPY,
            BindMode::ZeroCopy => XDP_ZEROCOPY,
        };
        // Class 0 uses the UMEM's own socket, which also owns the fill/completion rings.
        let sock0 = Socket::with_shared(&info, &umem).map_err(|e| xerr("create socket", e))?;
        let dq = umem
            .fq_cq(&sock0)
            .map_err(|e| xerr("set up fill/completion rings", e))?;
        let mut sockets = Vec::with_capacity(cfg.classes as usize);
        for class in 0..cfg.classes {
            let sock = if class == 0 {
                Socket::with_shared(&info, &umem).map_err(|e| xerr("create socket", e))?
            } else {
                Socket::new(&info).map_err(|e| xerr("create socket", e))?
            };
            // Sockets joining with XDP_SHARED_UMEM must not pass mode flags: they inherit
            // the UMEM owner's (the kernel rejects them with EINVAL).
            let bind_flags = if class == 0 {
                XDP_USE_NEED_WAKEUP | mode_flags
            } else {
                0
            };
            let sc = SocketConfig {
                rx_size: Some(ring),
                tx_size: Some(ring),
                bind_flags,
            };
            let user = umem
                .rx_tx(&sock, &sc)
                .map_err(|e| xerr("set up rx/tx rings", e))?;
            let rx = user.map_rx().map_err(|e| xerr("map rx ring", e))?;
            let tx = user.map_tx().map_err(|e| xerr("map tx ring", e))?;
            umem.bind(&user).map_err(|e| match e.get_raw().abs() {
                libc::EOPNOTSUPP => XdpError::Xsk {
                    op: "bind (zero-copy not supported by this driver; use copy mode)",
                    source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                },
                libc::EINVAL => XdpError::Xsk {
                    op: "bind (queue id beyond the interface's queues?)",
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                },
                _ => xerr("bind", e),
            })?;
            sockets.push(ClassSocket {
                rx,
                tx,
                user,
                tx_pending: Vec::new(),
            });
        }
        let (fq, cq) = dq.into_parts();
        let free = (0..cfg.frames)
            .rev()
            .map(|i| u64::from(i) * u64::from(cfg.frame_size))
            .collect();
        let mut q = XskQueue {
            sockets,
            fq,
            cq,
            umem,
            area,
            queue_id,
            frame_size: cfg.frame_size,
            frames: cfg.frames,
            free,
            fill_out: 0,
            held: 0,
            tx_out: 0,
            tx_reserve: cfg.tx_reserve,
            // Copy mode (veth, generic XDP) always wants the TX kick; it is cheap otherwise.
            copy_mode_wake: true,
        };
        q.refill();
        Ok(q)
    }

    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub fn classes(&self) -> u8 {
        self.sockets.len() as u8
    }

    /// Socket fd of `class` (for the XSKMAP and for `poll`).
    pub fn fd(&self, class: u8) -> RawFd {
        self.sockets[class as usize].rx.as_raw_fd()
    }

    /// Put every class socket of this queue into the program's XSKMAP.
    pub fn register(&self, dp: &mut XdpDataplane) -> Result<(), XdpError> {
        for class in 0..self.classes() {
            dp.register_xsk(self.queue_id, class, Fd(self.fd(class)))?;
        }
        Ok(())
    }

    fn frame_base(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }

    /// Bytes `[addr, addr+len)` of the UMEM, if in bounds and inside one frame.
    fn umem_bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let end = addr.checked_add(len)?;
        if end > self.area.len as u64 || self.frame_base(addr) != self.frame_base(end.max(1) - 1) {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked); the kernel does not write a frame we
        // hold (frames in `held` are not in any kernel ring).
        Some(unsafe {
            std::slice::from_raw_parts(self.area.ptr.as_ptr().add(addr as usize), len as usize)
        })
    }

    fn umem_bytes_mut(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        let end = addr.checked_add(len)?;
        if end > self.area.len as u64 {
            return None;
        }
        // SAFETY: as in `umem_bytes`; `&mut self` makes the access exclusive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(addr as usize), len as usize)
        })
    }

    /// The whole received frame.
    pub fn frame(&self, p: &RxPacket) -> &[u8] {
        self.umem_bytes(p.addr, u64::from(p.len)).unwrap_or(&[])
    }

    /// The UDP payload of a received packet (empty if it did not parse).
    pub fn payload(&self, p: &RxPacket) -> &[u8] {
        match &p.udp {
            Some(u) => u.payload(self.frame(p)),
            None => &[],
        }
    }

    /// Post free frames to the fill ring (keeping `tx_reserve` back). Returns how many.
    pub fn refill(&mut self) -> u32 {
        let spare = (self.free.len() as u32).saturating_sub(self.tx_reserve);
        if spare == 0 {
            return 0;
        }
        let mut w = self.fq.fill(spare);
        let n = w.capacity().min(spare) as usize;
        let start = self.free.len() - n;
        // Offer exactly `n <= capacity` items so none is consumed without being written.
        let written = w.insert(self.free[start..].iter().copied()) as usize;
        w.commit();
        drop(w);
        self.free.truncate(self.free.len() - written);
        self.fill_out += written as u32;
        if self.fq.needs_wakeup() {
            self.fq.wake();
        }
        written as u32
    }

    /// Receive up to `max` packets from `class` into `out` (appended). Returns the count.
    pub fn recv_batch(&mut self, class: u8, max: u32, out: &mut Vec<RxPacket>) -> usize {
        if class as usize >= self.sockets.len() {
            return 0;
        }
        let mut descs = [XdpDesc::default(); 64];
        let mut total = 0u32;
        while total < max {
            let want = (max - total).min(descs.len() as u32);
            let n = {
                let sock = &mut self.sockets[class as usize];
                let mut rd = sock.rx.receive(want);
                let mut n = 0usize;
                while n < descs.len() {
                    match rd.read() {
                        Some(d) => {
                            descs[n] = d;
                            n += 1;
                        }
                        None => break,
                    }
                }
                rd.release();
                n
            };
            if n == 0 {
                break;
            }
            total += n as u32;
            self.fill_out -= n as u32;
            self.held += n as u32;
            for d in &descs[..n] {
                let meta = self.read_meta(d.addr);
                let udp = self
                    .umem_bytes(d.addr, u64::from(d.len))
                    .and_then(parse_udp);
                out.push(RxPacket {
                    addr: d.addr,
                    len: d.len,
                    queue: self.queue_id,
                    class,
                    meta,
                    udp,
                });
            }
            if (n as u32) < want {
                break;
            }
        }
        total as usize
    }

    /// Read and clear the metadata before `addr` (cleared so a stale magic from an earlier
    /// packet in the same frame can never be mistaken for this packet's).
    fn read_meta(&mut self, addr: u64) -> Option<XdpMeta> {
        if addr < META_LEN || self.frame_base(addr) != self.frame_base(addr - META_LEN) {
            return None;
        }
        let b = self.umem_bytes_mut(addr - META_LEN, META_LEN)?;
        // SAFETY: 8 readable bytes; XdpMeta is plain data, read unaligned.
        let m: XdpMeta = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        b.fill(0);
        (m.magic == META_MAGIC).then_some(m)
    }

    /// Give a received frame back (it returns to the fill ring on the next `flush`/`refill`).
    pub fn release(&mut self, p: RxPacket) {
        debug_assert_eq!(p.queue, self.queue_id, "frame released to the wrong queue");
        let base = self.frame_base(p.addr);
        self.free.push(base);
        self.held -= 1;
    }

    /// Answer `p` with `payload` (addresses, ports and MACs swapped), reusing its frame.
    /// Queued; sent on `flush`. On error the frame is released.
    pub fn reply(&mut self, p: RxPacket, payload: &[u8]) -> Result<(), XdpError> {
        debug_assert_eq!(p.queue, self.queue_id, "reply on the wrong queue");
        let Some(req) = p.udp else {
            self.release(p);
            return Err(XdpError::InvalidParam("reply to a non-UDP frame".into()));
        };
        let base = self.frame_base(p.addr);
        let fs = u64::from(self.frame_size);
        let Some(buf) = self.umem_bytes_mut(base, fs) else {
            self.release(p);
            return Err(XdpError::InvalidParam("frame out of UMEM".into()));
        };
        let Some(len) = write_reply(buf, &req, payload) else {
            self.release(p);
            return Err(XdpError::InvalidParam(format!(
                "reply of {} bytes does not fit a {fs}-byte frame",
                payload.len()
            )));
        };
        self.held -= 1;
        self.sockets[p.class as usize].tx_pending.push(XdpDesc {
            addr: base,
            len: len as u32,
            options: 0,
        });
        Ok(())
    }

    /// Send a complete Ethernet frame on `class`'s TX ring using a free frame. Returns false
    /// when no frame is free (completions are reaped first).
    pub fn send_frame(&mut self, class: u8, frame: &[u8]) -> bool {
        if class as usize >= self.sockets.len() || frame.len() > self.frame_size as usize {
            return false;
        }
        if self.free.is_empty() {
            self.reap_completions();
        }
        let Some(base) = self.free.pop() else {
            return false;
        };
        let buf = self
            .umem_bytes_mut(base, frame.len() as u64)
            .expect("free frame inside UMEM");
        buf.copy_from_slice(frame);
        self.sockets[class as usize].tx_pending.push(XdpDesc {
            addr: base,
            len: frame.len() as u32,
            options: 0,
        });
        true
    }

    /// Completed TX frames back to `free` (the completion ring is per queue, shared by all
    /// class sockets).
    fn reap_completions(&mut self) -> u32 {
        let mask = !(u64::from(self.frame_size) - 1);
        let mut n = 0u32;
        let mut rd = self.cq.complete(self.frames);
        while let Some(addr) = rd.read() {
            self.free.push(addr & mask);
            n += 1;
        }
        rd.release();
        drop(rd);
        self.tx_out = self.tx_out.saturating_sub(n);
        n
    }

    /// Push queued replies into the TX rings, kick the kernel, reap completions and refill
    /// the fill ring. Call once per worker iteration (after each TX batch).
    pub fn flush(&mut self) {
        let mut submitted = 0u32;
        for s in &mut self.sockets {
            if !s.tx_pending.is_empty() {
                let mut w = s.tx.transmit(s.tx_pending.len() as u32);
                let cap = (w.capacity() as usize).min(s.tx_pending.len());
                let written = w.insert(s.tx_pending[..cap].iter().copied()) as usize;
                w.commit();
                drop(w);
                s.tx_pending.drain(..written);
                submitted += written as u32;
            }
            // Kick while the kernel has not consumed everything. In copy mode each sendto
            // transmits a bounded batch (32 descriptors): kick again, now, while that makes
            // progress. One kick per iteration would let replies pile up in the TX ring
            // faster than they leave, and the frames they hold are the ones the shared fill
            // ring needs: under a flood of one class, every class would then lose packets
            // for want of a frame (rx_fill_ring_empty_descs). Zero-copy: only when the
            // driver asks (need_wakeup).
            if self.copy_mode_wake {
                for _ in 0..MAX_TX_KICKS {
                    let before = s.tx.pending();
                    if before == 0 {
                        break;
                    }
                    s.tx.wake(); // sendto(fd, NULL, 0, MSG_DONTWAIT)
                    if s.tx.pending() >= before {
                        break; // the device is busy; the next flush retries
                    }
                }
            } else if s.tx.pending() > 0 && s.tx.needs_wakeup() {
                s.tx.wake();
            }
        }
        self.tx_out += submitted;
        self.reap_completions();
        self.refill();
    }

    /// Wait until a class socket is readable or `timeout_ms` passes. Returns readable classes
    /// as a bit mask.
    pub fn poll(&self, timeout_ms: i32) -> u32 {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; MAX_CLASSES as usize];
        for (f, s) in fds.iter_mut().zip(&self.sockets) {
            f.fd = s.rx.as_raw_fd();
            f.events = libc::POLLIN;
        }
        let n = self.sockets.len();
        // SAFETY: `n <= MAX_CLASSES` valid pollfd entries.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
        if r <= 0 {
            return 0;
        }
        fds[..n]
            .iter()
            .enumerate()
            .filter(|(_, f)| f.revents & libc::POLLIN != 0)
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// Packets waiting in `class`'s RX ring.
    pub fn rx_available(&self, class: u8) -> u32 {
        self.sockets
            .get(class as usize)
            .map_or(0, |s| s.rx.available())
    }

    pub fn statistics(&self, class: u8) -> Result<XskStats, XdpError> {
        let s = self
            .sockets
            .get(class as usize)
            .ok_or_else(|| XdpError::InvalidParam(format!("no class {class}")))?;
        let st = s
            .user
            .statistics_v2()
            .map_err(|e| xerr("getsockopt(XDP_STATISTICS)", e))?;
        Ok(XskStats {
            rx_dropped: st.rx_dropped,
            rx_invalid_descs: st.rx_invalid_descs,
            tx_invalid_descs: st.tx_invalid_descs,
            rx_ring_full: st.rx_ring_full,
            rx_fill_ring_empty_descs: st.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: st.tx_ring_empty_descs,
        })
    }

    pub fn frame_accounting(&self) -> FrameAccounting {
        FrameAccounting {
            total: self.frames,
            free: self.free.len() as u32,
            fill_out: self.fill_out,
            held: self.held,
            tx_pending: self.sockets.iter().map(|s| s.tx_pending.len() as u32).sum(),
            tx_out: self.tx_out,
        }
    }

    /// Drop-in for tests: total frames the UMEM has (`len_frames`).
    pub fn umem_frames(&self) -> u32 {
        self.umem.len_frames()
    }
}

impl FrameAccounting {
    pub fn balanced(&self) -> bool {
        self.free + self.fill_out + self.held + self.tx_pending + self.tx_out == self.total
    }
}

struct Fd(RawFd);
impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
