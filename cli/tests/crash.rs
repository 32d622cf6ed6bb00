//! SIGKILL at random points of `backup`, `wal-push`, `wal-stream`, `expire` and `prune`, run
//! as a user would against real PostgreSQL servers (15 and 18) and a local repository. After
//! every kill: `verify` passes, nothing acknowledged is lost (a segment whose `wal-push`
//! exited 0 is fetchable, a backup that printed its summary is listed, a killed one never
//! is), and the next run of the same command succeeds at once: the dead process's lock does
//! not hold it up for the stale timeout.
//!
//! Kill delays come from a seeded generator. Each test prints its seed; set
//! `PGKEEP_CRASH_SEED=<n>` to replay a failure with the same delays (the machine's load still
//! shifts what the process is doing at a given delay, so a replay is close, not exact).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::archiving::Archiving;
use common::free_port;
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

/// splitmix64: a tiny seeded generator, enough to spread kill points.
struct Rng(u64);

impl Rng {
    /// Seeded from `PGKEEP_CRASH_SEED`, else from the clock; prints the seed either way.
    fn for_test(name: &str) -> Self {
        let seed = match std::env::var("PGKEEP_CRASH_SEED") {
            Ok(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("PGKEEP_CRASH_SEED={s:?} is not a number")),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64,
        };
        println!("{name}: crash seed {seed} (replay with PGKEEP_CRASH_SEED={seed})");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A delay drawn uniformly from `lo..=hi`.
    fn delay(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.next() % (span + 1))
    }
}

/// How a run that was to be killed ended.
struct Run {
    /// SIGKILL ended it (it had not finished by itself).
    killed: bool,
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// Asserts a run that finished before its kill succeeded.
    fn assert_finished_ok(&self, what: &str) {
        assert!(
            self.out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&self.out.stderr)
        );
    }
}

/// Starts `cmd`, sends SIGKILL after `delay` (unless it finished), and collects its output.
fn kill_after(mut cmd: Command, delay: Duration) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgkeep starts");
    std::thread::sleep(delay);
    // Harmless on a child that already exited (it is not reaped yet).
    let _ = child.kill();
    let out = child.wait_with_output().expect("reaped");
    Run {
        killed: out.status.code().is_none(),
        out,
    }
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn listed(a: &Archiving) -> Vec<String> {
    let (out, _) = a.expect_as_server(&["--json", "list"], 0);
    json(&out)
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Lock objects in the repository (not the store's staging files, `<name>#<n>`, which a
/// process killed mid-write can leave and which listings skip).
fn lock_count(a: &Archiving) -> usize {
    std::fs::read_dir(a.repo.join("locks")).map_or(0, |d| {
        d.filter(|e| {
            !e.as_ref()
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains('#')
        })
        .count()
    })
}

/// Restores `backup` to its consistent point, starts it, and runs `sql` on it.
fn restored_query(a: &Archiving, backup: &str, name: &str, sql: &str) -> String {
    let dir = a.pg.owned_dir(name).expect("dir");
    let port = free_port();
    let (dir_arg, port_arg) = (dir.display().to_string(), port.to_string());
    let bin = a.pg.bin_dir().display().to_string();
    a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &dir_arg,
            "--backup",
            backup,
            "--target-immediate",
            "--start",
            "--port",
            &port_arg,
            "--pg-bin",
            &bin,
        ],
        0,
    );
    let out = a.query_restored(&dir, port, sql);
    a.stop_restored(&dir);
    out
}

