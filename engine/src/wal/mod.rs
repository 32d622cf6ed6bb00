//! The WAL archive: pushing and fetching segments, the time index, and the sans-IO decoder
//! that reads WAL records for it.

pub mod archive;
pub mod catalog;
pub mod checksum;
pub mod decode;
pub mod fetch;
pub mod push;
pub mod segment;
pub mod stream;
pub mod summary;

pub use archive::{ArchivedFile, PreparedWal, PushOutcome, WalArchive};
pub use fetch::{fetch_file, FetchOptions, FetchOutcome};
pub use push::{push_file, PushOptions, PushReport};
