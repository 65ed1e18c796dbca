//! Copy expansion (seeds/002 [0065]): a copy entry becomes the entries that recreate the file
//! as it is now: its data as writes, its holes as zero ranges (found with `SEEK_DATA` and
//! `SEEK_HOLE`: a sparse file stays sparse, and its holes are neither read, stored at the
//! router nor written into the backup), then its final size (and, with `--attrs`, its mode,
//! owner, times and xattrs). Each write's buffer is as large as the data it carries, so what
//! a frame of small files holds is what it sends. A directory becomes its subtree: a mkdir per selected directory
//! and the above per selected file, symlink and fifo.
//!
//! A copy of a name that no longer exists becomes its deletion (the copy's job is to make the
//! backup equal the source). A reconcile entry becomes the listing of its directory
//! ([`mirrorfs::entry::Listing`]: the names the rule selects, with kind, size and mtime),
//! in parts of at most [`LISTING_PART_BYTES`], each saying after which name it starts
//! (`aux`) and whether it is the last (`offset` 1).
//!
//! Parts are produced one at a time (a subtree may be large). All carry the copy entry's
//! journal position; the last says [`Part::Last`], so the router counts the position as
//! received only when the whole copy is durable. Copies the router asks for
//! ([`mirrorfs::wire::Msg::Resync`]) are [`Part::Extra`], and end with a [`Command::Copy`]
//! entry of the name asked for (the router skips it): it tells the router that the copy it
//! asked for is complete (or that there is nothing to send), so that it stops asking.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorfs::beneath::{Place, Root};
use mirrorfs::entry::{AttrChange, Command, Listed, Listing, Timestamp, LISTING_PART_BYTES};
use mirrorfs::journal::Position;
use mirrorfs::rule::{PatternKind, Rule};
use mirrorfs::wire::{Msg, Part, WireEntry};

use crate::delta::{Delta, Step};

/// Bytes per write part.
pub const CHUNK: usize = 1 << 20;

enum Task {
    Visit(Vec<u8>),
    /// List directory `name` for a reconcile, from after `after` (a name; empty: the start).
    List {
        name: Vec<u8>,
        after: Vec<u8>,
    },
    /// Read file `name` from `offset`; bytes before `data_end` are known to be data (past
    /// it, where the next data starts is asked with `SEEK_DATA`).
    File {
        name: Vec<u8>,
        file: File,
        offset: u64,
        data_end: u64,
    },
    Emit(WireEntry),
}

/// What the answer to a router's request for a copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The copy.
    Copy,
    /// The deletion (the name is gone here).
    Deletion,
    /// Nothing (refused).
    Nothing,
}

/// What a job was made for (to make it again: [`CopyJob::restart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Copy,
    Reconcile,
    Deletion,
    Requested(Answer),
}

/// Where a copy reads: its rule's base directory, held open, and every name beneath it
/// reached through no symbolic link ([`mirrorfs::beneath`]), so that a directory swapped for a
/// symlink while the copy runs cannot make it read anything the rule does not select.
///
/// The base is opened at the job's first look, not when the job is made: a dirty set or a
/// resync queues a job per file, and only the one being sent holds a descriptor.
struct Source {
    root: std::cell::OnceCell<io::Result<Root>>,
    base: Vec<u8>,
}

/// A name of a [`Source`], ready to be looked at.
enum Spot {
    /// The base directory itself.
    Base(PathBuf),
    /// A name in a directory opened beneath the base.
    In(Place),
}

impl Spot {
    /// A path to it that no call follows out of where it is (`lstat`, `open(O_NOFOLLOW)`,
    /// `readlink`, `llistxattr`); the base's follows to the base itself.
    fn path(&self) -> PathBuf {
        match self {
            Spot::Base(p) => p.clone(),
            Spot::In(p) => p.path(),
        }
    }

    /// Its status, not following a symlink.
    fn meta(&self) -> io::Result<fs::Metadata> {
        match self {
            Spot::Base(p) => fs::metadata(p),
            Spot::In(p) => fs::symlink_metadata(p.path()),
        }
    }

    /// The names in it (a directory), opened through no symlink.
    fn list(&self) -> io::Result<Vec<Vec<u8>>> {
        let names = |p: &Path| -> io::Result<Vec<Vec<u8>>> {
            fs::read_dir(p)?
                .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect()
        };
        match self {
            Spot::Base(p) => names(p),
            Spot::In(p) => {
                let dir = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(p.path())?;
                names(Path::new(&format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dir)
                )))
            }
        }
    }
}

/// Whether `e` says the name is not there as a plain path beneath the base (gone, under a
/// file, or reached through a symlink now): for a copy, it is gone.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
        )
}

impl Source {
    fn open(rule: &Rule) -> Source {
        let prefix = rule.spec.pattern.prefix();
        let base = match rule.spec.pattern.kind() {
            PatternKind::File => match prefix.iter().rposition(|&b| b == b'/') {
                Some(0) => b"/".to_vec(),
                Some(i) => prefix[..i].to_vec(),
                None => prefix.to_vec(),
            },
            _ => prefix.strip_suffix(b"/").unwrap_or(prefix).to_vec(),
        };
        Source {
            root: std::cell::OnceCell::new(),
            base,
        }
    }

    /// `name` (a full name beneath the base, or the base itself).
    fn spot(&self, name: &[u8]) -> io::Result<Spot> {
        let root = match self.root.get_or_init(|| source_root(&self.base)) {
            Ok(r) => r,
            Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
        };
        let rel = if name == self.base.as_slice() {
            &b""[..]
        } else if self.base == b"/" {
            name.strip_prefix(b"/").unwrap_or(name)
        } else {
            match name.strip_prefix(self.base.as_slice()) {
                Some([b'/', rest @ ..]) => rest,
                _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
            }
        };
        if rel.is_empty() {
            return Ok(Spot::Base(root.fd_path()));
        }
        root.place(path_of(rel), false).map(Spot::In)
    }
}

