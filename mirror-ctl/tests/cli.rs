//! `mirror-ctl rule …` on the real binary: output, errors that name the bad part, exit codes,
//! and nothing written on error.

use std::path::Path;
use std::process::{Command, Output};

struct Env {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    src: std::path::PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("proj");
    std::fs::create_dir_all(src.join("a")).unwrap();
    Env {
        state: tmp.path().join("state"),
        src,
        _tmp: tmp,
    }
}

/// Runs mirror-ctl; `rule add` without asking a router (no router runs in these tests).
fn ctl(state: &Path, args: &[&str]) -> Output {
    if args.starts_with(&["rule", "add"]) {
        ctl_as_is(state, &[args, &["--no-validate"]].concat())
    } else {
        ctl_as_is(state, args)
    }
}

/// Runs mirror-ctl with exactly `args`.
fn ctl_as_is(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirror-ctl"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `rule add PATTERN --site 127.0.0.1:9 --dest d`: a site where no router listens.
fn add_to_a_closed_port(pattern: &str) -> [&str; 7] {
    [
        "rule",
        "add",
        pattern,
        "--site",
        "127.0.0.1:9",
        "--dest",
        "d",
    ]
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "unexpectedly succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn rule_count(state: &Path) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&ctl(state, &["rule", "list", "--json"]))).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn add_list_rm() {
    let e = env();
    let sub = format!("{}/a/", e.src.display());
    let wild = format!("{}/*.doc/", e.src.display());
    let out = ok(&ctl(
        &e.state,
        &[
            "rule",
            "add",
            &sub,
            "--site",
            "127.0.0.1:7070",
            "--dest",
            "d",
        ],
    ));
    assert!(out.starts_with("added rule 1: "), "{out}");
    ok(&ctl(
        &e.state,
        &[
            "rule",
            "add",
            &wild,
            "--site",
            "h:1",
            "--site",
            "[::1]:2",
            "--dest",
            "docs/",
            "--attrs",
            "--delete-suffix",
            ".gone",
        ],
    ));
    let table = ok(&ctl(&e.state, &["rule", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  PATTERN"), "{table}");
    assert!(
        lines[1].contains(&sub) && lines[1].contains("subtree"),
        "{table}"
    );
    assert!(
        lines[2].contains("subtree-wildcard") && lines[2].contains("h:1,[::1]:2"),
        "{table}"
    );
    assert!(
        lines[2].contains(".gone") && lines[2].contains("yes"),
        "{table}"
    );
    assert!(table.contains("configuration version 2"), "{table}");

    let v: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&e.state, &["rule", "list", "--json"]))).unwrap();
    assert_eq!(v[1]["pattern"], wild.as_str());
    assert_eq!(v[1]["kind"], "subtree-wildcard");
    assert_eq!(v[1]["sites"], serde_json::json!(["h:1", "[::1]:2"]));
    assert_eq!(v[1]["dest"], "docs");
    assert_eq!(v[1]["attrs"], true);
    assert_eq!(v[1]["delete_suffix"], ".gone");
    assert_eq!(v[1]["mode"], "async");
    assert_eq!(v[0]["delete_suffix"], serde_json::Value::Null);

    ok(&ctl(&e.state, &["rule", "rm", "1"]));
    assert_eq!(rule_count(&e.state), 1);
    fails_with(&ctl(&e.state, &["rule", "rm", "1"]), "no rule with id 1");
}

#[test]
fn every_refusal_names_its_cause_and_writes_nothing() {
    let e = env();
    let sub = format!("{}/a/", e.src.display());
    ok(&ctl(
        &e.state,
        &["rule", "add", &sub, "--site", "h:1", "--dest", "d"],
    ));
    let missing = format!("{}/missing/", e.src.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "rel/x/".into(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "is not absolute",
        ),
        (
            vec![
                format!("{}/*/x", e.src.display()),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "wildcard in directory component \"*\"",
        ),
        (
            vec![
                format!("{}/a/[x", e.src.display()),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "bad wildcard \"[x\"",
        ),
        (
            vec![
                format!("{}//a/", e.src.display()),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "not normalised",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "../up".into(),
            ],
            "contains '..'",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "/abs".into(),
            ],
            "is absolute",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "nohost".into(),
                "--dest".into(),
                "d".into(),
            ],
            "site \"nohost\" has no ':PORT'",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "h:99999".into(),
                "--dest".into(),
                "d".into(),
            ],
            "port that is not a number",
        ),
        (
            vec![sub.clone(), "--dest".into(), "d".into()],
            "--site <HOST:PORT>",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
                "--delete-suffix".into(),
                "a/b".into(),
            ],
            "delete suffix \"a/b\"",
        ),
        (
            vec![
                missing.clone(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "source directory",
        ),
        (
            vec![
                sub.clone(),
                "--site".into(),
                "h:1".into(),
                "--dest".into(),
                "d".into(),
            ],
            "already mirrors",
        ),
    ];
    for (args, needle) in cases {
        let mut a: Vec<&str> = vec!["rule", "add"];
        a.extend(args.iter().map(String::as_str));
        fails_with(&ctl(&e.state, &a), needle);
    }
    let table = ok(&ctl(&e.state, &["rule", "list"]));
    assert!(table.contains("configuration version 1"), "{table}");
    assert_eq!(rule_count(&e.state), 1);
}

#[test]
fn state_dir_from_environment() {
    let e = env();
    let sub = format!("{}/a/", e.src.display());
    let out = Command::new(env!("CARGO_BIN_EXE_mirror-ctl"))
        .args([
            "rule",
            "add",
            &sub,
            "--site",
            "h:1",
            "--dest",
            "d",
            "--no-validate",
        ])
        .env("MIRROR_STATE", &e.state)
        .output()
        .unwrap();
    ok(&out);
    assert!(e.state.join("rules.db").exists());
    assert_eq!(rule_count(&e.state), 1);
}

#[test]
fn status_and_unblock_without_daemons() {
    let e = env();
    // No local system yet: status says so, and makes none (issue 13 item 6).
    fails_with(&ctl(&e.state, &["status"]), "no local system at");
    assert!(!e.state.exists());
    let pattern = format!("{}/", e.src.display());
    ok(&ctl(&e.state, &add_to_a_closed_port(&pattern)));
    // From the files when mirror-sendd is not running.
    let out = ok(&ctl(&e.state, &["status"]));
    assert!(out.contains("mirror-sendd is not running"), "{out}");
    assert!(out.contains("127.0.0.1:9"), "{out}");
    // The rule's first copy waits for the site.
    assert!(out.contains("initial copy: "), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&e.state, &["status", "--json"]))).unwrap();
    assert_eq!(json[0]["site"], "127.0.0.1:9");
    assert_eq!(json[0]["queued_entries"], 1, "the first copy");
    assert_eq!(json[0]["initial_copies"].as_array().map(Vec::len), Some(1));
    assert_eq!(json[0]["sender_running"], false);
    // Unblock needs the running sender, and says which socket it tried.
    fails_with(
        &ctl(&e.state, &["unblock"]),
        "mirror-sendd does not answer on",
    );
    // Router commands on a source's state directory, or without a router.
    for args in [&["router", "status"][..], &["router", "unblock"]] {
        fails_with(&ctl(&e.state, args), "no router state at");
    }
    let router = e.state.with_file_name("router-state");
    ok(&ctl(&router, &["router", "key", "add", "laptop"]));
    fails_with(
        &ctl(&router, &["router", "unblock"]),
        "mirror-routerd does not answer on",
    );
}

