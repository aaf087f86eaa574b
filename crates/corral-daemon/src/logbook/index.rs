//! The on-disk seq index of a run log.
//!
//! File `run_<run_id>.idx` beside the log: one fixed-size little-endian entry per record,
//! entry `seq` at byte `(seq - 1) * ENTRY`, so a follower seeks to any seq with one
//! `pread` and never scans the log. Entry layout (24 bytes):
//!
//! | bytes | field                                                             |
//! |-------|-------------------------------------------------------------------|
//! | 0..8  | offset of the record's bytes (in the `.log`, or `.sys` for system) |
//! | 8..12 | length in bytes, newline included                                  |
//! | 12    | stream: 0 stdout, 1 stderr, 2 system, 3 file                       |
//! | 13    | flags: bit 0 = partial                                             |
//! | 14..16| zero                                                               |
//! | 16..24| timestamp, microseconds since the Unix epoch                       |
//!
//! The `.log` holds exactly the bytes the source handed in (a process's `stdout` and
//! `stderr`, a followed `file`), in arrival order; corral's own lifecycle notes (`system`)
//! go to the `.sys` file so that the `.log` stays byte-exact. The stream byte is the
//! channel within the source (see `corral_core::record`), so a new kind of source needs
//! no new layout.

use corral_core::record::Stream;

pub const ENTRY: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub offset: u64,
    pub len: u32,
    pub stream: Stream,
    pub partial: bool,
    pub ts_micros: u64,
}

impl Entry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Built whole, then appended once: this runs for every record captured.
        let mut e = [0u8; ENTRY];
        e[0..8].copy_from_slice(&self.offset.to_le_bytes());
        e[8..12].copy_from_slice(&self.len.to_le_bytes());
        e[12] = self.stream.to_u8();
        e[13] = self.partial as u8;
        e[16..24].copy_from_slice(&self.ts_micros.to_le_bytes());
        out.extend_from_slice(&e);
    }

    /// Decodes one entry; `None` for a hole (all zero, never written) or a bad stream byte.
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let b: &[u8; ENTRY] = b.try_into().ok()?;
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let (w0, w1, w2) = (word(0), word(8), word(16));
        if w0 | w1 | w2 == 0 {
            return None;
        }
        Some(Entry {
            offset: w0,
            len: w1 as u32,
            stream: Stream::from_u8(b[12])?,
            partial: b[13] & 1 != 0,
            ts_micros: w2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_holes_read_as_none() {
        let e = Entry {
            offset: 1 << 40,
            len: 65_537,
            stream: Stream::Stderr,
            partial: true,
            ts_micros: 1_704_067_200_123_456,
        };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(buf.len(), ENTRY);
        assert_eq!(Entry::decode(&buf), Some(e));
        assert_eq!(Entry::decode(&[0u8; ENTRY]), None);
    }

    #[test]
    fn every_stream_has_its_byte() {
        for (byte, stream) in [Stream::Stdout, Stream::Stderr, Stream::System, Stream::File]
            .into_iter()
            .enumerate()
        {
            let e = Entry {
                offset: 7,
                len: 3,
                stream,
                partial: false,
                ts_micros: 1,
            };
            let mut buf = Vec::new();
            e.encode(&mut buf);
            assert_eq!(buf[12], byte as u8);
            assert_eq!(Entry::decode(&buf), Some(e));
        }
        let mut bad = [0u8; ENTRY];
        bad[0] = 1;
        bad[12] = 9;
        assert_eq!(
            Entry::decode(&bad),
            None,
            "an unknown stream byte is no entry"
        );
    }
}
