//! The sans-IO tar reader (`pgkeep_engine::tar::TarReader`) that reads what a server sends
//! during `BASE_BACKUP`, on arbitrary bytes.
//!
//! Byte 0: bit 0 picks the termination rule (marker required, as from PostgreSQL 15, or
//! optional, as from 13 and 14); the other bits, plus one, the piece size the stream is fed
//! in. The rest is the stream. Checks:
//! - no panic, and no allocation past `-malloc_limit_mb` whatever a size, a pax record or a
//!   GNU long name claims;
//! - the events do not depend on how the stream is split (same events, same error);
//! - each entry's data pieces are non-empty and add up to exactly its declared size;
//! - round trip: the entries read, re-written with `write_header` plus their content, padding
//!   and the end-of-archive marker, read back as the same entries with the same content
//!   (entries `write_header` refuses, such as an empty path, and an entry cut off by the end
//!   of the stream are skipped).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgkeep_engine::tar::{
    padding, write_header, TarEntry, TarEvent, TarReader, Termination, END_OF_ARCHIVE,
};

#[derive(Debug, PartialEq)]
struct Read {
    entries: Vec<(TarEntry, Vec<u8>)>,
    ended: bool,
    error: Option<String>,
}

fn read(stream: &[u8], termination: Termination, piece: usize) -> Read {
    let mut r = TarReader::new(termination);
    let mut out = Read {
        entries: Vec::new(),
        ended: false,
        error: None,
    };
    let mut open = false;
    let mut feed = stream.chunks(piece.max(1));
    loop {
        match r.next_event() {
            Ok(Some(TarEvent::Entry(e))) => {
                assert!(!open, "an entry started inside another");
                open = true;
                out.entries.push((e, Vec::new()));
            }
            Ok(Some(TarEvent::Data(d))) => {
                assert!(!d.is_empty(), "empty data event");
                let (e, content) = out.entries.last_mut().expect("data outside an entry");
                assert!(open, "data after the entry ended");
                content.extend_from_slice(&d);
                assert!(content.len() as u64 <= e.size, "more data than declared");
            }
            Ok(Some(TarEvent::EntryEnd)) => {
                let (e, content) = out.entries.last().expect("end outside an entry");
                assert_eq!(
                    content.len() as u64,
                    e.size,
                    "data differs from declared size"
                );
                open = false;
            }
            Ok(Some(TarEvent::End)) => out.ended = true,
            Ok(None) => match feed.next() {
                Some(p) => r.push(Bytes::copy_from_slice(p)),
                None => {
                    if let Err(e) = r.finish() {
                        out.error = Some(e.to_string());
                    }
                    return out;
                }
            },
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let termination = if first & 1 == 0 {
        Termination::Required
    } else {
        Termination::Optional
    };
    let whole = read(stream, termination, stream.len());
    let pieces = read(stream, termination, 1 + usize::from(first >> 1));
    assert_eq!(whole, pieces, "events depend on how the stream is split");

    let mut rewritten = Vec::new();
    let mut kept = Vec::new();
    for (entry, content) in &whole.entries {
        // The last entry of a stream that broke off is incomplete: nothing to re-write.
        if content.len() as u64 != entry.size {
            continue;
        }
        let Ok(header) = write_header(entry) else {
            continue;
        };
        rewritten.extend_from_slice(&header);
        rewritten.extend_from_slice(content);
        rewritten.resize(rewritten.len() + padding(entry.size), 0);
        kept.push((entry.clone(), content.clone()));
    }
    rewritten.extend_from_slice(&END_OF_ARCHIVE);
    let again = read(&rewritten, Termination::Required, rewritten.len());
    assert_eq!(again.error, None, "a re-written archive is refused");
    assert!(again.ended);
    assert_eq!(again.entries, kept, "tar round trip");
});
