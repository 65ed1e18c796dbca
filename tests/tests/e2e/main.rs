//! End-to-end tests: real mirrorfs mounts and real daemons over loopback.
//! One test binary; each module covers one area.

// mirrorfs: each operation's effect underneath and its exact journal entries.
mod fs_recording;
// mirrorfs: rules changing while mounted, handles open across rule changes.
mod fs_rules_live;
// mirrorfs: mount lifecycle (signals, fusermount3 -u, dead mounts, refusals).
mod fs_mount;
// mirrorfs: a random read/write/truncate/mmap exerciser checked against a model.
mod fs_exerciser;
// mirrorfs: pjdfstest against the plain directory.
mod fs_conformance;
// forwarding: every operation kind reaches the backup; delete suffix; --attrs; validation.
mod mirror_ops;
// forwarding: random workloads, kill -9 of sender and router.
mod mirror_workload;
// forwarding: several sources, several routers, rules added live, sync.
mod mirror_topology;
// outages: kill -9 at random, a cut network, full and unwritable backups, the queue limit,
// a torn journal tail.
mod outage_faults;
// security: a hostile peer speaking the protocol: authentication, confinement, limits.
mod security_hostile;
// trust: site namespaces on the router, site ids, unconfined keys, overlapping destinations.
mod trust_namespaces;
// security: the local threat model: private state and sockets, checked copy requests.
mod security_local;
// crash safety: kill -9 of mirrorfs under writers, changes made while unmounted.
mod crash_recording;
// outages: a network cut is reported while it lasts (issue 12 item 9).
mod outage_detection;
// outages: a damaged journal record blocks, backs off, is skipped and resynced (issue 12 item 7).
mod journal_damage;
// journal: small rotating segments, deletes and sender kills (issue 12 item 12).
mod journal_rotation;
// router faults: sessions that end whatever fails (kill -9 mid-stream, a full router-log disk),
// damaged router logs (checksums, quarantine), copies asked for while a source is away.
mod router_faults;
// the power-loss layer (lossyfs) itself: what a power loss keeps, drops and tears.
mod lossy_harness;
// the power-loss layer against a reference model of POSIX durability (random operations).
mod lossy_model;
// the power-loss layer with SQLite: committed transactions survive where SQLite says they do.
mod lossy_sqlite;
// mirror on the power-loss layer: a state directory whose disk loses power.
mod lossy_mirror;
// mirrorfs: one I/O mode per open file (no EIO for mixed opens), stores through shared mappings.
mod fs_iomode;
// mirrorfs: set-id bits cleared by another user's write or truncate, as on ext4.
mod fs_setid;
// a full or failing journal disk: ENOSPC before the change, marks, small state disks.
mod journal_full;
// Buffered writes through the kernel's writeback cache (issue 14).
mod buffered_writes;
// power losses of the source, the router and both under an fsync'ing ledger workload.
mod power_loss;
// the delete suffix: replaced and deleted files kept, earlier versions never overwritten
// (issue 13 item 4).
mod mirror_kept_versions;
// commands that never mislead: no state made by reading, a failed mount, router status, the
// last error's time (issue 13 item 6).
mod ctl_state;
// executable bits without --attrs: a built program runs from the backup, git sees no mode
// change (issue 13 item 7).
mod mirror_exec_bits;
// the README's test command installs what a fresh machine lacks (issue 13 item 8).
mod test_setup;
// a rule's first copy (`rule add`, `--no-sync`, status), no patchwork backups, `rule rm`
// (issue 13 items 1 and 10).
mod first_copy;
// sync at scale (memory bounded in every process), its errors, --dry-run, sparse copies.
mod sync_scale;
// restore: a backup fetched back (git fsck, cargo build in the copy), sub-paths, confinement
// to the site's namespace (issue 13 item 9).
mod restore;
// conformance gaps against ext4 found by xfstests: fstat after a rename over an open file,
// names moved through another mount, file handles (issue 13 item 5).
mod fs_ext4_parity;
// paths longer than PATH_MAX: reached through the mount as on ext4, mirrored live, synced and
// restored (issue 13 item 5).
mod long_paths;
// synchronous mirroring per rule: durability points wait for the sites (issue 15).
mod sync_mode;
// n connections per site: one stream striped and put back in order, a connection reset, kill -9.
mod n_connections;
/// Copies that send references to what the backup holds (issue 16 items 1-2).
mod resync_refs;
// verify: every category of difference on a prepared backup, --repair, orphans, exit statuses
// (issue 16 item 3).
mod verify;

// Spool sites: spool files carried by rsync and rclone (issue 17).
mod spool;
