//! The power-loss layer against a reference model: random file and namespace operations
//! (create, write, truncate, fsync, mkdir, rmdir, unlink, rename of files and directories
//! across directories, hard links, symlinks, directory fsyncs) on a real mount, mirrored on a
//! small in-memory model of POSIX durability; after each power loss the tree must be exactly
//! the model's durable tree (names, kinds, content, which names are hard links of each other).
//! The model is independent of the layer's code: it says what is durable, the layer must
//! produce it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use mirror_tests::{LossyFs, LossyOpts};

#[derive(Clone, Debug)]
enum Obj {
    File {
        cur: Vec<u8>,
        dur: Vec<u8>,
    },
    Dir {
        cur: BTreeMap<String, usize>,
        dur: BTreeMap<String, usize>,
    },
    Symlink(String),
}

struct Model {
    objs: Vec<Obj>,
}

const ROOT: usize = 0;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn name(&mut self) -> String {
        ["a", "b", "c", "d", "e"][self.below(5)].to_string()
    }
}

impl Model {
    fn new() -> Model {
        Model {
            objs: vec![Obj::Dir {
                cur: BTreeMap::new(),
                dur: BTreeMap::new(),
            }],
        }
    }

    fn cur(&self, d: usize) -> &BTreeMap<String, usize> {
        match &self.objs[d] {
            Obj::Dir { cur, .. } => cur,
            _ => unreachable!("not a directory"),
        }
    }

    fn cur_mut(&mut self, d: usize) -> &mut BTreeMap<String, usize> {
        match &mut self.objs[d] {
            Obj::Dir { cur, .. } => cur,
            _ => unreachable!("not a directory"),
        }
    }

    fn is_dir(&self, o: usize) -> bool {
        matches!(self.objs[o], Obj::Dir { .. })
    }

    /// Every directory reachable now, with its path relative to the root.
    fn dirs(&self) -> Vec<(usize, PathBuf)> {
        let mut out = vec![(ROOT, PathBuf::new())];
        let mut i = 0;
        while i < out.len() {
            let (d, p) = out[i].clone();
            for (n, &o) in self.cur(d) {
                if self.is_dir(o) {
                    out.push((o, p.join(n)));
                }
            }
            i += 1;
        }
        out
    }

    /// Whether `inner` is `outer` or beneath it now.
    fn within(&self, inner: usize, outer: usize) -> bool {
        let mut stack = vec![outer];
        while let Some(d) = stack.pop() {
            if d == inner {
                return true;
            }
            stack.extend(self.cur(d).values().filter(|&&o| self.is_dir(o)));
        }
        false
    }

    /// The tree a power loss must leave: durable entries from the root, breadth-first in
    /// name order, a directory at the first durable name met; files with their durable
    /// content. (path → object)
    fn durable_tree(&self) -> BTreeMap<PathBuf, usize> {
        let mut out = BTreeMap::new();
        let mut placed = vec![ROOT];
        let mut queue = VecDeque::from([(ROOT, PathBuf::new())]);
        while let Some((d, p)) = queue.pop_front() {
            let Obj::Dir { dur, .. } = &self.objs[d] else {
                unreachable!()
            };
            for (n, &o) in dur {
                if self.is_dir(o) {
                    if placed.contains(&o) {
                        continue;
                    }
                    placed.push(o);
                    queue.push_back((o, p.join(n)));
                }
                out.insert(p.join(n), o);
            }
        }
        out
    }

    /// After a power loss: only the durable state is left.
    fn lose_power(&mut self) {
        let tree = self.durable_tree();
        let mut objs = self.objs.clone();
        for o in objs.iter_mut() {
            match o {
                Obj::File { cur, dur } => *cur = dur.clone(),
                Obj::Dir { cur, .. } => cur.clear(),
                Obj::Symlink(_) => {}
            }
        }
        for (p, &o) in &tree {
            let parent = match p.parent().filter(|q| !q.as_os_str().is_empty()) {
                Some(q) => tree[q],
                None => ROOT,
            };
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if let Obj::Dir { cur, .. } = &mut objs[parent] {
                cur.insert(n, o);
            }
        }
        for o in objs.iter_mut() {
            if let Obj::Dir { cur, dur } = o {
                *dur = cur.clone();
            }
        }
        self.objs = objs;
    }

    /// The current tree: path → what it is ("dir", content, "-> target").
    fn current(&self) -> BTreeMap<PathBuf, (String, usize)> {
        let mut out = BTreeMap::new();
        for (d, p) in self.dirs() {
            for (n, &o) in self.cur(d) {
                out.insert(p.join(n), (self.show(o, false), o));
            }
        }
        out
    }

    fn show(&self, o: usize, durable: bool) -> String {
        match &self.objs[o] {
            Obj::Dir { .. } => "dir".into(),
            Obj::File { cur, dur } => {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(if durable { dur } else { cur })
                )
            }
            Obj::Symlink(t) => format!("-> {t}"),
        }
    }
}

