//! `pgkeep verify` on a real PostgreSQL 15 cluster's repository: clean, then a flipped byte in
//! a pack (found only by --read-data, traced to backups and files), a truncated pack (found by
//! the structure pass), a damaged WAL segment (found by reading), and missing WAL segments (a backup that cannot become consistent, and
//! a cut point-in-time window). One cluster serves all the checks.

mod common;

use std::path::{Path, PathBuf};

use common::archiving::Archiving;
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

/// Every pack file under the local repository, largest first.
fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("data")).expect("data dir") {
        for f in std::fs::read_dir(dir.expect("entry").path()).expect("pack dir") {
            out.push(f.expect("entry").path());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).expect("stat").len()));
    out
}

/// The object name of a pack file (`data/xx/<id>`).
fn object_name(repo: &Path, file: &Path) -> String {
    file.strip_prefix(repo)
        .expect("under repo")
        .display()
        .to_string()
}

fn verify_json(a: &Archiving, args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json", "verify"];
    all.extend_from_slice(args);
    let (out, _) = a.env.expect(&all, code);
    let v: Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["clean"], code == 0, "{v:#}");
    v
}

fn problems_of_kind<'v>(v: &'v Value, kind: &str) -> Vec<&'v Value> {
    v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == kind)
        .collect()
}

fn backup<'v>(v: &'v Value, id: &str) -> &'v Value {
    v["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["backup"] == id)
        .unwrap_or_else(|| panic!("backup {id} in {v:#}"))
}

/// Writes a little and switches segments, waiting for the archiver.
fn advance(a: &Archiving) -> String {
    a.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g");
    a.switch_and_wait()
}

