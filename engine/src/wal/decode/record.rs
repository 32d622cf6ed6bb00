//! One WAL record's bytes: the fixed header (`XLogRecord`, `src/include/access/xlogrecord.h`),
//! its CRC, and the walk over the block references that finds the main data
//! (`DecodeXLogRecord` in `src/backend/access/transam/xlogreader.c`).
//!
//! Only the main data is needed to classify a record, but it sits after every block's image
//! and data, whose lengths are spread over the block headers. So the headers are walked in
//! full, with PostgreSQL's own cross-checks, and every length is checked against the bytes
//! present: a record whose CRC matches but whose layout does not is reported, not guessed at.

use pgkeep_format::pg::Lsn;

use super::cursor::Cursor;
use super::error::WalDecodeError;
use super::page::WalVersion;

/// Length of the fixed record header (`SizeOfXLogRecord`).
pub const RECORD_HEADER_LEN: usize = 24;
/// The longest record the decoder accepts. PostgreSQL's own limit is a little lower
/// (`XLogRecordMaxSize`, 1020 MiB in 16+); anything above 1 GiB is garbage, and refusing it
/// keeps a corrupt length from making the decoder wait for (and buffer) that much input.
pub const MAX_RECORD_LEN: u32 = 1 << 30;
/// Bytes of the header the CRC covers (all but `xl_crc` itself).
const CRC_COVERED_HEADER: usize = 20;

/// `XLR_MAX_BLOCK_ID`: block references use ids 0..=32.
const XLR_MAX_BLOCK_ID: u8 = 32;
/// Main data of up to 255 bytes: a one-byte length follows.
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// Longer main data: a four-byte length follows.
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// Replication origin of the record: a `RepOriginId` (u16) follows.
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// Top-level transaction of a subtransaction's record (14+): a `TransactionId` follows.
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;

const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// 13 and 14: one flag for (pglz) compression.
const BKPIMAGE_IS_COMPRESSED_V13: u8 = 0x02;
/// 15+: one flag per method (pglz 0x04, lz4 0x08, zstd 0x10); 0x02 became `BKPIMAGE_APPLY`.
const BKPIMAGE_COMPRESSED_V15: u8 = 0x04 | 0x08 | 0x10;

/// Length of a `RelFileNode` / `RelFileLocator` (tablespace, database, relation OIDs).
const REL_FILE_LOCATOR_LEN: usize = 12;

/// The fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) tot_len: u32,
    pub(crate) xid: u32,
    pub(crate) prev: Lsn,
    pub(crate) info: u8,
    pub(crate) rmid: u8,
    pub(crate) crc: u32,
}

impl RecordHeader {
    /// `None` if fewer than 24 bytes are given.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(bytes);
        let tot_len = c.u32()?;
        let xid = c.u32()?;
        let prev = Lsn(c.u64()?);
        let info = c.u8()?;
        let rmid = c.u8()?;
        c.u16()?; // padding
        let crc = c.u32()?;
        Some(Self {
            tot_len,
            xid,
            prev,
            info,
            rmid,
            crc,
        })
    }
}

/// The CRC-32C PostgreSQL stores in `xl_crc`: over the record after the header, then over the
/// header's first 20 bytes (so the header, which holds the CRC, is covered last).
/// `record` is the whole record; fewer than 24 bytes give the CRC of what is there.
pub(crate) fn record_crc(record: &[u8]) -> u32 {
    let body = record.get(RECORD_HEADER_LEN..).unwrap_or_default();
    let head = &record[..record.len().min(CRC_COVERED_HEADER)];
    crc32c::crc32c_append(crc32c::crc32c(body), head)
}

fn is_compressed(version: WalVersion, bimg_info: u8) -> bool {
    match version {
        WalVersion::V13 | WalVersion::V14 => bimg_info & BKPIMAGE_IS_COMPRESSED_V13 != 0,
        WalVersion::V15 | WalVersion::V16 | WalVersion::V17 | WalVersion::V18 => {
            bimg_info & BKPIMAGE_COMPRESSED_V15 != 0
        }
    }
}

