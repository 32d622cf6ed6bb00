use std::time::Duration;

use pgkeep_format::WalFileName;

use super::gather::archive_test_blocker;
use super::*;

const NOW: i64 = 1_800_000_000_000_000;
const HOUR: i64 = 3_600_000_000;

fn expect() -> Expectations {
    Expectations {
        repo: Some("/srv/repo".into()),
        cluster: "main".into(),
        slot: None,
        archive_command: "/usr/bin/pgkeep --config /etc/pgkeep/pgkeep.toml wal-push %p".into(),
        max_backup_age: Duration::from_secs(26 * 3600),
        max_wal_age: Duration::from_secs(3600),
    }
}

fn healthy_server() -> ServerFacts {
    ServerFacts {
        target: "127.0.0.1:5432".into(),
        server_version: "15.8".into(),
        in_recovery: false,
        wal_level: "replica".into(),
        archive_mode: "on".into(),
        archive_command: "/usr/bin/pgkeep --config /etc/pgkeep/pgkeep.toml wal-push %p".into(),
        archive_library: String::new(),
        max_wal_senders: 10,
        wal_segment_size: 16 << 20,
        archiver: ArchiverStats {
            archived_count: 12,
            last_archived_wal: Some("00000001000000000000000B".into()),
            last_archived_time_us: Some(NOW - 60_000_000),
            ..ArchiverStats::default()
        },
        current_wal_file: Some("00000001000000000000000C".into()),
        slot: None,
    }
}

fn known(value: &str) -> Resolved {
    Resolved::Known {
        value: value.into(),
        source: "config file /etc/pgkeep/pgkeep.toml".into(),
    }
}

fn healthy() -> Facts {
    Facts {
        server: Ok(healthy_server()),
        archive_target: Some(ArchiveTarget {
            repo: known("file:///srv/repo/"),
            cluster: known("main"),
        }),
        repository: Ok(RepoFacts {
            location: "/srv/repo".into(),
            backups: 2,
            newest_backup: Some(("20270115T000000Z".into(), NOW - 2 * HOUR)),
            newest_wal: Some((
                WalFileName::parse("00000001000000000000000B").expect("name"),
                Some(NOW - 60_000_000),
            )),
        }),
        archive_test: ArchiveTest::NotRequested,
    }
}

fn find<'a>(r: &'a Report, name: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no finding {name} in {r:#?}"))
}

fn status_of(facts: &Facts, e: &Expectations, name: &str) -> Status {
    find(&evaluate(facts, e, NOW), name).status
}

#[test]
fn a_healthy_setup_is_ok_everywhere() {
    let r = evaluate(&healthy(), &expect(), NOW);
    for f in &r.findings {
        assert_eq!(f.status, Status::Ok, "{f:#?}");
        assert!(f.fix.is_none(), "{f:#?}");
    }
    let names: Vec<&str> = r.findings.iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "connection",
            "wal_level",
            "max_wal_senders",
            "archive_mode",
            "archive_command",
            "archiver",
            "repository",
            "backup_age",
            "wal_age"
        ]
    );
    assert_eq!(r.status(), Status::Ok);
    assert_eq!(r.status().exit_code(), 0);
    assert_eq!(
        r.ages,
        vec![("backup_age", 7200, 26 * 3600), ("wal_age", 60, 3600)]
    );
}

#[test]
fn a_misconfigured_server_gets_a_fix_for_each_problem() {
    let mut f = healthy();
    f.server = Ok(ServerFacts {
        wal_level: "minimal".into(),
        archive_mode: "off".into(),
        archive_command: String::new(),
        max_wal_senders: 0,
        archiver: ArchiverStats::default(),
        ..healthy_server()
    });
    let r = evaluate(&f, &expect(), NOW);
    for (name, fix) in [
        ("wal_level", "wal_level = replica"),
        ("max_wal_senders", "max_wal_senders = 10"),
        ("archive_mode", "archive_mode = on"),
        (
            "archive_command",
            "archive_command = '/usr/bin/pgkeep --config /etc/pgkeep/pgkeep.toml wal-push %p'",
        ),
    ] {
        let finding = find(&r, name);
        assert_eq!(finding.status, Status::Critical, "{finding:#?}");
        let text = finding.fix.as_deref().expect("fix");
        assert!(text.contains(fix), "{name}: {text}");
    }
    // With archiving off, the archiver's statistics say nothing.
    assert!(r.findings.iter().all(|f| f.name != "archiver"));
    assert_eq!(r.status(), Status::Critical);
    assert_eq!(r.status().exit_code(), 2);
}

