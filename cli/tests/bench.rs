//! `pgkeep bench`: CPU stages without a repository, storage against a local one.

mod common;

use common::Env;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("bench --json: {e}\n{out}"))
}

#[test]
fn cpu_only_needs_no_repository_and_measures_every_stage() {
    let e = Env::new();
    let args = [
        "--json",
        "bench",
        "--cpu-only",
        "--seconds",
        "0.2",
        "--levels",
        "1,3",
    ];
    let (out, _) = e.expect(&args, 0);
    let v = json(&out);
    assert_eq!(v["schema"], 1);
    assert!(v["storage"].is_null());
    let stages = v["cpu"]["stages"].as_array().expect("stages");
    let kinds: Vec<(String, Option<i64>)> = stages
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or("").to_owned(),
                s["level"].as_i64(),
            )
        })
        .collect();
    let want: Vec<(String, Option<i64>)> = [
        ("chunk-id", None),
        ("compress", Some(1)),
        ("compress", Some(3)),
        ("seal", None),
        ("worker", Some(1)),
        ("worker", Some(3)),
    ]
    .iter()
    .map(|(s, l)| ((*s).to_owned(), *l))
    .collect();
    assert_eq!(kinds, want);
    for s in stages {
        assert!(s["mb_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
        if s["stage"] == "compress" || s["stage"] == "worker" {
            assert!(s["ratio"].as_f64().unwrap_or(0.0) > 1.0, "{s}");
        }
    }
    let scaling = v["cpu"]["scaling"].as_array().expect("scaling");
    assert!(!scaling.is_empty());
    assert!(scaling
        .iter()
        .all(|s| s["mb_per_sec"].as_f64().unwrap_or(0.0) > 0.0));
    assert!(v["recommendation"]["compression_level"].is_null());
    assert_eq!(
        v["recommendation"]["levels"].as_array().map(Vec::len),
        Some(2)
    );

    // The human table, and bad input named.
    let (text, _) = e.expect(&args[1..], 0);
    assert!(
        text.contains("chunk-id") && text.contains("Recommendation"),
        "{text}"
    );
    let (_, err) = e.expect(&["bench", "--cpu-only", "--seconds", "0"], 2);
    assert!(err.contains("--seconds"), "{err}");
    let (_, err) = e.expect(&["bench", "--cpu-only", "--levels", "23"], 2);
    assert!(err.contains("--levels"), "{err}");
}

#[test]
fn storage_is_measured_on_the_repository_and_cleaned_up() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "bench secret");
    e.expect(&["init"], 0);
    let before = tree(&e.path("repo"));
    let (out, _) = e.expect(
        &[
            "--json",
            "bench",
            "--seconds",
            "0.2",
            "--levels",
            "1",
            "--object-mib",
            "1",
            "--concurrency",
            "2,1",
        ],
        0,
    );
    let v = json(&out);
    let runs = v["storage"]["runs"].as_array().expect("runs");
    assert_eq!(
        runs.iter()
            .map(|r| r["concurrency"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    assert_eq!(v["storage"]["object_bytes"], 1 << 20);
    for r in runs {
        for op in ["put", "get"] {
            assert!(r[op]["mb_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
            assert!(r[op]["objects"].as_u64().unwrap_or(0) >= 1, "{r}");
            assert!(r[op]["median_ms"].as_f64().unwrap_or(-1.0) >= 0.0, "{r}");
        }
    }
    let rec = &v["recommendation"];
    assert!(rec["concurrency"].as_u64().is_some(), "{rec}");
    assert_eq!(rec["compression_level"], 1, "{rec}");
    // The scaling runs at the repository's level: 1, the default of a plain `init`.
    assert_eq!(v["cpu"]["scaling_level"], 1, "{}", v["cpu"]);
    // Nothing left behind: the repository holds exactly what it held before.
    assert_eq!(tree(&e.path("repo")), before);
    assert!(!e.path("repo").join("bench").exists());

    // A wrong passphrase fails before any work (exit 3).
    e.set("PGKEEP_PASSPHRASE", "wrong");
    e.expect(&["bench", "--seconds", "0.1"], 3);
}

/// Every file under `dir`, relative.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let p = entry.expect("entry").path();
            out.push(p.strip_prefix(dir).expect("prefix").display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
