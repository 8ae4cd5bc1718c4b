//! Frame specifications (`1-240`, `1-240x2`, `1,5,9-12`) and their split into chunks.
//!
//! A spec is parsed once at the edge into a sorted list of distinct frames; every chunk is an
//! arithmetic progression (`start..=end` by `step`) so that every renderer can express it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Highest frame number accepted (Blender's own limit is 1,048,574).
pub const MAX_FRAME: u32 = 1_000_000;
/// Most frames one job may hold; larger shots are split into several jobs.
pub const MAX_FRAMES_PER_JOB: usize = 100_000;
/// Largest chunk (frames per task). A task's completion event and its record list every
/// output file, and each must fit in one NATS message (`protocol::codec::MAX_MESSAGE`, 1 MiB):
/// at about 130 bytes a file as named by default, 10,000 frames did not; 1,000 fit even with
/// the longest names (about 530 bytes a file).
pub const MAX_CHUNK: u32 = 1_000;

/// Why a frame spec was refused. Messages say what was wrong and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameSpecError {
    #[error("frame spec is empty: give frames like '1-240', '1-240x2' or '1,5,9-12'")]
    Empty,
    #[error(
        "'{0}' is not a frame, range or stepped range (expected e.g. '7', '1-240' or '1-240x2')"
    )]
    Malformed(String),
    #[error("step in '{0}' must be at least 1")]
    ZeroStep(String),
    #[error("range '{0}' ends before it starts")]
    Reversed(String),
    #[error("frame {0} is above the highest frame allowed ({MAX_FRAME})")]
    TooHigh(u64),
    #[error("spec selects {0} frames; at most {MAX_FRAMES_PER_JOB} are allowed per job")]
    TooMany(usize),
    #[error("frame {0} is listed more than once")]
    Duplicate(u32),
}

/// A parsed frame specification: the text as given and the frames it selects, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    text: String,
    frames: Vec<u32>,
}

impl FrameSpec {
    pub fn frames(&self) -> &[u32] {
        &self.frames
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Split into chunks of at most `size` frames, each an arithmetic progression.
    pub fn chunks(&self, size: u32) -> Result<Vec<FrameChunk>, ChunkSizeError> {
        if size == 0 || size > MAX_CHUNK {
            return Err(ChunkSizeError(size));
        }
        let mut out: Vec<FrameChunk> = Vec::new();
        let mut cur: Option<FrameChunk> = None;
        for &f in &self.frames {
            cur = match cur {
                None => Some(FrameChunk::single(f)),
                Some(mut c) => {
                    let fits = c.len() < size && (c.len() == 1 || f - c.end == c.step);
                    if fits {
                        c.step = f - c.end;
                        c.end = f;
                        Some(c)
                    } else {
                        out.push(c);
                        Some(FrameChunk::single(f))
                    }
                }
            };
        }
        out.extend(cur);
        Ok(out)
    }
}

/// A chunk size of 0 or above [`MAX_CHUNK`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk size {0} is out of range: give 1 to {MAX_CHUNK} frames per task")]
pub struct ChunkSizeError(pub u32);

impl FromStr for FrameSpec {
    type Err = FrameSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(FrameSpecError::Empty);
        }
        let mut frames: Vec<u32> = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(FrameSpecError::Malformed(item.to_string()));
            }
            let (range, step) = match item.split_once(['x', 'X']) {
                Some((r, st)) => (r, parse_num(st, item)?),
                None => (item, 1),
            };
            if step == 0 {
                return Err(FrameSpecError::ZeroStep(item.to_string()));
            }
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (parse_num(a, item)?, parse_num(b, item)?),
                None if step == 1 || !item.contains(['x', 'X']) => {
                    let n = parse_num(range, item)?;
                    (n, n)
                }
                None => return Err(FrameSpecError::Malformed(item.to_string())),
            };
            if b < a {
                return Err(FrameSpecError::Reversed(item.to_string()));
            }
            if b > MAX_FRAME as u64 {
                return Err(FrameSpecError::TooHigh(b));
            }
            let count = (b - a) / step + 1;
            if frames.len() as u64 + count > MAX_FRAMES_PER_JOB as u64 {
                return Err(FrameSpecError::TooMany(
                    (frames.len() as u64 + count).min(usize::MAX as u64) as usize,
                ));
            }
            let mut f = a;
            while f <= b {
                frames.push(f as u32);
                f += step;
            }
        }
        frames.sort_unstable();
        if let Some(w) = frames.windows(2).find(|w| w[0] == w[1]) {
            return Err(FrameSpecError::Duplicate(w[0]));
        }
        Ok(Self {
            text: text.to_string(),
            frames,
        })
    }
}