#[test]
fn archive_command_must_archive_into_this_repository_and_cluster() {
    let e = expect();
    let mut f = healthy();
    let set = |f: &mut Facts, cmd: &str| {
        if let Ok(s) = &mut f.server {
            s.archive_command = cmd.into();
        }
    };

    set(&mut f, "cp %p /mnt/archive/%f");
    assert_eq!(status_of(&f, &e, "archive_command"), Status::Critical);
    // ...unless the archive test proved it archives here (a wrapper script, say).
    f.archive_test = ArchiveTest::Ran {
        segment: "00000001000000000000000C".into(),
        arrived: true,
        waited: Duration::from_millis(600),
        archiver: None,
    };
    assert_eq!(status_of(&f, &e, "archive_command"), Status::Ok);
    f.archive_test = ArchiveTest::NotRequested;
    // ...or when wal-stream brings the WAL.
    let streaming = Expectations {
        slot: Some("pgkeep".into()),
        ..expect()
    };
    assert_eq!(status_of(&f, &streaming, "archive_command"), Status::Ok);

    set(&mut f, "pgkeep --config /etc/pgkeep/pgkeep.toml wal-push");
    let r = evaluate(&f, &e, NOW);
    assert_eq!(find(&r, "archive_command").status, Status::Critical);
    assert!(find(&r, "archive_command").message.contains("%p"));

    set(&mut f, "pgkeep --repo s3://other/x wal-push %p");
    f.archive_target = Some(ArchiveTarget {
        repo: known("s3://other/x"),
        cluster: known("main"),
    });
    let r = evaluate(&f, &e, NOW);
    let finding = find(&r, "archive_command");
    assert_eq!(finding.status, Status::Critical);
    assert!(finding.message.contains("s3://other/x"), "{finding:#?}");
    assert!(finding.message.contains("/srv/repo"), "{finding:#?}");

    f.archive_target = Some(ArchiveTarget {
        repo: known("/srv/repo"),
        cluster: known("db2"),
    });
    let r = evaluate(&f, &e, NOW);
    assert!(find(&r, "archive_command").message.contains("cluster db2"));
    assert_eq!(find(&r, "archive_command").status, Status::Critical);

    // Settings archive_command takes from where this check cannot look: a warning.
    set(&mut f, "pgkeep wal-push %p");
    f.archive_target = Some(ArchiveTarget {
        repo: Resolved::Hidden {
            reason: "it names neither --repo nor --config".into(),
        },
        cluster: known("main"),
    });
    let r = evaluate(&f, &e, NOW);
    let finding = find(&r, "archive_command");
    assert_eq!(finding.status, Status::Warning);
    assert!(
        finding.message.contains("cannot be confirmed"),
        "{finding:#?}"
    );
    assert!(finding
        .fix
        .as_deref()
        .expect("fix")
        .contains("--archive-test"));
    f.archive_test = ArchiveTest::Ran {
        segment: "00000001000000000000000C".into(),
        arrived: true,
        waited: Duration::from_millis(600),
        archiver: None,
    };
    assert_eq!(status_of(&f, &e, "archive_command"), Status::Ok);

    // An archive module replaces archive_command altogether.
    let mut f = healthy();
    if let Ok(s) = &mut f.server {
        s.archive_library = "basic_archive".into();
    }
    let r = evaluate(&f, &e, NOW);
    assert_eq!(find(&r, "archive_command").status, Status::Critical);
    assert!(find(&r, "archive_command")
        .fix
        .as_deref()
        .expect("fix")
        .contains("archive_library = ''"));
}

#[test]
fn a_quoted_suggestion_survives_postgresql_conf_quoting() {
    let e = Expectations {
        archive_command: "pgkeep --repo '/srv/it'\\''s' wal-push %p".into(),
        ..expect()
    };
    let mut f = healthy();
    if let Ok(s) = &mut f.server {
        s.archive_command = String::new();
    }
    let r = evaluate(&f, &e, NOW);
    let fix = find(&r, "archive_command").fix.clone().expect("fix");
    assert!(
        fix.contains("archive_command = 'pgkeep --repo ''/srv/it''\\''''s'' wal-push %p'"),
        "{fix}"
    );
}

