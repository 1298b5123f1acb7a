//! Persistence of the location service: a versioned, checksummed binary snapshot.
//!
//! The daemon owns the file; this module only turns state into bytes and back (no IO of its
//! own beyond writing to a caller's `std::io::Write`). Expiry is stored as absolute unix ms,
//! so a restored binding keeps its remaining lifetime and one that expired while the daemon
//! was down is dropped (RFC 3261 §10.3: an expired binding no longer exists).
//!
//! Layout (all integers little-endian):
//! ```text
//! header   "TSTLREG\0" | version u32 (=1) | flags u32 (=0)
//! record*  aor_len u16 (≥1) | aor | n u16 | n × binding
//! binding  expires_at u64 | registered_at u64 | ip [16] | cseq u32 | reg_id u32 | port u16
//!          | q u16 | group u16 | transport u8 | flags u8
//!          | uri_len u16 | key_len u16 (0: key = uri) | cid_len u16 | inst_len u16 | path_len u16
//!          | uri | key | call-id | instance | path (NUL-separated)
//! end      aor_len u16 = 0 | aor count u64 | binding count u64 | crc32 u32 (of all bytes before it)
//! ```
//! Restore checks the checksum and then the whole structure before inserting anything, so a
//! damaged file is refused as a whole and never panics.

use super::store::{AorRecord, Binding, PathSrc, Strs, F_REG_ID, F_V6, Q_NONE};
use super::{Registrar, Transport};
use crate::time::Millis;
use smallvec::SmallVec;
use std::fmt;
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"TSTLREG\0";
const VERSION: u32 = 1;
const HEADER: usize = 16;
const TRAILER: usize = 2 + 8 + 8 + 4;
/// Upper bound for pre-sizing from a (checksummed, but still untrusted) trailer count.
const MAX_RESERVE: u64 = 50_000_000;
/// Scratch size at which encoded records are handed to the writer.
const FLUSH_AT: usize = 1 << 20;
const FIXED: usize = 8 + 8 + 16 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 5 * 2;

/// Why a snapshot was refused. Nothing was restored in any of these cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a registration snapshot.
    BadMagic,
    UnsupportedVersion(u32),
    /// Shorter than its own structure says.
    Truncated,
    ChecksumMismatch,
    /// Checksum fine but the content is not valid (what is wrong).
    Corrupt(&'static str),
    /// Reading failed (streaming restore).
    Io(io::ErrorKind),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::BadMagic => write!(f, "not a registration snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => {
                write!(f, "unsupported registration snapshot version {v}")
            }
            SnapshotError::Truncated => write!(f, "registration snapshot is truncated"),
            SnapshotError::ChecksumMismatch => write!(f, "registration snapshot checksum mismatch"),
            SnapshotError::Corrupt(what) => write!(f, "registration snapshot is corrupt: {what}"),
            SnapshotError::Io(kind) => {
                write!(f, "reading the registration snapshot failed: {kind}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub aors: u64,
    pub bindings: u64,
    pub bytes: u64,
}

/// Writes through and checksums on the way.
struct Crc<'w, W: Write> {
    w: &'w mut W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Crc<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        self.w.write_all(b)
    }
}

