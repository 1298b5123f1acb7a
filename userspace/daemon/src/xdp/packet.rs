//! Ethernet/VLAN/IPv4/IPv6/UDP parsing and UDP reply construction for AF_XDP frames.
//!
//! RFC 894 (Ethernet framing), IEEE 802.1Q/802.1ad tags, RFC 791 (IPv4 header, §3.1
//! checksum), RFC 8200 (IPv6 header; extension headers are not emitted), RFC 768 (UDP) with
//! the pseudo-header checksum (RFC 768 for v4, RFC 8200 §8.1 for v6, mandatory there).
//!
//! Parsing never panics on wire input: every access is bounds-checked, malformed frames
//! yield `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;

/// A parsed UDP-over-IP Ethernet frame: everything needed to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Raw VLAN tags (TPID, TCI) in order, `vlan_count` of them.
    pub vlans: [(u16, u16); 2],
    pub vlan_count: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Offset of the UDP payload in the frame.
    pub payload_off: u16,
    /// Length of the UDP payload (from the UDP length field, clamped to the frame).
    pub payload_len: u16,
}

impl UdpFrame {
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let s = self.payload_off as usize;
        frame.get(s..s + self.payload_len as usize).unwrap_or(&[])
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Parse an Ethernet frame carrying unfragmented UDP over IPv4/IPv6.
pub fn parse_udp(frame: &[u8]) -> Option<UdpFrame> {
    let dst_mac: [u8; 6] = frame.get(0..6)?.try_into().ok()?;
    let src_mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    let mut ethertype = be16(frame, 12)?;
    let mut off = 14;
    let mut vlans = [(0u16, 0u16); 2];
    let mut vlan_count = 0u8;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if vlan_count as usize >= vlans.len() {
            return None;
        }
        vlans[vlan_count as usize] = (ethertype, be16(frame, off)?);
        vlan_count += 1;
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    let (src_ip, dst_ip, l4): (IpAddr, IpAddr, usize) = match ethertype {
        ETH_P_IP => {
            let vihl = *frame.get(off)?;
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || frame.len() < off + ihl {
                return None;
            }
            if frame[off + 9] != IPPROTO_UDP || be16(frame, off + 6)? & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = frame[off + 12..off + 16].try_into().ok()?;
            let d: [u8; 4] = frame[off + 16..off + 20].try_into().ok()?;
            (
                Ipv4Addr::from(s).into(),
                Ipv4Addr::from(d).into(),
                off + ihl,
            )
        }
        ETH_P_IPV6 => {
            if frame.len() < off + 40 || frame[off] >> 4 != 6 || frame[off + 6] != IPPROTO_UDP {
                return None;
            }
            let s: [u8; 16] = frame[off + 8..off + 24].try_into().ok()?;
            let d: [u8; 16] = frame[off + 24..off + 40].try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), off + 40)
        }
        _ => return None,
    };
    let sport = be16(frame, l4)?;
    let dport = be16(frame, l4 + 2)?;
    let ulen = be16(frame, l4 + 4)? as usize;
    if ulen < 8 || frame.len() < l4 + 8 {
        return None;
    }
    let payload_len = (ulen - 8).min(frame.len() - (l4 + 8));
    Some(UdpFrame {
        src_mac,
        dst_mac,
        vlans,
        vlan_count,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        payload_off: u16::try_from(l4 + 8).ok()?,
        payload_len: u16::try_from(payload_len).ok()?,
    })
}

/// Internet checksum accumulation (RFC 1071), not yet folded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Length of the frame `write_udp` produces for `payload_len` bytes.
pub fn udp_frame_len(v6: bool, vlan_count: u8, payload_len: usize) -> usize {
    14 + 4 * vlan_count as usize + if v6 { 40 } else { 20 } + 8 + payload_len
}

