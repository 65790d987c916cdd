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

/// The shared vectors' `kind` folder (`$E2M_VECTORS/<kind>`, else
/// `../shared/vectors/<kind>`), or `None` after saying the tests were not
/// run. Under CI a missing folder is a failure: skipped vector tests would
/// look like passing ones.
pub fn vectors_dir(kind: &str) -> Option<std::path::PathBuf> {
    let root = match std::env::var_os("E2M_VECTORS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"),
    };
    let dir = root.join(kind);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{kind} vector folder {} missing (set E2M_VECTORS)",
        dir.display()
    );
    println!("{kind} vector tests not run: {} missing", dir.display());
    None
}

/// The `*.json` files of a folder, sorted.
pub fn json_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("readable vectors folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}
