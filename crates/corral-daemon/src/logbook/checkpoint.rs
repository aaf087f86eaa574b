//! The checkpoint of a held run's log: how far the files and the source's streams agree.
//!
//! File `run_<run_id>.pos` beside the log, rewritten in place (one `pwrite` of
//! [`LEN`] bytes at offset 0) after every batch the run's holder sent, before that batch
//! is acknowledged to the holder, and after every `system` note. A daemon that dies leaves
//! the files at least as far as the checkpoint; the next one cuts them back to it and asks
//! the holder for the streams from the checkpoint's offsets, so nothing is lost (the holder
//! forgets only what was acknowledged, and that was checkpointed first) and nothing is
//! written twice (what lay beyond the checkpoint is written again, with the same seqs).
//!
//! Layout, little-endian:
//!
//! | bytes  | field                                                     |
//! |--------|-----------------------------------------------------------|
//! | 0..8   | magic `corralp1`                                          |
//! | 8..16  | last seq                                                  |
//! | 16..24 | length of the `.log`                                      |
//! | 24..32 | length of the `.sys`                                      |
//! | 32..40 | bytes of the source's `stdout` that are in records        |
//! | 40..48 | bytes of the source's `stderr` that are in records        |

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const LEN: usize = 48;
const MAGIC: &[u8; 8] = b"corralp1";

/// Where a run's files and its source's streams stood together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub last_seq: u64,
    pub log_len: u64,
    pub sys_len: u64,
    /// Bytes of each stream (stdout, stderr) of the source that are in records.
    pub streams: [u64; 2],
}

impl Checkpoint {
    /// The checkpoint file of a run log.
    pub fn path(log_path: &Path) -> PathBuf {
        log_path.with_extension("pos")
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        let words = [
            self.last_seq,
            self.log_len,
            self.sys_len,
            self.streams[0],
            self.streams[1],
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() != LEN || &b[..8] != MAGIC {
            return None;
        }
        let w =
            |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
        Some(Checkpoint {
            last_seq: w(0),
            log_len: w(1),
            sys_len: w(2),
            streams: [w(3), w(4)],
        })
    }

    pub fn write(&self, f: &File) -> std::io::Result<()> {
        f.write_all_at(&self.encode(), 0)
    }

    pub fn read(log_path: &Path) -> std::io::Result<Checkpoint> {
        let path = Checkpoint::path(log_path);
        let b = std::fs::read(&path)?;
        Checkpoint::decode(&b).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a run checkpoint", path.display()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_garbage_is_refused() {
        let c = Checkpoint {
            last_seq: 7,
            log_len: 1 << 33,
            sys_len: 99,
            streams: [5, 1 << 40],
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(&[0u8; LEN]), None);
        assert_eq!(Checkpoint::decode(&c.encode()[..40]), None);
    }
}
