//! Every stored object kind, damaged every way storage or an operator can damage it: a flipped
//! byte, truncated, emptied, swapped with another object of its kind, or replayed from an older
//! state. One small repository (two backups over two index segments, two clusters, a pin, a
//! lock, WAL segments, history and backup history files, two passphrases) is built once; each
//! case damages a copy and runs every reading operation on it: open, key list, index load,
//! backup list and manifests, restore of every file, verify reading everything, WAL fetch of
//! every file, pins, locks. The table asserts, per case: nothing panics, nothing returns wrong
//! bytes, the damage is reported as damage (not as "missing" or a storage failure) by an error
//! that names the object, and `verify` (for the kinds it covers) reports it as damage of that
//! object.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use pgkeep_engine::format::{layout, ClusterName, SegmentFacts, WalFileName};
use pgkeep_engine::lock::LockOptions;
use pgkeep_engine::verify::{verify, VerifyOptions};
use pgkeep_engine::wal::{PreparedWal, WalArchive};
use pgkeep_engine::{Chunking, Repository, Store, WriteOptions};

const PASS2: &[u8] = b"second passphrase";
const PASS3: &[u8] = b"third passphrase, after a change";
const SEG: u32 = 1 << 20;

fn main_cluster() -> ClusterName {
    ClusterName::new("main").expect("name")
}

/// What the template repository holds, by role, and the bytes every reader must return.
struct Template {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Another repository, for "swapped with another repository's config".
    other_root: PathBuf,
    /// Backup files: (backup id, path) → content.
    files: BTreeMap<(String, String), Vec<u8>>,
    /// WAL files of `main`: name → content.
    wal: BTreeMap<String, Vec<u8>>,
    /// Object names by role.
    names: Names,
    /// Old object bytes for the replay cases: name → bytes as they were.
    old: BTreeMap<&'static str, (String, Vec<u8>)>,
}

#[derive(Default)]
struct Names {
    key_pass: String,
    key_pass2_old: String,
    key_pass3: String,
    packs: Vec<String>,
    index: Vec<String>,
    manifests: Vec<String>,
    clusters: Vec<String>,
    segments: Vec<String>,
    histories: Vec<String>,
    backup_histories: Vec<String>,
    pins: Vec<String>,
    lock: String,
}

/// `file` as `name`, a stand-in segment (or history file) of this file's cluster.
fn prepared(archive: &WalArchive, name: &str, file: &[u8], level: i8) -> PreparedWal {
    let facts = SegmentFacts {
        system_id: 42,
        segment_size: SEG,
        pg_major: 15,
    };
    prepared_wal(archive, name, file, level, facts)
}

fn segment_bytes(seed: u64) -> Vec<u8> {
    let mut d = data(SEG as usize, seed, true);
    d[32..36].copy_from_slice(&SEG.to_le_bytes());
    d
}

fn open_store(root: &Path) -> Store {
    Store::open(root.to_str().expect("utf-8"), &[], false).expect("store")
}

async fn names_under(store: &Store, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = store
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.name)
        .collect();
    v.sort();
    v
}