/// `backup` killed at random points (throttled so it takes seconds): a killed backup is
/// never listed, one that finished before its kill is; verify passes after every kill; the
/// dead backups' locks do not hold up `prune --lock-wait 0`, which removes them; the next
/// backup (an incremental) succeeds and restores with the server's data.
#[test]
fn backup_killed_at_random_points() {
    let mut rng = Rng::for_test("backup");
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    a.pgbench(&["-i", "-q", "-s", "3"]);
    let conn = a.pg.connstring();
    let throttled = ["--json", "backup", "--pg", &conn, "--max-rate", "16384"];
    // The first backup, timed: the kills are spread over that span and a little beyond.
    let t0 = Instant::now();
    let (out, _) = a.expect_as_server(&throttled, 0);
    let span = t0.elapsed();
    let mut expected = vec![json(&out)["backup_id"].as_str().expect("id").to_owned()];
    let mut killed = 0;
    for round in 0..6 {
        a.sql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 101 = {round}"
        ));
        let at = rng.delay(Duration::ZERO, span * 11 / 10);
        let run = kill_after(a.command_as_server(&throttled), at);
        if run.killed {
            killed += 1;
        } else {
            run.assert_finished_ok("a backup that beat its kill");
            expected.push(
                json(&run.stdout())["backup_id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
            // Backup ids have a one-second resolution.
            std::thread::sleep(Duration::from_millis(1100));
        }
        assert_eq!(listed(&a), expected, "after a kill at {at:?} (of {span:?})");
        a.expect_as_server(&["verify"], 0);
    }
    println!("backup: {killed} of 6 runs killed, a backup takes {span:?}");

    // The locks the killed backups left (if the kill came after taking one) belong to dead
    // processes of this host: prune neither waits for them nor leaves them.
    let left = lock_count(&a) as u64;
    let (out, _) = a.expect_as_server(&["--json", "--lock-wait", "0", "prune"], 0);
    assert_eq!(json(&out)["stale_locks_removed"], left, "{out}");
    assert_eq!(lock_count(&a), 0);

    a.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0");
    let (out, _) = a.expect_as_server(&["--json", "backup", "--pg", &conn], 0);
    let last = json(&out);
    assert_eq!(last["kind"], "incremental", "{last}");
    let id = last["backup_id"].as_str().expect("id").to_owned();
    expected.push(id.clone());
    assert_eq!(listed(&a), expected);
    a.expect_as_server(&["verify", "--read-data"], 0);
    let sum = "SELECT sum(abalance) FROM pgbench_accounts";
    let want = a.sql(sum);
    a.switch_and_wait();
    assert_eq!(restored_query(&a, &id, "r-after-kills", sum), want);
}

