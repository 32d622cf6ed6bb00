//! One storage conformance suite, run against every backend pgkeep supports: local files, S3
//! (moto on loopback), Azure Blob (Azurite on loopback) and an in-memory store.
//!
//! It goes through pgkeep's own `Store` (retries, prefixes, create-if-absent that is safe to
//! retry, directory listings, local durability), not raw `object_store`, because those are
//! the semantics the repository relies on. Only multipart uploads, which `Store` does not
//! offer, are written with the backend's raw client, then read back through `Store`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use common::{azure_options, data, s3_options};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use pgkeep_engine::{Created, Error, Store};

/// One backend, opened twice: at the prefix under test, and at a sibling prefix of the same
/// bucket / container / directory tree (to prove prefixes isolate).
struct Backend {
    name: &'static str,
    store: Store,
    sibling: Store,
    /// The backend's raw client and the prefix `store` adds, for multipart uploads.
    raw: Arc<dyn ObjectStore>,
    raw_prefix: String,
    /// For local files: the repository directory (kept alive by the `TempDir`).
    local: Option<(tempfile::TempDir, std::path::PathBuf)>,
}

fn local() -> Backend {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("repo");
    let store = Store::open(root.to_str().expect("utf-8"), &[], true).expect("local store");
    let sibling =
        Store::open(dir.path().join("other").to_str().expect("utf-8"), &[], true).expect("sibling");
    let raw = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).expect("fs"));
    Backend {
        name: "file",
        store,
        sibling,
        raw,
        raw_prefix: String::new(),
        local: Some((dir, root)),
    }
}

fn memory() -> Backend {
    let raw: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Backend {
        name: "memory",
        store: Store::from_object_store(raw.clone(), "repo/", "memory://repo/"),
        sibling: Store::from_object_store(raw.clone(), "other/", "memory://other/"),
        raw,
        raw_prefix: "repo/".into(),
        local: None,
    }
}

fn s3() -> Backend {
    let server = pgkeep_testkit::S3Server::shared().expect("moto (scripts/install-test-deps.sh)");
    let bucket = server.unique_bucket("conformance").expect("bucket");
    let options = s3_options(server);
    let open = |prefix: &str| {
        Store::open(&format!("s3://{bucket}/{prefix}"), &options, false).expect("s3 store")
    };
    let mut raw = object_store::aws::AmazonS3Builder::new().with_bucket_name(&bucket);
    for (k, v) in &options {
        raw = raw.with_config(k.parse().expect("s3 key"), v);
    }
    Backend {
        name: "s3",
        store: open("some/repo"),
        sibling: open("some/other"),
        raw: Arc::new(raw.build().expect("raw s3")),
        raw_prefix: "some/repo/".into(),
        local: None,
    }
}