/// Finds the main data of `record` (the whole record, header included) by walking its block
/// headers as `DecodeXLogRecord` does, with the same cross-checks except those that need the
/// data page size (`BLCKSZ`), which WAL does not record.
pub(crate) fn main_data(
    record: &[u8],
    version: WalVersion,
    lsn: Lsn,
) -> Result<&[u8], WalDecodeError> {
    let body = record.get(RECORD_HEADER_LEN..).unwrap_or_default();
    let mut c = Cursor::new(body);
    let short = || {
        WalDecodeError::malformed(
            lsn,
            "record with invalid length (block headers run past its end)",
        )
    };
    let bad = |reason: String| WalDecodeError::malformed(lsn, reason);

    // u64: the sum of up to 33 images and data lengths plus a u32 main-data length cannot
    // overflow it, where PostgreSQL's uint32 would wrap.
    let mut datatotal: u64 = 0;
    let mut main_len: u64 = 0;
    let mut max_block: Option<u8> = None;
    let mut have_rel = false;
    while c.remaining() as u64 > datatotal {
        let id = c.u8().ok_or_else(short)?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(c.u8().ok_or_else(short)?);
                datatotal += main_len;
                break; // the main data header is always last
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(c.u32().ok_or_else(short)?);
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                c.u16().ok_or_else(short)?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                c.u32().ok_or_else(short)?;
            }
            0..=XLR_MAX_BLOCK_ID => {
                if max_block.is_some_and(|m| id <= m) {
                    return Err(bad(format!("out-of-order block_id {id}")));
                }
                max_block = Some(id);
                let fork_flags = c.u8().ok_or_else(short)?;
                let data_len = c.u16().ok_or_else(short)?;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err(bad(format!(
                        "block {id}: BKPBLOCK_HAS_DATA set, but no data included"
                    )));
                }
                if !has_data && data_len != 0 {
                    return Err(bad(format!(
                        "block {id}: BKPBLOCK_HAS_DATA not set, but data length is {data_len}"
                    )));
                }
                datatotal += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = c.u16().ok_or_else(short)?;
                    let hole_offset = c.u16().ok_or_else(short)?;
                    let bimg_info = c.u8().ok_or_else(short)?;
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    let compressed = is_compressed(version, bimg_info);
                    // XLogRecordBlockCompressHeader: only for a compressed image with a hole.
                    let hole_length = if compressed && has_hole {
                        c.u16().ok_or_else(short)?
                    } else {
                        0
                    };
                    datatotal += u64::from(bimg_len);
                    if has_hole && (hole_offset == 0 || (compressed && hole_length == 0)) {
                        return Err(bad(format!(
                            "block {id}: BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length}"
                        )));
                    }
                    if !has_hole && hole_offset != 0 {
                        return Err(bad(format!(
                            "block {id}: BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset}"
                        )));
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    c.take(REL_FILE_LOCATOR_LEN).ok_or_else(short)?;
                    have_rel = true;
                } else if !have_rel {
                    return Err(bad(format!(
                        "block {id}: BKPBLOCK_SAME_REL set but no previous rel"
                    )));
                }
                c.u32().ok_or_else(short)?; // block number
            }
            other => return Err(bad(format!("invalid block_id {other}"))),
        }
    }
    let rest = c.rest();
    if rest.len() as u64 != datatotal {
        return Err(bad(format!(
            "record with invalid length: headers announce {datatotal} data bytes, {} remain",
            rest.len()
        )));
    }
    // Block images and data come first, the main data last. main_len <= datatotal == rest.len().
    let main_start = rest.len() - main_len as usize;
    rest.get(main_start..).ok_or_else(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_LEN];
        r[..4].copy_from_slice(&((RECORD_HEADER_LEN + body.len()) as u32).to_le_bytes());
        r.extend_from_slice(body);
        r
    }

    const LSN: Lsn = Lsn(0x100_0028);

    #[test]
    fn header_fields_are_read_little_endian() {
        let mut b = Vec::new();
        b.extend_from_slice(&34u32.to_le_bytes());
        b.extend_from_slice(&737u32.to_le_bytes());
        b.extend_from_slice(&0x1552F68u64.to_le_bytes());
        b.extend_from_slice(&[0x80, 1, 0, 0]);
        b.extend_from_slice(&0xDEADBEEFu32.to_le_bytes());
        let h = RecordHeader::parse(&b).expect("24 bytes");
        assert_eq!(
            h,
            RecordHeader {
                tot_len: 34,
                xid: 737,
                prev: Lsn(0x1552F68),
                info: 0x80,
                rmid: 1,
                crc: 0xDEADBEEF
            }
        );
        assert_eq!(RecordHeader::parse(&b[..23]), None);
    }

    #[test]
    fn crc_covers_body_then_first_20_header_bytes() {
        let rec = with_header(&[255, 3, 1, 2, 3]);
        let mut joined = rec[24..].to_vec();
        joined.extend_from_slice(&rec[..20]);
        assert_eq!(record_crc(&rec), crc32c::crc32c(&joined));
        // The stored CRC itself (bytes 20..24) does not take part.
        let mut other = rec.clone();
        other[21] ^= 0xFF;
        assert_eq!(record_crc(&other), record_crc(&rec));
        other[19] ^= 1;
        assert_ne!(record_crc(&other), record_crc(&rec));
    }

    #[test]
    fn finds_main_data_after_blocks_images_origin_and_toplevel_xid() {
        let mut body = Vec::new();
        // block 0: image with hole (uncompressed), data, new relation
        body.extend_from_slice(&[0, 0x10 | 0x20]);
        body.extend_from_slice(&3u16.to_le_bytes()); // data_len
        body.extend_from_slice(&5u16.to_le_bytes()); // bimg_len
        body.extend_from_slice(&100u16.to_le_bytes()); // hole_offset
        body.push(BKPIMAGE_HAS_HOLE);
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]); // locator
        body.extend_from_slice(&7u32.to_le_bytes()); // block number
                                                     // block 2: same relation, compressed (15+) image with a hole, so a hole length follows
        body.extend_from_slice(&[2, 0x10 | 0x80]);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&4u16.to_le_bytes()); // bimg_len
        body.extend_from_slice(&10u16.to_le_bytes());
        body.push(BKPIMAGE_HAS_HOLE | 0x04);
        body.extend_from_slice(&20u16.to_le_bytes()); // hole_length
        body.extend_from_slice(&8u32.to_le_bytes());
        body.push(XLR_BLOCK_ID_ORIGIN);
        body.extend_from_slice(&1u16.to_le_bytes());
        body.push(XLR_BLOCK_ID_TOPLEVEL_XID);
        body.extend_from_slice(&999u32.to_le_bytes());
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 2]);
        body.extend_from_slice(b"IIIIIdddiiii"); // image 5, data 3, image 4
        body.extend_from_slice(b"MD");
        let rec = with_header(&body);
        assert_eq!(main_data(&rec, WalVersion::V15, LSN), Ok(&b"MD"[..]));
        // In 14, 0x04 is BKPIMAGE_APPLY, not compression: no hole length is read, and the
        // layout no longer adds up.
        assert!(main_data(&rec, WalVersion::V14, LSN).is_err());
    }

    #[test]
    fn long_main_data_and_no_main_data() {
        let mut body = vec![XLR_BLOCK_ID_DATA_LONG];
        body.extend_from_slice(&300u32.to_le_bytes());
        body.extend_from_slice(&[7u8; 300]);
        let rec = with_header(&body);
        assert_eq!(
            main_data(&rec, WalVersion::V16, LSN).map(<[u8]>::len),
            Ok(300)
        );
        let empty = with_header(&[]);
        assert_eq!(main_data(&empty, WalVersion::V16, LSN), Ok(&[][..]));
    }

    #[test]
    fn refuses_inconsistent_layouts() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("length past end", vec![XLR_BLOCK_ID_DATA_SHORT, 5, 1, 2]),
            ("trailing bytes", vec![XLR_BLOCK_ID_DATA_SHORT, 1, 1, 2]),
            ("invalid id", vec![100, 0, 0, 0]),
            (
                "data flag without data",
                vec![
                    0, 0x20, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            ("same rel first", vec![0, 0x80, 0, 0, 0, 0, 0, 0]),
            ("truncated header", vec![XLR_BLOCK_ID_DATA_LONG, 1, 0]),
        ];
        for (what, body) in cases {
            let rec = with_header(&body);
            let err = main_data(&rec, WalVersion::V15, LSN).expect_err(what);
            assert_eq!(err.lsn(), LSN, "{what}");
        }
        // Out-of-order block ids.
        let mut body = Vec::new();
        for id in [1u8, 1] {
            body.extend_from_slice(&[id, 0, 0, 0]);
            body.extend_from_slice(&[0; 12]);
            body.extend_from_slice(&[0; 4]);
        }
        let err = main_data(&with_header(&body), WalVersion::V15, LSN).expect_err("order");
        assert!(err.to_string().contains("out-of-order"), "{err}");
    }
}
