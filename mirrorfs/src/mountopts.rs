//! Mount options in the mount-helper form (`mirrorfs TAG MOUNTPOINT -o source=…,state=…,ro`),
//! the kernel's per-mount flags, and reading a mount's flags back from `/proc/self/mountinfo`.
//!
//! `mount -t fuse.mirrorfs TAG DIR -o …` runs `/sbin/mount.fuse.mirrorfs` (a link to
//! `mount.fuse3`), which runs `mirrorfs TAG DIR -o OPTIONS`: [`HelperOptions::parse`] splits
//! those into mirrorfs's own (`source=`, `state=`, `fsname=`, `remount`), FUSE ones
//! (`allow_other`, `default_permissions`…), the VFS flags the kernel applies to the mount
//! (`ro`, `nosuid`, `noatime`, `strictatime`…, as [`Flags`]), and the ones only mount(8)
//! uses, which are ignored. Anything else is an error naming the option.

use std::path::{Path, PathBuf};

/// Why an option string is refused.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// Not an option mirrorfs knows.
    #[error("unknown mount option '{0}' (mirrorfs knows: source=DIR, state=DIR, fsname=NAME, remount, ro, rw, [no]suid, [no]dev, [no]exec, [no]atime, [no]diratime, [no]relatime, [no]strictatime, [no]lazytime, sync, async, dirsync, allow_other, allow_root, default_permissions)")]
    Unknown(String),
    /// An option that needs a value has none.
    #[error("mount option '{0}' needs a value ({0}=…)")]
    Empty(String),
}

/// The per-mount and superblock flags given to `mount(2)` (`MS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub libc::c_ulong);

/// The atime modes are one choice among these (`MS_NOATIME`, `MS_RELATIME`, `MS_STRICTATIME`).
const ATIME_MODES: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

impl Flags {
    /// Applies one VFS option (`ro`, `noatime`…) as mount(8) does; false if `opt` is not one.
    pub fn apply(&mut self, opt: &str) -> bool {
        let f = &mut self.0;
        match opt {
            "ro" => *f |= libc::MS_RDONLY,
            "rw" => *f &= !libc::MS_RDONLY,
            "nosuid" => *f |= libc::MS_NOSUID,
            "suid" => *f &= !libc::MS_NOSUID,
            "nodev" => *f |= libc::MS_NODEV,
            "dev" => *f &= !libc::MS_NODEV,
            "noexec" => *f |= libc::MS_NOEXEC,
            "exec" => *f &= !libc::MS_NOEXEC,
            "sync" => *f |= libc::MS_SYNCHRONOUS,
            "async" => *f &= !libc::MS_SYNCHRONOUS,
            "dirsync" => *f |= libc::MS_DIRSYNC,
            "nodiratime" => *f |= libc::MS_NODIRATIME,
            "diratime" => *f &= !libc::MS_NODIRATIME,
            "lazytime" => *f |= libc::MS_LAZYTIME,
            "nolazytime" => *f &= !libc::MS_LAZYTIME,
            "noatime" => *f = (*f & !ATIME_MODES) | libc::MS_NOATIME,
            // `atime` and `norelatime` undo noatime/relatime: the kernel's default (relatime)
            // unless strictatime is asked for too, as mount(8) does.
            "atime" => *f &= !libc::MS_NOATIME,
            "relatime" => *f = (*f & !ATIME_MODES) | libc::MS_RELATIME,
            "norelatime" => *f &= !libc::MS_RELATIME,
            "strictatime" => *f = (*f & !ATIME_MODES) | libc::MS_STRICTATIME,
            "nostrictatime" => *f &= !libc::MS_STRICTATIME,
            _ => return false,
        }
        true
    }

    /// Whether `flag` (an `MS_*`) is set.
    pub fn has(self, flag: libc::c_ulong) -> bool {
        self.0 & flag != 0
    }
}

/// What the `-o` options of the mount-helper form ask for.
#[derive(Debug, Clone, Default)]
pub struct HelperOptions {
    /// `source=DIR`: the directory served (the first argument is then a device tag).
    pub source: Option<PathBuf>,
    /// `state=DIR`: the state directory (as `--state`).
    pub state: Option<PathBuf>,
    /// `fsname=NAME`: what the mount table shows as the mount's source.
    pub fsname: Option<String>,
    /// `remount`: change the flags of the mount at the mount point, and exit.
    pub remount: bool,
    /// `allow_other` (other users may use the mount; root's mounts always allow them).
    pub allow_other: bool,
    /// `allow_root` (root may use the mount of a user).
    pub allow_root: bool,
    /// The VFS flags asked for: `nosuid,nodev` unless `suid`/`dev` are given (as fusermount3
    /// and fuser do; mount.fuse3 gives `dev,suid` unless told otherwise).
    pub flags: Flags,
    /// The VFS options, in order, as given (for a remount over the current flags).
    pub vfs: Vec<String>,
}