#[test]
fn archiver_failures_after_the_last_success_are_critical() {
    let mut f = healthy();
    if let Ok(s) = &mut f.server {
        s.archiver.failed_count = 3;
        s.archiver.last_failed_wal = Some("00000001000000000000000C".into());
        s.archiver.last_failed_time_us = Some(NOW - 10_000_000);
    }
    let r = evaluate(&f, &expect(), NOW);
    let a = find(&r, "archiver");
    assert_eq!(a.status, Status::Critical);
    assert!(a.message.contains("00000001000000000000000C"), "{a:#?}");
    // An old failure, since followed by success, is history.
    if let Ok(s) = &mut f.server {
        s.archiver.last_failed_time_us = Some(NOW - HOUR);
    }
    let r = evaluate(&f, &expect(), NOW);
    let a = find(&r, "archiver");
    assert_eq!(a.status, Status::Ok);
    assert!(a.message.contains("since succeeded"), "{a:#?}");
    // Failing from the start: no success at all.
    let never = ArchiverStats {
        failed_count: 1,
        last_failed_wal: Some("000000010000000000000001".into()),
        last_failed_time_us: Some(NOW),
        ..ArchiverStats::default()
    };
    assert!(never.failing());
}

#[test]
fn slot_states() {
    let e = Expectations {
        slot: Some("pgkeep".into()),
        ..expect()
    };
    let with_slot = |state: SlotFacts| {
        let mut f = healthy();
        if let Ok(s) = &mut f.server {
            s.slot = Some(("pgkeep".into(), state));
        }
        evaluate(&f, &e, NOW)
    };
    let present = |slot_type: &str, active: bool, wal_status: &str| SlotFacts::Present {
        slot_type: slot_type.into(),
        active,
        wal_status: Some(wal_status.into()),
        retained_bytes: Some(48 << 20),
    };
    let r = with_slot(present("physical", true, "reserved"));
    assert_eq!(find(&r, "slot").status, Status::Ok);
    let r = with_slot(present("physical", false, "reserved"));
    let s = find(&r, "slot");
    assert_eq!(s.status, Status::Warning);
    assert!(s.message.contains("48.0 MiB"), "{s:#?}");
    assert!(s
        .fix
        .as_deref()
        .expect("fix")
        .contains("wal-stream --slot pgkeep"));
    assert_eq!(
        find(&with_slot(present("physical", true, "unreserved")), "slot").status,
        Status::Warning
    );
    assert_eq!(
        find(&with_slot(present("physical", false, "lost")), "slot").status,
        Status::Critical
    );
    assert_eq!(
        find(&with_slot(present("logical", true, "reserved")), "slot").status,
        Status::Critical
    );
    let r = with_slot(SlotFacts::Missing);
    assert_eq!(find(&r, "slot").status, Status::Critical);
}

#[test]
fn ages_warn_beyond_the_limit_and_are_critical_beyond_twice() {
    let e = expect();
    let at = |backup_age_h: i64| {
        let mut f = healthy();
        if let Ok(repo) = &mut f.repository {
            repo.newest_backup = Some(("b".into(), NOW - backup_age_h * HOUR));
        }
        status_of(&f, &e, "backup_age")
    };
    assert_eq!(at(25), Status::Ok);
    assert_eq!(at(27), Status::Warning);
    assert_eq!(at(51), Status::Warning);
    assert_eq!(at(53), Status::Critical);

    let mut f = healthy();
    if let Ok(repo) = &mut f.repository {
        repo.newest_backup = None;
        repo.backups = 0;
    }
    let r = evaluate(&f, &e, NOW);
    let b = find(&r, "backup_age");
    assert_eq!(b.status, Status::Critical);
    assert!(b.fix.as_deref().expect("fix").contains("pgkeep backup"));

    // WAL: an old newest segment with other segments completed since is a problem...
    let wal_at = |age_min: i64, current: &str| {
        let mut f = healthy();
        if let Ok(repo) = &mut f.repository {
            repo.newest_wal = Some((
                WalFileName::parse("00000001000000000000000B").expect("name"),
                Some(NOW - age_min * 60_000_000),
            ));
        }
        if let Ok(s) = &mut f.server {
            s.current_wal_file = Some(current.into());
        }
        evaluate(&f, &e, NOW)
    };
    assert_eq!(
        find(&wal_at(90, "000000010000000000000010"), "wal_age").status,
        Status::Warning
    );
    assert_eq!(
        find(&wal_at(150, "000000010000000000000010"), "wal_age").status,
        Status::Critical
    );
    // ...but on a quiet server that is still filling the next segment, nothing waits.
    let r = wal_at(150, "00000001000000000000000C");
    let w = find(&r, "wal_age");
    assert_eq!(w.status, Status::Ok, "{w:#?}");
    assert!(w.message.contains("archive_timeout"), "{w:#?}");

    let mut f = healthy();
    if let Ok(repo) = &mut f.repository {
        repo.newest_wal = None;
    }
    assert_eq!(status_of(&f, &e, "wal_age"), Status::Critical);
}

