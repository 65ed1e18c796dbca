//! Transfers that skip the page cache: large, block-aligned writes and reads go through
//! `O_DIRECT` (no copy into the page cache, no later writeback), everything else through the
//! page cache. Where a file system refuses `O_DIRECT`, the page cache is used.
//!
//! The router writes each byte twice (RT2, then the backup file) and reads it once: for bulk
//! data, going around the page cache halves the memory traffic of the router.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The alignment of offsets, lengths and buffers for `O_DIRECT`.
pub const ALIGN: u64 = 4096;

/// `n` rounded up to a multiple of [`ALIGN`].
pub fn round_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// The `len` bytes of `buf` (grown as needed) that start at an [`ALIGN`] boundary in memory.
pub fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    let need = len + ALIGN as usize;
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let start = buf.as_ptr().align_offset(ALIGN as usize);
    &mut buf[start..start + len]
}

fn is_aligned(data: &[u8], offset: u64) -> bool {
    let a = ALIGN as usize;
    !data.is_empty()
        && (data.as_ptr() as usize) % a == 0
        && data.len() % a == 0
        && offset % ALIGN == 0
}

/// Turns `O_DIRECT` on or off for `f`; whether it is on afterwards.
fn set_direct(f: &File, on: bool) -> bool {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor owned by `f`, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        if (flags & libc::O_DIRECT != 0) == on {
            return on;
        }
        let want = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(fd, libc::F_SETFL, want) == 0 && on
    }
}

fn refused(r: &io::Result<()>) -> bool {
    r.as_ref()
        .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
}

/// Writes all of `data` at `offset`: directly when it is aligned, else through the page cache.
pub fn write_at(f: &File, data: &[u8], offset: u64) -> io::Result<()> {
    if is_aligned(data, offset) && set_direct(f, true) {
        let r = f.write_all_at(data, offset);
        if !refused(&r) {
            return r;
        }
    }
    set_direct(f, false);
    f.write_all_at(data, offset)
}

/// Reads a file front to back in large blocks: a read inside the last block is served from
/// memory, any other reads `AHEAD` bytes (or up to a limit) at once, directly where it can.
/// A slice it returns is aligned in memory when its offset is aligned in the file.
#[derive(Debug, Default)]
pub struct ReadAhead {
    buf: Vec<u8>,
    /// Which file the block is from (the caller's number for it).
    id: u64,
    /// File offset of the block (aligned) and how many bytes of it are valid.
    start: u64,
    len: usize,
}

/// How much [`ReadAhead`] reads at once.
pub const AHEAD: u64 = 16 << 20;

impl ReadAhead {
    /// `len` bytes at `offset` of file `id` (`f`); never reads at or past `limit`, where the
    /// file may still be written.
    pub fn read(
        &mut self,
        f: &File,
        id: u64,
        offset: u64,
        len: usize,
        limit: u64,
    ) -> io::Result<&[u8]> {
        let end = offset + len as u64;
        let inside = self.id == id && offset >= self.start && end <= self.start + self.len as u64;
        if !inside {
            self.fill(f, id, offset, end.max(limit.min(offset + AHEAD)))?;
            if end > self.start + self.len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at offset {offset} run past the end of the file"),
                ));
            }
        }
        let skip = (offset - self.start) as usize;
        let block = aligned(&mut self.buf, self.len);
        Ok(&block[skip..skip + len])
    }

    /// Reads `[offset, end)` (widened to aligned bounds) into the block.
    fn fill(&mut self, f: &File, id: u64, offset: u64, end: u64) -> io::Result<()> {
        let start = offset - offset % ALIGN;
        let span = (round_up(end) - start) as usize;
        self.id = id;
        self.start = start;
        self.len = 0;
        let block = aligned(&mut self.buf, span);
        if set_direct(f, true) {
            let mut got = 0;
            let res = loop {
                match f.read_at(&mut block[got..], start + got as u64) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        got += n;
                        if got == span || (n as u64) % ALIGN != 0 {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if !refused(&res) {
                res?;
                self.len = got;
                return Ok(());
            }
        }
        set_direct(f, false);
        let mut got = 0;
        while got < span {
            match f.read_at(&mut block[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = got;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_unaligned_transfers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let mut wbuf = Vec::new();
        let block = aligned(&mut wbuf, 2 * ALIGN as usize);
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let expect = block.to_vec();
        write_at(&f, block, ALIGN).unwrap();
        write_at(&f, b"odd", 5).unwrap();
        let mut r = ReadAhead::default();
        let end = 3 * ALIGN;
        let got = r.read(&f, 1, ALIGN, 8192, end).unwrap();
        assert_eq!(got, &expect[..]);
        assert!((got.as_ptr() as usize) % ALIGN as usize == 0);
        assert_eq!(r.read(&f, 1, ALIGN + 7, 100, end).unwrap(), &expect[7..107]);
        assert_eq!(r.read(&f, 1, 5, 3, end).unwrap(), b"odd");
        // The last bytes of the file, and one byte past them.
        assert_eq!(r.read(&f, 1, end - 1, 1, end).unwrap(), &expect[8191..]);
        assert!(r.read(&f, 1, end - 1, 2, end).is_err());
        // Another file with the same offsets is read anew.
        write_at(&f, b"new", ALIGN).unwrap();
        assert_eq!(r.read(&f, 2, ALIGN, 3, end).unwrap(), b"new");
    }
}
