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
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let read_ms = t.elapsed().as_millis() as u64;
    match shared.registrar().restore_snapshot(&bytes, now) {
        Ok(n) => {
            tracing::info!(
                path = %path.display(),
                bytes = bytes.len(),
                bindings = n,
                read_ms,
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
