//! Record framing for segment files and the checkpoint file.
//!
//! A file is a sequence of frames: `len u32 LE || crc32(body) u32 LE || body`. Segment
//! files are named by the sequence number of their first event, zero-padded to 20 digits
//! (`00000000000000000000.seg`), so sorting the names sorts the log.
//!
//! [`scan`] splits a file into good frames and bad regions. After a bad frame it resyncs:
//! it looks for the next position holding a frame whose body starts with the expected
//! domain tag and whose CRC matches. A bad region with no good frame after it is a torn
//! tail (a write that never completed) only when it *looks* unfinished: its first frame's
//! length runs past the end of the file, or it is all zero bytes (blocks the file system
//! allocated but never wrote). Anything else is corruption, including a complete frame with
//! a bad CRC at the very end: that record was written in full, maybe acknowledged, and
//! cutting it would lose it.

use std::ops::Range;

pub const HEADER: usize = 8;
pub const MAX_BODY: usize = 64 << 20;
pub const SEGMENT_EXT: &str = "seg";

pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn frame_into(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// One good frame: where it starts in the file and where its body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub offset: usize,
    pub body: Range<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub frames: Vec<Frame>,
    /// Byte ranges that hold no good frame, in file order.
    pub bad: Vec<Range<usize>>,
}

impl Scan {
    /// The start of a bad region that runs to the end of `buf`, if any (torn or not).
    pub fn bad_tail(&self, buf: &[u8]) -> Option<usize> {
        self.bad
            .last()
            .filter(|r| r.end == buf.len())
            .map(|r| r.start)
    }

    /// The start of a torn tail: a bad region at the end of `buf` that is an unfinished
    /// write (see the module docs), if any.
    pub fn torn_tail(&self, buf: &[u8]) -> Option<usize> {
        self.bad_tail(buf).filter(|&at| is_unfinished(&buf[at..]))
    }
}

/// Does `tail` (bytes from a frame start to the end of the file) look like a write that
/// never completed: a header cut short, a length that runs past the end, or only zeros?
pub fn is_unfinished(tail: &[u8]) -> bool {
    let Some(hdr) = tail.get(..HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes")) as usize;
    len > tail.len() - HEADER || tail.iter().all(|&b| b == 0)
}

/// The frame at `pos`, if it is complete and its CRC matches.
fn frame_at(buf: &[u8], pos: usize, tag: &[u8]) -> Option<Frame> {
    let hdr = buf.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes(hdr[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(hdr[4..].try_into().ok()?);
    if len > MAX_BODY || len < tag.len() {
        return None;
    }
    let start = pos + HEADER;
    let body = buf.get(start..start + len)?;
    if !body.starts_with(tag) || crc32fast::hash(body) != crc {
        return None;
    }
    Some(Frame {
        offset: pos,
        body: start..start + len,
    })
}

/// Split `buf` into good frames whose bodies start with `tag`, and bad regions.
pub fn scan(buf: &[u8], tag: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some(f) = frame_at(buf, pos, tag) {
            pos = f.body.end;
            out.frames.push(f);
            continue;
        }
        // Resync: the next position where a good frame starts.
        let next = (pos + 1..buf.len().saturating_sub(HEADER + tag.len() - 1))
            .find(|&q| buf[q + HEADER..].starts_with(tag) && frame_at(buf, q, tag).is_some())
            .unwrap_or(buf.len());
        out.bad.push(pos..next);
        pos = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &[u8] = b"TAG:";

    fn file(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut offs = Vec::new();
        for i in 0..n {
            offs.push(buf.len());
            let body = [TAG, &vec![i as u8; 10 + i]].concat();
            frame_into(&body, &mut buf);
        }
        (buf, offs)
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(12), "00000000000000000012.seg");
        assert_eq!(parse_segment_name("00000000000000000012.seg"), Some(12));
        assert_eq!(parse_segment_name("12.seg"), None);
    }

    #[test]
    fn clean_file() {
        let (buf, offs) = file(5);
        let s = scan(&buf, TAG);
        assert_eq!(s.frames.iter().map(|f| f.offset).collect::<Vec<_>>(), offs);
        assert!(s.bad.is_empty());
    }

    #[test]
    fn partial_tail_is_torn() {
        let (buf, offs) = file(5);
        let cut = &buf[..buf.len() - 3];
        let s = scan(cut, TAG);
        assert_eq!(s.frames.len(), 4);
        assert_eq!(s.torn_tail(cut), Some(offs[4]));
        // A header cut short, too.
        let cut = &buf[..offs[4] + 3];
        assert_eq!(scan(cut, TAG).torn_tail(cut), Some(offs[4]));
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let (mut buf, offs) = file(3);
        buf.extend_from_slice(&[0; 300]);
        let s = scan(&buf, TAG);
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.torn_tail(&buf), Some(offs[2] + 8 + TAG.len() + 12));
    }

    #[test]
    fn complete_last_frame_with_bad_crc_is_not_torn() {
        let (mut buf, offs) = file(5);
        let n = buf.len();
        buf[n - 2] ^= 0x10;
        let s = scan(&buf, TAG);
        assert_eq!(s.frames.len(), 4);
        assert_eq!(s.bad_tail(&buf), Some(offs[4]));
        assert_eq!(s.torn_tail(&buf), None);
    }

    #[test]
    fn middle_flip_is_corruption_not_tail() {
        let (mut buf, offs) = file(5);
        buf[offs[2] + 12] ^= 0x40;
        let s = scan(&buf, TAG);
        assert_eq!(s.frames.len(), 4);
        assert_eq!(s.bad, vec![offs[2]..offs[3]]);
        assert_eq!(s.torn_tail(&buf), None);
    }

    #[test]
    fn length_flip_resyncs() {
        let (mut buf, offs) = file(5);
        buf[offs[1]] ^= 0x01;
        let s = scan(&buf, TAG);
        assert_eq!(s.bad.first().map(|r| r.start), Some(offs[1]));
        assert_eq!(s.frames.last().map(|f| f.offset), Some(offs[4]));
    }
}