fn encode_record(rec: &AorRecord, now: u64, buf: &mut Vec<u8>) -> u64 {
    let live = rec.bindings.iter().filter(|b| b.expires_at > now).count();
    if live == 0 {
        return 0;
    }
    let aor = rec.aor();
    buf.extend_from_slice(&(aor.len() as u16).to_le_bytes());
    buf.extend_from_slice(aor.as_bytes());
    buf.extend_from_slice(&(live as u16).to_le_bytes());
    for b in rec.bindings.iter().filter(|b| b.expires_at > now) {
        let s = rec.strs(b);
        let key = if s.key == s.uri { "" } else { s.key };
        let path = rec.path(b);
        buf.extend_from_slice(&b.expires_at.to_le_bytes());
        buf.extend_from_slice(&b.updated_at.to_le_bytes());
        buf.extend_from_slice(&b.ip);
        buf.extend_from_slice(&b.cseq.to_le_bytes());
        buf.extend_from_slice(&b.reg_id.to_le_bytes());
        buf.extend_from_slice(&b.port.to_le_bytes());
        buf.extend_from_slice(&b.q.to_le_bytes());
        buf.extend_from_slice(&b.group.to_le_bytes());
        buf.push(b.transport);
        buf.push(b.flags & (F_V6 | F_REG_ID));
        for l in [
            s.uri.len(),
            key.len(),
            s.call_id.len(),
            s.instance.len(),
            path.len(),
        ] {
            buf.extend_from_slice(&(l as u16).to_le_bytes());
        }
        for p in [s.uri, key, s.call_id, s.instance, path] {
            buf.extend_from_slice(p.as_bytes());
        }
    }
    live as u64
}

impl Registrar {
    /// Streams a snapshot of every binding alive at `now` into `out` (a `Vec<u8>` or the
    /// daemon's buffered file). Records are encoded a few hundred per shard-lock hold into a
    /// scratch buffer, handed to `out` every 1 MiB with no lock held. Each AOR is consistent; the snapshot as a
    /// whole is not one instant (it need not be: bindings carry absolute expiry times).
    pub fn write_snapshot<W: Write>(&self, now: Millis, out: &mut W) -> io::Result<SnapshotStats> {
        let mut w = Crc {
            w: out,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        w.put(&head)?;
        let mut st = SnapshotStats::default();
        let mut buf = Vec::new();
        let mut res = Ok(());
        self.for_each_record(|rec| match rec {
            Some(rec) => {
                let n = encode_record(rec, now.0, &mut buf);
                if n > 0 {
                    st.aors += 1;
                    st.bindings += n;
                }
            }
            // No lock held here: slow storage never stalls the workers.
            None if buf.len() >= FLUSH_AT && res.is_ok() => {
                res = w.put(&buf);
                buf.clear();
            }
            None => {}
        });
        res?;
        w.put(&buf)?;
        w.put(&0u16.to_le_bytes())?;
        w.put(&st.aors.to_le_bytes())?;
        w.put(&st.bindings.to_le_bytes())?;
        let crc = w.crc.clone().finalize();
        w.w.write_all(&crc.to_le_bytes())?;
        st.bytes = w.bytes + 4;
        Ok(st)
    }

    /// Convenience: the snapshot as bytes.
    pub fn snapshot_to_vec(&self, now: Millis) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_snapshot(now, &mut v);
        v
    }

    /// Restores a snapshot; returns the number of bindings restored. Bindings expired at
    /// `now` are dropped; an expiry further than `max_expires` ahead (clock moved back) is
    /// shortened to it. Meant for an empty registrar at startup: an AOR already present is
    /// replaced by the snapshot's record. Validates everything before inserting anything.
    pub fn restore_snapshot(&self, data: &[u8], now: Millis) -> Result<usize, SnapshotError> {
        if data.len() < HEADER {
            return Err(if data.starts_with(&MAGIC[..data.len().min(8)]) {
                SnapshotError::Truncated
            } else {
                SnapshotError::BadMagic
            });
        }
        if &data[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        if data.len() < HEADER + TRAILER {
            return Err(SnapshotError::Truncated);
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(SnapshotError::ChecksumMismatch);
        }
        let max_at = now.plus_secs(self.cfg.max_expires as u64).0;
        // Pass 1: structure only. Pass 2: insert.
        let (aors, _) = parse(body, now.0, max_at, |_| Ok(()))?;
        // One allocation per shard table and slab instead of repeated growth (and rehashing).
        self.reserve(aors.min(MAX_RESERVE) as usize);
        let mut restored = 0;
        parse(body, now.0, max_at, |rec| {
            restored += self
                .put_record(rec)
                .map_err(|_| SnapshotError::Corrupt("no capacity for record"))?;
            Ok(())
        })?;
        Ok(restored)
    }
}

struct Rd<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).ok_or(SnapshotError::Truncated)?;
        let s = self.d.get(self.pos..end).ok_or(SnapshotError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn str(&mut self, n: u16) -> Result<&'a str, SnapshotError> {
        std::str::from_utf8(self.take(n as usize)?)
            .map_err(|_| SnapshotError::Corrupt("invalid UTF-8"))
    }
}

