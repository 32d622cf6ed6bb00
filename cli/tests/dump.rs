//! `pgkeep dump` and `dump-restore` against real PostgreSQL 15 and 18 servers and real SQLite
//! files, run as a user would: round trips compared by row counts and checksums, dedup of a
//! second dump, pg_dump failing, retention and prune keeping what dumps need.

mod common;

use std::path::Path;
use std::time::Instant;

use common::Env;

use pgkeep_testkit::pg::{PgCluster, PgVersion};

fn env() -> Env {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "dump test");
    e.expect(&["init"], 0);
    e
}

/// The shop database: customers and their orders, ten tenants; orders reference customers
/// of their own tenant, so a tenant's rows are a consistent subset.
fn create_shop(pg: &PgCluster, orders: u32) {
    pg.psql(&format!(
        "CREATE DATABASE shop;
         \\connect shop
         CREATE TABLE customers (id int PRIMARY KEY, tenant_id int NOT NULL, name text NOT NULL);
         CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id int NOT NULL,
             customer_id int NOT NULL REFERENCES customers(id), amount numeric(10,2), note text);
         CREATE INDEX orders_tenant ON orders (tenant_id);
         INSERT INTO customers SELECT g, g % 10, 'customer ' || g FROM generate_series(1, 2000) g;
         INSERT INTO orders SELECT g, (g % 2000 + 1) % 10, g % 2000 + 1, (g % 997) / 7.0,
             repeat(md5(g::text), 2) FROM generate_series(1, {orders}) g;"
    ))
    .expect("shop database");
}

/// `count:md5` of the rows `from` yields in database `db`, in a stable order.
fn checksum(pg: &PgCluster, db: &str, from: &str) -> String {
    pg.psql(&format!(
        "\\connect {db}\nSELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {from}"
    ))
    .expect("checksum query")
}

fn conn(pg: &PgCluster, db: &str) -> String {
    pg.connstring()
        .replace("dbname=postgres", &format!("dbname={db}"))
}

fn dump(e: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "dump"];
    all.extend_from_slice(args);
    let (out, _) = e.expect(&all, 0);
    serde_json::from_str(&out).expect("dump JSON")
}

