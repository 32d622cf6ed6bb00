//! `pgkeep dump` and `dump-restore` against real PostgreSQL 15 and 18 servers and real SQLite
//! files, run as a user would: round trips compared by row counts and checksums (one
//! database in custom, directory and plain format; a whole cluster with `--all` into a
//! second cluster), dedup of a second dump, pg_dump and pg_dumpall failing, options a dump
//! cannot honour refused, retention (flags, variables, config) and prune keeping what dumps
//! need.

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

/// `dump-restore ID --to-file PATH`, which must succeed.
fn to_file(e: &Env, id: &str, path: &Path, extra: &[&str]) {
    let path = path.to_str().expect("utf-8");
    e.expect(
        &[&["dump-restore", id, "--to-file", path][..], extra].concat(),
        0,
    );
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
    to_file(&e, id, &file, &[]);
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
/// and the writer never fails. Then the dumps' retention policy from the config file.
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

    // The dumps' retention policy from the config file: [dump_retention], under
    // PGKEEP_DUMP_KEEP_*, under the flags; [retention] is the backups'.
    let (_, err) = e.expect(&["expire", "--dumps", "--dry-run"], 2);
    assert!(err.contains("[dump_retention]"), "{err}");
    let config = e.path("retention.toml");
    std::fs::write(
        &config,
        "[retention]\nkeep_last = 5\n\n[dump_retention]\nkeep_last = 1\n",
    )
    .expect("config");
    e.set("PGKEEP_CONFIG", config.to_str().expect("utf-8"));
    let expired = |e: &Env, args: &[&str]| -> Vec<serde_json::Value> {
        let (out, _) = e.expect(&[&["--json", "expire", "--dumps"][..], args].concat(), 0);
        let doc: serde_json::Value = serde_json::from_str(&out).expect("expire JSON");
        doc["expired"].as_array().expect("expired").clone()
    };
    assert!(
        expired(&e, &["--keep-last", "2", "--dry-run"]).is_empty(),
        "the flag wins"
    );
    e.set("PGKEEP_DUMP_KEEP_LAST", "2");
    assert!(
        expired(&e, &["--dry-run"]).is_empty(),
        "the variable wins over the file"
    );
    e.unset("PGKEEP_DUMP_KEEP_LAST");
    assert_eq!(
        expired(&e, &[]),
        [first["id"].clone()],
        "the file's keep_last = 1"
    );
    eprintln!(
        "sqlite: snapshots of {} and {} rows while {written} were written: {:.1} s",
        counts[0],
        counts[1],
        t0.elapsed().as_secs_f64()
    );
}

/// The source cluster of the `dump --all` tests: shop, a database owned by a role of its
/// own (which only the globals bring to another cluster), a name that needs escaping as a
/// file name, and a table in postgres.
fn create_cluster_contents(pg: &PgCluster) {
    create_shop(pg, 5_000);
    pg.psql(
        "CREATE ROLE app_owner LOGIN;
         CREATE DATABASE app OWNER app_owner;
         CREATE DATABASE \"odd name\";
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g;
         \\connect app
         SET ROLE app_owner;
         CREATE TABLE settings (k text PRIMARY KEY, v text);
         INSERT INTO settings VALUES ('theme', 'dark'), ('lang', 'en');
         RESET ROLE;
         \\connect \"odd name\"
         CREATE TABLE t (x int);
         INSERT INTO t SELECT generate_series(1, 10);",
    )
    .expect("cluster contents");
}