impl HelperOptions {
    /// Parses `-o` arguments (each a comma-separated list).
    pub fn parse<S: AsRef<str>>(lists: &[S]) -> Result<HelperOptions, OptionError> {
        let mut o = HelperOptions {
            flags: Flags(libc::MS_NOSUID | libc::MS_NODEV),
            ..HelperOptions::default()
        };
        for opt in lists.iter().flat_map(|l| l.as_ref().split(',')) {
            let value = |key: &str| -> Result<Option<String>, OptionError> {
                match opt.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                    Some("") => Err(OptionError::Empty(key.into())),
                    Some(v) => Ok(Some(v.to_string())),
                    None => Ok(None),
                }
            };
            if let Some(v) = value("source")? {
                o.source = Some(PathBuf::from(v));
            } else if let Some(v) = value("state")? {
                o.state = Some(PathBuf::from(v));
            } else if let Some(v) = value("fsname")? {
                o.fsname = Some(v);
            } else if o.flags.apply(opt) {
                o.vfs.push(opt.to_string());
            } else {
                match opt {
                    "remount" => o.remount = true,
                    "allow_other" => o.allow_other = true,
                    "allow_root" => o.allow_root = true,
                    // Always on: the kernel checks permissions against the files' modes.
                    "default_permissions" => {}
                    // Only mount(8) and fstab use these (mount.fuse3 drops them too).
                    "" | "defaults" | "user" | "nouser" | "users" | "auto" | "noauto"
                    | "nofail" | "_netdev" => {}
                    x if x.starts_with("x-") || x.starts_with("comment=") => {}
                    x => return Err(OptionError::Unknown(x.to_string())),
                }
            }
        }
        Ok(o)
    }
}

/// One mount as `/proc/self/mountinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's id.
    pub id: u64,
    /// Where it is mounted.
    pub mountpoint: Vec<u8>,
    /// File-system type (`fuse`, `fuse.mirrorfs`…).
    pub fstype: String,
    /// The source shown.
    pub source: String,
    /// The per-mount flags, with the superblock's `ro` (either makes the mount read-only).
    pub flags: Flags,
}

/// Parses `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let mut a = a.split(' ');
            let id = a.next()?.parse().ok()?;
            let mountpoint = unescape_mountinfo(a.nth(3)?);
            let mount_opts = a.next()?;
            let mut b = b.split(' ');
            let fstype = b.next()?.to_string();
            let source = String::from_utf8_lossy(&unescape_mountinfo(b.next()?)).into_owned();
            let super_opts = b.next().unwrap_or_default();
            // mountinfo shows strictatime as the absence of noatime and relatime.
            let mut flags = Flags(libc::MS_STRICTATIME);
            for o in mount_opts.split(',') {
                flags.apply(o);
            }
            if super_opts.split(',').any(|o| o == "ro") {
                flags.apply("ro");
            }
            Some(MountInfo {
                id,
                mountpoint,
                fstype,
                source,
                flags,
            })
        })
        .collect()
}

/// The mounts of this process's namespace now.
pub fn mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The topmost mount at `path` (the last one mounted there), if any.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    use std::os::unix::ffi::OsStrExt;
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path.as_os_str().as_bytes())
}

/// Undoes mountinfo's octal escapes (`\040` for space…).
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_options() {
        let o = HelperOptions::parse(&[
            "rw,source=/a b,state=/s,allow_other,default_permissions,dev,suid",
            "noatime,nofail",
        ])
        .unwrap();
        assert_eq!(o.source.as_deref(), Some(Path::new("/a b")));
        assert_eq!(o.state.as_deref(), Some(Path::new("/s")));
        assert!(o.allow_other && !o.remount);
        assert_eq!(o.flags, Flags(libc::MS_NOATIME));
        let o = HelperOptions::parse(&["remount,ro,strictatime,nodiratime"]).unwrap();
        assert!(o.remount);
        assert_eq!(
            o.flags,
            Flags(
                libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_RDONLY
                    | libc::MS_STRICTATIME
                    | libc::MS_NODIRATIME
            )
        );
        assert_eq!(o.vfs, ["ro", "strictatime", "nodiratime"]);
        let o = HelperOptions::parse::<&str>(&[]).unwrap();
        assert_eq!(o.flags, Flags(libc::MS_NOSUID | libc::MS_NODEV));
        let e = HelperOptions::parse(&["rw,frobnicate"]).unwrap_err();
        assert!(e.to_string().contains("'frobnicate'"), "{e}");
        assert!(HelperOptions::parse(&["source="]).is_err());
    }

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 36 0:50 / /a\\040b ro,nosuid,nodiratime,relatime - fuse tag rw,user_id=0\n\
                 41 36 0:51 / /c rw - fuse.mirrorfs mirrorfs#/c ro,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].flags, Flags(libc::MS_NOATIME));
        assert_eq!(m[1].mountpoint, b"/a b");
        assert_eq!(m[1].source, "tag");
        assert_eq!(
            m[1].flags,
            Flags(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODIRATIME | libc::MS_RELATIME)
        );
        assert_eq!(m[2].flags, Flags(libc::MS_RDONLY | libc::MS_STRICTATIME));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/t\\"), b"/t\\");
    }
}