/// The tree under `root`: path → what it is, and the inode of each.
fn real_tree(root: &Path) -> BTreeMap<PathBuf, (String, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            let what = if m.is_dir() {
                stack.push(r.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!(
                    "-> {}",
                    fs::read_link(root.join(&r)).unwrap().to_string_lossy()
                )
            } else {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&fs::read(root.join(&r)).unwrap())
                )
            };
            out.insert(r, (what, m.ino()));
        }
    }
    out
}

/// Checks the real tree against the model's view (`tree`: path → object, `durable`: show
/// durable contents): same paths and contents, and two paths share an inode exactly when
/// they name the same object.
fn check(
    what: &str,
    model: &Model,
    tree: &BTreeMap<PathBuf, usize>,
    durable: bool,
    real: &BTreeMap<PathBuf, (String, u64)>,
) {
    let want: BTreeMap<&PathBuf, String> = tree
        .iter()
        .map(|(p, &o)| (p, model.show(o, durable)))
        .collect();
    let got: BTreeMap<&PathBuf, String> = real.iter().map(|(p, (w, _))| (p, w.clone())).collect();
    assert_eq!(got, want, "{what}: the tree differs from the model");
    let mut ino_of: HashMap<usize, u64> = HashMap::new();
    let mut obj_of: HashMap<u64, usize> = HashMap::new();
    for (p, &o) in tree {
        let ino = real[p].1;
        assert_eq!(
            *ino_of.entry(o).or_insert(ino),
            ino,
            "{what}: {} is not the same inode as the other names of its object",
            p.display()
        );
        assert_eq!(
            *obj_of.entry(ino).or_insert(o),
            o,
            "{what}: {} shares an inode with another object",
            p.display()
        );
    }
}

