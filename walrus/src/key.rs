//! Instance keys and the directories they map to.
//!
//! A key maps to exactly one directory name, and two different keys never map to the same one:
//! ASCII letters, digits, `-` and `_` are kept; every other byte (including `.`, `/` and `%`
//! itself) becomes `%XX`. So no key can name `.`, `..` or a path outside the data root. Nor a
//! file of the root's own instance: their names hold a `.` but the lock file's, so the key
//! `LOCK` alone has its first byte escaped too (`%4COCK`).

use std::io;

/// The directory name for `key`.
///
/// # Errors
/// `InvalidInput` for an empty key or one whose encoding exceeds 255 bytes.
pub(crate) fn dir_name(key: &str) -> io::Result<String> {
    if key.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "instance key is empty",
        ));
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == walrus_topic::LOCK_FILE {
        out.replace_range(..1, &format!("%{:02X}", out.as_bytes()[0]));
    }
    if out.len() > 255 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "instance key {key:?} is too long for a directory name ({} bytes encoded)",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_one_to_one_and_stay_inside() {
        assert_eq!(dir_name("transactions").unwrap(), "transactions");
        assert_eq!(dir_name("..").unwrap(), "%2E%2E");
        assert_eq!(dir_name("a/b").unwrap(), "a%2Fb");
        assert_eq!(dir_name("a%2Fb").unwrap(), "a%252Fb");
        assert_ne!(dir_name("a/b").unwrap(), dir_name("a%2Fb").unwrap());
        assert_eq!(dir_name("é").unwrap(), "%C3%A9");
        assert_eq!(dir_name("LOCK").unwrap(), "%4COCK");
        assert_eq!(dir_name("%4COCK").unwrap(), "%254COCK");
        assert_eq!(dir_name("LOCKS").unwrap(), "LOCKS");
        assert!(dir_name("").is_err());
        assert!(dir_name(&"/".repeat(100)).is_err());
    }
}
