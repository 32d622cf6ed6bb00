//! Test harness for pgkeep's integration tests: real servers on loopback.
//!
//! Used only as a dev-dependency. Tests run against the real thing rather
//! than in-process fakes so that wire-level behaviour (HTTP, signing,
//! conditional requests, error codes) is exercised the way production sees
//! it. The external programs come from `scripts/install-test-deps.sh`, which
//! installs them under `<repo>/.tools/`.
//!
//! # S3
//!
//! [`S3Server`] runs moto's S3-compatible server on `127.0.0.1`:
//!
//! ```no_run
//! # fn main() -> Result<(), pgkeep_testkit::Error> {
//! let s3 = pgkeep_testkit::S3Server::shared()?;
//! let bucket = s3.unique_bucket("backup-roundtrip")?;
//! let repo_url = s3.bucket_url(&bucket); // "s3://backup-roundtrip-..."
//! let env = s3.env(); // AWS_ENDPOINT etc. for object_store / a child process
//! # let _ = (repo_url, env);
//! # Ok(())
//! # }
//! ```
//!
//! moto honours `If-None-Match: *` on PUT (412 if the key exists), so
//! create-only writes (`object_store`'s `PutMode::Create`) behave as on AWS.

//!
//! # Azure Blob
//!
//! [`AzuriteServer`] runs Azurite's blob service (Microsoft's emulator) on `127.0.0.1`, in
//! memory; [`AzuriteServer::env`] gives the `AZURE_*` settings for pgkeep's `az://` stores.
//!
//! # Faults
//!
//! [`faults::FaultyStore`] wraps any `ObjectStore` and fails chosen operations, for tests of
//! retries and clean failure (in addition to the real backends, never instead of them).

mod azure;
pub mod faults;
mod http;
pub mod pg;
mod s3;
pub mod walsender;

pub use azure::{AzuriteServer, AZURITE_ENV, DEV_ACCOUNT, DEV_ACCOUNT_KEY};
pub use http::HttpResponse;
pub use s3::{Error, S3Server, MOTO_SERVER_ENV, START_TIMEOUT_ENV};