fn fsync_path(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum K {
    File,
    Symlink,
    EmptyDir,
    Dir,
}

/// A directory entry: name, object, kind.
type Ent = (String, usize, K);

/// One random operation, on the mount and on the model.
fn step(rng: &mut Rng, m: &mut Model, mnt: &Path, log: &mut Vec<String>) {
    let dirs = m.dirs();
    let (d, dp) = dirs[rng.below(dirs.len())].clone();
    let entries: Vec<Ent> = m
        .cur(d)
        .iter()
        .map(|(n, &o)| {
            let k = match &m.objs[o] {
                Obj::File { .. } => K::File,
                Obj::Symlink(_) => K::Symlink,
                Obj::Dir { cur, .. } if cur.is_empty() => K::EmptyDir,
                Obj::Dir { .. } => K::Dir,
            };
            (n.clone(), o, k)
        })
        .collect();
    let pick = |rng: &mut Rng, f: &dyn Fn(K) -> bool| {
        let c: Vec<&Ent> = entries.iter().filter(|e| f(e.2)).collect();
        (!c.is_empty()).then(|| {
            let e = c[rng.below(c.len())];
            (e.0.clone(), e.1)
        })
    };
    let is_file = |k: K| k == K::File;
    let name = rng.name();
    let path = mnt.join(&dp).join(&name);
    match rng.below(14) {
        0 | 1 if !m.cur(d).contains_key(&name) => {
            log.push(format!("create {}", dp.join(&name).display()));
            File::create_new(&path).unwrap();
            m.objs.push(Obj::File {
                cur: Vec::new(),
                dur: Vec::new(),
            });
            let o = m.objs.len() - 1;
            m.cur_mut(d).insert(name, o);
        }
        2 | 3 => {
            if let Some((n, o)) = pick(rng, &is_file) {
                let off = rng.below(12);
                let data: Vec<u8> = (0..1 + rng.below(6))
                    .map(|_| b'a' + rng.below(26) as u8)
                    .collect();
                log.push(format!(
                    "write {} at {off}: {:?}",
                    dp.join(&n).display(),
                    String::from_utf8_lossy(&data)
                ));
                let f = OpenOptions::new()
                    .write(true)
                    .open(mnt.join(&dp).join(&n))
                    .unwrap();
                f.write_all_at(&data, off as u64).unwrap();
                if let Obj::File { cur, .. } = &mut m.objs[o] {
                    if cur.len() < off + data.len() {
                        cur.resize(off + data.len(), 0);
                    }
                    cur[off..off + data.len()].copy_from_slice(&data);
                }
            }
        }
        4 => {
            if let Some((n, o)) = pick(rng, &is_file) {
                let size = rng.below(10);
                log.push(format!("truncate {} to {size}", dp.join(&n).display()));
                OpenOptions::new()
                    .write(true)
                    .open(mnt.join(&dp).join(&n))
                    .unwrap()
                    .set_len(size as u64)
                    .unwrap();
                if let Obj::File { cur, .. } = &mut m.objs[o] {
                    cur.resize(size, 0);
                }
            }
        }
        5 => {
            if let Some((n, o)) = pick(rng, &is_file) {
                log.push(format!("fsync {}", dp.join(&n).display()));
                fsync_path(&mnt.join(&dp).join(&n));
                if let Obj::File { cur, dur } = &mut m.objs[o] {
                    *dur = cur.clone();
                }
            }
        }
        6 | 7 => {
            log.push(format!("fsync dir /{}", dp.display()));
            fsync_path(&mnt.join(&dp));
            if let Obj::Dir { cur, dur } = &mut m.objs[d] {
                *dur = cur.clone();
            }
        }
        8 if !m.cur(d).contains_key(&name) && dirs.len() < 12 => {
            log.push(format!("mkdir {}", dp.join(&name).display()));
            fs::create_dir(&path).unwrap();
            m.objs.push(Obj::Dir {
                cur: BTreeMap::new(),
                dur: BTreeMap::new(),
            });
            let o = m.objs.len() - 1;
            m.cur_mut(d).insert(name, o);
        }
        9 => {
            if let Some((n, o)) = pick(rng, &|k| k != K::Dir) {
                log.push(format!("remove {}", dp.join(&n).display()));
                if m.is_dir(o) {
                    fs::remove_dir(mnt.join(&dp).join(&n)).unwrap();
                } else {
                    fs::remove_file(mnt.join(&dp).join(&n)).unwrap();
                }
                m.cur_mut(d).remove(&n);
            }
        }
        10 | 11 => {
            // Rename anywhere (a file over a file, a directory over an empty directory).
            let Some((n, o)) = pick(rng, &|_| true) else {
                return;
            };
            let (d2, dp2) = dirs[rng.below(dirs.len())].clone();
            let target = m.cur(d2).get(&name).copied();
            let ok = match target {
                None => true,
                Some(t) if t == o => true,
                Some(t) => {
                    if m.is_dir(o) {
                        m.is_dir(t) && m.cur(t).is_empty()
                    } else {
                        !m.is_dir(t)
                    }
                }
            };
            if !ok || (m.is_dir(o) && m.within(d2, o)) {
                return;
            }
            log.push(format!(
                "rename {} -> {}",
                dp.join(&n).display(),
                dp2.join(&name).display()
            ));
            fs::rename(mnt.join(&dp).join(&n), mnt.join(&dp2).join(&name)).unwrap();
            if target != Some(o) {
                m.cur_mut(d).remove(&n);
                m.cur_mut(d2).insert(name, o);
            }
        }
        12 => {
            let Some((n, o)) = pick(rng, &is_file) else {
                return;
            };
            let (d2, dp2) = dirs[rng.below(dirs.len())].clone();
            if m.cur(d2).contains_key(&name) {
                return;
            }
            log.push(format!(
                "link {} -> {}",
                dp.join(&n).display(),
                dp2.join(&name).display()
            ));
            fs::hard_link(mnt.join(&dp).join(&n), mnt.join(&dp2).join(&name)).unwrap();
            m.cur_mut(d2).insert(name, o);
        }
        13 if !m.cur(d).contains_key(&name) => {
            let target = format!("t{}", rng.below(100));
            log.push(format!("symlink {} -> {target}", dp.join(&name).display()));
            std::os::unix::fs::symlink(&target, &path).unwrap();
            m.objs.push(Obj::Symlink(target));
            let o = m.objs.len() - 1;
            m.cur_mut(d).insert(name, o);
        }
        _ => {}
    }
}

#[test]
fn random_operations_leave_exactly_the_durable_tree_after_each_power_loss() {
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let keys = [
        "dirs_reverted",
        "names_dropped",
        "names_restored",
        "dirs_deduplicated",
        "files_reverted",
    ];
    for seed in 1..=30u64 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (backing, mnt) = (root.join("b"), root.join("m"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let mut layer = LossyFs::mount(&backing, &mnt, LossyOpts::default());
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut model = Model::new();
        let mut log = Vec::new();
        for phase in 0..4 {
            for _ in 0..60 {
                step(&mut rng, &mut model, &mnt, &mut log);
            }
            let what = format!(
                "seed {seed} phase {phase} before the loss\n{}",
                log.join("\n")
            );
            let cur: BTreeMap<PathBuf, usize> = model
                .current()
                .into_iter()
                .map(|(p, (_, o))| (p, o))
                .collect();
            check(&what, &model, &cur, false, &real_tree(&mnt));
            let report = layer.power_loss(false);
            for k in keys {
                *totals.entry(k).or_default() += report[k].as_u64().unwrap_or(0);
            }
            let want = model.durable_tree();
            let what = format!(
                "seed {seed} phase {phase} after the loss ({report})\n{}",
                log.join("\n")
            );
            check(&what, &model, &want, true, &real_tree(&backing));
            layer.remount();
            check(&what, &model, &want, true, &real_tree(&mnt));
            model.lose_power();
            log.push(format!("--- power loss {phase}"));
        }
    }
    // The workload reached every part of the restore.
    eprintln!("power-loss totals: {totals:?}");
    for k in keys {
        assert!(totals[k] > 0, "no power loss had {k}: {totals:?}");
    }
}
