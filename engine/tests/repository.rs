//! Repository life cycle on every backend: init, open, passphrases, keys.

mod common;

use common::*;
use pgkeep_engine::{Error, Repository, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_open_with_right_and_wrong_passphrase() {
    for b in backends() {
        let repo = init(&b).await;
        let id = repo.repo_id();
        let again = Repository::open(b.store.clone(), PASS)
            .await
            .expect("reopen");
        assert_eq!(again.repo_id(), id, "{}", b.name);
        assert_eq!(again.config(), repo.config());

        let err = Repository::open(b.store.clone(), b"not it")
            .await
            .expect_err("wrong passphrase");
        assert!(
            matches!(err, Error::WrongPassphrase { .. }),
            "{}: {err}",
            b.name
        );
        assert!(
            err.to_string().contains("keys/"),
            "names the key files: {err}"
        );

        let err = Repository::init(b.store.clone(), PASS, init_options())
            .await
            .expect_err("second init");
        assert!(
            matches!(err, Error::AlreadyInitialized { .. }),
            "{}: {err}",
            b.name
        );
        // The failed init left no extra key behind.
        assert_eq!(repo.list_keys().await.expect("keys").len(), 1, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_empty_location_says_not_initialized() {
    for b in backends() {
        let err = Repository::open(b.store.clone(), PASS)
            .await
            .expect_err("nothing there");
        assert!(
            matches!(err, Error::NotInitialized { .. }),
            "{}: {err}",
            b.name
        );
        assert!(err.to_string().contains("pgkeep init"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_add_list_remove_and_change_passphrase() {
    for b in backends() {
        let repo = init(&b).await;
        let second = repo
            .add_key(b"second", "backup operator", FAST_KDF)
            .await
            .expect("add");
        let keys = repo.list_keys().await.expect("list");
        assert_eq!(keys.len(), 2);
        assert!(keys
            .iter()
            .any(|k| k.id == second && k.label == "backup operator" && !k.current));
        let first = keys.iter().find(|k| k.current).expect("current key").id;

        // Both passphrases open the same repository.
        let via_second = Repository::open(b.store.clone(), b"second")
            .await
            .expect("second opens");
        assert_eq!(via_second.repo_id(), repo.repo_id());

        // The key in use cannot be removed; another can.
        let err = repo.remove_key(&first).await.expect_err("current key");
        assert!(matches!(err, Error::KeyRefused(_)), "{err}");
        via_second
            .remove_key(&first)
            .await
            .expect("remove first via second");
        assert!(
            Repository::open(b.store.clone(), PASS).await.is_err(),
            "removed passphrase still works"
        );

        // The last key cannot be removed, whoever asks.
        let err = via_second.remove_key(&second).await.expect_err("last key");
        assert!(err.to_string().contains("only key"), "{err}");

        // Changing the passphrase replaces the key file; the data stays readable.
        let new_id = via_second
            .change_passphrase(b"third", None, FAST_KDF)
            .await
            .expect("passwd");
        assert!(Repository::open(b.store.clone(), b"second").await.is_err());
        let via_third = Repository::open(b.store.clone(), b"third")
            .await
            .expect("new passphrase");
        let keys = via_third.list_keys().await.expect("list");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, new_id);
        assert_eq!(keys[0].label, "backup operator", "passwd keeps the label");

        // ... unless given a new one.
        let renamed = via_third
            .change_passphrase(b"fourth", Some("ops 2027"), FAST_KDF)
            .await
            .expect("passwd with a label");
        let keys = Repository::open(b.store.clone(), b"fourth")
            .await
            .expect("fourth passphrase")
            .list_keys()
            .await
            .expect("list");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, renamed);
        assert_eq!(keys[0].label, "ops 2027");

        let missing = pgkeep_engine::format::KeyFileId([9; 8]);
        assert!(matches!(
            via_third.remove_key(&missing).await,
            Err(Error::NotFound { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_are_parsed_and_bad_ones_explained() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}", dir.path().join("r").display());
    let store = Store::open(&url, &[], true).expect("file URL");
    Repository::init(store, PASS, init_options())
        .await
        .expect("init via file://");
    let plain =
        Store::open(dir.path().join("r").to_str().expect("utf-8"), &[], false).expect("plain path");
    Repository::open(plain, PASS)
        .await
        .expect("same repository through a plain path");

    for (bad, why) in [
        ("ftp://host/x", "unsupported scheme"),
        ("s3:///nobucket", "no bucket"),
        ("file://relative", "absolute path"),
    ] {
        let err = Store::open(bad, &[], false).expect_err(bad);
        assert!(err.to_string().contains(why), "{bad}: {err}");
    }
    let err = Store::open(
        dir.path().join("missing").to_str().expect("utf-8"),
        &[],
        false,
    )
    .expect_err("missing dir");
    assert!(matches!(err, Error::NotInitialized { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_repository_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let b = local();
    init(&b).await;
    let root = b.dir.as_ref().expect("dir").path().join("repo");
    assert_eq!(
        std::fs::metadata(&root).expect("root").permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(root.join("keys")).expect("keys dir") {
        let mode = entry
            .expect("entry")
            .metadata()
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_object_is_not_an_error() {
    for b in backends() {
        b.store.delete("nowhere/at/all").await.expect(b.name);
        assert_eq!(b.store.head("nowhere/at/all").await.expect("head"), None);
    }
}
