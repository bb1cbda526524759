//! How full the data volume is, from `statvfs(2)` on the data directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub size_bytes: f64,
    pub used_bytes: f64,
    /// Bytes an unprivileged writer may still use (PostgreSQL is not root).
    pub available_bytes: f64,
}

impl Usage {
    /// Used over what used and available add up to, as `df` reports it: blocks reserved
    /// for root are out of reach for PostgreSQL, so they count as neither.
    pub fn used_ratio(&self) -> f64 {
        let total = self.used_bytes + self.available_bytes;
        if total > 0.0 {
            self.used_bytes / total
        } else {
            0.0
        }
    }
}

/// The usage of the filesystem holding `path`; `None` when it cannot be read.
pub fn usage(path: &Path) -> Option<Usage> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the right type; read only on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    let block = stat.f_frsize as f64;
    Some(Usage {
        size_bytes: stat.f_blocks as f64 * block,
        used_bytes: (stat.f_blocks.saturating_sub(stat.f_bfree)) as f64 * block,
        available_bytes: stat.f_bavail as f64 * block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_filesystem_and_counts_like_df() {
        let u = usage(Path::new("/")).unwrap();
        assert!(u.size_bytes > 0.0 && u.used_bytes <= u.size_bytes);
        let r = u.used_ratio();
        assert!((0.0..=1.0).contains(&r));
        assert!(usage(Path::new("/no/such/dir")).is_none());
        let reserved = Usage {
            size_bytes: 100.0,
            used_bytes: 76.0,
            available_bytes: 19.0,
        };
        assert!((reserved.used_ratio() - 0.8).abs() < 1e-9);
    }
}
