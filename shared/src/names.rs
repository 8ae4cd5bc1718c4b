//! Validated names: the identifiers that end up in NATS subjects, KV keys, object keys and
//! file paths. Each is checked once where it enters the system, so a hostile or mistyped
//! value can never inject a subject token or escape its prefix.

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{value}': {rule}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    rule: &'static str,
    ok: impl Fn(usize, u8) -> bool,
) -> Result<(), NameError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > max || !bytes.iter().enumerate().all(|(i, &b)| ok(i, b)) {
        return Err(NameError {
            what,
            value: value.to_string(),
            rule,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $rule:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                check($what, s, $max, $rule, $ok)?;
                Ok(Self(s.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A region (data center) name: a NATS subject token and consumer name.
    Region,
    "region",
    32,
    "use 1-32 characters: lowercase letters, digits and '-', starting with a letter or digit",
    |i, b| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b == b'-')
);

name_type!(
    /// A studio (tenant) name: a NATS subject token and object-store prefix. Every job belongs
    /// to one; a farm without identities files everything under [`Studio::DEFAULT`].
    Studio,
    "studio",
    32,
    "use 1-32 characters: lowercase letters, digits and '-', starting with a letter or digit",
    |i, b| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b == b'-')
);

impl Studio {
    /// The studio of jobs submitted without one (a single-studio farm).
    pub const DEFAULT: &'static str = "default";
}

impl Default for Studio {
    fn default() -> Self {
        Self(Self::DEFAULT.to_string())
    }
}

name_type!(
    /// A worker's name, unique within its region.
    WorkerId,
    "worker name",
    64,
    "use 1-64 characters: letters, digits, '-' and '_'",
    |_, b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
);

name_type!(
    /// A job's id: a lowercase ULID, so ids sort by submission time.
    JobId,
    "job id",
    26,
    "expected a 26-character lowercase id as printed by `suanli submit`",
    |_, b| b.is_ascii_lowercase() || b.is_ascii_digit()
);

impl JobId {
    /// A fresh id (time-ordered).
    pub fn generate() -> Self {
        Self(ulid::Ulid::new().to_string().to_ascii_lowercase())
    }
}

/// Checks that `name` is a plain file name that cannot escape the folder or object prefix it
/// is joined to: no separators, no `.`/`..`, no control characters.
pub fn validate_file_name(name: &str) -> Result<(), NameError> {
    let bad = name.is_empty()
        || name.len() > 200
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control() || c == ':');
    if bad {
        return Err(NameError {
            what: "output file name",
            value: name.to_string(),
            rule:
                "must be a plain file name: no '/', '\\', ':', leading '.', or control characters",
        });
    }
    Ok(())
}

/// Checks a relative input path as stored in a manifest: `/`-separated, no empty, `.` or `..`
/// parts, not absolute, so materializing it under a task folder can never escape that folder.
pub fn validate_rel_path(path: &str) -> Result<(), NameError> {
    let err = || NameError {
        what: "input path",
        value: path.to_string(),
        rule:
            "must be relative, '/'-separated, without '.', '..', empty parts or control characters",
    };
    if path.is_empty() || path.len() > 1024 || path.starts_with('/') || path.contains('\\') {
        return Err(err());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.chars().any(|c| c.is_control()) {
            return Err(err());
        }
    }
    if Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(err());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_subject_tokens() {
        assert!("guian".parse::<Region>().is_ok());
        assert!("cn-west-2".parse::<Region>().is_ok());
        for bad in ["", "Guian", "a.b", "a b", "-x", "a*", "a>", &"x".repeat(33)] {
            assert!(bad.parse::<Region>().is_err(), "{bad}");
        }
    }

    #[test]
    fn studios_are_subject_tokens() {
        assert_eq!(Studio::default().as_str(), "default");
        assert!("acme".parse::<Studio>().is_ok());
        for bad in [
            "",
            "Acme",
            "a.b",
            "a b",
            "-x",
            "a*",
            "a>",
            "_ops",
            &"x".repeat(33),
        ] {
            assert!(bad.parse::<Studio>().is_err(), "{bad}");
        }
    }

    #[test]
    fn job_ids_round_trip() {
        let id = JobId::generate();
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
        assert!("../etc".parse::<JobId>().is_err());
    }

    #[test]
    fn file_names_cannot_escape() {
        assert!(validate_file_name("frame_0001.png").is_ok());
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "c:x", "a\nb",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rel_paths_cannot_escape() {
        assert!(validate_rel_path("scene.blend").is_ok());
        assert!(validate_rel_path("tex/wood.png").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\\b",
            "a/.",
        ] {
            assert!(validate_rel_path(bad).is_err(), "{bad:?}");
        }
    }
}
