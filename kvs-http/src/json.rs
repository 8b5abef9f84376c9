//! Bytes in JSON: a key or value that is valid UTF-8 travels as a JSON
//! string in `key`/`value`; any other bytes as standard, padded base64 in
//! `key_base64`/`value_base64`. A body or query names exactly one field of
//! each pair.
//!
//! ```
//! use kvs_http::json::{from_fields, to_fields};
//!
//! assert_eq!(to_fields(b"hello".to_vec()), (Some("hello".to_string()), None));
//! assert_eq!(to_fields(vec![0xff, 0x00]), (None, Some("/wA=".to_string())));
//! assert_eq!(from_fields("key", None, Some("/wA=")).unwrap(), vec![0xff, 0x00]);
//! assert!(from_fields("key", Some("a"), Some("YQ==")).is_err());
//! assert!(from_fields("key", None, None).is_err());
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Why a pair of fields does not give bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Both `NAME` and `NAME_base64` were given.
    #[error("give either {name} or {name}_base64, not both")]
    Both {
        /// The field's name (`key`, `value`).
        name: &'static str,
    },
    /// Neither was given.
    #[error("{name} or {name}_base64 is required")]
    Neither {
        /// The field's name.
        name: &'static str,
    },
    /// `NAME_base64` is not standard, padded base64.
    #[error("{name}_base64 is not standard padded base64: {reason}")]
    Base64 {
        /// The field's name.
        name: &'static str,
        /// What the decoder said.
        reason: String,
    },
}

/// A deadline (unix ns, 0: none) as the API writes it: `expires_ms`, unix
/// milliseconds rounded up (never shown as passed while the entry is still
/// readable), `None` for none.
pub fn expires_ms(deadline_ns: u64) -> Option<u64> {
    (deadline_ns != 0).then(|| deadline_ns.div_ceil(1_000_000))
}

/// Unix milliseconds now, the unit of every time the API writes.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The JSON form of `bytes`: `(Some(text), None)` when they are UTF-8,
/// else `(None, Some(base64))`.
pub fn to_fields(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (None, Some(STANDARD.encode(e.as_bytes()))),
    }
}

/// The bytes of the pair `name` (`text`) / `name_base64` (`base64`):
/// exactly one must be given.
///
/// # Errors
///
/// [`FieldError`] for both, neither, or base64 that does not decode.
pub fn from_fields(
    name: &'static str,
    text: Option<&str>,
    base64: Option<&str>,
) -> Result<Vec<u8>, FieldError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(FieldError::Both { name }),
        (None, None) => Err(FieldError::Neither { name }),
        (Some(t), None) => Ok(t.as_bytes().to_vec()),
        (None, Some(b)) => decode(name, b),
    }
}

/// Decodes standard, padded base64.
///
/// # Errors
///
/// [`FieldError::Base64`].
pub fn decode(name: &'static str, base64: &str) -> Result<Vec<u8>, FieldError> {
    STANDARD.decode(base64).map_err(|e| FieldError::Base64 {
        name,
        reason: e.to_string(),
    })
}

/// Standard, padded base64 of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// `bytes` for a message: quoted text when UTF-8, else `base64:...`
/// (shortened past 64 characters).
pub fn describe(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shorten = |s: String| {
        if s.chars().count() > SHOWN {
            let cut: String = s.chars().take(SHOWN).collect();
            format!("{cut}…")
        } else {
            s
        }
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{:?}", shorten(text.to_string())),
        Err(_) => format!("base64:{}", shorten(encode(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_text_and_anything_else_is_base64() {
        assert_eq!(to_fields(Vec::new()), (Some(String::new()), None));
        assert_eq!(
            to_fields("ünï\0code".as_bytes().to_vec()),
            (Some("ünï\0code".into()), None)
        );
        // A truncated UTF-8 sequence is not text.
        let cut = "ü".as_bytes()[..1].to_vec();
        assert_eq!(to_fields(cut.clone()), (None, Some(encode(&cut))));
        let all: Vec<u8> = (0..=255).collect();
        let (text, b64) = to_fields(all.clone());
        assert_eq!(text, None);
        assert_eq!(from_fields("value", None, b64.as_deref()).unwrap(), all);
    }

    #[test]
    fn exactly_one_field_of_a_pair() {
        assert_eq!(from_fields("key", Some("a"), None).unwrap(), b"a".to_vec());
        assert_eq!(
            from_fields("key", Some("a"), Some("YQ==")),
            Err(FieldError::Both { name: "key" })
        );
        assert_eq!(
            from_fields("value", None, None),
            Err(FieldError::Neither { name: "value" })
        );
        for bad in ["YQ", "Y", "!!!!", "YQ==YQ==", "_w=="] {
            assert!(
                matches!(
                    from_fields("key", None, Some(bad)),
                    Err(FieldError::Base64 { name: "key", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            FieldError::Both { name: "key" }.to_string(),
            "give either key or key_base64, not both"
        );
    }

    #[test]
    fn descriptions_are_short() {
        assert_eq!(describe(b"k"), "\"k\"");
        assert_eq!(describe(&[0xff]), "base64:/w==");
        let long = describe(&[0xfe; 1000]);
        assert!(long.starts_with("base64:") && long.ends_with('…'));
        assert!(long.chars().count() < 80);
    }
}
