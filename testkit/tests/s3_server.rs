//! Proves the harness against a real moto server: start-up, buckets, raw
//! object round trips, conditional create, parallel servers and clean-up.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgkeep_testkit::S3Server;

fn shared() -> &'static S3Server {
    S3Server::shared().expect("moto S3 server (run scripts/install-test-deps.sh)")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

#[test]
fn server_starts_and_lists_buckets() {
    let s3 = shared();
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    let r = s3.request("GET", "/", &[], b"").expect("ListBuckets");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.body_text().contains("ListAllMyBucketsResult"));
}

#[test]
fn create_bucket_works_and_rejects_bad_names() {
    let s3 = shared();
    let bucket = s3.unique_bucket("create").expect("create bucket");
    let r = s3
        .request("GET", &format!("/{bucket}?list-type=2"), &[], b"")
        .expect("ListObjectsV2");
    assert_eq!(r.status, 200, "{}", r.body_text());

    let missing = s3
        .request("GET", "/no-such-bucket-here?list-type=2", &[], b"")
        .expect("list");
    assert_eq!(missing.status, 404);

    let err = s3.create_bucket("x").expect_err("too short");
    assert!(err.to_string().contains("invalid bucket name"), "{err}");
}

#[test]
fn put_get_round_trip_over_raw_http() {
    let s3 = shared();
    let bucket = s3.unique_bucket("roundtrip").expect("bucket");
    // Every byte value, and big enough to span many TCP reads.
    let body: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 17).collect();
    let path = format!("/{bucket}/dir/obj.bin");

    let put = s3.request("PUT", &path, &[], &body).expect("PUT");
    assert_eq!(put.status, 200, "{}", put.body_text());
    assert!(put.header("ETag").is_some());

    let get = s3.request("GET", &path, &[], b"").expect("GET");
    assert_eq!(get.status, 200, "{}", get.body_text());
    assert_eq!(get.body.len(), body.len());
    assert!(get.body == body, "GET returned different bytes");
    assert_eq!(get.header("ETag"), put.header("ETag"));

    let head = s3.request("HEAD", &path, &[], b"").expect("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(body.len().to_string().as_str())
    );

    let overwrite = s3.request("PUT", &path, &[], b"v2").expect("overwrite");
    assert_eq!(overwrite.status, 200);
    assert_eq!(s3.request("GET", &path, &[], b"").expect("GET").body, b"v2");

    let gone = s3
        .request("GET", &format!("/{bucket}/nope"), &[], b"")
        .expect("GET");
    assert_eq!(gone.status, 404);
}

/// pgkeep's repository relies on create-only writes (`PutMode::Create`, i.e.
/// `If-None-Match: *`) to never overwrite an object. moto must enforce it.
#[test]
fn if_none_match_star_is_a_conditional_create() {
    let s3 = shared();
    let bucket = s3.unique_bucket("cond").expect("bucket");
    let path = format!("/{bucket}/lock");
    let cond = [("If-None-Match", "*")];

    let first = s3.request("PUT", &path, &cond, b"first").expect("PUT");
    assert_eq!(
        first.status,
        200,
        "create of a new key: {}",
        first.body_text()
    );

    let second = s3.request("PUT", &path, &cond, b"second").expect("PUT");
    assert_eq!(
        second.status,
        412,
        "create of an existing key: {}",
        second.body_text()
    );
    assert!(
        second.body_text().contains("PreconditionFailed"),
        "{}",
        second.body_text()
    );

    let get = s3.request("GET", &path, &[], b"").expect("GET");
    assert_eq!(
        get.body, b"first",
        "the failed conditional PUT must not overwrite"
    );
}

#[test]
fn env_describes_this_server() {
    let s3 = shared();
    let env = s3.env();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("AWS_ENDPOINT"), Some(s3.endpoint()));
    assert_eq!(get("AWS_REGION").as_deref(), Some("us-east-1"));
    assert_eq!(get("AWS_ALLOW_HTTP").as_deref(), Some("true"));
    assert!(get("AWS_ACCESS_KEY_ID").is_some() && get("AWS_SECRET_ACCESS_KEY").is_some());
    assert_eq!(s3.bucket_url("abc"), "s3://abc");
}

#[test]
fn many_threads_share_one_server() {
    let s3 = shared();
    std::thread::scope(|scope| {
        for i in 0..8 {
            scope.spawn(move || {
                let bucket = s3.unique_bucket("par").expect("bucket");
                let path = format!("/{bucket}/k{i}");
                let body = format!("value {i}");
                assert_eq!(
                    s3.request("PUT", &path, &[], body.as_bytes())
                        .expect("PUT")
                        .status,
                    200
                );
                assert_eq!(
                    s3.request("GET", &path, &[], b"").expect("GET").body,
                    body.as_bytes()
                );
            });
        }
    });
    assert_eq!(
        S3Server::shared().expect("shared").port(),
        s3.port(),
        "same server"
    );
}

#[test]
fn two_private_servers_run_side_by_side_and_stop_on_drop() {
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(S3Server::start);
        let b = scope.spawn(S3Server::start);
        (
            a.join().expect("thread").expect("server a"),
            b.join().expect("thread").expect("server b"),
        )
    });
    assert_ne!(a.port(), b.port());

    let bucket = a.unique_bucket("only-on-a").expect("bucket on a");
    let on_b = b
        .request("GET", &format!("/{bucket}?list-type=2"), &[], b"")
        .expect("list on b");
    assert_eq!(on_b.status, 404, "servers must not share state");

    let (port_a, port_b) = (a.port(), b.port());
    let log_a = a.log_path().to_path_buf();
    drop(a);
    assert!(!port_open(port_a), "dropped server still listening");
    assert!(!log_a.exists(), "log directory left behind");
    assert!(
        port_open(port_b),
        "dropping one server must not stop the other"
    );
}

/// Helper run as a child process by the test below: starts a server, prints
/// its port, and exits without dropping it, as a test binary does with
/// [`S3Server::shared`].
#[test]
#[ignore = "helper for shared_server_dies_with_its_process"]
fn helper_start_and_exit_without_drop() {
    let s3 = S3Server::start().expect("start");
    println!("PORT={} LOG={}", s3.port(), s3.log_path().display());
    std::process::exit(0);
}

#[test]
fn shared_server_dies_with_its_process() {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--ignored",
            "--exact",
            "helper_start_and_exit_without_drop",
            "--nocapture",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PORT="))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no port: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (port, log) = line.split_once(" LOG=").expect("PORT=.. LOG=..");
    let port: u16 = port.parse().expect("port");

    let deadline = Instant::now() + Duration::from_secs(10);
    while port_open(port) {
        assert!(
            Instant::now() < deadline,
            "moto on port {port} outlived its test process"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    while std::path::Path::new(log).exists() {
        assert!(
            Instant::now() < deadline,
            "log {log} outlived its test process"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
