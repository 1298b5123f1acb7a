//! Durable registration state: the snapshot file in `state_dir`.
//!
//! The registrar (core) owns the snapshot's byte format; this module owns the file: written
//! to a temporary name, fsynced, renamed over the old snapshot, and the directory fsynced, so
//! a crash at any point leaves either the old or the new snapshot, never a torn one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;
use turnstile_core::engine::Shared;
use turnstile_core::registrar::SnapshotStats;
use turnstile_core::Millis;

/// Writes `path` atomically (tmp + fsync + rename + fsync dir); `fill` writes the content.
pub fn write_atomic_with<T>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>,
) -> io::Result<T> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::other("snapshot path has no file name"))?
        .to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let r = fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(r)
    })();
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    Ok(r)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes the registration snapshot of `shared` to `path`, streaming (no full copy in memory).
pub fn save(shared: &Shared, path: &Path, now: Millis) -> io::Result<SnapshotStats> {
    let t = Instant::now();
    let st = write_atomic_with(path, |w| shared.registrar().write_snapshot(now, w))?;
    tracing::debug!(
        path = %path.display(),
        aors = st.aors,
        bindings = st.bindings,
        bytes = st.bytes,
        ms = t.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(st)
}

/// Restores the snapshot at `path` into `shared`, if there is one. Returns the number of
/// bindings restored (`None`: no snapshot file).
///
/// A snapshot the registrar refuses (corrupt, other version) is moved aside to
/// `<path>.bad-<unix secs>` and the instance starts empty: phones re-register within one
/// expiry, whereas refusing to start would take the whole edge down. The file is kept for
/// the post-mortem, and the error is logged loudly.
pub fn restore(shared: &Shared, path: &Path, now: Millis) -> io::Result<Option<usize>> {
    let t = Instant::now();
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Streamed: at 1M bindings the file is ~170 MB, which would otherwise sit in memory next
    // to the restored registrations at start-up (the RSS budget is 400 MB for the process).
    // The registrar is empty here, as the streaming restore requires; on any error it is
    // left empty again.
    let reader = io::BufReader::with_capacity(1 << 20, file);
    match shared.registrar().restore_snapshot_from(reader, now) {
        Ok(n) => {
            tracing::info!(
                path = %path.display(),
                bytes,
                bindings = n,
                ms = t.elapsed().as_millis() as u64,
                "registration snapshot restored"
            );
            Ok(Some(n))
        }
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".bad-{}", now.as_secs()));
            let aside = std::path::PathBuf::from(aside);
            fs::rename(path, &aside)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                error = %e,
                "registration snapshot refused; starting with an empty registration DB"
            );
            Ok(Some(0))
        }
    }
}

/// The key of the stateless digest nonces, kept in `state_dir` so nonces issued before a
/// restart stay valid after it. Created (0600) with 32 random bytes on first start.
pub fn nonce_secret(path: &Path) -> io::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            return Ok(k);
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "nonce key has the wrong size; replacing it")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut k = [0u8; 32];
    let mut filled = 0;
    while filled < k.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe {
            libc::getrandom(
                k[filled..].as_mut_ptr() as *mut libc::c_void,
                k.len() - filled,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    write_atomic_with(path, |w| {
        use std::os::unix::fs::PermissionsExt;
        w.get_ref()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        w.write_all(&k)
    })?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        use turnstile_core::engine::EngineConfig;
        use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
        let cfg = EngineConfig {
            domain: "example.test".into(),
            aliases: vec![],
            registrar: Default::default(),
            auth: None,
            groups: GroupTable::new(vec![IpGroup {
                name: "phones".into(),
                kind: GroupKind::User,
                sources: vec!["127.0.0.0/8".parse().unwrap()],
                auth: AuthMode::None,
                serving: None,
                weight: 1,
            }]),
            unclassified: Unclassified::Drop,
            server_name: "t".into(),
        };
        Shared::new(cfg, Default::default(), [0; 32])
    }

    #[test]
    fn snapshot_round_trip_through_the_streaming_restore() {
        use turnstile_core::registrar::{ContactReq, RegisterReq, Transport};
        let now = Millis(1_700_000_000_000);
        let a = shared();
        for i in 0..100 {
            let aor = format!("sip:u{i}@example.test");
            let c = [ContactReq {
                uri: "sip:u@127.0.0.1:5",
                key: "sip:u@127.0.0.1:5",
                expires: Some(600),
                ..Default::default()
            }];
            let req = RegisterReq {
                aor: &aor,
                call_id: "c",
                cseq: 1,
                star: false,
                contacts: &c,
                expires_header: None,
                source: "127.0.0.1:5".parse().unwrap(),
                transport: Transport::Udp,
                path: &[],
                group: 0,
            };
            a.registrar().register(now, &req, 0);
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registrations.bin");
        write_atomic(&p, &a.registrar().snapshot_to_vec(now)).unwrap();
        let b = shared();
        assert_eq!(restore(&b, &p, now).unwrap(), Some(100));
        assert_eq!(b.registrar().binding_count(), 100);
    }

    #[test]
    fn a_damaged_snapshot_is_moved_aside_and_the_start_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registrations.bin");
        fs::write(&p, b"definitely not a snapshot").unwrap();
        let s = shared();
        assert_eq!(restore(&s, &p, Millis(1_700_000_000_000)).unwrap(), Some(0));
        assert!(s.registrar().is_empty());
        assert!(!p.exists(), "the damaged file is moved aside");
        let aside: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".bad-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(restore(&s, &p, Millis(0)).unwrap(), None, "no snapshot now");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_tmp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registrations.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two-longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two-longer");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("registrations.bin")]);
    }

    #[test]
    fn nonce_secret_is_created_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nonce.key");
        let a = nonce_secret(&p).unwrap();
        let b = nonce_secret(&p).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 32]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, b"short").unwrap();
        assert_ne!(nonce_secret(&p).unwrap(), a);
    }

    #[test]
    fn write_into_missing_dir_fails() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_atomic(&d.path().join("no/such/file"), b"x").is_err());
    }
}
