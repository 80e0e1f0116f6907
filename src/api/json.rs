//! Hand-written JSON output for the hot paths: keys and numbers are written directly, strings
//! escaped by serde_json, and stored `data`/`meta` bytes copied verbatim.

use std::io::Write;

/// Writes a JSON object field by field.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

pub fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl<'a> Obj<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    pub fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let out = self.key(k);
        string(out, v);
        self
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        let _ = write!(self.key(k), "{v}");
        self
    }

    pub fn i64(&mut self, k: &str, v: i64) -> &mut Self {
        let _ = write!(self.key(k), "{v}");
        self
    }

    pub fn f64(&mut self, k: &str, v: f64) -> &mut Self {
        let _ = write!(self.key(k), "{v:.3}");
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k)
            .extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    pub fn null(&mut self, k: &str) -> &mut Self {
        self.key(k).extend_from_slice(b"null");
        self
    }

    /// A value that is already JSON (stored `data`/`meta`, or a serialised object).
    pub fn raw(&mut self, k: &str, v: &[u8]) -> &mut Self {
        self.key(k).extend_from_slice(v);
        self
    }

    pub fn value(&mut self, k: &str, v: &serde_json::Value) -> &mut Self {
        let out = self.key(k);
        let _ = serde_json::to_writer(&mut *out, v);
        self
    }

    pub fn u64_array(&mut self, k: &str, v: impl Iterator<Item = u64>) -> &mut Self {
        let out = self.key(k);
        out.push(b'[');
        for (i, s) in v.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{s}");
        }
        out.push(b']');
        self
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_valid_json() {
        let mut out = Vec::new();
        let mut o = Obj::new(&mut out);
        o.str("a", "x\"y")
            .u64("n", 3)
            .raw("data", b"{ \"k\" : 1 }")
            .null("t")
            .u64_array("s", [1u64, 2].into_iter())
            .f64("ms", 0.12345);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid");
        assert_eq!(v["a"], "x\"y");
        assert_eq!(v["s"], serde_json::json!([1, 2]));
        assert!(std::str::from_utf8(&out)
            .expect("utf8")
            .contains("{ \"k\" : 1 }"));
    }
}
