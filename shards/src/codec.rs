//! A tiny little-endian binary codec for WAL frame bodies.
//!
//! Every variable-length field is length-prefixed, so a decoder never reads past its input;
//! decoding a corrupt body yields `None` instead of panicking.

/// Appends fields to a byte vector.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(b) => self.u8(1).bytes(b),
            None => self.u8(0),
        }
    }
}

/// Reads fields back; every accessor returns `None` on truncated input.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    pub fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
    pub fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => Some(Some(std::str::from_utf8(b).ok()?)),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut v = Vec::new();
        Enc(&mut v)
            .u8(7)
            .u32(9)
            .u64(u64::MAX)
            .i64(-3)
            .bytes(b"abc")
            .opt_bytes(None)
            .opt_bytes(Some(b"x"));
        let mut d = Dec::new(&v);
        assert_eq!(d.u8(), Some(7));
        assert_eq!(d.u32(), Some(9));
        assert_eq!(d.u64(), Some(u64::MAX));
        assert_eq!(d.i64(), Some(-3));
        assert_eq!(d.bytes(), Some(&b"abc"[..]));
        assert_eq!(d.opt_bytes(), Some(None));
        assert_eq!(d.opt_str(), Some(Some("x")));
        assert!(d.is_empty());
        for cut in 0..v.len() {
            let mut d = Dec::new(&v[..cut]);
            let ok = (|| {
                d.u8()?;
                d.u32()?;
                d.u64()?;
                d.i64()?;
                d.bytes()?;
                d.opt_bytes()?;
                d.opt_bytes()
            })();
            assert!(ok.is_none(), "cut {cut} decoded");
        }
    }
}
