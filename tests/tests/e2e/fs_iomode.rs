//! The I/O mode of open files (issue 12, items 14 and 15): every open of a file succeeds
//! whatever else has it open (xfstests generic/571), and stores through a shared mapping are
//! kept and recorded (generic/346).

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use mirror_tests::Local;
use mirrorfs::entry::Command;

fn subtree(l: &Local) {
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "d", &[]);
}

/// Writes three handles of `name` make (one read-only, one write-only, one read-write),
/// checking that the reader sees them at once.
fn write_through_three_handles(l: &Local, name: &str) {
    let reader = fs::File::open(l.path(name)).unwrap();
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(l.path(name))
        .unwrap_or_else(|e| panic!("open {name} for writing while open for reading: {e}"));
    writer.write_all_at(b"AB", 2).unwrap();
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(l.path(name))
        .unwrap();
    rw.write_all_at(b"Z", 9).unwrap();
    // The reader sees what the writers wrote (one page cache for all of them).
    let mut buf = [0u8; 10];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"01AB45678Z", "{name}");
}

/// The journal's writes, as (name, offset, data).
fn journal_writes(l: &Local) -> Vec<(String, u64, Vec<u8>)> {
    l.journal()
        .into_iter()
        .filter(|e| e.command == Command::Write)
        .map(|e| (mirror_tests::rel(&l.dir, &e.name), e.offset, e.data))
        .collect()
}

/// The finding: with a rule selecting the file, opening it for writing while another
/// descriptor had it open read-only failed with EIO (a passthrough open and a direct-I/O open
/// of one inode, which the kernel refuses to mix). With the kernel's writeback cache (the
/// default) the writes reach the journal as the kernel writes its pages back, whole pages
/// that may merge several writes: what the journal holds, applied in order, is the file.
#[test]
fn opens_of_one_file_in_any_order_all_succeed() {
    let l = Local::new();
    subtree(&l);
    fs::write(l.path("sel"), b"0123456789").unwrap();
    fs::create_dir(l.path("other")).unwrap();
    let m = l.mount(&[]);
    for name in ["sel", "later"] {
        if name == "later" {
            fs::write(l.path(name), b"0123456789").unwrap();
        }
        write_through_three_handles(&l, name);
    }
    m.unmount();
    for name in ["sel", "later"] {
        let mut file = if name == "sel" {
            b"0123456789".to_vec()
        } else {
            Vec::new()
        };
        let writes: Vec<_> = journal_writes(&l)
            .into_iter()
            .filter(|w| w.0 == name)
            .collect();
        assert!(!writes.is_empty(), "{name}: no write recorded");
        for (_, offset, data) in writes {
            let end = offset as usize + data.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].copy_from_slice(&data);
        }
        assert_eq!(
            file, b"01AB45678Z",
            "{name}: the journal's writes applied in order"
        );
    }
}

/// The same without the writeback cache: every write reaches the journal as it is made,
/// one entry each, and every open of the file still succeeds.
#[test]
fn without_the_writeback_cache_each_write_is_recorded_as_made() {
    let l = Local::new();
    subtree(&l);
    fs::write(l.path("sel"), b"0123456789").unwrap();
    let m = l.mount(&["--no-writeback-cache"]);
    for name in ["sel", "later"] {
        if name == "later" {
            fs::write(l.path(name), b"0123456789").unwrap();
        }
        write_through_three_handles(&l, name);
    }
    assert_eq!(
        journal_writes(&l),
        vec![
            ("sel".into(), 2, b"AB".to_vec()),
            ("sel".into(), 9, b"Z".to_vec()),
            ("later".into(), 0, b"0123456789".to_vec()),
            ("later".into(), 2, b"AB".to_vec()),
            ("later".into(), 9, b"Z".to_vec()),
        ]
    );
    m.unmount();
}

/// An unselected file open read-only (kernel passthrough) can be opened for writing too, and
/// a rule added meanwhile gets the file copied when that writer closes.
#[test]
fn a_file_open_in_passthrough_when_a_rule_begins_to_select_it_is_copied_at_close() {
    let l = Local::new();
    fs::write(l.path("plain"), b"before").unwrap();
    // Kernel passthrough is used only without the writeback cache (the kernel does not mix
    // them on one connection).
    let m = l.mount(&["--no-writeback-cache"]);
    let reader = fs::File::open(l.path("plain")).unwrap();
    subtree(&l);
    mirror_tests::wait_until(std::time::Duration::from_secs(10), "the rule", || {
        m.log_text().contains("rules changed")
    });
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(l.path("plain"))
        .unwrap();
    writer.write_all_at(b"AFTER!", 0).unwrap();
    drop(writer);
    drop(reader);
    let copies: Vec<_> = l
        .journal()
        .into_iter()
        .filter(|e| e.command == Command::Copy)
        .map(|e| mirror_tests::rel(&l.dir, &e.name))
        .collect();
    // The rule's first copy (its base, the project), queued as the mount loaded it, then
    // the copy at close.
    assert_eq!(copies, vec!["".to_string(), "plain".to_string()]);
    m.unmount();
}