#[test]
fn repository_problems() {
    let mut f = healthy();
    f.repository = Err(RepoProblem::from_error(&Error::WrongPassphrase {
        location: "/srv/repo".into(),
        key_files: vec!["keys/a".into()],
    }));
    let r = evaluate(&f, &expect(), NOW);
    let repo = find(&r, "repository");
    assert_eq!(repo.status, Status::Critical);
    assert!(repo.message.contains("wrong passphrase"), "{repo:#?}");
    // Without the repository, its ages are not judged.
    assert!(r
        .findings
        .iter()
        .all(|f| f.name != "backup_age" && f.name != "wal_age"));

    for (e, status) in [
        (
            Error::NotInitialized {
                location: "/x".into(),
            },
            Status::Critical,
        ),
        (
            Error::Storage {
                op: "list",
                object: "x".into(),
                message: "connection refused".into(),
            },
            Status::Critical,
        ),
        (Error::InvalidInput("bad".into()), Status::Unknown),
    ] {
        assert_eq!(RepoProblem::from_error(&e).status, status, "{e}");
    }
}

#[test]
fn an_unreachable_server_is_unknown_but_the_repository_is_still_checked() {
    let mut f = healthy();
    f.server = Err("cannot connect to 127.0.0.1:1: connection refused".into());
    f.archive_test = ArchiveTest::NotRun("the server could not be reached".into());
    let r = evaluate(&f, &expect(), NOW);
    assert_eq!(find(&r, "connection").status, Status::Unknown);
    assert_eq!(find(&r, "backup_age").status, Status::Ok);
    assert_eq!(find(&r, "archive_test").status, Status::Unknown);
    assert_eq!(r.status(), Status::Unknown);
    assert_eq!(r.status().exit_code(), 3);
    // A real problem outranks "could not tell".
    if let Ok(repo) = &mut f.repository {
        repo.newest_backup = None;
    }
    assert_eq!(evaluate(&f, &expect(), NOW).status(), Status::Critical);
}

#[test]
fn archive_test_outcomes() {
    let mut f = healthy();
    f.archive_test = ArchiveTest::Ran {
        segment: "00000001000000000000000C".into(),
        arrived: false,
        waited: Duration::from_secs(60),
        archiver: Some(ArchiverStats {
            failed_count: 4,
            last_failed_wal: Some("00000001000000000000000C".into()),
            last_failed_time_us: Some(NOW),
            last_archived_time_us: Some(NOW - HOUR),
            ..ArchiverStats::default()
        }),
    };
    let r = evaluate(&f, &expect(), NOW);
    let t = find(&r, "archive_test");
    assert_eq!(t.status, Status::Critical);
    assert!(t.message.contains("within 60 s"), "{t:#?}");
    assert!(
        t.message
            .contains("last failure archiving 00000001000000000000000C"),
        "{t:#?}"
    );
}

#[test]
fn the_archive_test_runs_only_where_it_can_succeed() {
    let s = healthy_server();
    assert_eq!(archive_test_blocker(&s, false), None);
    let standby = ServerFacts {
        in_recovery: true,
        ..healthy_server()
    };
    assert!(archive_test_blocker(&standby, false)
        .expect("blocked")
        .contains("standby"));
    let off = ServerFacts {
        archive_mode: "off".into(),
        ..healthy_server()
    };
    assert!(archive_test_blocker(&off, false).is_some());
    // wal-stream archives without archive_mode.
    assert_eq!(archive_test_blocker(&off, true), None);
}

#[test]
fn status_order_and_codes() {
    assert!(Status::Critical > Status::Warning);
    assert!(Status::Warning > Status::Unknown);
    assert!(Status::Unknown > Status::Ok);
    assert_eq!(
        [
            Status::Ok,
            Status::Warning,
            Status::Critical,
            Status::Unknown
        ]
        .map(Status::exit_code),
        [0, 1, 2, 3]
    );
    assert_eq!(Report::default().status(), Status::Ok);
    assert_eq!(format_age(Duration::from_secs(59)), "59s");
    assert_eq!(format_age(Duration::from_secs(7322)), "2h 2m");
}