/// The identity (device, inode) of regular source file `name`, if it is one now, for the
/// index of what the sites hold ([`mirrorfs::shipped`]): looked at beneath the mount (the
/// directory it serves, as copies read it) when its mirrorfs runs, else through the name.
/// Nothing is held open (a remount warns of what another process holds open in the
/// directory), and a name reached through a symbolic link only gives a wrong identity, which
/// costs nothing: every reference is checked against the block's current sum, here and on
/// the router.
pub fn identity(name: &[u8]) -> Option<(u64, u64)> {
    let path = mount_status()
        .and_then(|st| st.beneath_path(name))
        .unwrap_or_else(|| path_of(name).to_path_buf());
    let m = fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.dev(), m.ino()))
}

/// One copy being expanded.
pub struct CopyJob {
    pos: Position,
    extra: bool,
    rule: Arc<Rule>,
    source: Source,
    name: Vec<u8>,
    origin: Origin,
    tasks: Vec<Task>,
    buffered: Option<WireEntry>,
    /// The source could not be read for now (a mount whose server is gone): the job stopped
    /// and is to be made again ([`CopyJob::restart`]); nothing it would still send is sent.
    unreachable: bool,
    /// Files read whole and data bytes read so far ([`CopyJob::progress`]).
    done: (u64, u64),
    /// The first name this job copied of each file with other hard links (device, inode):
    /// its other names are sent as links to it, so the backup keeps one file with many names.
    /// Shared by the jobs of one rule that send a dirty set ([`CopyJob::sharing_links`]).
    linked: Linked,
    /// Times a name looked gone through the mount while mirrorfs had it ([`CopyJob::vanished`]).
    looks: u32,
    /// The file being sent by differences ([`crate::delta`]): its name, the open file, the
    /// comparison.
    delta: Option<(Vec<u8>, File, Delta)>,
    /// The site the job sends to (what its router logs hold is looked up for it).
    site: Option<String>,
    /// The site's router answers at once (see [`CopyJob::for_site`]).
    live: bool,
    /// Skip files whose state is what their last acknowledged copy read
    /// ([`mirrorfs::entry::COPY_QUICK`]).
    quick: bool,
    /// The file being read and its state when it was opened; then the files sent whole, for
    /// the record of what was shipped ([`CopyJob::take_shipped`]).
    reading: Option<(Vec<u8>, mirrorfs::shipped::FileState)>,
    /// Files completed by the part being made, by the part buffered, and by the parts
    /// handed out (each released with the part that completes it).
    completing: Vec<(u32, Vec<u8>, mirrorfs::shipped::FileState)>,
    /// A file whose data is out, waiting for its last attribute part.
    finished: Option<(u32, Vec<u8>, mirrorfs::shipped::FileState)>,
    buffered_completes: Vec<(u32, Vec<u8>, mirrorfs::shipped::FileState)>,
    shipped: Vec<(u32, Vec<u8>, mirrorfs::shipped::FileState)>,
}

/// The control socket of the mirrorfs serving the sources (set once at start).
static MOUNT_SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The state directory of that mirrorfs.
static MOUNT_STATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Copies ask the mirrorfs of the state directory `state` before taking a name that looks
/// gone for a deletion ([`CopyJob::vanished`]), and read beneath its mount ([`source_root`]).
pub fn ask_mount_at(state: &mirrorfs::state::StateDir) {
    let _ = MOUNT_SOCKET.set(state.socket_path("mirrorfs"));
    let _ = MOUNT_STATE.set(state.root().to_path_buf());
}

/// Where a copy of rule base `base` reads: beneath the mount that serves it, when its
/// mirrorfs runs and lets this process in ([`mirrorfs::keeper::MountStatus::beneath_path`]),
/// so that a copy never waits on a directory a change holds locked in the kernel while that
/// change waits for this copy (a namespace change of a sync rule); else through the path.
fn source_root(base: &[u8]) -> io::Result<Root> {
    let beneath = mount_status().and_then(|st| st.beneath_path(base));
    if let Some(p) = beneath {
        match Root::open_as(&p, path_of(base)) {
            Ok(r) => return Ok(r),
            Err(e) => log::debug!(
                "cannot read {} beneath its mount ({e}); reading through it",
                String::from_utf8_lossy(base)
            ),
        }
    }
    Root::open(path_of(base))
}

/// The running mirrorfs's status, read again at most every [`STATUS_AGE`] (a copy per file
/// of a large `sync` would read it for each).
fn mount_status() -> Option<mirrorfs::keeper::MountStatus> {
    type Cached = Option<(std::time::Instant, Option<mirrorfs::keeper::MountStatus>)>;
    static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let state = MOUNT_STATE.get()?;
    let mut g = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*g {
        Some((at, st)) if at.elapsed() < STATUS_AGE && st.is_some() => st.clone(),
        _ => {
            let st = mirrorfs::keeper::MountStatus::load(state);
            *g = Some((std::time::Instant::now(), st.clone()));
            st
        }
    }
}

/// How long a read of the mount's status serves copies.
const STATUS_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the running mirrorfs has full name `name` beneath it (`false` when none runs or
/// it does not answer: then what the sender sees is all there is).
fn mount_has(name: &[u8]) -> bool {
    use mirrorfs::control::{Request, Response};
    let Some(sock) = MOUNT_SOCKET.get() else {
        return false;
    };
    let req = Request::Exists {
        name: name.to_vec(),
    };
    matches!(
        mirrorfs::control::request_within(sock, &req, std::time::Duration::from_secs(2)),
        Ok(Response::Exists { exists: true })
    )
}

/// Looks after which a name mirrorfs has but the mount does not show is reported.
const LOOKS_BEFORE_WARNING: u32 = 25;

/// The first name copied of each file with other hard links, by (device, inode).
pub type Linked = Arc<std::sync::Mutex<std::collections::HashMap<(u64, u64), Vec<u8>>>>;

/// Files with several names a job remembers at most (beyond, they are copied as separate
/// files: memory stays bounded).
const MAX_LINKED: usize = 100_000;

impl std::fmt::Debug for CopyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyJob")
            .field("pos", &self.pos)
            .field("extra", &self.extra)
            .finish()
    }
}

