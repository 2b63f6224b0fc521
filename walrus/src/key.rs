//! Instance keys and the directories they map to.
//!
//! A key maps to exactly one directory name, and two different keys never map to the same one:
//! ASCII letters, digits, `-` and `_` are kept; every other byte (including `.`, `/` and `%`
//! itself) becomes `%XX`. So no key can name `.`, `..` or a path outside the data root. Nor a
//! file of the root's own instance: their names hold a `.` but the lock file's, so the key
//! `LOCK` alone has its first byte escaped too (`%4COCK`).

use std::io;

/// Longest directory name most file systems take.
const MAX_DIR_NAME_LEN: usize = 255;

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
    let kept = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    // Counted before anything is built: a key of any length costs no more than this.
    let encoded: usize = key.bytes().map(|b| if kept(b) { 1 } else { 3 }).sum();
    if encoded > MAX_DIR_NAME_LEN {
        let shown: String = key.chars().take(32).collect();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "instance key {shown:?}… ({} bytes) is too long for a directory name ({encoded} \
                 bytes encoded, {MAX_DIR_NAME_LEN} at most)",
                key.len()
            ),
        ));
    }
    let mut out = String::with_capacity(encoded);
    for b in key.bytes() {
        if kept(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // `LOCK` is all kept bytes, so its escaped form is 6 bytes: still within the limit.
    if out == walrus_topic::LOCK_FILE {
        out.replace_range(..1, &format!("%{:02X}", out.as_bytes()[0]));
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
        assert_eq!(dir_name(&"a".repeat(255)).unwrap().len(), 255);
        assert!(dir_name(&"a".repeat(256)).is_err());
        assert_eq!(dir_name(&"/".repeat(85)).unwrap().len(), 255);
        // A huge key: refused with a short message naming its length.
        let e = dir_name(&"/".repeat(64 << 20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().len() < 300,
            "{} bytes of message",
            e.to_string().len()
        );
        assert!(e.to_string().contains(&(64 << 20).to_string()), "{e}");
    }
}