/// Whole database, schema only, one table and a tenant export, each dumped and restored into
/// a fresh database, compared with the source by row counts and checksums.
fn round_trips(version: PgVersion) {
    let t0 = Instant::now();
    let pg = PgCluster::builder(version).start().expect("cluster");
    create_shop(&pg, 20_000);
    let e = env();
    let src = conn(&pg, "shop");
    let bin = pg.bin_dir().display().to_string();
    let bin_args = ["--pg-bin", bin.as_str()];
    let whole = dump(&e, &[&["--pg", &src][..], &bin_args].concat());
    let schema = dump(
        &e,
        &[&["--pg", &src, "--schema-only"][..], &bin_args].concat(),
    );
    let table = dump(
        &e,
        &[
            &["--pg", &src, "--table", "public.customers"][..],
            &bin_args,
        ]
        .concat(),
    );
    let tenant = dump(
        &e,
        &[
            &[
                "--pg",
                &src,
                "--table",
                "public.customers",
                "--table",
                "public.orders",
                "--where",
                "public.customers:tenant_id = 3",
                "--where",
                "public.orders:tenant_id = 3",
            ][..],
            &bin_args,
        ]
        .concat(),
    );
    assert_eq!(whole["source"], "pg_dump");
    assert!(
        whole["tool_version"]
            .as_str()
            .expect("tool version")
            .contains(&format!("{}.", version.major())),
        "{whole}"
    );
    assert_eq!(schema["selection"][0], "--schema-only");
    assert_eq!(
        tenant["row_filters"][0],
        "public.customers:tenant_id = 3 (200 rows)"
    );
    assert_eq!(
        tenant["row_filters"][1],
        "public.orders:tenant_id = 3 (2000 rows)"
    );

    let restore = |id: &serde_json::Value, db: &str, extra: &[&str]| {
        pg.psql(&format!("CREATE DATABASE {db}"))
            .expect("target db");
        let target = conn(&pg, db);
        let id = id["id"].as_str().expect("id");
        let mut args = vec!["dump-restore", id, "--pg", &target, "--pg-bin", &bin];
        args.extend_from_slice(extra);
        e.expect(&args, 0)
    };
    restore(&whole, "whole_copy", &[]);
    for t in ["customers", "orders"] {
        assert_eq!(
            checksum(&pg, "whole_copy", &format!("{t} t")),
            checksum(&pg, "shop", &format!("{t} t")),
            "{t} differs after the whole-database round trip"
        );
    }
    restore(&schema, "schema_copy", &[]);
    assert_eq!(checksum(&pg, "schema_copy", "orders t"), "0:");
    let indexes = "(SELECT indexname FROM pg_indexes WHERE schemaname = 'public') t";
    assert_eq!(
        checksum(&pg, "schema_copy", indexes),
        checksum(&pg, "shop", indexes),
        "schema-only restore lacks indexes"
    );
    restore(&table, "table_copy", &[]);
    assert_eq!(
        checksum(&pg, "table_copy", "customers t"),
        checksum(&pg, "shop", "customers t")
    );
    assert_eq!(
        checksum(
            &pg,
            "table_copy",
            "(SELECT tablename FROM pg_tables WHERE schemaname = 'public') t"
        ),
        checksum(
            &pg,
            "shop",
            "(SELECT tablename FROM pg_tables WHERE tablename = 'customers') t"
        ),
        "the one-table dump restored other tables"
    );
    let (out, _) = restore(&tenant, "tenant_copy", &[]);
    assert!(out.contains("2200 filtered rows loaded"), "{out}");
    for t in ["customers", "orders"] {
        assert_eq!(
            checksum(&pg, "tenant_copy", &format!("{t} t")),
            checksum(
                &pg,
                "shop",
                &format!("(SELECT * FROM {t} WHERE tenant_id = 3) t")
            ),
            "tenant rows of {t} differ"
        );
    }
    // Constraints came after the rows, as in a pg_restore of the whole database.
    assert_eq!(
        pg.psql("\\connect tenant_copy\nSELECT count(*) FROM pg_constraint WHERE contype = 'f'")
            .expect("fk"),
        "1"
    );

    // --to-file gives pg_dump's own file back: pg_restore reads it, and it has the size the
    // dump recorded.
    let file = e.path("whole.dump");
    let id = whole["id"].as_str().expect("id");
    e.expect(
        &[
            "dump-restore",
            id,
            "--to-file",
            file.to_str().expect("utf-8"),
        ],
        0,
    );
    assert_eq!(
        std::fs::metadata(&file).expect("file").len(),
        whole["logical_bytes"].as_u64().expect("size")
    );
    let listing = std::process::Command::new(pg.bin("pg_restore"))
        .arg("--list")
        .arg(&file)
        .output()
        .expect("pg_restore --list");
    assert!(listing.status.success());
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public orders"));

    let (out, _) = e.expect(&["--json", "list", "--dumps"], 0);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
    assert_eq!(listed.len(), 4);
    let (text, _) = e.expect(&["list"], 0);
    assert!(
        text.contains("Dumps:") && text.contains("--schema-only"),
        "{text}"
    );
    let (out, _) = e.expect(&["--json", "verify", "--read-data"], 0);
    let report: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(
        report["dumps"].as_array().expect("dumps").len(),
        4,
        "{report}"
    );
    eprintln!(
        "round trips on PostgreSQL {}: {:.1} s",
        version.major(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn dump_round_trips_on_pg15() {
    round_trips(PgVersion::V15);
}

#[test]
fn dump_round_trips_on_pg18() {
    round_trips(PgVersion::V18);
}

/// A second dump after changing 1% of one table stores a small fraction of the first; a
/// failing pg_dump leaves no dump and shows its own message; expire --dumps and prune (also
/// after expiring backups) keep every chunk the remaining dump needs.
#[test]
fn dump_dedup_failures_retention_and_prune() {
    let t0 = Instant::now();
    let pg = PgCluster::builder(PgVersion::V15).start().expect("cluster");
    create_shop(&pg, 300_000);
    let e = env();
    let src = conn(&pg, "shop");
    // No --pg-bin: pg_dump 15 is found in the standard location.
    let first = dump(&e, &["--pg", &src]);
    pg.psql("\\connect shop\nUPDATE orders SET amount = amount + 1 WHERE id <= 3000")
        .expect("change 1%");
    let second = dump(&e, &["--pg", &src]);
    let new1 = first["new_bytes"].as_u64().expect("new");
    let new2 = second["new_bytes"].as_u64().expect("new");
    let ratio = new2 as f64 / new1 as f64;
    eprintln!(
        "dedup: first dump {} bytes new, second (1% of orders changed) {} bytes new: ratio {ratio:.3}",
        new1, new2
    );
    assert!(first["logical_bytes"].as_u64().expect("size") > 20 << 20);
    assert!(ratio < 0.25, "second dump stored {ratio:.3} of the first");

    // pg_dump refusing: its own message, exit 1, nothing listed.
    let (_, err) = e.expect(&["dump", "--pg", &src, "--table", "no_such_table"], 1);
    assert!(
        err.contains("pg_dump: error: no matching tables were found"),
        "{err}"
    );
    // pg_dump killed midway, after part of its output was stored.
    let wrapper = e.path("killbin");
    std::fs::create_dir(&wrapper).expect("dir");
    let real = pg.bin("pg_dump");
    std::fs::write(
        wrapper.join("pg_dump"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {r} --version; fi\n{r} \"$@\" | head -c 3000000\nkill -KILL $$\n",
            r = real.display()
        ),
    )
    .expect("wrapper");
    set_executable(&wrapper.join("pg_dump"));
    let (_, err) = e.expect(
        &[
            "dump",
            "--pg",
            &src,
            "--pg-bin",
            wrapper.to_str().expect("utf-8"),
        ],
        1,
    );
    assert!(
        err.contains("pg_dump failed") && err.contains("SIGKILL"),
        "{err}"
    );
    let (out, _) = e.expect(&["--json", "list", "--dumps"], 0);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
    assert_eq!(listed.len(), 2, "a failed dump was listed: {out}");

    // Backups expire and prune runs: the dumps' chunks stay.
    let pgconn = pg.connstring();
    e.expect(&["backup", "--pg", &pgconn, "--full"], 0);
    e.expect(&["backup", "--pg", &pgconn, "--full"], 0);
    e.expect(&["expire", "--keep-last", "1"], 0);
    // The dumps' own policy: keep the newest.
    let (out, _) = e.expect(&["--json", "expire", "--dumps", "--keep-last", "1"], 0);
    let expired: serde_json::Value = serde_json::from_str(&out).expect("expire JSON");
    assert_eq!(expired["expired"][0], first["id"], "{expired}");
    assert_eq!(e.list().len(), 1, "expire --dumps touched backups");
    let (out, _) = e.expect(&["--json", "prune", "--repack-threshold", "1"], 0);
    let pruned: serde_json::Value = serde_json::from_str(&out).expect("prune JSON");
    assert!(
        pruned["deleted_packs"].as_u64().unwrap_or(0)
            + pruned["repacked_packs"].as_u64().unwrap_or(0)
            > 0,
        "{pruned}"
    );
    e.expect(&["verify", "--read-data"], 0);
    pg.psql("CREATE DATABASE after_prune").expect("db");
    let id = second["id"].as_str().expect("id");
    e.expect(&["dump-restore", id, "--pg", &conn(&pg, "after_prune")], 0);
    assert_eq!(
        checksum(&pg, "after_prune", "orders t"),
        checksum(&pg, "shop", "orders t")
    );
    eprintln!(
        "dedup/failure/retention/prune: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A snapshot taken while another process writes is a point in time: the writer commits 10
/// rows per transaction, so a consistent snapshot has a multiple of 10 rows numbered 1..=n,
/// and the writer never fails.
#[test]
fn sqlite_snapshot_of_a_live_database() {
    let t0 = Instant::now();
    let mut e = env();
    e.set("PGKEEP_CLUSTER", "devdb");
    let db = e.path("app.sqlite");
    {
        let c = rusqlite::Connection::open(&db).expect("create");
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        )
        .expect("schema");
    }
    let stop = e.path("stop");
    let writer_db = db.clone();
    let writer_stop = stop.clone();
    let writer = std::thread::spawn(move || -> Result<u64, String> {
        let mut c = rusqlite::Connection::open(&writer_db).map_err(|e| e.to_string())?;
        c.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut n = 0u64;
        while !writer_stop.exists() {
            let tx = c.transaction().map_err(|e| e.to_string())?;
            for _ in 0..10 {
                n += 1;
                tx.execute(
                    "INSERT INTO items (id, body) VALUES (?1, ?2)",
                    rusqlite::params![n as i64, "x".repeat(500)],
                )
                .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())?;
        }
        Ok(n)
    });
    // Let the writer build up some data, then snapshot twice while it runs.
    while std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) < 2 << 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let path = db.to_str().expect("utf-8");
    let first = dump(&e, &["--sqlite", path]);
    let second = dump(&e, &["--sqlite", path]);
    std::fs::write(&stop, "").expect("stop");
    let written = writer
        .join()
        .expect("writer thread")
        .expect("the writer kept working");
    assert_eq!(first["source"], "sqlite");
    assert_ne!(
        first["id"], second["id"],
        "two dumps in one second get distinct ids"
    );

    let mut counts = Vec::new();
    for d in [&first, &second] {
        let id = d["id"].as_str().expect("id");
        let out = e.path(&format!("restored-{id}.sqlite"));
        let (text, _) = e.expect(
            &[
                "dump-restore",
                id,
                "--sqlite-to",
                out.to_str().expect("utf-8"),
            ],
            0,
        );
        assert!(text.contains("integrity_check: ok"), "{text}");
        let c = rusqlite::Connection::open(&out).expect("open restored");
        let (count, max): (u64, Option<u64>) = c
            .query_row("SELECT count(*), max(id) FROM items", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("count");
        assert_eq!(count % 10, 0, "a transaction was half in the snapshot");
        assert_eq!(max.unwrap_or(0), count, "rows missing inside the snapshot");
        counts.push(count);
    }
    assert!(counts[0] > 0 && counts[0] <= counts[1] && counts[1] <= written);
    // Refuses to overwrite.
    let existing = e.path("restored-again.sqlite");
    std::fs::write(&existing, "keep me").expect("file");
    let id = first["id"].as_str().expect("id");
    e.expect(
        &[
            "dump-restore",
            id,
            "--sqlite-to",
            existing.to_str().expect("utf-8"),
        ],
        1,
    );
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    eprintln!(
        "sqlite: snapshots of {} and {} rows while {written} were written: {:.1} s",
        counts[0],
        counts[1],
        t0.elapsed().as_secs_f64()
    );
}