fn entry(command: Command, rule: &Rule, name: &[u8]) -> WireEntry {
    WireEntry {
        pos: Position::START,
        part: Part::More,
        command,
        rule_crc: rule.crc,
        name: name.to_vec(),
        aux: Vec::new(),
        offset: 0,
        size: 0,
        time_ns: mirrorfs::now_ns(),
        data: Vec::new(),
    }
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn path_of(name: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(name))
}

impl CopyJob {
    fn build(
        pos: Position,
        extra: bool,
        rule: Arc<Rule>,
        name: Vec<u8>,
        origin: Origin,
    ) -> CopyJob {
        let mut job = CopyJob {
            pos,
            extra,
            source: Source::open(&rule),
            rule,
            name: name.clone(),
            origin,
            tasks: Vec::new(),
            buffered: None,
            unreachable: false,
            done: (0, 0),
            linked: Linked::default(),
            looks: 0,
            delta: None,
            site: None,
            live: true,
            quick: false,
            reading: None,
            completing: Vec::new(),
            finished: None,
            buffered_completes: Vec::new(),
            shipped: Vec::new(),
        };
        let allowed = match mirrorfs::copycheck::may_copy(&job.rule.spec.pattern, &name) {
            Ok(()) => true,
            Err(e) if e.is_transient() => {
                log::info!(
                    "copy of {}: the source cannot be read now ({e}); trying again later",
                    shown(&name)
                );
                job.unreachable = true;
                false
            }
            Err(e) => {
                log::warn!("refused to copy: {e}");
                false
            }
        };
        let rule = job.rule.clone();
        let mut tasks = match (origin, allowed) {
            (_, false) => Vec::new(),
            (Origin::Copy | Origin::Requested(Answer::Copy), true) => {
                vec![Task::Visit(name.clone())]
            }
            (Origin::Reconcile, true) => vec![Task::List {
                name: name.clone(),
                after: Vec::new(),
            }],
            (Origin::Deletion | Origin::Requested(Answer::Deletion), true) => {
                vec![Task::Emit(entry(Command::Delete, &rule, &name))]
            }
            (Origin::Requested(Answer::Nothing), true) => Vec::new(),
        };
        if let Origin::Requested(_) = origin {
            if !job.unreachable {
                // The entry that says the answer is complete; tasks are taken from the end,
                // so it comes out last.
                tasks.insert(0, Task::Emit(entry(Command::Copy, &rule, &name)));
            }
        }
        job.tasks = tasks;
        job
    }

    /// The copy of `name` for `rule`, from the journal entry at `pos`. A name the rule may not
    /// copy ([`mirrorfs::copycheck`]) is refused with a warning: the job sends nothing.
    pub fn new(pos: Position, rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob::build(pos, false, rule, name, Origin::Copy)
    }

    /// The reconciliation of directory `name` for `rule`, from the journal entry at `pos`.
    pub fn reconcile(pos: Position, rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob::build(pos, false, rule, name, Origin::Reconcile)
    }

    /// A copy the router asked for (not from the journal).
    pub fn extra(rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob::build(Position::START, true, rule, name, Origin::Copy)
    }

    /// The answer to the router's request for `name` ([`mirrorfs::wire::Msg::Resync`]): its
    /// copy, its deletion (`Answer::Deletion`: it is gone here) or nothing, then the entry
    /// that says the answer is complete.
    pub fn requested(rule: Arc<Rule>, name: Vec<u8>, answer: Answer) -> CopyJob {
        CopyJob::build(Position::START, true, rule, name, Origin::Requested(answer))
    }

    /// Not a copy: the deletion of `name` on the backup (a dirty file that no longer exists
    /// at the source), not from the journal.
    pub fn deletion(rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob::build(Position::START, true, rule, name, Origin::Deletion)
    }

    /// How far a copy from the journal got: its entry's position, the files read whole and
    /// the data bytes read (`None` for copies not from the journal).
    pub fn progress(&self) -> Option<mirrorfs::control::CopyProgress> {
        (!self.extra && self.origin == Origin::Copy).then_some(mirrorfs::control::CopyProgress {
            pos: self.pos,
            files: self.done.0,
            bytes: self.done.1,
        })
    }

    /// Whether the job stopped because the source cannot be read for now.
    pub fn unreachable(&self) -> bool {
        self.unreachable
    }

    /// The same job from its start (after [`CopyJob::unreachable`]): what it sent already is
    /// sent again, which the backup takes as it took it the first time.
    pub fn restart(&self) -> CopyJob {
        CopyJob::build(
            self.pos,
            self.extra,
            self.rule.clone(),
            self.name.clone(),
            self.origin,
        )
        .sharing_links(&self.linked)
        .looked(self.looks)
    }

    fn looked(mut self, looks: u32) -> CopyJob {
        self.looks = looks;
        self
    }

