//! Kernel-level IP Group steering for the socket data plane: a classic-BPF
//! `SO_ATTACH_REUSEPORT_CBPF` program picks, for every datagram, the socket of
//! (its source's IP Group, a worker) inside the `SO_REUSEPORT` group of a listen address.
//!
//! Why: with one socket per worker, a flooding group fills the shared kernel receive buffer
//! and the kernel drops everyone's datagrams alike before our fair queues ever see them.
//! With one socket per (group, worker), each group has its own kernel buffer: a flood
//! overflows its own socket only, and the worker reads a group's socket only while that
//! group's fair queue has room, so the excess is dropped by the kernel without costing us a
//! read. This is the socket-mode equivalent of XDP steering into per-class AF_XDP rings.
//!
//! The program (socket index = class × workers + worker):
//! ```text
//!   ldh [net+sport]; tax; ld [net+src]; st M[0]; (v6: 3 more words into M[1..3])
//!   xor x; mod #workers; tax                  ; X = worker = (src ^ sport) % workers
//!   per prefix, longest first:                ; first match = longest prefix match
//!     ld M[i]; and #mask; jeq #net, 0, skip   ; (one triple per word the prefix covers)
//!     txa; add #class*workers; ret a
//!   txa; add #unclassified*workers; ret a
//! ```
//! Every jump is short (within one prefix block), so the u8 jump offsets of classic BPF are
//! never exceeded however many prefixes there are. Offsets assume no IPv4 options / IPv6
//! extension headers (SIP over UDP never carries them in practice); such a datagram only
//! lands on a wrong worker or class socket, and userspace classification, which is
//! authoritative, still queues it correctly.

use ipnet::IpNet;
use std::io;
use std::os::fd::RawFd;

/// Offset of the network header in classic BPF loads (`SKF_NET_OFF`).
const NET: u32 = (-0x100000i32) as u32;
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// Leave room below the kernel's BPF_MAXINSNS (4096).
const MAX_INSNS: usize = 4000;

// Opcodes (linux/filter.h): class | size | mode, class | op | src.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_MEM: u16 = 0x60; // BPF_LD | BPF_MEM
const ST: u16 = 0x02;
const ALU_AND_K: u16 = 0x04 | 0x50;
const ALU_ADD_K: u16 = 0x04;
const ALU_XOR_X: u16 = 0x04 | 0xa0 | 0x08;
const ALU_MOD_K: u16 = 0x04 | 0x90;
const JEQ_K: u16 = 0x05 | 0x10;
const RET_A: u16 = 0x06 | 0x10;
const TAX: u16 = 0x07;
const TXA: u16 = 0x07 | 0x80;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the steering program for one address family. `prefixes` are (prefix, class) of
/// that family; `unclassified` is the class of everything else. `None` if the program would
/// be too large (then the daemon runs without kernel steering).
pub fn program(
    v6: bool,
    prefixes: &[(IpNet, usize)],
    unclassified: usize,
    workers: usize,
) -> Option<Vec<libc::sock_filter>> {
    let w = workers.max(1) as u32;
    let mut p = Vec::new();
    let (src_off, words, sport_off) = if v6 {
        (8u32, 4usize, 40u32)
    } else {
        (12, 1, 20)
    };
    p.push(op(LD_H_ABS, 0, 0, NET.wrapping_add(sport_off)));
    p.push(op(TAX, 0, 0, 0));
    for i in 0..words {
        p.push(op(LD_W_ABS, 0, 0, NET.wrapping_add(src_off + 4 * i as u32)));
        p.push(op(ST, 0, 0, i as u32));
    }
    // A holds the last source word: mix it with the port for the worker choice.
    p.push(op(ALU_XOR_X, 0, 0, 0));
    p.push(op(ALU_MOD_K, 0, 0, w));
    p.push(op(TAX, 0, 0, 0));

    let mut sorted: Vec<(IpNet, usize)> = prefixes
        .iter()
        .filter(|(n, _)| n.addr().is_ipv6() == v6)
        .copied()
        .collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.0.prefix_len()));
    for (net, class) in sorted {
        let bytes: Vec<u8> = match net.network() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        let len = net.prefix_len() as u32;
        let covered = len.div_ceil(32) as usize;
        let tail = 3; // txa; add; ret
        for i in 0..covered {
            let bits = (len - 32 * i as u32).min(32);
            let mask: u32 = if bits == 32 {
                u32::MAX
            } else {
                !(u32::MAX >> bits)
            };
            let word = u32::from_be_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]);
            // Instructions after this jeq up to the end of the block: later triples + tail.
            let skip = 3 * (covered - i - 1) + tail;
            p.push(op(LD_MEM, 0, 0, i as u32));
            p.push(op(ALU_AND_K, 0, 0, mask));
            p.push(op(JEQ_K, 0, skip as u8, word & mask));
        }
        p.push(op(TXA, 0, 0, 0));
        p.push(op(ALU_ADD_K, 0, 0, class as u32 * w));
        p.push(op(RET_A, 0, 0, 0));
        if covered == 0 {
            // A /0 matches everything: nothing after it can be reached.
            break;
        }
    }
    p.push(op(TXA, 0, 0, 0));
    p.push(op(ALU_ADD_K, 0, 0, unclassified as u32 * w));
    p.push(op(RET_A, 0, 0, 0));
    (p.len() <= MAX_INSNS).then_some(p)
}