/// Write an Ethernet(+VLAN)/IP/UDP frame into `out`; returns its length, or `None` if `out`
/// is too small, the payload too large for one datagram, or the address families differ.
#[allow(clippy::too_many_arguments)]
pub fn write_udp(
    out: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: &[(u16, u16)],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Option<usize> {
    let v6 = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return None,
    };
    let total = udp_frame_len(v6, vlans.len() as u8, payload.len());
    if vlans.len() > 2 || out.len() < total || payload.len() > 65_000 {
        return None;
    }
    let out = &mut out[..total];
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    let mut off = 12;
    for (tpid, tci) in vlans {
        out[off..off + 2].copy_from_slice(&tpid.to_be_bytes());
        out[off + 2..off + 4].copy_from_slice(&tci.to_be_bytes());
        off += 4;
    }
    out[off..off + 2].copy_from_slice(&if v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes());
    off += 2;
    let udp_len = (8 + payload.len()) as u16;
    let l4 = if v6 { off + 40 } else { off + 20 };
    // UDP header + payload first (the pseudo-header sum needs them).
    out[l4..l4 + 2].copy_from_slice(&src.port().to_be_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&dst.port().to_be_bytes());
    out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    out[l4 + 8..].copy_from_slice(payload);
    let mut pseudo = 0u32;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = &mut out[off..off + 20];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]); // id: DF set, never fragmented
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            ip[8] = 64;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = fold(sum16(0, ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            pseudo = sum16(pseudo, &s.octets());
            pseudo = sum16(pseudo, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = &mut out[off..off + 40];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            pseudo = sum16(pseudo, &s.octets());
            pseudo = sum16(pseudo, &d.octets());
        }
        _ => return None,
    }
    pseudo += u32::from(IPPROTO_UDP) + u32::from(udp_len);
    let mut c = fold(sum16(pseudo, &out[l4..]));
    if c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// Write the reply to `req` (MACs, addresses and ports swapped, same VLAN tags) carrying
/// `payload` into `out`.
pub fn write_reply(out: &mut [u8], req: &UdpFrame, payload: &[u8]) -> Option<usize> {
    write_udp(
        out,
        req.dst_mac,
        req.src_mac,
        &req.vlans[..req.vlan_count as usize],
        req.dst,
        req.src,
        payload,
    )
}

/// Verify the IPv4 header checksum and the UDP checksum of a frame (tests and diagnostics).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let Some(p) = parse_udp(frame) else {
        return false;
    };
    let l4 = p.payload_off as usize - 8;
    let udp_len = p.payload_len as usize + 8;
    let Some(udp) = frame.get(l4..l4 + udp_len) else {
        return false;
    };
    let mut pseudo = 0u32;
    match (p.src.ip(), p.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl_off = 14 + 4 * p.vlan_count as usize;
            let ihl = (frame[ihl_off] & 0xf) as usize * 4;
            if fold(sum16(0, &frame[ihl_off..ihl_off + ihl])) != 0 {
                return false;
            }
            pseudo = sum16(sum16(pseudo, &s.octets()), &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo = sum16(sum16(pseudo, &s.octets()), &d.octets());
        }
        _ => return false,
    }
    pseudo += u32::from(IPPROTO_UDP) + udp_len as u32;
    // UDP checksum 0 over IPv4 means "not computed".
    if udp[6] == 0 && udp[7] == 0 && p.src.is_ipv4() {
        return true;
    }
    fold(sum16(pseudo, udp)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_roundtrip_with_vlans() {
        let mut buf = [0u8; 256];
        let n = write_udp(
            &mut buf,
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            &[(0x88a8, 100), (0x8100, 200)],
            sa("198.18.0.1:5060"),
            sa("198.18.0.2:40000"),
            b"SIP/2.0 200 OK\r\n\r\n",
        )
        .unwrap();
        let f = &buf[..n];
        assert!(checksums_ok(f));
        let p = parse_udp(f).unwrap();
        assert_eq!(p.vlan_count, 2);
        assert_eq!(p.vlans[1], (0x8100, 200));
        assert_eq!(p.src, sa("198.18.0.1:5060"));
        assert_eq!(p.dst, sa("198.18.0.2:40000"));
        assert_eq!(p.payload(f), b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(p.src_mac, [2, 0, 0, 0, 0, 1]);

        // The reply swaps everything back.
        let mut r = [0u8; 256];
        let m = write_reply(&mut r, &p, b"x").unwrap();
        let q = parse_udp(&r[..m]).unwrap();
        assert_eq!((q.src, q.dst), (p.dst, p.src));
        assert_eq!((q.src_mac, q.dst_mac), (p.dst_mac, p.src_mac));
        assert_eq!(q.vlans, p.vlans);
        assert!(checksums_ok(&r[..m]));
    }

    #[test]
    fn v6_checksum_and_odd_payload() {
        let mut buf = [0u8; 256];
        let n = write_udp(
            &mut buf,
            [2; 6],
            [4; 6],
            &[],
            sa("[2001:db8::1]:5060"),
            sa("[2001:db8::2]:5062"),
            b"odd",
        )
        .unwrap();
        assert!(checksums_ok(&buf[..n]));
        buf[n - 1] ^= 1;
        assert!(!checksums_ok(&buf[..n]), "corruption must be detected");
    }

    #[test]
    fn malformed_never_panics() {
        let mut buf = [0u8; 128];
        let n = write_udp(
            &mut buf,
            [2; 6],
            [4; 6],
            &[],
            sa("198.18.0.1:1"),
            sa("198.18.0.2:2"),
            b"hello",
        )
        .unwrap();
        for cut in 0..n {
            let _ = parse_udp(&buf[..cut]);
        }
        let clamped = parse_udp(&buf[..n - 3]).expect("payload clamped to frame");
        assert_eq!(clamped.payload_len, 2);
        assert!(parse_udp(&buf[..41]).is_none(), "UDP header cut");
        let mut bad = buf;
        bad[14] = 0x44; // IHL 4
        assert!(parse_udp(&bad[..n]).is_none());
        assert!(write_udp(
            &mut buf[..20],
            [0; 6],
            [0; 6],
            &[],
            sa("1.2.3.4:1"),
            sa("1.2.3.4:2"),
            b""
        )
        .is_none());
        assert!(write_udp(
            &mut buf,
            [0; 6],
            [0; 6],
            &[],
            sa("1.2.3.4:1"),
            sa("[::1]:2"),
            b""
        )
        .is_none());
    }
}