/// Walks the records of `body` (header included, checksum excluded), handing each AOR's
/// still-alive bindings to `f` as a built record. Checks the trailer counts and returns
/// them (AORs, bindings; expired ones included).
fn parse(
    body: &[u8],
    now: u64,
    max_at: u64,
    mut f: impl FnMut(AorRecord) -> Result<(), SnapshotError>,
) -> Result<(u64, u64), SnapshotError> {
    let mut r = Rd {
        d: body,
        pos: HEADER,
    };
    let (mut aors, mut bindings) = (0u64, 0u64);
    while let Some((rec, n)) = parse_record(&mut r, now, max_at)? {
        aors += 1;
        bindings += n as u64;
        if let Some(rec) = rec {
            f(rec)?;
        }
    }
    let (want_aors, want_bindings) = (r.u64()?, r.u64()?);
    if r.pos != body.len() {
        return Err(SnapshotError::Corrupt("trailing bytes"));
    }
    if (want_aors, want_bindings) != (aors, bindings) {
        return Err(SnapshotError::Corrupt(
            "record counts do not match the trailer",
        ));
    }
    Ok((aors, bindings))
}

/// One record: `None` at the end marker, else the record of its still-alive bindings (if
/// any) and its stored binding count. `Truncated` when `r` ends inside the record.
fn parse_record(
    r: &mut Rd<'_>,
    now: u64,
    max_at: u64,
) -> Result<Option<(Option<AorRecord>, u16)>, SnapshotError> {
    use SnapshotError::Corrupt;
    let aor_len = r.u16()?;
    if aor_len == 0 {
        return Ok(None);
    }
    let aor = r.str(aor_len)?;
    let n = r.u16()?;
    if n == 0 {
        return Err(Corrupt("record without bindings"));
    }
    let mut parts: SmallVec<[(Binding, Strs<'_>); 4]> = SmallVec::new();
    let mut total = 0;
    for _ in 0..n {
        if r.d.len().saturating_sub(r.pos) < FIXED {
            return Err(SnapshotError::Truncated);
        }
        let mut b = Binding::zeroed();
        b.expires_at = r.u64()?;
        b.updated_at = r.u64()?;
        b.ip.copy_from_slice(r.take(16)?);
        b.cseq = r.u32()?;
        b.reg_id = r.u32()?;
        b.port = r.u16()?;
        b.q = r.u16()?;
        b.group = r.u16()?;
        b.transport = r.u8()?;
        b.flags = r.u8()?;
        if Transport::from_u8(b.transport).is_none() {
            return Err(Corrupt("unknown transport"));
        }
        if b.q > 1000 && b.q != Q_NONE {
            return Err(Corrupt("q out of range"));
        }
        if b.flags & !(F_V6 | F_REG_ID) != 0 {
            return Err(Corrupt("unknown binding flags"));
        }
        let lens = [r.u16()?, r.u16()?, r.u16()?, r.u16()?, r.u16()?];
        let uri = r.str(lens[0])?;
        let key = r.str(lens[1])?;
        let call_id = r.str(lens[2])?;
        let instance = r.str(lens[3])?;
        let path = r.str(lens[4])?;
        if uri.is_empty() || call_id.is_empty() {
            return Err(Corrupt("empty contact or Call-ID"));
        }
        if b.expires_at <= now {
            continue;
        }
        b.expires_at = b.expires_at.min(max_at);
        let s = Strs {
            uri,
            key: if key.is_empty() { uri } else { key },
            call_id,
            instance,
            path: PathSrc::Joined(path),
        };
        total += s.blob_len();
        parts.push((b, s));
    }
    if parts.is_empty() {
        return Ok(Some((None, n)));
    }
    let rec = AorRecord::build(aor, total, parts).map_err(|_| Corrupt("record too large"))?;
    Ok(Some((Some(rec), n)))
}

/// A growing window over a reader for [`Registrar::restore_snapshot_from`]: bytes are
/// checksummed as they are consumed.
struct Window<R: Read> {
    rd: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    crc: crc32fast::Hasher,
}

impl<R: Read> Window<R> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.crc.update(&self.buf[self.start..self.start + n]);
        self.start += n;
    }

    /// Reads more; false at end of input.
    fn refill(&mut self) -> Result<bool, SnapshotError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Up to one chunk, stopping early only at the end of input.
        let n = (&mut self.rd)
            .take(STREAM_CHUNK as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| SnapshotError::Io(e.kind()))?;
        self.eof = n < STREAM_CHUNK;
        Ok(n > 0)
    }

    /// At least `n` bytes available, or `Truncated`.
    fn need(&mut self, n: usize) -> Result<(), SnapshotError> {
        while self.avail().len() < n {
            if !self.refill()? {
                return Err(SnapshotError::Truncated);
            }
        }
        Ok(())
    }
}