fn azure() -> Backend {
    let server =
        pgkeep_testkit::AzuriteServer::shared().expect("Azurite (scripts/install-test-deps.sh)");
    let container = server.unique_container("conformance").expect("container");
    let options = azure_options(server);
    let open = |prefix: &str| {
        Store::open(&format!("az://{container}/{prefix}"), &options, false).expect("az store")
    };
    let mut raw = object_store::azure::MicrosoftAzureBuilder::new().with_container_name(&container);
    for (k, v) in &options {
        raw = raw.with_config(k.parse().expect("azure key"), v);
    }
    Backend {
        name: "azure",
        store: open("some/repo"),
        sibling: open("some/other"),
        raw: Arc::new(raw.build().expect("raw azure")),
        raw_prefix: "some/repo/".into(),
        local: None,
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

/// The suite. Every assertion names the backend, so one failing backend is obvious.
async fn conformance(b: Backend) {
    let n = b.name;
    let s = &b.store;

    // put / get / head / modified_us, and a missing object.
    let before = now_us();
    let body = Bytes::from(data(300_000, 1, false));
    s.put("data/ab/obj", body.clone()).await.expect("put");
    let after = now_us();
    assert_eq!(
        s.get("data/ab/obj").await.expect("get"),
        body,
        "{n}: round trip"
    );
    assert_eq!(
        s.head("data/ab/obj").await.expect("head"),
        Some(300_000),
        "{n}"
    );
    let modified = s
        .modified_us("data/ab/obj")
        .await
        .expect("mtime")
        .expect("exists");
    // Stores keep whole seconds at worst; allow for that and a little clock skew.
    assert!(
        (before - 2_000_000..=after + 2_000_000).contains(&modified),
        "{n}: modified {modified} not within [{before}, {after}]"
    );
    assert_eq!(s.head("data/ab/missing").await.expect("head"), None, "{n}");
    assert_eq!(
        s.modified_us("data/ab/missing").await.expect("mtime"),
        None,
        "{n}"
    );
    match s.get("data/ab/missing").await {
        Err(Error::NotFound { object }) => assert_eq!(object, "data/ab/missing", "{n}"),
        other => panic!("{n}: get of a missing object: {other:?}"),
    }

    // Overwrite, and the empty object.
    s.put("data/ab/obj", Bytes::from_static(b"second"))
        .await
        .expect("overwrite");
    assert_eq!(
        &s.get("data/ab/obj").await.expect("get")[..],
        b"second",
        "{n}"
    );
    s.put("empty", Bytes::new()).await.expect("empty put");
    assert!(s.get("empty").await.expect("empty get").is_empty(), "{n}");
    assert_eq!(s.head("empty").await.expect("head"), Some(0), "{n}");

    // Ranged reads: inside, whole, at the end; past the end is an error, never short data.
    s.put("ranged", body.clone()).await.expect("put");
    for range in [1000..1001, 0..300_000, 123_456..200_000, 299_999..300_000] {
        let got = s.get_range("ranged", range.clone()).await.expect("range");
        assert!(
            got[..] == body[range.start as usize..range.end as usize],
            "{n}: range {range:?}"
        );
    }
    assert!(
        s.get_range("ranged", 299_000..301_000).await.is_err(),
        "{n}: a range past the end must not come back short"
    );
    assert!(
        matches!(s.get_range("nope", 0..1).await, Err(Error::NotFound { .. })),
        "{n}: range of a missing object"
    );

    // Create-if-absent: new, identical retry, different content refused and unchanged.
    let first = Bytes::from_static(b"config v1");
    assert_eq!(
        s.put_new("config", first.clone()).await.expect("create"),
        Created::New,
        "{n}"
    );
    assert_eq!(
        s.put_new("config", first.clone())
            .await
            .expect("same again"),
        Created::Identical,
        "{n}"
    );
    match s.put_new("config", Bytes::from_static(b"config v2")).await {
        Err(Error::AlreadyExists { object }) => assert_eq!(object, "config", "{n}"),
        other => panic!("{n}: create over different content: {other:?}"),
    }
    assert_eq!(s.get("config").await.expect("get"), first, "{n}: unchanged");

    // Racing creators with different content: exactly one wins, the store holds its bytes.
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.put_new("race", Bytes::from(vec![i; 4096])).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("join") {
            (i, Ok(Created::New)) => winners.push(i),
            (_, Err(Error::AlreadyExists { .. })) => {}
            (i, other) => panic!("{n}: racer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{n}: winners {winners:?}");
    assert_eq!(
        s.get("race").await.expect("get"),
        Bytes::from(vec![winners[0]; 4096]),
        "{n}: the winner's content"
    );

    // Listing: by directory prefix (not by string prefix), sorted, sizes, relative names.
    for (name, len) in [
        ("a/1", 1),
        ("a/2", 2),
        ("a/sub/3", 3),
        ("ab/4", 4),
        ("b/5", 5),
    ] {
        s.put(name, Bytes::from(vec![7; len])).await.expect("put");
    }
    let listed: Vec<(String, u64)> = s
        .list("a/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    assert_eq!(
        listed,
        [("a/1".into(), 1), ("a/2".into(), 2), ("a/sub/3".into(), 3)],
        "{n}"
    );
    assert!(s.list("nothing/").await.expect("list").is_empty(), "{n}");
    let all: BTreeSet<String> = s
        .list("")
        .await
        .expect("list all")
        .into_iter()
        .map(|o| o.name)
        .collect();
    let expected: BTreeSet<String> = [
        "a/1",
        "a/2",
        "a/sub/3",
        "ab/4",
        "b/5",
        "config",
        "data/ab/obj",
        "empty",
        "race",
        "ranged",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(all, expected, "{n}: everything, nothing else");

    // Directory listing: the names directly below, not files, not deeper levels.
    for name in [
        "clusters/main/b1",
        "clusters/main/b2",
        "clusters/other/x/y",
        "clusters/file",
    ] {
        s.put(name, Bytes::from_static(b"x")).await.expect("put");
    }
    assert_eq!(
        s.list_dirs("clusters/").await.expect("dirs"),
        ["main", "other"],
        "{n}"
    );
    assert!(s.list_dirs("none/").await.expect("dirs").is_empty(), "{n}");

    // Prefixes isolate: the sibling location sees none of this, and its objects stay its own.
    assert!(
        b.sibling.list("").await.expect("sibling list").is_empty(),
        "{n}"
    );
    b.sibling
        .put("config", Bytes::from_static(b"sibling"))
        .await
        .expect("sibling put");
    assert_eq!(
        s.get("config").await.expect("get"),
        first,
        "{n}: not the sibling's"
    );

    // Delete: gone from get and list; deleting a missing object is fine.
    s.delete("a/sub/3").await.expect("delete");
    s.delete("a/sub/3").await.expect("delete again");
    s.delete("never/was").await.expect("delete missing");
    assert!(
        matches!(s.get("a/sub/3").await, Err(Error::NotFound { .. })),
        "{n}"
    );
    assert_eq!(s.list("a/").await.expect("list").len(), 2, "{n}");

    // Emptied directories: removed on local stores (objects stores have none to leave).
    s.remove_empty_local_dirs("a/sub/");
    s.delete("b/5").await.expect("delete");
    s.remove_empty_local_dirs("b/");
    s.remove_empty_local_dirs("a/");
    if let Some((_, root)) = &b.local {
        assert!(
            !root.join("a/sub").exists(),
            "{n}: empty directory left behind"
        );
        assert!(!root.join("b").exists(), "{n}: empty directory left behind");
        assert!(
            root.join("a").is_dir(),
            "{n}: a directory that still has objects stays"
        );
    }
    assert_eq!(s.list("a/").await.expect("list").len(), 2, "{n}");
    assert!(s.list("b/").await.expect("list").is_empty(), "{n}");

    // Multipart upload with the raw client (two parts; S3's minimum part is 5 MiB), read
    // back through the Store whole and by range; an aborted upload leaves nothing.
    let big = Bytes::from(data((5 << 20) + 100_000, 9, false));
    let path = Path::from(format!("{}multi/big", b.raw_prefix));
    let upload = b.raw.put_multipart(&path).await.expect("start multipart");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
    w.write(&big);
    w.finish().await.expect("finish multipart");
    assert!(
        s.get("multi/big").await.expect("get") == big,
        "{n}: multipart round trip"
    );
    let tail = s
        .get_range("multi/big", (5 << 20) - 10..(5 << 20) + 10)
        .await
        .expect("range");
    assert!(
        tail[..] == big[(5 << 20) - 10..(5 << 20) + 10],
        "{n}: across the part boundary"
    );
    let mut aborted = b
        .raw
        .put_multipart(&Path::from(format!("{}multi/aborted", b.raw_prefix)))
        .await
        .expect("start");
    aborted
        .put_part(PutPayload::from(vec![1u8; 5 << 20]))
        .await
        .expect("part");
    aborted.abort().await.expect("abort");
    assert_eq!(s.head("multi/aborted").await.expect("head"), None, "{n}");
    assert_eq!(
        s.list("multi/")
            .await
            .expect("list")
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["multi/big"],
        "{n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_conform() {
    conformance(local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_conforms() {
    conformance(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_moto_conforms() {
    conformance(s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_azurite_conforms() {
    conformance(azure()).await;
}
