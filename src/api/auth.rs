//! API keys (SPEC §9): entries `key`, `key:scopes`, `key:scopes:prefixes`, `key::prefixes`,
//! comma-separated; scopes `read`, `write`, `delete`, `admin` (`r`, `w`, `d`, `a`, `rw`)
//! joined by `+`; topic-name prefixes joined by `|`; an empty field means all.
//!
//! Keys are kept only as SHA-256 digests. A presented token is hashed and compared with every
//! entry in constant time (no early exit, no data-dependent branch on the bytes), so timing
//! tells nothing about a key. Keys and tokens are never logged.

use sha2::{Digest, Sha256};

use super::ApiError;
use crate::http::Request;

pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
pub const DELETE: u8 = 4;
pub const ADMIN: u8 = 8;
const ALL: u8 = READ | WRITE | DELETE | ADMIN;

struct Entry {
    digest: [u8; 32],
    scopes: u8,
    /// `None`: every topic.
    prefixes: Option<Vec<String>>,
}

/// The keys the server accepts; empty = auth off.
#[derive(Default)]
pub struct Keys {
    entries: Vec<Entry>,
}

/// Who made a request: the key's scopes and topic prefixes (everything when auth is off).
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    scopes: u8,
    prefixes: Option<Vec<String>>,
    /// SHA-256 of the key (binds a watch session to the key that created it).
    pub key_digest: Option<[u8; 32]>,
}

impl Principal {
    pub fn anyone() -> Principal {
        Principal {
            scopes: ALL,
            prefixes: None,
            key_digest: None,
        }
    }

    /// Whether a prefix allowlist applies.
    pub fn restricted(&self) -> bool {
        self.prefixes.is_some()
    }

    /// The prefix allowlist, if any.
    pub fn prefixes(&self) -> Option<&[String]> {
        self.prefixes.as_deref()
    }

    /// Whether this principal may see the topic `name`.
    pub fn may_see(&self, name: &str) -> bool {
        self.prefixes
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| name.starts_with(p.as_str())))
    }

    /// Requires `scopes` and access to every name in `names`.
    pub fn require(&self, scopes: u8, names: &[&str]) -> Result<(), ApiError> {
        if self.scopes & scopes != scopes {
            return Err(ApiError::new(
                403,
                "forbidden",
                format!(
                    "this key lacks the {} scope",
                    scope_names(scopes & !self.scopes)
                ),
            ));
        }
        for n in names {
            if !self.may_see(n) {
                return Err(ApiError::new(
                    403,
                    "forbidden",
                    format!("this key may not use {n:?} (outside its topic prefixes)"),
                )
                .detail(serde_json::json!({ "topic": n })));
            }
        }
        Ok(())
    }
}

fn scope_names(s: u8) -> String {
    let mut out = Vec::new();
    for (bit, name) in [
        (READ, "read"),
        (WRITE, "write"),
        (DELETE, "delete"),
        (ADMIN, "admin"),
    ] {
        if s & bit != 0 {
            out.push(name);
        }
    }
    out.join("+")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    // Read through a volatile-like barrier so the comparison is not short-circuited.
    std::hint::black_box(diff) == 0
}

fn parse_scopes(s: &str) -> Option<u8> {
    if s.is_empty() {
        return Some(ALL);
    }
    let mut out = 0;
    for part in s.split('+') {
        out |= match part {
            "read" | "r" => READ,
            "write" | "w" => WRITE,
            "delete" | "d" => DELETE,
            "admin" | "a" => ADMIN,
            "rw" => READ | WRITE,
            _ => return None,
        };
    }
    Some(out)
}

fn parse_prefixes(s: &str) -> Option<Option<Vec<String>>> {
    if s.is_empty() {
        return Some(None);
    }
    let mut out = Vec::new();
    for p in s.split('|') {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:->".contains(&b));
        if !ok {
            return None;
        }
        out.push(p.to_string());
    }
    Some(Some(out))
}