async fn build() -> Template {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("repo");
    let other_root = dir.path().join("other");
    let store = Store::open(root.to_str().expect("utf-8"), &[], true).expect("store");
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    Repository::init(
        Store::open(other_root.to_str().expect("utf-8"), &[], true).expect("store"),
        PASS,
        init_options(),
    )
    .await
    .expect("other init");
    let mut names = Names {
        key_pass: names_under(&store, layout::KEYS_DIR).await.remove(0),
        ..Names::default()
    };
    let mut old = BTreeMap::new();

    // A second passphrase, then changed to a third: the replay case puts its old key file back.
    let with2 = {
        repo.add_key(PASS2, "second", FAST_KDF).await.expect("add");
        Repository::open(store.clone(), PASS2)
            .await
            .expect("open 2")
    };
    let keys = names_under(&store, layout::KEYS_DIR).await;
    names.key_pass2_old = keys
        .into_iter()
        .find(|k| *k != names.key_pass)
        .expect("second key");
    let old_key = store.get(&names.key_pass2_old).await.expect("key");
    old.insert("key", (names.key_pass2_old.clone(), old_key.to_vec()));
    with2
        .change_passphrase(PASS3, None, FAST_KDF)
        .await
        .expect("change");
    names.key_pass3 = names_under(&store, layout::KEYS_DIR)
        .await
        .into_iter()
        .find(|k| *k != names.key_pass)
        .expect("third key");

    // Two backups in two sessions (two index segments); b2 shares a file with b1.
    let cluster = main_cluster();
    repo.bind_cluster(&cluster, 42, 150_000)
        .await
        .expect("bind");
    repo.bind_cluster(&ClusterName::new("other").expect("name"), 43, 150_000)
        .await
        .expect("bind other");
    let mut files = BTreeMap::new();
    let contents: [(&str, &str, Vec<u8>); 4] = [
        ("b1", "base/1/1259", data(1_500_000, 1, false)),
        ("b1", "PG_VERSION", b"15\n".to_vec()),
        ("b2", "base/1/1259", data(1_500_000, 1, false)),
        ("b2", "base/1/2600", data(700_000, 2, true)),
    ];
    let mut index_before: Vec<String> = Vec::new();
    for id in ["b1", "b2"] {
        let session = repo
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        let mut streams = Vec::new();
        for (b, path, content) in contents.iter().filter(|(b, ..)| *b == id) {
            let s = session
                .store_stream(&content[..], Chunking::from_config(repo.config()))
                .await
                .expect("store");
            files.insert(((*b).to_owned(), (*path).to_owned()), content.clone());
            streams.push((*path, s));
        }
        session.finish().await.expect("finish");
        let refs: Vec<(&str, &pgkeep_engine::StoredStream)> =
            streams.iter().map(|(p, s)| (*p, s)).collect();
        repo.write_manifest(&manifest_for(id, &refs))
            .await
            .expect("manifest");
        let now = names_under(&store, layout::INDEX_DIR).await;
        if id == "b1" {
            index_before = now;
        } else {
            let newer = now
                .into_iter()
                .find(|n| !index_before.contains(n))
                .expect("second segment");
            names.index = vec![index_before[0].clone(), newer];
        }
    }
    names.packs = names_under(&store, layout::DATA_DIR).await;
    names.manifests = vec![
        layout::manifest(&cluster, "b1"),
        layout::manifest(&cluster, "b2"),
    ];
    names.clusters = vec![
        layout::cluster_binding(&cluster),
        layout::cluster_binding(&ClusterName::new("other").expect("name")),
    ];

    // Pins: b1 pinned; b2 pinned then unpinned (the replay case puts that pin back).
    pgkeep_engine::retention::pin(&repo, &cluster, "b1", "keep")
        .await
        .expect("pin");
    pgkeep_engine::retention::pin(&repo, &cluster, "b2", "for a while")
        .await
        .expect("pin");
    let pin2 = layout::pin(&cluster, "b2");
    let old_pin = store.get(&pin2).await.expect("pin");
    old.insert("pin", (pin2.clone(), old_pin.to_vec()));
    pgkeep_engine::retention::unpin(&repo, &cluster, "b2")
        .await
        .expect("unpin");
    names.pins = vec![layout::pin(&cluster, "b1")];

    // WAL: three segments, two timeline history files, two backup history files.
    let archive = WalArchive::new(repo.clone(), cluster.clone());
    let mut wal = BTreeMap::new();
    for n in 1..=3u64 {
        let name = format!("0000000100000000{n:08X}");
        let bytes = segment_bytes(n);
        archive
            .store(prepared(&archive, &name, &bytes, 1), 1)
            .await
            .expect("segment");
        names
            .segments
            .push(format!("clusters/main/wal/00000001/{name}"));
        wal.insert(name, bytes);
    }
    for (tl, text) in [(2, "1\t0/3000000\tno recovery target specified\n"), (3, "1\t0/3000000\tno recovery target specified\n2\t0/5000000\tno recovery target specified\n")] {
        let name = format!("{tl:08X}.history");
        archive
            .store(prepared(&archive, &name, text.as_bytes(), 3), 3)
            .await
            .expect("history");
        names
            .histories
            .push(format!("clusters/main/wal/{tl:08X}/{name}"));
        wal.insert(name, text.as_bytes().to_vec());
    }
    for n in [1u64, 2] {
        let name = format!("0000000100000000{n:08X}.00000028.backup");
        let text = format!(
            "START WAL LOCATION: 0/{n}000028 (file 0000000100000000{n:08X})\nLABEL: b{n}\n"
        );
        archive
            .store(prepared(&archive, &name, text.as_bytes(), 3), 3)
            .await
            .expect("backup history");
        names
            .backup_histories
            .push(format!("clusters/main/wal/00000001/{name}"));
        wal.insert(name, text.into_bytes());
    }

    // A lock left behind by its holder (as it was before release, put back).
    let opts = LockOptions {
        wait: Duration::from_secs(1),
        refresh: Duration::from_secs(3600),
        stale_after: Duration::from_secs(3600),
    };
    let lock = repo
        .lock(pgkeep_format_lock_mode(), "backup", opts)
        .await
        .expect("lock");
    names.lock = lock.object().to_owned();
    let held = store.get(&names.lock).await.expect("lock object");
    lock.release().await.expect("release");
    store.put(&names.lock, held).await.expect("lock back");

    Template {
        _dir: dir,
        root,
        other_root,
        files,
        wal,
        names,
        old,
    }
}

