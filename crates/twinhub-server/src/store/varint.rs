//! LEB128 varints and zig-zag integers for the batch log and chunk headers.

pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over encoded bytes; every read fails cleanly on truncation.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt record at byte {0}")]
pub struct Corrupt(pub usize);

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, Corrupt> {
        let b = *self.buf.get(self.pos).ok_or(Corrupt(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u64(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Corrupt(self.pos))
    }

    pub fn i64(&mut self) -> Result<i64, Corrupt> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn usize(&mut self) -> Result<usize, Corrupt> {
        usize::try_from(self.u64()?).map_err(|_| Corrupt(self.pos))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        let end = self.pos.checked_add(n).ok_or(Corrupt(self.pos))?;
        let s = self.buf.get(self.pos..end).ok_or(Corrupt(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    pub fn f64(&mut self) -> Result<f64, Corrupt> {
        let b = self.bytes(8)?;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(a in any::<u64>(), b in any::<i64>()) {
            let mut out = Vec::new();
            put_u64(&mut out, a);
            put_i64(&mut out, b);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.u64().unwrap(), a);
            prop_assert_eq!(r.i64().unwrap(), b);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn truncation_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut r = Reader::new(&bytes);
            while r.u64().is_ok() {}
        }
    }
}