impl Keys {
    /// Parses `--api-keys`; any malformed entry is an error naming its position (never the
    /// key itself).
    pub fn parse(spec: &str) -> Result<Keys, String> {
        let mut entries = Vec::new();
        if spec.trim().is_empty() {
            return Ok(Keys { entries });
        }
        for (i, raw) in spec.split(',').enumerate() {
            let bad = |why: &str| format!("--api-keys: entry {} is malformed: {why}", i + 1);
            let entry = raw.trim();
            let mut fields = entry.splitn(3, ':');
            let key = fields.next().unwrap_or("");
            if key.is_empty() {
                return Err(bad("the key is empty"));
            }
            if key
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(bad("the key contains whitespace or control characters"));
            }
            let scopes = parse_scopes(fields.next().unwrap_or("")).ok_or_else(|| {
                bad("scopes are read, write, delete, admin (r, w, d, a, rw) joined by +")
            })?;
            let prefixes = parse_prefixes(fields.next().unwrap_or(""))
                .ok_or_else(|| bad("prefixes are topic-name prefixes joined by |"))?;
            entries.push(Entry {
                digest: sha256(key.as_bytes()),
                scopes,
                prefixes,
            });
        }
        Ok(Keys { entries })
    }

    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal of a presented token, if it is a key.
    fn lookup(&self, token: &str) -> Option<Principal> {
        let d = sha256(token.as_bytes());
        let mut found = None;
        for e in &self.entries {
            // Every entry is compared, matched or not.
            if ct_eq(&e.digest, &d) && found.is_none() {
                found = Some(Principal {
                    scopes: e.scopes,
                    prefixes: e.prefixes.clone(),
                    key_digest: Some(e.digest),
                });
            }
        }
        found
    }

    /// Authenticates a request: `Authorization: Bearer <key>`, or `?token=` on SSE GETs.
    pub fn authenticate(&self, req: &Request, sse_get: bool) -> Result<Principal, ApiError> {
        if !self.enabled() {
            return Ok(Principal::anyone());
        }
        let header = req.header("authorization").and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
        let token = match header {
            Some(t) => Some(t),
            None if sse_get => req.query_param("token"),
            None => None,
        };
        let unauthorized = |m: &str| {
            ApiError::new(401, "unauthorized", m.to_string())
                .header("www-authenticate", "Bearer".to_string())
        };
        match token {
            None => Err(unauthorized(
                "an API key is required: Authorization: Bearer <key>",
            )),
            Some(t) => self
                .lookup(&t)
                .ok_or_else(|| unauthorized("the API key is not valid")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_syntax() {
        let k =
            Keys::parse("k1, k2:r, k3:rw+d:orders|audit:, k4::tenant-a:, k5:admin").expect("valid");
        assert_eq!(k.len(), 5);
        let p = k.lookup("k3").expect("k3");
        assert_eq!(p.scopes, READ | WRITE | DELETE);
        assert!(p.may_see("orders-1") && p.may_see("audit:x") && !p.may_see("billing"));
        let p = k.lookup("k4").expect("k4");
        assert_eq!(p.scopes, ALL);
        assert!(p.may_see("tenant-a:orders") && !p.may_see("tenant-b"));
        assert_eq!(k.lookup("k2").map(|p| p.scopes), Some(READ));
        assert!(k.lookup("k6").is_none());
        assert!(k.lookup("").is_none());
        for bad in [
            ",",
            "k1,,k2",
            ":r",
            "k:x",
            "k:read+bogus",
            "k:r:a||b",
            "k:r:a b",
            "k 1:r",
        ] {
            assert!(Keys::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = Keys::parse("secret-key:x").err().unwrap_or_default();
        assert!(
            !e.contains("secret-key"),
            "the error must not show the key: {e}"
        );
        assert!(!Keys::parse("").expect("empty").enabled());
    }

    #[test]
    fn scopes_and_prefixes_are_enforced() {
        let k = Keys::parse("k:r:a").expect("valid");
        let p = k.lookup("k").expect("k");
        assert!(p.require(READ, &["abc"]).is_ok());
        assert_eq!(p.require(WRITE, &["abc"]).map_err(|e| e.status), Err(403));
        assert_eq!(p.require(READ, &["b"]).map_err(|e| e.status), Err(403));
        assert!(ct_eq(&sha256(b"x"), &sha256(b"x")));
        assert!(!ct_eq(&sha256(b"x"), &sha256(b"y")));
    }
}