    /// `name` looks gone through the mount: its deletion, unless mirrorfs has it. A rename
    /// that replaces a file is journaled before the kernel shows its result (it updates its
    /// names once mirrorfs answered), so for a moment the mount still shows the replaced
    /// file, whose open fails: taken for a deletion, that removed the backup of a file the
    /// source has. Then the job is made again a moment later (as for an unreachable source).
    fn vanished(&mut self, name: &[u8]) -> Option<WireEntry> {
        if !mount_has(name) {
            return Some(entry(Command::Delete, &self.rule, name));
        }
        self.looks += 1;
        if self.looks == LOOKS_BEFORE_WARNING {
            log::warn!(
                "copy of {}: mirrorfs has it but the mount does not show it yet; still trying",
                shown(name)
            );
        } else {
            log::debug!(
                "copy of {}: not visible through the mount yet; looking again",
                shown(name)
            );
        }
        self.unreachable = true;
        self.tasks.clear();
        self.buffered = None;
        None
    }

    /// This job, knowing the files with several names that `linked` says were copied (by
    /// earlier jobs of the same rule, sent before it): their other names go as links.
    pub fn sharing_links(mut self, linked: &Linked) -> CopyJob {
        self.linked = linked.clone();
        self
    }

    /// Notes a failure to read the source: a transient one stops the job for a restart;
    /// another is logged, and what it concerns is skipped.
    fn trouble(&mut self, what: &str, e: &io::Error) {
        if mirrorfs::copycheck::is_transient(e) {
            if !self.unreachable {
                log::info!("{what}: the source cannot be read now ({e}); trying again later");
            }
            self.unreachable = true;
            self.tasks.clear();
            self.buffered = None;
        } else {
            log::warn!("{what}: {e}");
        }
    }

    /// The next part, `None` when the copy is complete. A source that vanished sends nothing
    /// (its deletion follows in the journal).
    pub fn next_part(&mut self) -> Option<WireEntry> {
        loop {
            let raw = self.next_raw();
            if self.unreachable {
                // What is buffered would close the copy: never send it from a copy cut short.
                return None;
            }
            if raw.is_none() && self.waiting() {
                // The router's checksums come first; what is buffered is not the last part.
                return None;
            }
            let made = std::mem::take(&mut self.completing);
            let (out, last) = match (self.buffered.take(), raw) {
                (None, None) => return None,
                (None, Some(e)) => {
                    self.buffered = Some(e);
                    self.buffered_completes = made;
                    continue;
                }
                (Some(b), Some(e)) => {
                    self.buffered = Some(e);
                    let done = std::mem::replace(&mut self.buffered_completes, made);
                    self.shipped.extend(done);
                    (b, false)
                }
                (Some(b), None) => {
                    let done = std::mem::take(&mut self.buffered_completes);
                    self.shipped.extend(done);
                    self.shipped.extend(made);
                    (b, true)
                }
            };
            let part = match (self.extra, last) {
                (true, _) => Part::Extra,
                (false, true) => Part::Last,
                (false, false) => Part::More,
            };
            return Some(WireEntry {
                pos: self.pos,
                part,
                ..out
            });
        }
    }

    fn is_base(&self, name: &[u8]) -> bool {
        let p = self.rule.spec.pattern.prefix();
        name.len() + 1 == p.len() && p.starts_with(name)
    }

    /// The job sends to `site`: the blocks its router logs hold are sent as references;
    /// large files are compared with the backup first only when the router answers at once
    /// (`live`: not a spool site).
    pub fn for_site(&mut self, site: &str, live: bool) {
        self.site = Some(site.to_string());
        self.live = live;
    }

    /// The job skips files unchanged since their last acknowledged copy (a `sync`'s quick
    /// check).
    pub fn quick(mut self, on: bool) -> CopyJob {
        self.quick = on;
        self
    }

    /// The files this job has sent whole since the last call, with their state when read:
    /// recorded as shipped once the frame carrying their last part is acknowledged.
    pub fn take_shipped(&mut self) -> Vec<(u32, Vec<u8>, mirrorfs::shipped::FileState)> {
        std::mem::take(&mut self.shipped)
    }

    /// Whether file `name` (`meta`) is as it was when a copy last shipped it to this site:
    /// a quick copy ([`CopyJob::quick`]) then skips it.
    fn unchanged(&self, name: &[u8], meta: &fs::Metadata) -> bool {
        if !self.quick || self.extra || self.origin != Origin::Copy {
            return false;
        }
        let Some(site) = &self.site else {
            return false;
        };
        let crc = self.rule.crc;
        mirrorfs::shipped::with(|s| s.file_state(site, crc, name)).flatten()
            == Some(mirrorfs::shipped::FileState::of(meta))
    }

    /// Whether the job waits for the router's checksums of a file ([`CopyJob::sums_request`]).
    pub fn waiting(&self) -> bool {
        self.delta.as_ref().is_some_and(|(_, _, d)| d.waits())
    }

    /// The request for the router's checksums the job waits for, once.
    pub fn sums_request(&mut self) -> Option<Msg> {
        let crc = self.rule.crc;
        let (name, _, d) = self.delta.as_mut()?;
        d.request(crc, name)
    }

    /// The router's answer to a request for checksums.
    pub fn sums_answered(
        &mut self,
        id: u64,
        size: Option<u64>,
        sums: &[mirrorfs::blocksums::Sum],
        why: &str,
    ) {
        if let Some((_, _, d)) = self.delta.as_mut() {
            d.answered(id, size, sums, why);
        }
    }

    /// The next part of the file being sent by differences, if there is one.
    fn delta_part(&mut self) -> Option<WireEntry> {
        loop {
            let (name, file, d) = self.delta.as_mut()?;
            match d.next(file) {
                Step::Wait => return None,
                Step::Part(command, offset, size, data, aux) => {
                    self.done.1 += size;
                    let name = name.clone();
                    return Some(WireEntry {
                        offset,
                        size,
                        data,
                        aux,
                        ..entry(command, &self.rule, &name)
                    });
                }
                Step::Whole(why) => {
                    let (name, file, _) = self.delta.take()?;
                    log::info!("copy of {}: sent whole ({why})", shown(&name));
                    self.tasks.push(Task::File {
                        name,
                        file,
                        offset: 0,
                        data_end: 0,
                    });
                    return None;
                }
                Step::Done => {
                    let (name, file, d) = self.delta.take()?;
                    let e = self.finish_file(&name, &file, d.size());
                    if e.is_some() {
                        return e;
                    }
                }
            }
        }
    }

