//! Small text decoders of values that come from the server or the archive:
//! - `WalFileName::parse` (archived file names: segments, `.partial`, `.history`, `.backup`)
//!   and `SegmentName::parse` (for 16 MiB segments);
//! - `Lsn`'s `X/X` form (`FromStr`);
//! - `restore::plan::parse_history` and `wal::stream::switch_point` (timeline history files,
//!   fetched from the archive or sent by `TIMELINE_HISTORY`);
//! - `backup::command::parse_size` (`SHOW wal_segment_size`/`block_size` answers).
//!
//! The input is split into lines; each line goes through the name and number decoders, the
//! whole input through the history parsers. Checks: no panic (in particular no arithmetic
//! overflow on a forged size); round trips: a parsed name displays as exactly its input, an
//! LSN re-parses from its display, a segment name re-parses from its display; the switch
//! point is the LSN of the last history entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_engine::backup::command::parse_size;
use pgkeep_engine::format::{Lsn, SegmentName, WalFileName};
use pgkeep_engine::restore::plan::parse_history;
use pgkeep_engine::wal::stream::switch_point;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Ok(name) = WalFileName::parse(line) {
            assert_eq!(name.to_string(), line, "WAL file name round trip");
            assert_eq!(WalFileName::parse(&name.to_string()).as_ref(), Ok(&name));
        }
        if let Ok(seg) = SegmentName::parse(line, 16 << 20) {
            let shown = seg.to_string();
            assert_eq!(
                SegmentName::parse(&shown, 16 << 20).ok(),
                Some(seg),
                "segment round trip"
            );
        }
        if let Ok(lsn) = line.parse::<Lsn>() {
            assert_eq!(
                lsn.to_string().parse::<Lsn>().ok(),
                Some(lsn),
                "LSN round trip"
            );
        }
        let _ = parse_size(line);
    }
    let history = parse_history(&text);
    let last = switch_point(&text);
    if let Some((_, lsn)) = history.last() {
        assert_eq!(last, Some(*lsn), "switch point is not the last entry");
    }
});