fn pgkeep_format_lock_mode() -> pgkeep_engine::format::LockMode {
    pgkeep_engine::format::LockMode::Shared
}

/// How a case damages the repository copy.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte at this fraction of the object's length.
    Flip(f64),
    /// Keep the first half.
    Truncate,
    /// Zero bytes.
    Empty,
    /// The bytes of another object (name relative to the copy, or of the other repository).
    CopyFrom { source: String, other_repo: bool },
    /// Bytes kept from an older state (the template's `old` map), written to `name`.
    Replay(&'static str),
}

/// What the table expects of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An operation fails naming the object, as damage; verify reports it if it covers the kind.
    Detected,
    /// Not detectable by design (an authentic object of an older state); the case documents
    /// what happens instead, asserted in `replay_outcomes`.
    Authentic,
}

struct Case {
    kind: &'static str,
    object: String,
    damage: Damage,
    expect: Expect,
    /// Whether `verify` reads this kind (others: config and keys are read by every open;
    /// pins by retention; locks by every lock taker).
    verify_covers: bool,
}

fn cases(t: &Template) -> Vec<Case> {
    let n = &t.names;
    let mut out = Vec::new();
    let mut add = |kind: &'static str, object: &str, sibling: Option<&str>, verify_covers: bool| {
        for damage in [
            Damage::Flip(0.5),
            Damage::Flip(0.02),
            Damage::Flip(0.999),
            Damage::Truncate,
            Damage::Empty,
        ] {
            out.push(Case {
                kind,
                object: object.to_owned(),
                damage,
                expect: Expect::Detected,
                verify_covers,
            });
        }
        if let Some(s) = sibling {
            out.push(Case {
                kind,
                object: object.to_owned(),
                damage: Damage::CopyFrom {
                    source: s.to_owned(),
                    other_repo: false,
                },
                expect: Expect::Detected,
                verify_covers,
            });
        }
    };
    add("repository config", layout::CONFIG, None, true);
    add("key file", &n.key_pass, Some(&n.key_pass3), true);
    add("pack", &n.packs[0], Some(&n.packs[1]), true);
    add("index segment", &n.index[1], Some(&n.index[0]), true);
    add(
        "backup manifest",
        &n.manifests[1],
        Some(&n.manifests[0]),
        true,
    );
    add(
        "cluster binding",
        &n.clusters[0],
        Some(&n.clusters[1]),
        true,
    );
    add("WAL segment", &n.segments[1], Some(&n.segments[2]), true);
    add(
        "timeline history file",
        &n.histories[1],
        Some(&n.histories[0]),
        true,
    );
    add(
        "backup history file",
        &n.backup_histories[1],
        Some(&n.backup_histories[0]),
        true,
    );
    add("backup pin", &n.pins[0], None, false);
    add("lock", &n.lock, None, false);
    out.push(Case {
        kind: "repository config",
        object: layout::CONFIG.into(),
        damage: Damage::CopyFrom {
            source: layout::CONFIG.into(),
            other_repo: true,
        },
        expect: Expect::Detected,
        verify_covers: true,
    });
    // Older states: authentic objects, by design accepted; `replay_outcomes` says what they do.
    for what in ["key", "pin"] {
        out.push(Case {
            kind: what,
            object: t.old[what].0.clone(),
            damage: Damage::Replay(what),
            expect: Expect::Authentic,
            verify_covers: false,
        });
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn apply(t: &Template, root: &Path, case: &Case) {
    let path = root.join(&case.object);
    let bytes = match &case.damage {
        Damage::Flip(at) => {
            let mut b = std::fs::read(&path).expect("object");
            let i = ((b.len() as f64 * at) as usize).min(b.len() - 1);
            b[i] ^= 0x04;
            b
        }
        Damage::Truncate => {
            let b = std::fs::read(&path).expect("object");
            b[..b.len() / 2].to_vec()
        }
        Damage::Empty => Vec::new(),
        Damage::CopyFrom { source, other_repo } => {
            let base = if *other_repo { &t.other_root } else { root };
            std::fs::read(base.join(source)).expect("source")
        }
        Damage::Replay(what) => t.old[what].1.clone(),
    };
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(&path, bytes).expect("damage");
}

/// One operation's outcome.
#[derive(Debug)]
enum Outcome {
    Ok,
    Failed {
        message: String,
        corrupt: bool,
    },
    /// Returned bytes that differ from what was stored: the one unforgivable result.
    Wrong(String),
    Panicked(String),
}

async fn guarded<F>(f: F) -> Outcome
where
    F: Future<Output = Outcome> + Send + 'static,
{
    match tokio::spawn(f).await {
        Ok(o) => o,
        Err(e) => Outcome::Panicked(e.to_string()),
    }
}

fn failed(e: &pgkeep_engine::Error) -> Outcome {
    Outcome::Failed {
        message: e.to_string(),
        corrupt: e.is_corruption(),
    }
}

/// Runs every reading operation on the repository at `root`.
async fn run_all(t: &Template, root: &Path) -> Vec<(&'static str, Outcome)> {
    let store = open_store(root);
    let mut out = Vec::new();
    let opened = {
        let store = store.clone();
        tokio::spawn(async move { Repository::open(store, PASS).await }).await
    };
    let repo = match opened {
        Err(e) => {
            out.push(("open", Outcome::Panicked(e.to_string())));
            return out;
        }
        Ok(Err(e)) => {
            out.push(("open", failed(&e)));
            return out;
        }
        Ok(Ok(r)) => {
            out.push(("open", Outcome::Ok));
            r
        }
    };
    let r = repo.clone();
    out.push((
        "key list",
        guarded(async move {
            match r.list_keys().await {
                Ok(_) => Outcome::Ok,
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    let r = repo.clone();
    out.push((
        "index",
        guarded(async move {
            match r.load_index().await {
                Ok(()) => Outcome::Ok,
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    // Restore: every file of every listed backup, compared with what was stored.
    let r = repo.clone();
    let files = t.files.clone();
    out.push((
        "restore",
        guarded(async move {
            let cluster = main_cluster();
            let ids = match r.list_backups(&cluster).await {
                Ok(ids) => ids,
                Err(e) => return failed(&e),
            };
            if ids != ["b1", "b2"] {
                return Outcome::Wrong(format!("backups listed: {ids:?}"));
            }
            let mut first_error = None;
            for id in ids {
                let m = match r.read_manifest(&cluster, &id).await {
                    Ok(m) => m,
                    Err(e) => {
                        first_error.get_or_insert(failed(&e));
                        continue;
                    }
                };
                for f in &m.files {
                    let path = String::from_utf8_lossy(&f.path).into_owned();
                    let Some(expected) = files.get(&(id.clone(), path.clone())) else {
                        return Outcome::Wrong(format!("{id} lists an unknown file {path}"));
                    };
                    let mut got = Vec::new();
                    match r.write_extents(&f.extents, &mut got).await {
                        Ok(_) if got == *expected => {}
                        Ok(_) => return Outcome::Wrong(format!("{id}/{path}: different bytes")),
                        Err(e) => {
                            first_error.get_or_insert(failed(&e));
                        }
                    }
                }
            }
            first_error.unwrap_or(Outcome::Ok)
        })
        .await,
    ));
    let r = repo.clone();
    out.push((
        "verify",
        guarded(async move {
            let opts = VerifyOptions {
                read_percent: 100.0,
                jobs: 2,
                lock: LockOptions {
                    wait: Duration::from_secs(1),
                    ..LockOptions::default()
                },
                cluster: None,
            };
            match verify(&r, opts).await {
                Ok(report) if report.damaged() => Outcome::Failed {
                    message: report
                        .problems
                        .iter()
                        .map(|p| format!("[{}] {}: {}", p.kind.code(), p.object, p.detail))
                        .collect::<Vec<_>>()
                        .join("; "),
                    corrupt: true,
                },
                Ok(_) => Outcome::Ok,
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    let r = repo.clone();
    let wal = t.wal.clone();
    out.push((
        "wal-fetch",
        guarded(async move {
            let archive = WalArchive::new(r, main_cluster());
            let mut first_error = None;
            for (name, expected) in &wal {
                let parsed = WalFileName::parse(name).expect("name");
                match archive.fetch(&parsed).await {
                    Ok(Some((_, bytes))) if bytes == *expected => {}
                    Ok(Some(_)) => return Outcome::Wrong(format!("{name}: different bytes")),
                    Ok(None) => return Outcome::Wrong(format!("{name}: reported as not archived")),
                    Err(e) => {
                        first_error.get_or_insert(failed(&e));
                    }
                }
            }
            first_error.unwrap_or(Outcome::Ok)
        })
        .await,
    ));
    let r = repo.clone();
    out.push((
        "pins",
        guarded(async move {
            match pgkeep_engine::retention::pins(&r, &main_cluster()).await {
                Ok(p) if p.contains_key("b1") => Outcome::Ok,
                Ok(p) => Outcome::Wrong(format!("pins: {:?}", p.keys().collect::<Vec<_>>())),
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    let r = repo.clone();
    out.push((
        "locks",
        guarded(async move {
            match r.list_locks(Duration::from_secs(3600)).await {
                Ok(_) => Outcome::Ok,
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    let r = repo.clone();
    out.push((
        "backup (cluster binding)",
        guarded(async move {
            match r.bind_cluster(&main_cluster(), 42, 150_000).await {
                Ok(_) => Outcome::Ok,
                Err(e) => failed(&e),
            }
        })
        .await,
    ));
    out
}

fn describe(case: &Case) -> String {
    format!("{} {} {:?}", case.kind, case.object, case.damage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_kind_damaged_every_way_is_detected_and_named() {
    let t = build().await;
    // The undamaged template: everything reads back.
    for (op, o) in run_all(&t, &t.root).await {
        assert!(matches!(o, Outcome::Ok), "clean repository, {op}: {o:?}");
    }
    let scratch = tempfile::tempdir().expect("tmp");
    let mut failures = Vec::new();
    let all = cases(&t);
    for (i, case) in all.iter().enumerate() {
        let root = scratch.path().join(format!("case{i}"));
        copy_tree(&t.root, &root);
        apply(&t, &root, case);
        let results = run_all(&t, &root).await;
        let what = describe(case);
        for (op, o) in &results {
            match o {
                Outcome::Panicked(m) => failures.push(format!("{what}: {op} panicked: {m}")),
                Outcome::Wrong(m) => {
                    failures.push(format!("{what}: {op} returned wrong data: {m}"))
                }
                _ => {}
            }
        }
        if case.expect == Expect::Authentic {
            replay_outcomes(&t, &root, case, &results, &mut failures).await;
            std::fs::remove_dir_all(&root).expect("cleanup");
            continue;
        }
        // Detected: some operation fails as damage, naming the object.
        let naming: Vec<&str> = results
            .iter()
            .filter_map(|(op, o)| match o {
                // A damaged key file and a wrong passphrase both fail AES-GCM's tag: that is
                // reported as a wrong passphrase naming the key files tried (SPEC.md §3.2).
                Outcome::Failed { message, corrupt } => ((*corrupt
                    || (case.kind == "key file" && message.starts_with("wrong passphrase")))
                    && message.contains(&case.object))
                .then_some(*op),
                _ => None,
            })
            .collect();
        // Damage is never passed off as a storage failure (exit 1, "retry") by a reader.
        for (op, o) in &results {
            if let Outcome::Failed {
                message,
                corrupt: false,
            } = o
            {
                if message.starts_with("storage:") {
                    failures.push(format!(
                        "{what}: {op} reports damage as a storage failure: {message}"
                    ));
                }
            }
        }
        if naming.is_empty() {
            failures.push(format!(
                "{what}: no operation reported damage naming the object: {results:?}"
            ));
        }
        // verify reports it (when the repository opens at all).
        if case.verify_covers
            && results
                .iter()
                .any(|(op, o)| *op == "open" && matches!(o, Outcome::Ok))
        {
            let v = results.iter().find(|(op, _)| *op == "verify");
            match v {
                Some((
                    _,
                    Outcome::Failed {
                        message,
                        corrupt: true,
                    },
                )) if message.contains(&case.object) => {}
                other => failures.push(format!(
                    "{what}: verify did not report damage of the object: {other:?}"
                )),
            }
        }
        eprintln!("{what}:");
        for (op, o) in &results {
            if let Outcome::Failed { message, corrupt } = o {
                eprintln!(
                    "  {op} ({}): {message}",
                    if *corrupt { "damage" } else { "error" }
                );
            }
        }
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// Authentic older objects: what each does instead of being refused.
async fn replay_outcomes(
    t: &Template,
    root: &Path,
    case: &Case,
    results: &[(&'static str, Outcome)],
    failures: &mut Vec<String>,
) {
    let what = describe(case);
    let store = open_store(root);
    match &case.damage {
        // The old passphrase's key file is back: that passphrase opens the repository again
        // (it wraps the same master key), and `key list` shows the key, so it can be removed.
        Damage::Replay("key") => {
            let repo = Repository::open(store.clone(), PASS2).await;
            match repo {
                Ok(r) => {
                    let keys = r.list_keys().await.expect("keys");
                    let listed = keys
                        .iter()
                        .any(|k| case.object.ends_with(&k.id.to_string()));
                    if !listed || keys.len() != 3 {
                        failures.push(format!(
                            "{what}: key list does not show the replayed key: {keys:?}"
                        ));
                    }
                }
                Err(e) => {
                    failures.push(format!("{what}: expected the old passphrase to open: {e}"))
                }
            }
            let _ = t;
        }
        // The removed pin is back: b2 is kept by retention again (the safe direction).
        Damage::Replay("pin") => {
            let repo = Repository::open(store, PASS).await.expect("open");
            let pins = pgkeep_engine::retention::pins(&repo, &main_cluster())
                .await
                .expect("pins");
            if !pins.contains_key("b2") {
                failures.push(format!("{what}: the replayed pin is not read: {pins:?}"));
            }
        }
        _ => unreachable!("only replays are authentic"),
    }
    for (op, o) in results {
        if !matches!(o, Outcome::Ok) {
            failures.push(format!(
                "{what}: {op} failed on an authentic older object: {o:?}"
            ));
        }
    }
}