    fn next_raw(&mut self) -> Option<WireEntry> {
        if self.delta.is_some() {
            if let Some(e) = self.delta_part() {
                return Some(e);
            }
            if self.delta.is_some() {
                // Waiting for the router's checksums.
                return None;
            }
        }
        while let Some(task) = self.tasks.pop() {
            match task {
                Task::Emit(e) => return Some(e),
                Task::Visit(name) => {
                    // Everything of the file before is made.
                    self.completing.extend(self.finished.take());
                    if let Some(e) = self.visit(name) {
                        return Some(e);
                    }
                }
                Task::List { name, after } => {
                    if let Some(e) = self.list(name, after) {
                        return Some(e);
                    }
                }
                Task::File {
                    name,
                    file,
                    offset,
                    data_end,
                } => {
                    if let Some(e) = self.read_file(name, file, offset, data_end) {
                        return Some(e);
                    }
                }
            }
        }
        // The end of the job: the last file is complete with its last part.
        self.completing.extend(self.finished.take());
        None
    }

    /// The next part of the copy of file `name` at `offset`: a write of the data there (at
    /// most [`CHUNK`], in a buffer as large as what it holds), a zero range for a hole (sent
    /// as a hole: nothing is read, stored or written for it), or, at the end, the file's size
    /// (and attributes).
    fn read_file(
        &mut self,
        name: Vec<u8>,
        file: File,
        offset: u64,
        data_end: u64,
    ) -> Option<WireEntry> {
        if offset >= data_end {
            return match next_data(&file, offset) {
                Ok(Some((start, end))) => {
                    self.tasks.push(Task::File {
                        name: name.clone(),
                        file,
                        offset: start,
                        data_end: end,
                    });
                    // A hole counts as copied (status compares with the files' sizes).
                    self.done.1 += start - offset;
                    (start > offset).then(|| WireEntry {
                        offset,
                        size: start - offset,
                        ..entry(Command::Zero, &self.rule, &name)
                    })
                }
                Ok(None) => self.finish_file(&name, &file, offset),
                Err(e) => {
                    self.trouble(
                        &format!(
                            "copy of {}: looking for data at offset {offset} (the rest is skipped)",
                            shown(&name)
                        ),
                        &e,
                    );
                    None
                }
            };
        }
        let want = (data_end - offset).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        match file.read_at(&mut buf, offset) {
            Ok(n) if n > 0 => {
                self.done.1 += n as u64;
                buf.truncate(n);
                let e = WireEntry {
                    offset,
                    size: n as u64,
                    data: buf,
                    ..entry(Command::Write, &self.rule, &name)
                };
                let offset = offset + n as u64;
                // A short read: the file ended sooner than it said; look again there.
                let data_end = if n < want { offset } else { data_end };
                self.tasks.push(Task::File {
                    name,
                    file,
                    offset,
                    data_end,
                });
                Some(e)
            }
            Ok(_) => self.finish_file(&name, &file, offset),
            Err(e) => {
                self.trouble(
                    &format!(
                        "copy of {}: read at offset {offset} (the rest is skipped)",
                        shown(&name)
                    ),
                    &e,
                );
                None
            }
        }
    }

    /// The end of the copy of a file read up to `offset`: a hole to its end if it has one, its
    /// size, then its attributes.
    fn finish_file(&mut self, name: &[u8], file: &File, offset: u64) -> Option<WireEntry> {
        if let Some((n, state)) = self.reading.take() {
            if n == name {
                // Complete once its size and attributes are out too: at the next name.
                self.finished = Some((self.rule.crc, n, state));
            }
        }
        let m = file.metadata().ok();
        let size = m.as_ref().map_or(offset, |m| m.len());
        self.done.0 += 1;
        self.done.1 += size.saturating_sub(offset);
        if let Some(m) = &m {
            self.push_attrs(name, m);
        }
        let truncate = WireEntry {
            size,
            ..entry(Command::Truncate, &self.rule, name)
        };
        if size <= offset {
            return Some(truncate);
        }
        self.tasks.push(Task::Emit(truncate));
        Some(WireEntry {
            offset,
            size: size - offset,
            ..entry(Command::Zero, &self.rule, name)
        })
    }