/// Attaches `prog` to the reuseport group `fd` belongs to.
pub fn attach(fd: RawFd, prog: &mut [libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: fprog points at a live program of the stated length; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Kernel drop counter of a socket (`SO_MEMINFO`, `SK_MEMINFO_DROPS`): datagrams the kernel
/// dropped because this socket's receive buffer was full.
pub fn kernel_drops(fd: RawFd) -> Option<u32> {
    const SO_MEMINFO: libc::c_int = 55;
    let mut v = [0u32; 9];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: buffer and length match.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            v.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0 && len as usize >= 9 * 4).then_some(v[libc::SK_MEMINFO_DROPS as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions we emit, over a fake packet.
    fn run(p: &[libc::sock_filter], src: std::net::IpAddr, sport: u16) -> u32 {
        let mut pkt = [0u8; 64];
        let sport_off = match src {
            std::net::IpAddr::V4(a) => {
                pkt[12..16].copy_from_slice(&a.octets());
                20
            }
            std::net::IpAddr::V6(a) => {
                pkt[8..24].copy_from_slice(&a.octets());
                40
            }
        };
        pkt[sport_off..sport_off + 2].copy_from_slice(&sport.to_be_bytes());
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0;
        loop {
            let i = &p[pc];
            pc += 1;
            let off = i.k.wrapping_sub(NET) as usize;
            match i.code {
                LD_W_ABS => a = u32::from_be_bytes(pkt[off..off + 4].try_into().unwrap()),
                LD_H_ABS => a = u16::from_be_bytes(pkt[off..off + 2].try_into().unwrap()) as u32,
                LD_MEM => a = m[i.k as usize],
                ST => m[i.k as usize] = a,
                ALU_AND_K => a &= i.k,
                ALU_ADD_K => a = a.wrapping_add(i.k),
                ALU_XOR_X => a ^= x,
                ALU_MOD_K => a %= i.k,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                TAX => x = a,
                TXA => a = x,
                RET_A => return a,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn prefixes(list: &[(&str, usize)]) -> Vec<(IpNet, usize)> {
        list.iter().map(|(n, c)| (n.parse().unwrap(), *c)).collect()
    }

    #[test]
    fn v4_longest_prefix_and_worker_spread() {
        let pf = prefixes(&[
            ("10.0.0.0/8", 0),
            ("10.1.2.0/24", 1),
            ("192.0.2.7/32", 2),
            ("2001:db8::/32", 1),
        ]);
        let p = program(false, &pf, 3, 2).unwrap();
        let class = |ip: &str, port| run(&p, ip.parse().unwrap(), port) / 2;
        assert_eq!(class("10.9.9.9", 5060), 0);
        assert_eq!(class("10.1.2.3", 5060), 1);
        assert_eq!(class("192.0.2.7", 1), 2);
        assert_eq!(class("192.0.2.8", 1), 3, "unclassified");
        // The worker part varies with the source port and stays below the worker count.
        let workers: std::collections::HashSet<u32> = (5000..5010)
            .map(|port| run(&p, "10.9.9.9".parse().unwrap(), port) % 2)
            .collect();
        assert_eq!(workers.len(), 2);
        assert!((5000..5100).all(|port| run(&p, "10.1.2.3".parse().unwrap(), port) < 8));
    }

    #[test]
    fn v6_prefixes_spanning_words() {
        let pf = prefixes(&[
            ("2001:db8::/32", 0),
            ("2001:db8:1:2::/64", 1),
            ("::1/128", 2),
            ("10.0.0.0/8", 0),
        ]);
        let p = program(true, &pf, 3, 1).unwrap();
        let class = |ip: &str| run(&p, ip.parse().unwrap(), 5060);
        assert_eq!(class("2001:db8:ffff::1"), 0);
        assert_eq!(class("2001:db8:1:2::99"), 1);
        assert_eq!(class("2001:db8:1:3::99"), 0);
        assert_eq!(class("::1"), 2);
        assert_eq!(class("::2"), 3);
        assert_eq!(class("2001:db9::1"), 3);
    }

    #[test]
    fn default_route_and_size_limit() {
        let p = program(
            false,
            &prefixes(&[("0.0.0.0/0", 1), ("10.0.0.0/8", 0)]),
            2,
            1,
        )
        .unwrap();
        assert_eq!(run(&p, "10.0.0.1".parse().unwrap(), 1), 0);
        assert_eq!(run(&p, "192.0.2.1".parse().unwrap(), 1), 1);
        let many: Vec<(IpNet, usize)> = (0..2000u32)
            .map(|i| {
                (
                    IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                        0x0a00_0000 + i,
                    ))),
                    0,
                )
            })
            .collect();
        assert!(
            program(false, &many, 1, 1).is_none(),
            "too large a table is refused, not truncated"
        );
    }
}
