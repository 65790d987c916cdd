//! Blocks, the read plan and the register bank the poll task fills.

/// FC03 can return at most 125 registers in one reply (Modbus spec).
pub const MODBUS_MAX_BLOCK: u16 = 125;

/// Registers 0..22, read at start-up and hourly. Family-independent because
/// register 0 picks the family; it also covers the three-phase rated power
/// (20–21).
pub const IDENTITY: Block = Block::new(0, 23);

/// A run of consecutive holding registers read with one FC03 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub start: u16,
    pub count: u16,
}

impl Block {
    pub const fn new(start: u16, count: u16) -> Self {
        Self { start, count }
    }

    /// One past the last address. `u32` because a block may end at 0x10000.
    pub const fn end(self) -> u32 {
        self.start as u32 + self.count as u32
    }

    pub const fn contains(self, addr: u16) -> bool {
        addr >= self.start && (addr as u32) < self.end()
    }
}

/// Splits `blocks` into requests of at most `max_block` registers. Some
/// sticks time out on large reads (kbialek #141), so the limit is
/// configurable; it is clamped to 1..=125 because 0 would never finish and
/// more than 125 is refused by every Modbus server.
pub fn plan(blocks: &[Block], max_block: u16) -> Vec<Block> {
    let max = u32::from(max_block.clamp(1, MODBUS_MAX_BLOCK));
    let mut out = Vec::new();
    for block in blocks {
        let end = block.end().min(0x1_0000);
        let mut start = u32::from(block.start);
        while start < end {
            let count = (end - start).min(max);
            let (Ok(s), Ok(c)) = (u16::try_from(start), u16::try_from(count)) else {
                break;
            };
            out.push(Block::new(s, c));
            start += count;
        }
    }
    out
}

const ALL_PRESENT: [bool; 128] = [true; 128];

/// A sparse bank of holding-register values, filled from block reads.
/// Dense storage indexed by address: the map only reaches ~200, and the
/// decoder looks registers up one by one, so vectors beat a map.
#[derive(Debug, Clone, Default)]
pub struct Registers {
    words: Vec<u16>,
    present: Vec<bool>,
}

impl Registers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `words` at `start`, `start + 1`, …; words past 0xFFFF are
    /// dropped because no register can hold them.
    pub fn insert_block(&mut self, start: u16, words: &[u16]) {
        let first = usize::from(start);
        let end = (first + words.len()).min(0x1_0000);
        if self.words.len() < end {
            self.words.resize(end, 0);
            self.present.resize(end, false);
        }
        if let (Some(slots), Some(flags), Some(src)) = (
            self.words.get_mut(first..end),
            self.present.get_mut(first..end),
            words.get(..end - first),
        ) {
            slots.copy_from_slice(src);
            // Chunked copies rather than fill(): fill is a per-element loop
            // in debug builds, and the tests insert a million blocks.
            for chunk in flags.chunks_mut(ALL_PRESENT.len()) {
                if let Some(ones) = ALL_PRESENT.get(..chunk.len()) {
                    chunk.copy_from_slice(ones);
                }
            }
        }
    }

    pub fn insert(&mut self, addr: u16, value: u16) {
        self.insert_block(addr, &[value]);
    }

    pub fn remove(&mut self, addr: u16) {
        let i = usize::from(addr);
        if let (Some(word), Some(flag)) = (self.words.get_mut(i), self.present.get_mut(i)) {
            *word = 0;
            *flag = false;
        }
    }

    pub fn get(&self, addr: u16) -> Option<u16> {
        let i = usize::from(addr);
        match (self.present.get(i), self.words.get(i)) {
            (Some(true), Some(&word)) => Some(word),
            _ => None,
        }
    }

    /// Whether every register of `block` holds a value.
    pub fn has_block(&self, block: Block) -> bool {
        (u32::from(block.start)..block.end())
            .all(|a| u16::try_from(a).is_ok_and(|a| self.get(a).is_some()))
    }

    pub fn clear(&mut self) {
        self.words.clear();
        self.present.clear();
    }
}