    /// One part of the listing of directory `name` for a reconcile: the names the rule
    /// selects after `after`, as many as fit in a part (the rest is queued).
    fn list(&mut self, name: Vec<u8>, after: Vec<u8>) -> Option<WireEntry> {
        // A listing must be whole: a name left out would be deleted on the backup. Any error
        // but the directory being gone drops the listing.
        let names = self.source.spot(&name).and_then(|s| s.list());
        let mut names: Vec<Vec<u8>> = match names {
            Ok(n) => n
                .into_iter()
                .filter(|c| c.as_slice() > after.as_slice())
                .collect(),
            // Gone since: its removal is in the journal (or a reconcile of its parent).
            Err(e) if gone(&e) => return None,
            Err(e) => {
                self.trouble(&format!("reconcile of {}: cannot list", shown(&name)), &e);
                return None;
            }
        };
        let pattern = self.rule.spec.pattern.clone();
        let subtree = pattern.kind().is_subtree();
        names.sort();
        let mut listing = Listing::default();
        let mut bytes = 0;
        let mut more = false;
        for c in names {
            let mut full = name.clone();
            full.push(b'/');
            full.extend_from_slice(&c);
            let m = match self.source.spot(&full).and_then(|s| s.meta()) {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    self.trouble(&format!("reconcile of {}", shown(&full)), &e);
                    return None;
                }
            };
            let Some(kind) = Listed::kind_of(m.file_type()) else {
                continue;
            };
            let wanted = if kind == b'd' {
                subtree
            } else {
                pattern.match_file(&full).is_some()
            };
            if !wanted {
                continue;
            }
            if bytes + 23 + c.len() > LISTING_PART_BYTES && !listing.names.is_empty() {
                more = true;
                break;
            }
            bytes += 23 + c.len();
            listing.names.push(Listed {
                name: c,
                kind,
                size: if kind == b'f' { m.len() } else { 0 },
                mtime: Timestamp {
                    sec: m.mtime(),
                    nsec: m.mtime_nsec() as u32,
                },
            });
        }
        if more {
            let next_after = listing
                .names
                .last()
                .map(|l| l.name.clone())
                .unwrap_or_default();
            self.tasks.push(Task::List {
                name: name.clone(),
                after: next_after,
            });
        }
        Some(WireEntry {
            aux: after,
            offset: u64::from(!more),
            data: listing.encode(),
            ..entry(Command::Reconcile, &self.rule, &name)
        })
    }

    /// Starts on `name`; may return its first entry (a deletion if it is gone).
    fn visit(&mut self, name: Vec<u8>) -> Option<WireEntry> {
        let shown_name = shown(&name);
        let spot = match self.source.spot(&name) {
            Ok(s) => s,
            Err(e) if gone(&e) => return self.vanished(&name),
            Err(e) => {
                self.trouble(&format!("copy of {shown_name}"), &e);
                return None;
            }
        };
        let path = spot.path();
        let meta = match spot.meta() {
            Ok(m) => m,
            Err(e) if gone(&e) => {
                // The copy makes the backup equal the source: gone here, gone there too.
                return self.vanished(&name);
            }
            Err(e) => {
                self.trouble(&format!("copy of {shown_name}"), &e);
                return None;
            }
        };
        let ft = meta.file_type();
        let rule = self.rule.clone();
        let pattern = &rule.spec.pattern;
        if ft.is_dir() {
            let selected = self.is_base(&name) || pattern.match_dir(&name).is_some();
            let mut children = match spot.list() {
                Ok(c) => c,
                // Removed since it was looked at: gone here, gone there too.
                Err(e) if gone(&e) => return self.vanished(&name),
                Err(e) => {
                    self.trouble(&format!("copy of {shown_name}: cannot list"), &e);
                    Vec::new()
                }
            };
            if selected {
                self.push_attrs(&name, &meta);
            }
            children.sort();
            let subtree = pattern.kind().is_subtree();
            for c in children.into_iter().rev() {
                let mut full = name.clone();
                full.push(b'/');
                full.extend_from_slice(&c);
                if full.len() > mirrorfs::entry::MAX_NAME_LEN {
                    // No entry, journal or wire carries it (the mount refuses changes to
                    // such names): sent, it would end every session with the router.
                    log::error!(
                        "copy of {}: {} (a name of {} bytes under it) is longer than the {} bytes a name may have and cannot be mirrored; left out",
                        shown_name,
                        shown(&full[..full.len().min(200)]),
                        full.len(),
                        mirrorfs::entry::MAX_NAME_LEN
                    );
                    continue;
                }
                let is_dir = self
                    .source
                    .spot(&full)
                    .and_then(|s| s.meta())
                    .is_ok_and(|m| m.is_dir());
                let wanted = if is_dir {
                    subtree
                } else {
                    pattern.match_file(&full).is_some()
                };
                if wanted {
                    self.tasks.push(Task::Visit(full));
                }
            }
            if !selected || pattern.kind() == PatternKind::File {
                return None;
            }
            return Some(WireEntry {
                offset: u64::from(meta.mode()),
                ..entry(Command::Mkdir, &self.rule, &name)
            });
        }
        pattern.match_file(&name)?;
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            let mut linked = self
                .linked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(first) = linked.get(&key).filter(|f| **f != name) {
                // Another name of a file this job (or one before it) copied already.
                return Some(WireEntry {
                    aux: name,
                    ..entry(Command::Link, &self.rule, first)
                });
            }
            if linked.len() < MAX_LINKED {
                linked.insert(key, name.clone());
            }
            drop(linked);
        }
        if ft.is_file() {
            if self.unchanged(&name, &meta) {
                log::debug!(
                    "copy of {}: unchanged since it was shipped; skipped",
                    shown(&name)
                );
                // Shipped as it is now already: not read again.
                self.done.0 += 1;
                self.done.1 += meta.len();
                return None;
            }
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => {
                    if let Ok(m) = file.metadata() {
                        let state = mirrorfs::shipped::FileState::of(&m);
                        // A file changed within the last moments may change again within the
                        // same tick of its times (they are coarse): its state would then not
                        // show that change (git's "racily clean" files). Only a state older
                        // than that counts as shipped.
                        if state.settled(mirrorfs::now_ns()) {
                            self.reading = Some((name.clone(), state));
                        }
                    }
                    // A large file whose backup may hold most of it already: compared first.
                    // Copies the router asked for too (it may hold most of the file still),
                    // but only by what it reports it holds: a reference it could not resolve
                    // is what such a copy may answer, and must not be sent again.
                    let by_delta = self.live
                        && matches!(self.origin, Origin::Copy | Origin::Requested(Answer::Copy))
                        && crate::delta::worth(meta.len());
                    let known = || match (&self.site, self.origin) {
                        (Some(site), Origin::Copy) => {
                            mirrorfs::shipped::known(site, (meta.dev(), meta.ino()))
                        }
                        _ => Default::default(),
                    };
                    match by_delta.then(|| Delta::start(&file, meta.len(), known())) {
                        Some(Ok(d)) => {
                            self.delta = Some((name, file, d));
                            return self.delta_part();
                        }
                        Some(Err(e)) => {
                            self.trouble(&format!("copy of {shown_name}: read"), &e);
                            return None;
                        }
                        None => self.tasks.push(Task::File {
                            name,
                            file,
                            offset: 0,
                            data_end: 0,
                        }),
                    }
                }
                // Gone (or swapped for a symlink) since it was looked at.
                Err(e) if gone(&e) => return self.vanished(&name),
                Err(e) => self.trouble(&format!("copy of {shown_name}: cannot open"), &e),
            }
            return None;
        }
        if ft.is_symlink() {
            let target = match fs::read_link(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.trouble(&format!("copy of {shown_name}"), &e);
                    return None;
                }
            };
            self.push_attrs(&name, &meta);
            return Some(WireEntry {
                aux: target.as_os_str().as_bytes().to_vec(),
                ..entry(Command::Symlink, &self.rule, &name)
            });
        }
        if meta.mode() & libc::S_IFMT == libc::S_IFIFO {
            return Some(WireEntry {
                offset: u64::from(meta.mode()),
                ..entry(Command::Mknod, &self.rule, &name)
            });
        }
        None
    }

    /// Queues the attribute entries of `name` (they come out after what is queued later): its
    /// permission bits for every rule (a symlink has none), and with `--attrs` its owner,
    /// times, set-id bits and xattrs too.
    fn push_attrs(&mut self, name: &[u8], m: &fs::Metadata) {
        if !self.rule.spec.attrs {
            if !m.file_type().is_symlink() {
                let change = AttrChange {
                    mode: Some(m.mode() & 0o777),
                    ..AttrChange::default()
                };
                self.tasks.push(Task::Emit(WireEntry {
                    data: change.encode().to_vec(),
                    ..entry(Command::SetAttr, &self.rule, name)
                }));
            }
            return;
        }
        let ts = |sec: i64, nsec: i64| Timestamp {
            sec,
            nsec: nsec as u32,
        };
        let change = AttrChange {
            mode: (!m.file_type().is_symlink()).then_some(m.mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            atime: Some(ts(m.atime(), m.atime_nsec())),
            mtime: Some(ts(m.mtime(), m.mtime_nsec())),
        };
        // The spot holds the directory descriptor its path goes through: read while it lives.
        let xattrs = match self.source.spot(name) {
            Ok(s) => mirrorfs::xattr::of(&s.path()),
            Err(_) => Vec::new(),
        };
        // Tasks are taken from the end: the owner and mode go first (a change of owner clears
        // set-id bits and `security.capability`), then the attributes.
        for (k, v) in xattrs.into_iter().rev() {
            self.tasks.push(Task::Emit(WireEntry {
                aux: k,
                data: v,
                ..entry(Command::SetXattr, &self.rule, name)
            }));
        }
        self.tasks.push(Task::Emit(WireEntry {
            data: change.encode().to_vec(),
            ..entry(Command::SetAttr, &self.rule, name)
        }));
    }
}

