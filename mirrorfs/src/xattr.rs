//! The extended attributes of a path, read without following a symlink: what a copy sends
//! (mirror-sendd) and what a restore gives back (mirror-routerd).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Largest value read (the kernel's own limit, `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 64 << 10;

/// Every extended attribute of `path` (name, value), not following a symlink in its last
/// component; none where there are none or they cannot be read (an attribute that vanishes
/// between the list and the read is left out). A path longer than one call takes is reached in
/// steps ([`crate::beneath::Reach`]).
pub fn of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(reach) = crate::beneath::Reach::new(path) else {
        return Vec::new();
    };
    let Ok(c) = CString::new(reach.path().as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: c is NUL-terminated; names has names.len() bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    let mut value = vec![0u8; MAX_VALUE];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else {
            continue;
        };
        // SAFETY: both strings are NUL-terminated; value has value.len() bytes.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            out.push((name.to_vec(), value[..len as usize].to_vec()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_user_attribute_is_read_and_a_missing_path_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated strings and a 3-byte value.
        let rc = unsafe {
            libc::lsetxattr(c.as_ptr(), c"user.k".as_ptr(), b"abc".as_ptr().cast(), 3, 0)
        };
        if rc != 0 {
            // A file system without user xattrs: nothing to check here.
            return;
        }
        assert_eq!(super::of(&f), vec![(b"user.k".to_vec(), b"abc".to_vec())]);
        assert!(super::of(&dir.path().join("missing")).is_empty());
    }
}