#[test]
fn verify_finds_damage_and_names_what_it_breaks() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    let conn = a.pg.connstring();
    a.sql("CREATE TABLE t (id int, v text)");
    advance(&a);
    a.expect_as_server(&["backup", "--pg", &conn, "--label", "first"], 0);
    advance(&a);
    advance(&a);
    a.expect_as_server(&["backup", "--pg", &conn, "--label", "second"], 0);
    for _ in 0..4 {
        advance(&a);
    }
    let list = a.env.list();
    let (b1, b2) = (
        list[0]["id"].as_str().expect("id").to_owned(),
        list[1]["id"].as_str().expect("id").to_owned(),
    );

    // (1) Clean: the structure pass and reading everything both exit 0.
    let (out, _) = a.env.expect(&["verify"], 0);
    assert!(out.contains("No problems found."), "{out}");
    assert!(out.contains("No data read"), "{out}");
    assert!(
        out.contains(&format!("main/{b1} (first): restorable")),
        "{out}"
    );
    let v = verify_json(&a, &["--read-data"], 0);
    assert_eq!(v["checked"]["packs_read"], v["checked"]["packs"], "{v:#}");
    assert!(
        v["checked"]["wal_read"].as_u64().expect("wal_read") >= 8,
        "{v:#}"
    );
    for id in [&b1, &b2] {
        let b = backup(&v, id);
        assert_eq!(b["restorable"], true, "{b:#}");
        assert_eq!(b["packs_read_intact"], b["packs"], "{b:#}");
        assert_eq!(b["wal"]["state"], "restorable", "{b:#}");
        assert!(b["wal"]["cut_by"].is_null(), "{b:#}");
    }
    a.env
        .expect(&["verify", "--read-data", "50%", "--jobs", "1"], 0);
    let (_, err) = a.env.expect(&["verify", "--read-data", "0"], 2);
    assert!(err.contains("--read-data"), "{err}");
    let (_, err) = a.env.expect(&["verify", "--jobs", "0"], 2);
    assert!(err.contains("--jobs"), "{err}");
    let wrong = a
        .env
        .command(&["verify"])
        .env("PGKEEP_PASSPHRASE", "not the passphrase")
        .output()
        .expect("pgkeep runs");
    common::expect_code(&wrong, &["verify"], 3);

    // (2) A flipped byte in a pack (in its first chunk's salt): the structure pass reads no
    // data and passes; --read-data exits 5 naming the pack, the backups and their files.
    let repo = a.repo.clone();
    let pack = packs(&repo).remove(0);
    let original = std::fs::read(&pack).expect("pack");
    let mut flipped = original.clone();
    flipped[20] ^= 0x01;
    std::fs::write(&pack, &flipped).expect("flip");
    a.env.expect(&["verify"], 0);
    let (out, _) = a.env.expect(&["verify", "--read-data"], 5);
    let name = object_name(&repo, &pack);
    assert!(out.contains(&format!("DAMAGE [pack-hash] {name}")), "{out}");
    assert!(
        out.contains("NOT restorable: data missing or damaged"),
        "{out}"
    );
    let v = verify_json(&a, &["--read-data", "all"], 5);
    let p = problems_of_kind(&v, "pack-hash");
    assert_eq!(p.len(), 1, "{v:#}");
    assert_eq!(p[0]["object"], name.as_str());
    let affected = p[0]["affected_backups"].as_array().expect("affected");
    assert!(!affected.is_empty(), "{v:#}");
    for b in affected {
        assert!(b["backup"] == b1.as_str() || b["backup"] == b2.as_str());
        let files = b["files"].as_array().expect("files");
        assert!(!files.is_empty(), "{b:#}");
        assert_eq!(
            backup(&v, b["backup"].as_str().expect("id"))["restorable"],
            false
        );
    }
    std::fs::write(&pack, &original).expect("unflip");

    // (4) A truncated pack: found by the structure pass alone, from its size.
    std::fs::write(&pack, &original[..original.len() / 2]).expect("truncate");
    let (out, _) = a.env.expect(&["verify"], 5);
    assert!(out.contains(&format!("DAMAGE [pack-size] {name}")), "{out}");
    let v = verify_json(&a, &[], 5);
    let p = problems_of_kind(&v, "pack-size");
    assert_eq!(p.len(), 1, "{v:#}");
    assert!(p[0]["detail"]
        .as_str()
        .expect("detail")
        .contains(&format!("stored with {} bytes", original.len() / 2)));
    std::fs::write(&pack, &original).expect("untruncate");
    a.env.expect(&["verify"], 0);

    // A damaged WAL segment after the second backup: only reading finds it; both backups'
    // recovery windows end there.
    let wal_dir = repo.join("clusters/main/wal/00000001");
    let stop2 = list[1]["stop_wal"].as_str().expect("stop_wal").to_owned();
    let mut segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    let after: Vec<String> = segments.iter().filter(|s| **s > stop2).cloned().collect();
    assert!(after.len() >= 3, "{segments:?} after {stop2}");
    let victim = wal_dir.join(&after[0]);
    let wal_original = std::fs::read(&victim).expect("segment object");
    let mut bad = wal_original.clone();
    let at = bad.len() - 30;
    bad[at] ^= 0x40;
    std::fs::write(&victim, &bad).expect("flip");
    a.env.expect(&["verify"], 0);
    let v = verify_json(&a, &["--read-data"], 5);
    let p = problems_of_kind(&v, "wal-damaged");
    assert_eq!(p.len(), 1, "{v:#}");
    assert!(p[0]["object"]
        .as_str()
        .expect("object")
        .ends_with(&after[0]));
    let impacted: Vec<&Value> = p[0]["wal_impact"]
        .as_array()
        .expect("impact")
        .iter()
        .collect();
    assert_eq!(impacted.len(), 2, "{v:#}");
    assert!(impacted
        .iter()
        .all(|i| i["not_restorable"] == false && i["first_unusable_segment"] == after[0].as_str()));
    std::fs::write(&victim, &wal_original).expect("unflip");

    // (3) Missing WAL: a segment in the middle of the WAL after the second backup cuts both
    // backups' point-in-time window there; the first backup's start segment makes it
    // unrestorable.
    let hole = after[1].clone();
    let start1 = list[0]["start_wal"].as_str().expect("start_wal").to_owned();
    std::fs::remove_file(wal_dir.join(&hole)).expect("delete segment");
    std::fs::remove_file(wal_dir.join(&start1)).expect("delete segment");
    let (out, _) = a.env.expect(&["verify"], 5);
    assert!(
        out.contains(&format!(
            "DAMAGE [wal-missing] clusters/main/wal/00000001/{hole}"
        )),
        "{out}"
    );
    assert!(
        out.contains("point-in-time recovery only up to LSN"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "main/{b1} (first): NOT restorable: WAL {start1} missing"
        )),
        "{out}"
    );
    // --cluster narrows the backup and WAL checks: another cluster has none of this damage.
    let (out, _) = a.env.expect(&["--cluster", "other", "verify"], 0);
    assert!(!out.contains("DAMAGE"), "{out}");
    let v = verify_json(&a, &[], 5);
    let missing = problems_of_kind(&v, "wal-missing");
    assert_eq!(missing.len(), 2, "{v:#}");
    let cut = missing
        .iter()
        .find(|p| p["object"].as_str().expect("object").ends_with(&hole))
        .expect("the hole after backup 2");
    let impact = cut["wal_impact"].as_array().expect("impact");
    assert_eq!(impact.len(), 1, "only backup 2 reaches the hole: {v:#}");
    assert_eq!(impact[0]["backup"], b2.as_str());
    assert_eq!(impact[0]["not_restorable"], false);
    assert_eq!(impact[0]["first_unusable_segment"], hole.as_str());
    let lsn = impact[0]["recoverable_to_lsn"].as_str().expect("lsn");
    let b2s = backup(&v, &b2);
    assert_eq!(b2s["restorable"], true);
    assert_eq!(b2s["wal"]["cut_by"], hole.as_str());
    assert_eq!(b2s["wal"]["until_lsn"], lsn);
    let b1s = backup(&v, &b1);
    assert_eq!(b1s["restorable"], false, "{b1s:#}");
    assert_eq!(b1s["wal"]["state"], "not-restorable");
    assert_eq!(b1s["wal"]["first_unusable"], start1.as_str());
}