/// Read size of the streaming restore.
const STREAM_CHUNK: usize = 1 << 20;

impl Registrar {
    /// Streaming restore for startup: reads the snapshot from `rd` in 1 MiB pieces instead of
    /// needing the whole file in memory (a 1M-binding snapshot is ~170 MB, which would
    /// otherwise sit next to the restored state). Records are inserted as they are read,
    /// so on any error (damage, truncation, checksum) the registrar is **cleared** before the
    /// error is returned; hence it must be empty to start with (else `Corrupt`).
    pub fn restore_snapshot_from<R: Read>(
        &self,
        rd: R,
        now: Millis,
    ) -> Result<usize, SnapshotError> {
        if !self.is_empty() {
            return Err(SnapshotError::Corrupt(
                "streaming restore needs an empty registrar",
            ));
        }
        let res = self.restore_stream(rd, now);
        if res.is_err() {
            self.clear();
        }
        res
    }

    fn restore_stream<R: Read>(&self, rd: R, now: Millis) -> Result<usize, SnapshotError> {
        let mut w = Window {
            rd,
            buf: Vec::with_capacity(STREAM_CHUNK),
            start: 0,
            eof: false,
            crc: crc32fast::Hasher::new(),
        };
        match w.need(HEADER) {
            Err(SnapshotError::Truncated)
                if !w.avail().starts_with(&MAGIC[..w.avail().len().min(8)]) =>
            {
                return Err(SnapshotError::BadMagic)
            }
            other => other?,
        }
        let head = w.avail();
        if &head[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        w.consume(HEADER);
        let max_at = now.plus_secs(self.cfg.max_expires as u64).0;
        let (mut aors, mut bindings, mut restored) = (0u64, 0u64, 0usize);
        loop {
            let mut r = Rd {
                d: w.avail(),
                pos: 0,
            };
            match parse_record(&mut r, now.0, max_at) {
                Err(SnapshotError::Truncated) => {
                    if !w.refill()? {
                        return Err(SnapshotError::Truncated);
                    }
                }
                Err(e) => return Err(e),
                Ok(None) => {
                    let used = r.pos;
                    w.consume(used);
                    break;
                }
                Ok(Some((rec, n))) => {
                    let used = r.pos;
                    aors += 1;
                    bindings += n as u64;
                    if let Some(rec) = rec {
                        restored += self
                            .put_record(rec)
                            .map_err(|_| SnapshotError::Corrupt("no capacity for record"))?;
                    }
                    w.consume(used);
                }
            }
        }
        w.need(20)?;
        let t = w.avail();
        let want_aors = u64::from_le_bytes(t[..8].try_into().unwrap_or([0; 8]));
        let want_bindings = u64::from_le_bytes(t[8..16].try_into().unwrap_or([0; 8]));
        let crc = u32::from_le_bytes([t[16], t[17], t[18], t[19]]);
        w.consume(16);
        w.start += 4;
        if w.crc.clone().finalize() != crc {
            return Err(SnapshotError::ChecksumMismatch);
        }
        if !w.avail().is_empty() || w.refill()? {
            return Err(SnapshotError::Corrupt("trailing bytes"));
        }
        if (want_aors, want_bindings) != (aors, bindings) {
            return Err(SnapshotError::Corrupt(
                "record counts do not match the trailer",
            ));
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ContactReq, RegisterOutcome, RegisterReq, RegistrarConfig};
    use super::*;

    const T0: Millis = Millis(1_800_000_000_000);

    fn fill(r: &Registrar, n: usize) {
        let path = ["<sip:edge.test;lr>"];
        for i in 0..n {
            let aor = format!("sip:user{i}@example.test");
            let uri = format!("sip:user{i}@192.0.2.{}:5060", i % 250);
            let inst = format!("\"<urn:uuid:{i:08}>\"");
            let cs = [
                ContactReq {
                    uri: &uri,
                    key: &uri,
                    expires: Some(if i % 2 == 0 { 60 } else { 3600 }),
                    q: (i % 3 == 0).then_some(500),
                    instance: (i % 5 == 0).then_some(inst.as_str()),
                    reg_id: (i % 5 == 0).then_some(1),
                },
                ContactReq {
                    uri: "sip:Second@h",
                    key: "sip:second@h",
                    expires: Some(3600),
                    ..Default::default()
                },
            ];
            let req = RegisterReq {
                aor: &aor,
                call_id: "call-id@host",
                cseq: i as u32 + 1,
                star: false,
                contacts: &cs[..1 + i % 2],
                expires_header: None,
                source: if i % 4 == 0 {
                    "[2001:db8::5]:5060".parse().unwrap()
                } else {
                    "127.0.0.1:5060".parse().unwrap()
                },
                transport: Transport::Tcp,
                path: if i % 7 == 0 { &path } else { &[] },
                group: (i % 3) as u16,
            };
            assert!(matches!(r.register(T0, &req, 0), RegisterOutcome::Ok(_)));
        }
    }

    fn dump(r: &Registrar, now: Millis) -> Vec<String> {
        let mut v = Vec::new();
        r.for_each_binding(now, |b| v.push(format!("{:?}", b.to_view())));
        v.sort();
        v
    }

    #[test]
    fn round_trip_keeps_everything_and_drops_expired() {
        let r = Registrar::new(RegistrarConfig::default(), 8);
        fill(&r, 200);
        let data = r.snapshot_to_vec(T0);
        let mut buf = Vec::new();
        let st = r.write_snapshot(T0, &mut buf).unwrap();
        assert_eq!(buf, data);
        assert_eq!(
            (st.aors, st.bindings, st.bytes),
            (200, 300, data.len() as u64)
        );

        let r2 = Registrar::new(RegistrarConfig::default(), 2);
        assert_eq!(r2.restore_snapshot(&data, T0.plus_secs(1)), Ok(300));
        assert_eq!(dump(&r, T0.plus_secs(1)), dump(&r2, T0.plus_secs(1)));
        assert_eq!(r2.next_expiry(), Some(T0.plus_secs(60)));

        // Restored later: even users (one 60 s binding) are gone, odd users keep both
        // bindings with their absolute expiry.
        let r3 = Registrar::new(RegistrarConfig::default(), 4);
        assert_eq!(r3.restore_snapshot(&data, T0.plus_secs(60)), Ok(200));
        assert_eq!(r3.aor_count(), 100);
        assert_eq!(r3.next_expiry(), Some(T0.plus_secs(3600)));
        assert!(r3.lookup("sip:user0@example.test", T0).is_empty());
        let v = r3.lookup("sip:user1@example.test", T0.plus_secs(60));
        assert_eq!(v.len(), 2);
        assert!(v
            .iter()
            .any(|b| b.uri == "sip:Second@h" && b.key == "sip:second@h"));
        assert_eq!(v[0].expires_in(T0.plus_secs(60)), 3540);

        // Snapshot taken after some expired does not contain them.
        let late = r.snapshot_to_vec(T0.plus_secs(60));
        let r4 = Registrar::new(RegistrarConfig::default(), 4);
        assert_eq!(r4.restore_snapshot(&late, T0.plus_secs(60)), Ok(200));
        assert!(late.len() < data.len());
    }

    #[test]
    fn large_snapshot_is_streamed_in_pieces() {
        struct Pieces(Vec<u8>, usize);
        impl Write for Pieces {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.extend_from_slice(b);
                self.1 += 1;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let r = Registrar::new(RegistrarConfig::default(), 4);
        fill(&r, 12_000);
        let mut p = Pieces(Vec::new(), 0);
        let st = r.write_snapshot(T0, &mut p).unwrap();
        assert!(st.bytes as usize > 2 * FLUSH_AT);
        assert!(p.1 >= 4, "writes: {}", p.1);
        let r2 = Registrar::new(RegistrarConfig::default(), 16);
        assert_eq!(r2.restore_snapshot(&p.0, T0), Ok(18_000));
        assert_eq!(dump(&r, T0), dump(&r2, T0));
    }

    /// Hands out at most `step` bytes per read, to cut records at every possible place.
    struct Drip<'a>(&'a [u8], usize);
    impl Read for Drip<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn streaming_restore_matches_slice_restore() {
        let r = Registrar::new(RegistrarConfig::default(), 8);
        fill(&r, 300);
        let data = r.snapshot_to_vec(T0);
        for step in [1, 7, 64, 1 << 20] {
            let r2 = Registrar::new(RegistrarConfig::default(), 4);
            assert_eq!(
                r2.restore_snapshot_from(Drip(&data, step), T0),
                Ok(450),
                "step {step}"
            );
            assert_eq!(dump(&r, T0), dump(&r2, T0));
            // Not into a registrar that already holds bindings.
            assert!(matches!(
                r2.restore_snapshot_from(Drip(&data, step), T0),
                Err(SnapshotError::Corrupt(_))
            ));
            assert_eq!(r2.binding_count(), 450);
        }
        let r3 = Registrar::new(RegistrarConfig::default(), 4);
        assert_eq!(
            r3.restore_snapshot_from(Drip(&data, 100), T0.plus_secs(60)),
            Ok(300)
        );
    }

    #[test]
    fn streaming_restore_of_damaged_input_leaves_nothing() {
        let r = Registrar::new(RegistrarConfig::default(), 2);
        fill(&r, 20);
        let data = r.snapshot_to_vec(T0);
        let check = |bytes: &[u8], what: &str| {
            let r2 = Registrar::new(RegistrarConfig::default(), 2);
            assert!(
                r2.restore_snapshot_from(Drip(bytes, 13), T0).is_err(),
                "{what}"
            );
            assert_eq!((r2.aor_count(), r2.binding_count()), (0, 0), "{what}");
            assert_eq!((0..3).map(|g| r2.group_binding_count(g)).sum::<u32>(), 0);
        };
        for cut in 0..data.len() {
            check(&data[..cut], &format!("cut at {cut}"));
        }
        for i in 0..data.len() {
            let mut v = data.clone();
            v[i] ^= 0x10;
            check(&v, &format!("flip at {i}"));
        }
        let mut v = data.clone();
        v.push(0);
        check(&v, "trailing byte");
        assert_eq!(
            Registrar::new(RegistrarConfig::default(), 1)
                .restore_snapshot_from(Drip(b"GIF89a-not-a-snapshot", 5), T0),
            Err(SnapshotError::BadMagic)
        );
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "no"))
            }
        }
        assert_eq!(
            Registrar::new(RegistrarConfig::default(), 1).restore_snapshot_from(Broken, T0),
            Err(SnapshotError::Io(io::ErrorKind::PermissionDenied))
        );
    }

    #[test]
    fn restore_clamps_far_future_expiry() {
        let r = Registrar::new(RegistrarConfig::default(), 1);
        fill(&r, 3);
        let data = r.snapshot_to_vec(T0);
        let r2 = Registrar::new(RegistrarConfig::default(), 1);
        // Clock went back a day: remaining time is capped at max_expires.
        let back = Millis(T0.0 - 86_400_000);
        assert_eq!(r2.restore_snapshot(&data, back), Ok(4));
        assert_eq!(r2.next_expiry(), Some(back.plus_secs(7200)));
    }

    #[test]
    fn empty_registrar_round_trips() {
        let r = Registrar::new(RegistrarConfig::default(), 1);
        let data = r.snapshot_to_vec(T0);
        assert_eq!(data.len(), HEADER + TRAILER);
        assert_eq!(
            Registrar::new(RegistrarConfig::default(), 1).restore_snapshot(&data, T0),
            Ok(0)
        );
    }

    #[test]
    fn damaged_snapshots_are_refused_without_panic() {
        let r = Registrar::new(RegistrarConfig::default(), 2);
        fill(&r, 20);
        let data = r.snapshot_to_vec(T0);
        let fresh = || Registrar::new(RegistrarConfig::default(), 2);

        assert_eq!(
            fresh().restore_snapshot(b"", T0),
            Err(SnapshotError::Truncated)
        );
        assert_eq!(
            fresh().restore_snapshot(b"hello world, not a snapshot", T0),
            Err(SnapshotError::BadMagic)
        );
        let mut v = data.clone();
        v[8] = 9;
        assert_eq!(
            fresh().restore_snapshot(&v, T0),
            Err(SnapshotError::UnsupportedVersion(9))
        );
        // Every truncation and every single-byte flip is refused and restores nothing.
        for cut in 0..data.len() {
            let r2 = fresh();
            assert!(
                r2.restore_snapshot(&data[..cut], T0).is_err(),
                "cut at {cut}"
            );
            assert_eq!(r2.aor_count(), 0);
        }
        for i in (0..data.len()).step_by(3) {
            let mut v = data.clone();
            v[i] ^= 0x41;
            let r2 = fresh();
            assert!(r2.restore_snapshot(&v, T0).is_err(), "flip at {i}");
            assert_eq!(r2.aor_count(), 0);
        }
    }

    #[test]
    fn structurally_bad_content_with_valid_checksum_is_corrupt() {
        let r = Registrar::new(RegistrarConfig::default(), 1);
        fill(&r, 2);
        let data = r.snapshot_to_vec(T0);
        let reseal = |mut body: Vec<u8>| {
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        };
        let body = data[..data.len() - 4].to_vec();
        // Transport byte of the first binding: header 16 + aor_len 2 + aor + n 2 + 8+8+16+4+4+2+2+2.
        let aor_len = u16::from_le_bytes([body[16], body[17]]) as usize;
        let t = 16 + 2 + aor_len + 2 + 8 + 8 + 16 + 4 + 4 + 2 + 2 + 2;
        let mut b = body.clone();
        b[t] = 77;
        assert_eq!(
            Registrar::new(RegistrarConfig::default(), 1).restore_snapshot(&reseal(b), T0),
            Err(SnapshotError::Corrupt("unknown transport"))
        );
        // Wrong trailer count.
        let mut b = body.clone();
        let n = b.len();
        b[n - 8] ^= 1;
        let r2 = Registrar::new(RegistrarConfig::default(), 1);
        assert!(matches!(
            r2.restore_snapshot(&reseal(b), T0),
            Err(SnapshotError::Corrupt(_))
        ));
        assert_eq!(r2.aor_count(), 0);
        // Invalid UTF-8 in the AOR.
        let mut b = body;
        b[18] = 0xff;
        assert_eq!(
            Registrar::new(RegistrarConfig::default(), 1).restore_snapshot(&reseal(b), T0),
            Err(SnapshotError::Corrupt("invalid UTF-8"))
        );
    }
}
