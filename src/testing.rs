//! Helpers shared by the unit tests.

/// Hex bytes, whitespace anywhere ignored ("a5 17 00" or "a51700").
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// Deterministic xorshift64: cheap enough for a million generated inputs
/// in a debug build, where proptest manages ~10-20k cases/s.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `hot` half the time, any byte otherwise: inputs that look
    /// almost right reach deeper into a parser than uniform noise.
    pub fn byte_from(&mut self, hot: &[u8]) -> u8 {
        let r = self.next();
        if r & 1 == 0 && !hot.is_empty() {
            hot[((r >> 1) % hot.len() as u64) as usize]
        } else {
            (r >> 8) as u8
        }
    }
}
