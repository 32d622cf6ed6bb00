//! The WAL archive: pushing and fetching segments, the streaming receiver, and the sans-IO
//! decoder that reads WAL records for the time index.

pub mod decode;
