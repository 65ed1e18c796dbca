//! `mirrorfs DIR`: mounts the mirroring filesystem over DIR itself.
fn main() {}