/// Consecutive segments with data, copied into a `pg_wal` of the test's own with their
/// `.ready` files, as the archiver sees them; returns the names.
fn ready_segments(a: &Archiving, pg_wal: &Path, count: usize) -> Vec<String> {
    std::fs::create_dir_all(pg_wal.join("archive_status")).expect("dirs");
    let mut names = Vec::new();
    for i in 0..count {
        a.sql(&format!(
            "CREATE TABLE t{i} AS SELECT g, md5(g::text) FROM generate_series(1, 8000) g"
        ));
        names.push(a.sql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    a.sql("SELECT pg_switch_wal()");
    for n in &names {
        std::fs::copy(a.pg.data_dir().join("pg_wal").join(n), pg_wal.join(n)).expect("copy");
        std::fs::write(pg_wal.join("archive_status").join(format!("{n}.ready")), "")
            .expect("ready");
    }
    names
}

/// `wal-push` killed at random points (two per segment) while an archiver works through six
/// segments (three calls with `--lookahead 0`, each storing its own segment, then calls with
/// the default look-ahead, which stores the segments waiting behind its own in parallel): after every kill
/// each segment is either absent or fetched back byte for byte, and none whose push exited 0
/// is absent; the archiver's retry succeeds; the archive ends as one run without gaps, and
/// `verify --read-data` passes.
#[test]
fn wal_push_killed_at_random_points() {
    let mut rng = Rng::for_test("wal-push");
    let a = Archiving::with(PgVersion::V18, 1, &[], false);
    let pg_wal = a.env.path("pg_wal");
    let names = ready_segments(&a, &pg_wal, 6);
    let originals: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(pg_wal.join(n)).expect("segment"))
        .collect();
    let path = |n: &str| pg_wal.join(n).display().to_string();
    let dest = a.env.path("RECOVERYXLOG").display().to_string();
    let wal_dir = a.repo.join("clusters/main/wal/00000001");

    // How long a push takes here, with and without look-ahead (then start over). The
    // shortest of three, so that most kills land inside a run.
    let mut single = Duration::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        a.env
            .expect(&["wal-push", "--lookahead", "0", &path(&names[1])], 0);
        single = single.min(t0.elapsed());
        std::fs::remove_dir_all(&wal_dir).expect("start over");
    }
    let t0 = Instant::now();
    a.env.expect(&["wal-push", &path(&names[0])], 0);
    let ahead = t0.elapsed();
    std::fs::remove_dir_all(&wal_dir).expect("start over");
    let _ = std::fs::remove_dir_all(pg_wal.join("pgkeep-spool"));

    let mut acknowledged: Vec<&str> = Vec::new();
    let mut kills = 0;
    let mut window = ahead;
    for (i, name) in names.iter().enumerate() {
        // The first three store only their own segment; the fourth stores the last two
        // ahead of time, which the last two calls then find stored.
        let (args, span) = match i {
            0..=2 => (vec!["wal-push", "--lookahead", "0"], single),
            3 => (vec!["wal-push"], ahead),
            _ => (vec!["wal-push"], single),
        };
        let file = path(name);
        let mut args = args;
        args.push(&file);
        // Two kills per segment; once a run finished, the next finds the segment stored.
        for _ in 0..2 {
            let at = rng.delay(Duration::ZERO, span.min(window));
            let run = kill_after(a.env.command(&args), at);
            if run.killed {
                kills += 1;
            } else {
                run.assert_finished_ok("a wal-push that beat its kill");
                acknowledged.push(name.as_str());
                // A push takes milliseconds: when the measured span overshoots (a load
                // spike while measuring), narrow it so the kills keep landing inside runs.
                window = window * 3 / 4;
            }
            for (n, original) in names.iter().zip(&originals) {
                let out = a.env.run(&["wal-fetch", "--prefetch", "0", n, &dest]);
                match out.status.code() {
                    Some(0) => assert!(
                        std::fs::read(&dest).expect("fetched") == *original,
                        "{n} came back different after a kill at {at:?}"
                    ),
                    Some(1) => assert!(
                        !acknowledged.contains(&n.as_str()),
                        "{n} was acknowledged, and is gone after a kill at {at:?}"
                    ),
                    other => panic!(
                        "after a kill at {at:?}: wal-fetch {n} exited {other:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                }
            }
        }
        // PostgreSQL retries until the command succeeds, then marks the segment done.
        a.env.expect(&["wal-push", &file], 0);
        acknowledged.push(name.as_str());
        let status = pg_wal.join("archive_status");
        std::fs::rename(
            status.join(format!("{name}.ready")),
            status.join(format!("{name}.done")),
        )
        .expect("done");
    }
    println!(
        "wal-push: {kills} of 12 runs killed; a push takes {single:?}, with look-ahead {ahead:?}"
    );
    assert!(kills > 0, "no run was killed: the delays missed");
    let info = a.info();
    let tl = &info["wal"][0];
    assert_eq!(tl["gaps"], serde_json::json!([]), "{info}");
    assert_eq!(tl["ranges"].as_array().expect("ranges").len(), 1, "{info}");
    assert_eq!(tl["ranges"][0]["segments"], names.len() as u64, "{info}");
    a.env.expect(&["verify", "--read-data"], 0);
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("X/X");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

fn stream_cmd(a: &Archiving) -> Command {
    a.command_as_server(&[
        "--log-level",
        "info",
        "wal-stream",
        "--pg",
        &a.pg.connstring(),
        "--slot",
        "crash",
        "--partial-interval",
        "1",
    ])
}

/// `wal-stream` killed at random points while WAL is written: after each kill the slot's
/// restart point (what the receiver acknowledged) never lies beyond the archive, so the
/// server never discards WAL the archive lacks; verify passes; and a final run catches up
/// with one run of segments and no gap.
#[test]
fn wal_stream_killed_at_random_points() {
    let mut rng = Rng::for_test("wal-stream");
    let a = Archiving::with(PgVersion::V15, 1, &[], false);
    for round in 0..5 {
        let at = rng.delay(Duration::from_millis(100), Duration::from_secs(4));
        let mut child = stream_cmd(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wal-stream starts");
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < at {
            a.write_wal(3_000);
            n += 1;
            if n % 4 == 0 {
                a.sql("SELECT pg_switch_wal()");
            }
        }
        child.kill().expect("kill");
        child.wait().expect("reaped");
        let restart =
            a.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'crash'");
        if !restart.is_empty() {
            let (restart, end) = (lsn(&restart), a.archive_end(1 << 20));
            assert!(
                restart <= end,
                "round {round}, killed at {at:?}: slot at {restart:X}, archive ends at {end:X}"
            );
        }
        a.expect_as_server(&["verify"], 0);
    }
    a.write_wal(3_000);
    let last = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let mut child = stream_cmd(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wal-stream starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.stored_wal("00000001").contains(&last) {
        assert!(
            Instant::now() < deadline,
            "{last} was not stored: {:?}",
            a.stored_wal("00000001")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let info = a.info();
    let tl = &info["wal"][0];
    assert_eq!(tl["gaps"], serde_json::json!([]), "{info}");
    assert_eq!(tl["ranges"].as_array().expect("ranges").len(), 1, "{info}");
    assert!(
        tl["ranges"][0]["last"].as_str() >= Some(last.as_str()),
        "{info}"
    );
    a.expect_as_server(&["verify", "--read-data"], 0);
}

/// `cp -a`: the copy keeps the owner (the server's OS user) and modes.
fn copy_dir(from: &Path, to: &Path) {
    let cp = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(cp.success(), "cp -a {} {}", from.display(), to.display());
}

/// How long `args` takes on this repository: run on a copy, which then replaces the
/// repository again (so the kills are spread over a real run, not a dry one).
fn timed_on_a_copy(a: &Archiving, args: &[&str]) -> Duration {
    let copy = a.repo.with_extension("copy");
    copy_dir(&a.repo, &copy);
    let t0 = Instant::now();
    a.expect_as_server(args, 0);
    let took = t0.elapsed();
    std::fs::remove_dir_all(&a.repo).expect("remove");
    std::fs::rename(&copy, &a.repo).expect("put back");
    took
}

/// Runs `args` up to `tries` times, each killed at a random point of `0..=limit`, until one
/// finishes first; after each kill, `after` checks the repository. Returns the kill count.
fn kill_repeatedly(
    a: &Archiving,
    rng: &mut Rng,
    args: &[&str],
    limit: Duration,
    tries: usize,
    mut after: impl FnMut(Duration),
) -> usize {
    let mut kills = 0;
    for _ in 0..tries {
        let at = rng.delay(Duration::ZERO, limit);
        let run = kill_after(a.command_as_server(args), at);
        if !run.killed {
            run.assert_finished_ok(&format!("{args:?} that beat its kill"));
            break;
        }
        kills += 1;
        after(at);
    }
    kills
}

/// `expire` and then `prune` killed at random points, four rounds from the same repository
/// of four full backups: after every kill the backups the policy keeps are listed and
/// `verify` passes (verify takes a shared lock: a dead prune's exclusive lock does not block
/// it); the rerun of each completes, prune without waiting for the dead one's lock, leaving
/// no lock and less data; then the data verifies and the oldest kept backup restores with
/// its rows.
#[test]
fn expire_and_prune_killed_at_random_points() {
    let mut rng = Rng::for_test("expire/prune");
    let a = Archiving::start(PgVersion::V18, 1, &[]);
    let conn = a.pg.connstring();
    a.sql("CREATE TABLE t (id int, pad text)");
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    for round in 0..4 {
        // Fresh, incompressible rows each round, so every backup adds chunks of its own.
        a.sql(&format!(
            "INSERT INTO t SELECT g, md5(g::text || '{round}') || md5(random()::text) FROM generate_series(1, 40000) g"
        ));
        let (out, _) = a.expect_as_server(&["--json", "backup", "--full", "--pg", &conn], 0);
        ids.push(json(&out)["backup_id"].as_str().expect("id").to_owned());
        counts.push(a.sql("SELECT count(*) FROM t"));
        a.switch_and_wait();
        std::thread::sleep(Duration::from_millis(1100));
    }
    let kept = ids[2..].to_vec();
    let bytes = |a: &Archiving| {
        a.info()["repository"]["pack_bytes"]
            .as_u64()
            .expect("bytes")
    };
    let before = bytes(&a);

    // Several rounds, each from the same four backups: expire killed, rerun; prune killed,
    // rerun. The timings are of real runs (on copies), the shortest of two.
    let pristine = a.repo.with_extension("pristine");
    copy_dir(&a.repo, &pristine);
    let expire = ["expire", "--keep-last", "2"];
    let expire_span = timed_on_a_copy(&a, &expire).min(timed_on_a_copy(&a, &expire));
    a.expect_as_server(&expire, 0);
    let prune_span = timed_on_a_copy(&a, &["prune"]).min(timed_on_a_copy(&a, &["prune"]));
    let (mut expire_kills, mut prune_kills) = (0, 0);
    for _ in 0..4 {
        std::fs::remove_dir_all(&a.repo).expect("remove");
        copy_dir(&pristine, &a.repo);
        expire_kills += kill_repeatedly(&a, &mut rng, &expire, expire_span, 2, |at| {
            let now = listed(&a);
            assert!(
                kept.iter().all(|k| now.contains(k)) && now.iter().all(|b| ids.contains(b)),
                "after a kill at {at:?}: {now:?} (all {ids:?})"
            );
            a.expect_as_server(&["verify"], 0);
        });
        a.expect_as_server(&expire, 0);
        assert_eq!(listed(&a), kept);

        prune_kills += kill_repeatedly(&a, &mut rng, &["prune"], prune_span, 3, |at| {
            // verify takes a shared lock: the dead prune's exclusive one must not stop it.
            let (_, err) = a.expect_as_server(&["--lock-wait", "5s", "verify"], 0);
            assert!(!err.contains("waiting"), "after a kill at {at:?}: {err}");
        });
        let (out, _) = a.expect_as_server(&["--json", "--lock-wait", "5s", "prune"], 0);
        assert_eq!(json(&out)["dry_run"], false);
        assert_eq!(lock_count(&a), 0, "locks left behind");
        assert!(bytes(&a) < before, "prune freed nothing");
        a.expect_as_server(&["verify"], 0);
    }
    println!(
        "expire/prune: {expire_kills} expire and {prune_kills} prune runs killed; expire takes {expire_span:?}, prune {prune_span:?}"
    );
    assert!(expire_kills + prune_kills > 0, "the delays missed");
    assert_eq!(listed(&a), kept);
    a.expect_as_server(&["verify", "--read-data"], 0);
    assert_eq!(
        restored_query(&a, &kept[0], "r-kept", "SELECT count(*) FROM t"),
        counts[2]
    );
}