/// `dump --all` as one dump (globals and one archive per database), restored into a second
/// cluster whole (roles from the globals, the superuser's "already exists" tolerated), then
/// refused over existing databases unless --clean; one database alone with --database;
/// written out with --to-file; listed and verified.
fn all_round_trip(version: PgVersion) {
    let t0 = Instant::now();
    let src = PgCluster::builder(version).start().expect("source cluster");
    let dst = PgCluster::builder(version).start().expect("target cluster");
    create_cluster_contents(&src);
    let e = env();
    let bin = src.bin_dir().display().to_string();
    let all = dump(&e, &["--all", "--pg", &src.connstring(), "--pg-bin", &bin]);
    assert_eq!(all["source"], "pg_dumpall", "{all}");
    assert_eq!(all["format"], "custom");
    assert_eq!(
        all["databases"],
        serde_json::json!(["app", "odd name", "postgres", "shop"]),
        "every database but the templates"
    );
    let id = all["id"].as_str().expect("id");
    let (text, _) = e.expect(&["list", "--dumps"], 0);
    assert!(
        text.contains("pg_dumpall") && text.contains("all: app,odd name,postgres,shop"),
        "{text}"
    );
    let (out, _) = e.expect(&["--json", "verify", "--read-data"], 0);
    let report: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(report["dumps"][0]["dump"], id, "{report}");

    // dump-restore of this dump with the cluster's own programs (PostgreSQL 18's are not
    // in a standard location).
    let restore = |args: &[&str], code: i32| {
        e.expect(
            &[
                &["--json", "dump-restore", id][..],
                args,
                &["--pg-bin", &bin],
            ]
            .concat(),
            code,
        )
    };
    // The whole cluster into another one.
    let (out, _) = restore(&["--pg", &dst.connstring()], 0);
    let restored: serde_json::Value = serde_json::from_str(&out).expect("restore JSON");
    assert_eq!(restored["databases"], all["databases"], "{restored}");
    let tolerated = restored["tolerated_errors"].as_array().expect("tolerated");
    assert!(
        tolerated.iter().any(|t| t
            .as_str()
            .is_some_and(|t| t.contains("role \"postgres\" already exists"))),
        "{restored}"
    );
    let same = |db: &str, from: &str| {
        assert_eq!(
            checksum(&dst, db, from),
            checksum(&src, db, from),
            "{from} in {db} differs after the cluster round trip"
        );
    };
    same("shop", "orders t");
    same("shop", "customers t");
    same("postgres", "notes t");
    same("app", "settings t");
    same("\"odd name\"", "t");
    assert_eq!(
        dst.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
            .expect("owner"),
        "app_owner",
        "the role came with the globals and owns its database"
    );
    assert_eq!(
        dst.psql("\\connect app\nSELECT tableowner FROM pg_tables WHERE tablename = 'settings'")
            .expect("owner"),
        "app_owner"
    );

    // Again: the databases exist now. Refused before anything runs, then --clean.
    let (_, err) = restore(&["--pg", &dst.connstring()], 2);
    assert!(
        err.contains("already has database(s) app, odd name, shop") && err.contains("--clean"),
        "{err}"
    );
    dst.psql("\\connect shop\nDELETE FROM orders WHERE id > 100")
        .expect("damage");
    restore(&["--pg", &dst.connstring(), "--clean"], 0);
    same("shop", "orders t");

    // One database, into a database of another name: like a pg_dump dump of it.
    dst.psql("CREATE DATABASE shop_one").expect("db");
    restore(&["--database", "shop", "--pg", &conn(&dst, "shop_one")], 0);
    assert_eq!(
        checksum(&dst, "shop_one", "orders t"),
        checksum(&src, "shop", "orders t")
    );
    let (_, err) = restore(&["--database", "nope", "--pg", &dst.connstring()], 2);
    assert!(
        err.contains("has no database \"nope\"; it has app, odd name, postgres, shop"),
        "{err}"
    );
    let (_, err) = restore(&["--table", "orders", "--pg", &dst.connstring()], 2);
    assert!(err.contains("pick it with --database NAME"), "{err}");

    // --to-file: globals.sql and one archive per database, names escaped.
    let dir = e.path("cluster-files");
    to_file(&e, id, &dir, &[]);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|f| f.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "app.dump",
            "globals.sql",
            "odd%20name.dump",
            "postgres.dump",
            "shop.dump"
        ]
    );
    let globals = std::fs::read_to_string(dir.join("globals.sql")).expect("globals");
    assert!(globals.contains("CREATE ROLE app_owner"), "{globals}");
    let one = e.path("shop-only.dump");
    to_file(&e, id, &one, &["--database", "shop"]);
    assert_eq!(
        std::fs::read(&one).expect("one"),
        std::fs::read(dir.join("shop.dump")).expect("shop.dump")
    );
    let listing = std::process::Command::new(src.bin("pg_restore"))
        .arg("--list")
        .arg(&one)
        .output()
        .expect("pg_restore --list");
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public orders"));
    eprintln!(
        "dump --all on PostgreSQL {}: {:.1} s",
        version.major(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn dump_all_round_trips_on_pg15() {
    all_round_trip(PgVersion::V15);
}

#[test]
fn dump_all_round_trips_on_pg18() {
    all_round_trip(PgVersion::V18);
}

/// A directory of `name`: pg_dump (the real one, for its version line) and a pg_dumpall
/// that fails, or none at all.
fn fake_bin(e: &Env, name: &str, real: &Path, dumpall: Option<&str>) -> String {
    let dir = e.path(name);
    std::fs::create_dir(&dir).expect("dir");
    std::os::unix::fs::symlink(real.join("pg_dump"), dir.join("pg_dump")).expect("link");
    if let Some(script) = dumpall {
        std::fs::write(
            dir.join("pg_dumpall"),
            format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {} --version; fi\n{script}\n",
                real.join("pg_dumpall").display()
            ),
        )
        .expect("pg_dumpall");
        set_executable(&dir.join("pg_dumpall"));
    }
    dir.display().to_string()
}

/// pg_dumpall failing leaves no dump and shows its message; pg_dump and pg_dumpall must come
/// from one directory; options of one database are refused with --all.
#[test]
fn dump_all_failures() {
    let pg = PgCluster::builder(PgVersion::V15).start().expect("cluster");
    let e = env();
    let src = pg.connstring();
    let failing = fake_bin(
        &e,
        "failing",
        pg.bin_dir(),
        Some("echo 'pg_dumpall: error: query failed: permission denied for table pg_authid' >&2; exit 1"),
    );
    let (_, err) = e.expect(&["dump", "--all", "--pg", &src, "--pg-bin", &failing], 1);
    assert!(
        err.contains("pg_dumpall failed") && err.contains("permission denied for table pg_authid"),
        "{err}"
    );
    let lonely = fake_bin(&e, "lonely", pg.bin_dir(), None);
    let (_, err) = e.expect(&["dump", "--all", "--pg", &src, "--pg-bin", &lonely], 2);
    assert!(
        err.contains("no pg_dump and pg_dumpall of PostgreSQL 15 or newer found in one directory")
            && err.contains("pg_dumpall (missing)"),
        "{err}"
    );
    let (_, err) = e.expect(&["dump", "--all", "--pg", &src, "--format", "plain"], 2);
    assert!(err.contains("--format other than custom"), "{err}");
    // clap refuses the selections of one database with --all.
    e.expect(&["dump", "--all", "--pg", &src, "--table", "t"], 2);
    let (out, _) = e.expect(&["--json", "list", "--dumps"], 0);
    assert_eq!(out.trim(), "[]", "a failed dump was listed");
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Directory format: pg_dump --jobs into a private scratch directory that is removed (also
/// when pg_dump fails), one stream per file (a change to one table leaves the other's file
/// deduplicated), restored with pg_restore --jobs and written back unchanged. Plain format:
/// restored through psql, pg_restore's options refused.
#[test]
fn dump_directory_and_plain_formats() {
    let t0 = Instant::now();
    let pg = PgCluster::builder(PgVersion::V15).start().expect("cluster");
    create_shop(&pg, 30_000);
    let e = env();
    let src = conn(&pg, "shop");
    let scratch = e.path("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    let scratch_arg = scratch.to_str().expect("utf-8");
    let dir_args = [
        "--pg",
        &src,
        "--format",
        "directory",
        "--parallel",
        "2",
        "--scratch",
        scratch_arg,
    ];
    let custom1 = dump(&e, &["--pg", &src]);
    let first = dump(&e, &dir_args);
    assert_eq!(first["format"], "directory", "{first}");
    assert_eq!(
        files_in(&scratch),
        0,
        "the scratch directory was left behind"
    );
    // A change to customers only: orders' file is stored again as is.
    pg.psql("\\connect shop\nUPDATE customers SET name = name || '!' WHERE id <= 20")
        .expect("change");
    let second = dump(&e, &dir_args);
    let custom2 = dump(&e, &["--pg", &src]);
    let new = |d: &serde_json::Value| d["new_bytes"].as_u64().expect("new");
    eprintln!(
        "one table changed: directory format stored {} new bytes of {} ({} the first time); custom format {} of {} ({} the first time)",
        new(&second),
        second["logical_bytes"],
        new(&first),
        new(&custom2),
        custom2["logical_bytes"],
        new(&custom1),
    );
    assert!(
        new(&second) * 5 < new(&first),
        "the unchanged table was stored again: {second}"
    );

    let id = second["id"].as_str().expect("id");
    pg.psql("CREATE DATABASE dir_copy").expect("db");
    e.expect(
        &[
            "dump-restore",
            id,
            "--pg",
            &conn(&pg, "dir_copy"),
            "--parallel",
            "2",
            "--scratch",
            scratch_arg,
        ],
        0,
    );
    assert_eq!(files_in(&scratch), 0, "restore left its scratch directory");
    for t in ["customers", "orders"] {
        assert_eq!(
            checksum(&pg, "dir_copy", &format!("{t} t")),
            checksum(&pg, "shop", &format!("{t} t")),
        );
    }
    // --table public.orders becomes --schema public --table orders.
    pg.psql("CREATE DATABASE one_table").expect("db");
    e.expect(
        &[
            "dump-restore",
            id,
            "--pg",
            &conn(&pg, "one_table"),
            "--table",
            "public.orders",
        ],
        0,
    );
    assert_eq!(
        checksum(
            &pg,
            "one_table",
            "(SELECT tablename FROM pg_tables WHERE schemaname = 'public') t"
        ),
        checksum(
            &pg,
            "shop",
            "(SELECT tablename FROM pg_tables WHERE tablename = 'orders') t"
        ),
    );
    assert_eq!(
        checksum(&pg, "one_table", "orders t"),
        checksum(&pg, "shop", "orders t")
    );
    let (_, err) = e.expect(
        &[
            "dump-restore",
            id,
            "--pg",
            &conn(&pg, "one_table"),
            "--table",
            "public.orders",
            "--table",
            "app.orders",
        ],
        2,
    );
    assert!(err.contains("run dump-restore once per schema"), "{err}");

    let out_dir = e.path("shop.dir");
    to_file(&e, id, &out_dir, &[]);
    let listing = std::process::Command::new(pg.bin("pg_restore"))
        .arg("--list")
        .arg(&out_dir)
        .output()
        .expect("pg_restore --list");
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public orders"),
        "{listing:?}"
    );
    let size: u64 = std::fs::read_dir(&out_dir)
        .expect("dir")
        .map(|f| f.expect("entry").metadata().expect("meta").len())
        .sum();
    assert_eq!(size, second["logical_bytes"].as_u64().expect("size"));

    // A tenant export in directory format: the rows load between pg_restore's sections,
    // which read the directory again each time.
    let tenant = dump(
        &e,
        &[
            &dir_args[..],
            &[
                "--where",
                "public.customers:tenant_id = 3",
                "--where",
                "public.orders:tenant_id = 3",
            ],
        ]
        .concat(),
    );
    pg.psql("CREATE DATABASE tenant_dir").expect("db");
    let (out, _) = e.expect(
        &[
            "dump-restore",
            tenant["id"].as_str().expect("id"),
            "--pg",
            &conn(&pg, "tenant_dir"),
            "--parallel",
            "2",
        ],
        0,
    );
    assert!(out.contains("3200 filtered rows loaded"), "{out}");
    for t in ["customers", "orders"] {
        assert_eq!(
            checksum(&pg, "tenant_dir", &format!("{t} t")),
            checksum(
                &pg,
                "shop",
                &format!("(SELECT * FROM {t} WHERE tenant_id = 3) t")
            ),
        );
    }

    // pg_dump failing: no dump, and nothing left in the scratch directory.
    let (_, err) = e.expect(
        &[&["dump"][..], &dir_args, &["--table", "no_such_table"]].concat(),
        1,
    );
    assert!(err.contains("no matching tables were found"), "{err}");
    assert_eq!(
        files_in(&scratch),
        0,
        "a failed dump left its scratch directory"
    );
    let (_, err) = e.expect(&["dump", "--pg", &src, "--parallel", "2"], 2);
    assert!(err.contains("add --format directory"), "{err}");
    let (_, err) = e.expect(
        &[
            "dump-restore",
            custom2["id"].as_str().expect("id"),
            "--pg",
            &src,
            "--parallel",
            "2",
        ],
        2,
    );
    assert!(
        err.contains("--parallel needs a directory-format dump"),
        "{err}"
    );

    // Plain SQL through psql.
    let plain = dump(&e, &["--pg", &src, "--format", "plain"]);
    assert_eq!(plain["format"], "plain");
    let pid = plain["id"].as_str().expect("id");
    pg.psql("CREATE DATABASE plain_copy").expect("db");
    e.expect(&["dump-restore", pid, "--pg", &conn(&pg, "plain_copy")], 0);
    for t in ["customers", "orders"] {
        assert_eq!(
            checksum(&pg, "plain_copy", &format!("{t} t")),
            checksum(&pg, "shop", &format!("{t} t")),
        );
    }
    // Into a database that has the tables already: psql stops at the first error.
    let (_, err) = e.expect(&["dump-restore", pid, "--pg", &conn(&pg, "plain_copy")], 1);
    assert!(
        err.contains("psql failed") && err.contains("already exists"),
        "{err}"
    );
    for flags in [&["--table", "orders"][..], &["--clean"], &["--schema-only"]] {
        let (_, err) = e.expect(
            &[
                &["dump-restore", pid, "--pg", &conn(&pg, "plain_copy")][..],
                flags,
            ]
            .concat(),
            2,
        );
        assert!(
            err.contains("is a plain SQL script") && err.contains(flags[0]),
            "{err}"
        );
    }
    let (_, err) = e.expect(
        &[
            "dump",
            "--pg",
            &src,
            "--format",
            "plain",
            "--where",
            "orders:tenant_id = 1",
        ],
        2,
    );
    assert!(err.contains("--where needs an archive format"), "{err}");
    let sql = e.path("shop.sql");
    to_file(&e, pid, &sql, &[]);
    let text = std::fs::read_to_string(&sql).expect("sql");
    assert!(text.contains("PostgreSQL database dump") && text.contains("COPY public.orders"));
    eprintln!(
        "directory and plain formats: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