/// The finding (xfstests generic/346, `holetest -w`): into a file made zero-filled, fallocated
/// or sparse, one thread writes a marker into every page through one shared mapping while
/// another writes its marker into every page with `pwrite`; one thread's stores read back as
/// zeros (a page cache of the mapping, and direct writes beside it).
#[test]
fn stores_through_a_shared_mapping_and_pwrite_by_two_threads_are_kept() {
    let l = Local::new();
    subtree(&l);
    let m = l.mount(&[]);
    const SIZE: usize = 32 << 20;
    const PAGES: usize = SIZE / 4096;
    let (mapped_at, written_at) = (512usize, 2560usize);
    let marker = |t: u64| (0x1111_1111_1111_1111u64 * (t + 1)).to_le_bytes();
    let check = |data: &[u8], what: &str| {
        let bad: Vec<usize> = (0..PAGES)
            .filter(|page| {
                let at = |o: usize| &data[page * 4096 + o..page * 4096 + o + 8];
                at(mapped_at) != marker(0) || at(written_at) != marker(1)
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: {} of {PAGES} pages lost a marker (first: {:?})",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    };
    let map = |f: &fs::File| {
        // SAFETY: a shared mapping of SIZE bytes of an open file; the caller unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(f),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p
    };
    for round in 0..2 {
        for how in ["zero-filled", "fallocated", "sparse"] {
            let name = format!("{how}-{round}");
            let f = Arc::new(
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(l.path(&name))
                    .unwrap(),
            );
            match how {
                "fallocated" => {
                    // SAFETY: plain syscall on an open descriptor.
                    let rc = unsafe {
                        libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&*f), 0, SIZE as i64)
                    };
                    assert_eq!(rc, 0);
                }
                _ => f.set_len(SIZE as u64).unwrap(),
            }
            if how == "zero-filled" {
                let p = map(&f);
                // SAFETY: the mapping just made, SIZE bytes.
                unsafe {
                    std::ptr::write_bytes(p as *mut u8, 0, SIZE);
                    assert_eq!(libc::munmap(p, SIZE), 0);
                }
            }
            let p = map(&f);
            let base = p as usize;
            // The writer starts first, as in holetest.
            let writer = {
                let f = f.clone();
                std::thread::spawn(move || {
                    for page in 0..PAGES {
                        f.write_all_at(&marker(1), (page * 4096 + written_at) as u64)
                            .unwrap();
                    }
                })
            };
            let mapper = std::thread::spawn(move || {
                for page in 0..PAGES {
                    // SAFETY: inside the mapping; the other thread writes other bytes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            marker(0).as_ptr(),
                            (base + page * 4096 + mapped_at) as *mut u8,
                            8,
                        )
                    };
                }
            });
            mapper.join().unwrap();
            writer.join().unwrap();
            check(
                // SAFETY: the mapping made above, SIZE bytes long.
                unsafe { std::slice::from_raw_parts(base as *const u8, SIZE) },
                &format!("{name}, through the mapping"),
            );
            // SAFETY: the mapping made above.
            unsafe { assert_eq!(libc::munmap(p, SIZE), 0) };
            drop(f);
            check(
                &fs::read(l.path(&name)).unwrap(),
                &format!("{name}, read back"),
            );
        }
    }
    // Every store is recorded: the journal's writes rebuild the file.
    let name = l.path("sparse-1");
    let mut rebuilt = vec![0u8; SIZE];
    for e in l.journal() {
        if e.command == Command::Write && e.name == name.as_os_str().as_encoded_bytes() {
            let end = (e.offset as usize + e.data.len()).min(SIZE);
            rebuilt[e.offset as usize..end].copy_from_slice(&e.data[..end - e.offset as usize]);
        }
    }
    check(&rebuilt, "sparse-1, from the journal");
    m.unmount();
    check(
        &fs::read(&name).unwrap(),
        "sparse-1, underneath after unmount",
    );
}