/// The directories whose contents applying `e` changes on the backup: the parent of every
/// name it makes or removes (a copy's parts make their file), and a reconciled directory
/// itself (the router removes what it holds too many of).
pub fn changed_dirs(e: &WireEntry) -> Vec<&[u8]> {
    fn parent(n: &[u8]) -> Option<&[u8]> {
        match n.iter().rposition(|&b| b == b'/') {
            Some(0) => Some(&n[..1]),
            Some(i) => Some(&n[..i]),
            None => None,
        }
    }
    match e.command {
        Command::Create
        | Command::Delete
        | Command::Mkdir
        | Command::Rmdir
        | Command::Symlink
        | Command::Mknod => parent(&e.name).into_iter().collect(),
        Command::Link => parent(&e.aux).into_iter().collect(),
        Command::Rename => parent(&e.name).into_iter().chain(parent(&e.aux)).collect(),
        Command::Reconcile => vec![&e.name[..]],
        Command::Write | Command::Truncate | Command::Zero if e.part != Part::Whole => {
            parent(&e.name).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// The times directory `dir` has at the source now, as an [`Part::Extra`] attribute change
/// for `rule`: only with `--attrs`, and only for a directory the rule selects (its base, or
/// one a subtree rule reaches), looked at beneath the rule's base through no symlink. Sent
/// after the entries that changed what `dir` holds ([`changed_dirs`]), since applying those
/// sets the backup directory's modification time to the router's clock; the last one sent
/// carries the time the directory keeps, so the backup converges to it.
pub fn dir_times(rule: &Rule, dir: &[u8]) -> Option<WireEntry> {
    let pattern = &rule.spec.pattern;
    let prefix = pattern.prefix();
    let is_base = dir.len() + 1 == prefix.len() && prefix.starts_with(dir);
    if !rule.spec.attrs || !(is_base || pattern.match_dir(dir).is_some()) {
        return None;
    }
    let m = Source::open(rule).spot(dir).and_then(|s| s.meta()).ok()?;
    if !m.is_dir() {
        return None;
    }
    let ts = |sec: i64, nsec: i64| Timestamp {
        sec,
        nsec: nsec as u32,
    };
    let change = AttrChange {
        atime: Some(ts(m.atime(), m.atime_nsec())),
        mtime: Some(ts(m.mtime(), m.mtime_nsec())),
        ..AttrChange::default()
    };
    Some(WireEntry {
        part: Part::Extra,
        data: change.encode().to_vec(),
        ..entry(Command::SetAttr, rule, dir)
    })
}

/// Where the next data of `file` at or after `offset` is: `(start, end)` of that run of data
/// (`SEEK_DATA`, `SEEK_HOLE`), `None` when only a hole (or nothing) follows. Where the file
/// system cannot tell (`EINVAL`, `EOPNOTSUPP`), all of the file up to its size is data.
fn next_data(file: &File, offset: u64) -> io::Result<Option<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let seek = |at: u64, whence: libc::c_int| -> io::Result<u64> {
        let at =
            libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: plain syscall on a descriptor we hold; it moves only that descriptor's
        // position, which reads at explicit offsets never use.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        )
    };
    let start = match seek(offset, libc::SEEK_DATA) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if unsupported(&e) => {
            let size = file.metadata()?.len();
            return Ok((size > offset).then_some((offset, size)));
        }
        Err(e) => return Err(e),
    };
    let end = match seek(start, libc::SEEK_HOLE) {
        Ok(h) => h,
        // Data at `start` but no hole after it: it ended (or changed) in between.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => start,
        Err(e) if unsupported(&e) => file.metadata()?.len(),
        Err(e) => return Err(e),
    };
    // A file that changed between the two looks may give an empty run: read one chunk.
    Ok(Some((start, end.max(start + 1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> Arc<Rule> {
        use mirrorfs::rule::{Dest, Mode, Pattern, RuleSpec, Site};
        let spec = RuleSpec {
            pattern: Pattern::parse(pattern).unwrap(),
            sites: vec![Site::parse("127.0.0.1:1").unwrap()],
            dest: Dest::parse("d").unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Mode::Async,
            sync: Default::default(),
        };
        Arc::new(Rule {
            id: 1,
            crc: spec.crc(),
            spec,
        })
    }

    /// Every part of `job`, with a router that has no backup to compare with.
    fn parts(mut job: CopyJob) -> Vec<WireEntry> {
        let mut out = Vec::new();
        loop {
            match job.next_part() {
                Some(e) => out.push(e),
                None if job.waiting() => {
                    let Some(Msg::Sums { id, .. }) = job.sums_request() else {
                        panic!("waiting with no request");
                    };
                    job.sums_answered(id, None, &[], "no backup file");
                }
                None => return out,
            }
        }
    }

    /// An adversarial finding of issue 13: with `--attrs`, a copy sent no extended attributes.
    #[test]
    fn a_copy_with_attrs_sends_the_extended_attributes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"a").unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a 1-byte value.
        if unsafe { libc::lsetxattr(c.as_ptr(), c"user.k".as_ptr(), b"v".as_ptr().cast(), 1, 0) }
            != 0
        {
            return; // no user xattrs here
        }
        let r = rule(&format!("{}/", dir.display()));
        let mut spec = r.spec.clone();
        spec.attrs = true;
        let r = Arc::new(Rule {
            id: 1,
            crc: spec.crc(),
            spec,
        });
        let name = p.as_os_str().as_bytes().to_vec();
        let got = parts(CopyJob::new(Position::START, r, name));
        let cmds: Vec<Command> = got.iter().map(|e| e.command).collect();
        assert!(
            got.iter()
                .any(|e| e.command == Command::SetXattr && e.aux == b"user.k" && e.data == b"v"),
            "{cmds:?}"
        );
        // After the file's final size (the router puts the file in place there), owner and
        // mode before the attributes (a change of owner clears security.capability).
        let at = |c: Command| cmds.iter().position(|&x| x == c).unwrap();
        assert!(at(Command::Truncate) < at(Command::SetAttr), "{cmds:?}");
        assert!(at(Command::SetAttr) < at(Command::SetXattr), "{cmds:?}");
    }

    /// Holes are sent as zero ranges, data as writes no larger than it.
    #[test]
    fn a_sparse_file_is_sent_as_its_data_and_its_holes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        let p = dir.join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
        drop(f);
        let name = p.as_os_str().as_bytes().to_vec();
        let r = rule(&format!("{}/", dir.display()));
        let got: Vec<(Command, u64, u64, usize)> = parts(CopyJob::new(Position::START, r, name))
            .into_iter()
            .map(|e| {
                let data = if e.command == Command::SetAttr {
                    0
                } else {
                    e.data.len()
                };
                (e.command, e.offset, e.size, data)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Command::Zero, 0, 1 << 20, 0),
                (Command::Write, 1 << 20, 4096, 4096),
                (Command::Zero, (1 << 20) + 4096, (7 << 20) - 4096, 0),
                (Command::Truncate, 0, 8 << 20, 0),
                (Command::SetAttr, 0, 0, 0),
            ]
        );
    }

    /// A write's buffer is as large as its data (a small file's part held 1 MiB: issue 13).
    #[test]
    fn a_small_files_write_holds_no_more_than_its_data() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        let p = dir.join("small");
        std::fs::write(&p, b"tiny").unwrap();
        let r = rule(&format!("{}/", dir.display()));
        let write = parts(CopyJob::new(
            Position::START,
            r,
            p.as_os_str().as_bytes().to_vec(),
        ))
        .into_iter()
        .find(|e| e.command == Command::Write)
        .unwrap();
        assert_eq!(write.data, b"tiny");
        assert!(write.data.capacity() < 64, "{}", write.data.capacity());
    }

    /// Jobs waiting in a queue (a dirty set, a resync) hold no descriptor: only the job being
    /// sent opens its rule's base.
    #[test]
    fn queued_jobs_hold_no_descriptor() {
        let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let r = rule(&format!("{}/", dir.display()));
        let name = dir.join("f").as_os_str().as_bytes().to_vec();
        let before = fds();
        let jobs: Vec<CopyJob> = (0..2000)
            .map(|_| CopyJob::extra(r.clone(), name.clone()))
            .collect();
        // (Other tests of this binary run beside it: a margin far below 2,000.)
        assert!(
            fds() < before + 500,
            "{} descriptors for {} jobs",
            fds() - before,
            jobs.len()
        );
        let mut first = jobs.into_iter().next().unwrap();
        assert!(first.next_part().is_some());
    }
}