fn parse_num(s: &str, item: &str) -> Result<u64, FrameSpecError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 12 {
        return Err(FrameSpecError::Malformed(item.to_string()));
    }
    s.parse::<u64>()
        .map_err(|_| FrameSpecError::Malformed(item.to_string()))
}

impl fmt::Display for FrameSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for FrameSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for FrameSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The frames of one task: `start..=end` by `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrameChunk {
    pub start: u32,
    pub end: u32,
    pub step: u32,
}

impl FrameChunk {
    pub fn single(frame: u32) -> Self {
        Self {
            start: frame,
            end: frame,
            step: 1,
        }
    }

    /// Number of frames in the chunk: as many as [`FrameChunk::frames`] yields, also for a
    /// chunk decoded from a record without [`FrameChunk::is_valid`] (an end before the start is
    /// empty; never an overflow).
    pub fn len(&self) -> u32 {
        match self.end.checked_sub(self.start) {
            Some(span) => (span / self.step.max(1)).saturating_add(1),
            None => 0,
        }
    }

    /// Only a chunk that ends before it starts (never a valid one).
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    pub fn frames(&self) -> impl Iterator<Item = u32> {
        (self.start..=self.end).step_by(self.step.max(1) as usize)
    }

    /// Checks a chunk received from the wire.
    pub fn is_valid(&self) -> bool {
        self.step >= 1 && self.start <= self.end && self.end <= MAX_FRAME && self.len() <= MAX_CHUNK
    }
}

impl fmt::Display for FrameChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else if self.step == 1 {
            write!(f, "{}-{}", self.start, self.end)
        } else {
            write!(f, "{}-{}x{}", self.start, self.end, self.step)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(s: &str) -> Vec<u32> {
        s.parse::<FrameSpec>().unwrap().frames().to_vec()
    }

    #[test]
    fn parses_ranges_steps_and_lists() {
        assert_eq!(frames("1-5"), vec![1, 2, 3, 4, 5]);
        assert_eq!(frames("1-9x4"), vec![1, 5, 9]);
        assert_eq!(frames("1-10x4"), vec![1, 5, 9]);
        assert_eq!(frames("1,5,9-12"), vec![1, 5, 9, 10, 11, 12]);
        assert_eq!(frames(" 7 "), vec![7]);
        assert_eq!(frames("10,2"), vec![2, 10]);
        assert_eq!(frames("0"), vec![0]);
    }

    #[test]
    fn refuses_bad_specs_with_the_reason() {
        use FrameSpecError::*;
        let err = |s: &str| s.parse::<FrameSpec>().unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err("  "), Empty);
        assert_eq!(err("1-240x0"), ZeroStep("1-240x0".into()));
        assert_eq!(err("10-1"), Reversed("10-1".into()));
        assert_eq!(err("a-b"), Malformed("a-b".into()));
        assert_eq!(err("1,,2"), Malformed("".into()));
        assert_eq!(err("-5"), Malformed("-5".into()));
        assert_eq!(err("1-2-3"), Malformed("1-2-3".into()));
        assert_eq!(err("1-99999999999"), TooHigh(99_999_999_999));
        assert_eq!(err("0-999999"), TooMany(1_000_000));
        assert_eq!(err("1-5,3"), Duplicate(3));
        assert!(err("1-240x").to_string().contains("1-240x"));
    }

    #[test]
    fn chunks_are_arithmetic_progressions_of_bounded_size() {
        let spec: FrameSpec = "1-10,20-30x5,40".parse().unwrap();
        let chunks = spec.chunks(4).unwrap();
        let shown: Vec<String> = chunks.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["1-4", "5-8", "9-10", "20-30x5", "40"]);
        let all: Vec<u32> = chunks.iter().flat_map(|c| c.frames()).collect();
        assert_eq!(all, spec.frames());
        assert!(chunks.iter().all(|c| c.is_valid()));
        assert_eq!(spec.chunks(0), Err(ChunkSizeError(0)));
    }

    #[test]
    fn serde_round_trips_through_the_text() {
        let spec: FrameSpec = "1-240x2".parse().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, "\"1-240x2\"");
        assert_eq!(serde_json::from_str::<FrameSpec>(&json).unwrap(), spec);
        assert!(serde_json::from_str::<FrameSpec>("\"5-1\"").is_err());
    }
}