#[test]
fn keys_on_a_router_and_on_a_source() {
    let e = env();
    let router = e.state.with_file_name("router-state");
    // The router makes a key for a source site and prints it; only its name is listed.
    let out = ctl(&router, &["router", "key", "add", "laptop"]);
    let key = ok(&out).trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(
        hint.contains("mirror-ctl key add ROUTER_HOST:PORT"),
        "{hint}"
    );
    let listed = ok(&ctl(&router, &["router", "key", "list"]));
    assert_eq!(listed.trim(), "laptop  namespace laptop");
    assert!(!listed.contains(&key));
    let file = std::fs::read_to_string(router.join("keys")).unwrap();
    assert!(file.contains(&format!("laptop {key} laptop")), "{file}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(router.join("keys"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    fails_with(
        &ctl(&router, &["router", "key", "add", "bad/id"]),
        "invalid source site id",
    );
    fails_with(
        &ctl(&router, &["router", "key", "rm", "nobody"]),
        "nobody has no key",
    );
    ok(&ctl(&router, &["router", "key", "rm", "laptop"]));
    assert!(ok(&ctl(&router, &["router", "key", "list"])).contains("no source site has a key"));

    // The source stores it by router site; a bad key or site is refused, nothing written.
    fails_with(
        &ctl(&e.state, &["key", "add", "backup.lan:7070", "abc"]),
        "64 hexadecimal digits",
    );
    fails_with(&ctl(&e.state, &["key", "add", "no-port", &key]), "no-port");
    assert!(!e.state.join("keys").exists());
    ok(&ctl(&e.state, &["key", "add", "backup.lan:7070", &key]));
    assert_eq!(
        ok(&ctl(&e.state, &["key", "list"])).trim(),
        "backup.lan:7070"
    );

    // Validating a rule for a site without a key says what to do, and adds nothing.
    std::fs::write(e.state.join("site-id"), "laptop\n").unwrap();
    let pattern = format!("{}/", e.src.display());
    let out = ctl_as_is(&e.state, &add_to_a_closed_port(&pattern));
    fails_with(&out, "no key for site 127.0.0.1:9");
    fails_with(&out, "mirror-ctl router key add laptop");
    assert_eq!(rule_count(&e.state), 0);
}

#[test]
fn verify_names_the_bad_option_and_exits_2_when_it_cannot_run() {
    let e = env();
    let pattern = format!("{}/", e.src.display());
    ok(&ctl(&e.state, &add_to_a_closed_port(&pattern)));
    let code = |o: &Output| o.status.code();
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // A bad --orphans value, a DIR that is not plain, a bad duration.
    let o = ctl(&e.state, &["verify", "--repair", "--orphans", "keep"]);
    assert_eq!(code(&o), Some(2), "{}", err(&o));
    assert!(err(&o).contains("`delete` or `move DIR`"), "{}", err(&o));
    let o = ctl(
        &e.state,
        &["verify", "--repair", "--orphans", "move", "../up"],
    );
    assert_eq!(code(&o), Some(2));
    assert!(err(&o).contains("plain relative path"), "{}", err(&o));
    let o = ctl(&e.state, &["verify", "--timeout", "soon"]);
    assert_eq!(code(&o), Some(2), "clap's usage errors are 2 too");
    assert!(err(&o).contains("soon"), "{}", err(&o));
    // No mirror-sendd: nothing can say what reached the site.
    let o = ctl(&e.state, &["verify", "--timeout", "1s"]);
    assert_eq!(code(&o), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("mirror-sendd is not running"),
        "{}",
        err(&o)
    );
    // `--orphans delete PATH`: PATH is a path, not part of --orphans.
    let o = ctl(&e.state, &["verify", "--orphans", "delete", "/elsewhere"]);
    assert!(err(&o).contains("--repair"), "{}", err(&o));
}
