//! A state object's JSON text written straight from the typed reading.
//!
//! The retained state on `<base>/<id>` is defined as the `serde_json::Map`
//! of [`super::Reading::to_state`], the bridge's annotations over it and
//! `last_seen` over everything, serialised. That map is sorted by key
//! (serde_json is built without `preserve_order`), and building it costs a
//! `String` per key, a tree node per entry and two clones on the way to
//! the outbox: a third of a pack's work per frame. [`StateJson`] gives the
//! same bytes without the map: each entry is serialised by serde_json into
//! one buffer as it comes, and [`StateJson::finish`] writes the entries in
//! key order, the later of two equal keys winning as a map's `insert` and
//! `extend` would. The keys still come from the readings' serde attributes,
//! so there is one definition of them.

use std::fmt::Display;
use std::ops::Range;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// Serializer methods for the scalars a serializer does not take: each
/// refuses with `StateJsonError::$err(what)`.
macro_rules! refuse {
    ($err:ident; $($method:ident($ty:ty) $what:literal;)*) => {
        $(fn $method(self, _v: $ty) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err($what))
        })*
    };
}

/// The remaining serializer methods (options, units, enums, sequences),
/// all refused.
macro_rules! refuse_rest {
    ($err:ident) => {
        fn serialize_none(self) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err("null"))
        }

        fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err("an option"))
        }

        fn serialize_unit(self) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err("null"))
        }

        fn serialize_unit_struct(self, _name: &'static str) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err("a unit struct"))
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _v: &T,
        ) -> Result<(), StateJsonError> {
            Err(StateJsonError::$err("an enum variant"))
        }

        fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, StateJsonError> {
            Err(StateJsonError::$err("a sequence"))
        }

        fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, StateJsonError> {
            Err(StateJsonError::$err("a tuple"))
        }

        fn serialize_tuple_struct(
            self,
            _name: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleStruct, StateJsonError> {
            Err(StateJsonError::$err("a tuple"))
        }

        fn serialize_tuple_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleVariant, StateJsonError> {
            Err(StateJsonError::$err("an enum variant"))
        }

        fn serialize_struct_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStructVariant, StateJsonError> {
            Err(StateJsonError::$err("an enum variant"))
        }
    };
}

/// Why a value could not be written as a state object's entries. None of
/// these happen with the readings of this crate; they are there so that a
/// type that does not fit is refused in words instead of written wrong.
#[derive(Debug, thiserror::Error)]
pub enum StateJsonError {
    #[error("a state object is made of a struct's or a map's entries, not of {0}")]
    NotAnObject(&'static str),
    #[error("a state object's keys are strings, not {0}")]
    KeyNotString(&'static str),
    #[error("a map gave a value before its key")]
    ValueWithoutKey,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("a state object of 4 GiB or more")]
    TooLarge,
    #[error("not valid UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
    #[error("{0}")]
    Custom(String),
}

impl ser::Error for StateJsonError {
    fn custom<T: Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

/// One entry: where its key and its value are in the buffers (as `u32`,
/// which keeps an entry at 24 bytes for the sort to move; a state object
/// is a few kilobytes).
#[derive(Debug, Clone)]
struct Entry {
    /// The key's first eight bytes, big-endian, zero-padded: where two
    /// prefixes differ the keys compare the same way, so most comparisons
    /// of the sort are one integer comparison (a pack's seventy keys share
    /// few eight-byte prefixes).
    prefix: u64,
    key: (u32, u32),
    value: (u32, u32),
}

fn span(r: Range<usize>) -> Result<(u32, u32), StateJsonError> {
    match (u32::try_from(r.start), u32::try_from(r.end)) {
        (Ok(start), Ok(end)) => Ok((start, end)),
        _ => Err(StateJsonError::TooLarge),
    }
}

fn range((start, end): (u32, u32)) -> Range<usize> {
    start as usize..end as usize
}

/// The key has nothing JSON escapes (a control character, `"`, `\`:
/// serde_json's escape table has exactly these): it is written as it is,
/// without serde_json's escaping pass.
fn plain(key: &str) -> bool {
    key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// The entries of one state object, collected in the order they are given
/// and written sorted by [`StateJson::finish`].
#[derive(Debug, Default)]
pub struct StateJson {
    /// The keys as given (unescaped: the order is the order of the
    /// strings, as in the map), one after another.
    keys: String,
    /// The values as JSON text, one after another.
    values: Vec<u8>,
    entries: Vec<Entry>,
    /// The key a map has given, waiting for its value.
    pending: Option<Range<usize>>,
}

impl StateJson {
    /// A writer with room for about `entries` entries, so that a pack's
    /// seventy do not grow the buffers several times.
    pub fn with_capacity(entries: usize) -> Self {
        Self {
            keys: String::with_capacity(entries * 16),
            values: Vec::with_capacity(entries * 8),
            entries: Vec::with_capacity(entries),
            pending: None,
        }
    }

    /// Adds the fields of a struct (as its `Serialize` names them, with
    /// `#[serde(flatten)]` maps and skipped fields as serde makes them) or
    /// the entries of a map.
    pub fn fields<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StateJsonError> {
        v.serialize(&mut *self)
    }

    /// Adds one entry; over an earlier entry of the same key, as a map's
    /// `insert`.
    pub fn entry<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), StateJsonError> {
        let start = self.keys.len();
        self.keys.push_str(key);
        self.value(start..self.keys.len(), v)
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<Range<usize>, StateJsonError> {
        let start = self.keys.len();
        key.serialize(KeySink(&mut self.keys))?;
        Ok(start..self.keys.len())
    }

    fn value<T: Serialize + ?Sized>(
        &mut self,
        key: Range<usize>,
        v: &T,
    ) -> Result<(), StateJsonError> {
        let start = self.values.len();
        v.serialize(&mut serde_json::Serializer::new(&mut self.values))?;
        let mut prefix = [0u8; 8];
        for (p, k) in prefix
            .iter_mut()
            .zip(self.keys.get(key.clone()).unwrap_or_default().bytes())
        {
            *p = k;
        }
        self.entries.push(Entry {
            prefix: u64::from_be_bytes(prefix),
            key: span(key)?,
            value: span(start..self.values.len())?,
        });
        Ok(())
    }

    /// The object as JSON text, keys in byte order, one entry per key
    /// (the last one given).
    pub fn finish(mut self) -> Result<String, StateJsonError> {
        let keys = &self.keys;
        let key = |e: &Entry| keys.get(range(e.key)).unwrap_or_default();
        // Every value is at least one byte and values are appended, so a
        // later entry's value starts later: the last criterion keeps equal
        // keys in the order given, and the sort need not be stable (no
        // scratch buffer).
        self.entries.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| key(a).cmp(key(b)))
                .then(a.value.0.cmp(&b.value.0))
        });
        let mut out =
            Vec::with_capacity(self.values.len() + self.keys.len() + 4 * self.entries.len() + 2);
        out.push(b'{');
        let mut entries = self.entries.iter().peekable();
        while let Some(e) = entries.next() {
            if entries
                .peek()
                .is_some_and(|next| next.prefix == e.prefix && key(next) == key(e))
            {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            let k = key(e);
            if plain(k) {
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.push(b'"');
            } else {
                k.serialize(&mut serde_json::Serializer::new(&mut out))?;
            }
            out.push(b':');
            out.extend_from_slice(self.values.get(range(e.value)).unwrap_or_default());
        }
        out.push(b'}');
        Ok(String::from_utf8(out)?)
    }
}

/// The serializer a struct or a map is handed: it takes the entries.
impl ser::Serializer for &mut StateJson {
    type Ok = ();
    type Error = StateJsonError;
    type SerializeSeq = Impossible<(), StateJsonError>;
    type SerializeTuple = Impossible<(), StateJsonError>;
    type SerializeTupleStruct = Impossible<(), StateJsonError>;
    type SerializeTupleVariant = Impossible<(), StateJsonError>;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), StateJsonError>;

    fn serialize_map(self, _len: Option<usize>) -> Result<Self, StateJsonError> {
        Ok(self)
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, StateJsonError> {
        Ok(self)
    }

    /// A newtype around a struct is that struct, as serde_json has it.
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), StateJsonError> {
        value.serialize(self)
    }

    refuse! {
        NotAnObject;
        serialize_bool(bool) "a bool";
        serialize_i8(i8) "a number";
        serialize_i16(i16) "a number";
        serialize_i32(i32) "a number";
        serialize_i64(i64) "a number";
        serialize_u8(u8) "a number";
        serialize_u16(u16) "a number";
        serialize_u32(u32) "a number";
        serialize_u64(u64) "a number";
        serialize_f32(f32) "a number";
        serialize_f64(f64) "a number";
        serialize_char(char) "a char";
        serialize_str(&str) "a string";
        serialize_bytes(&[u8]) "bytes";
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<(), StateJsonError> {
        Err(StateJsonError::NotAnObject("an enum variant"))
    }

    refuse_rest!(NotAnObject);
}

impl ser::SerializeMap for &mut StateJson {
    type Ok = ();
    type Error = StateJsonError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), StateJsonError> {
        self.pending = Some(self.key(key)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StateJsonError> {
        let key = self.pending.take().ok_or(StateJsonError::ValueWithoutKey)?;
        self.value(key, v)
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        v: &V,
    ) -> Result<(), StateJsonError> {
        let key = self.key(key)?;
        self.value(key, v)
    }

    fn end(self) -> Result<(), StateJsonError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut StateJson {
    type Ok = ();
    type Error = StateJsonError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), StateJsonError> {
        self.entry(key, v)
    }

    fn end(self) -> Result<(), StateJsonError> {
        Ok(())
    }
}

/// Takes a map's key, which must be a string: the state object's keys
/// are, and a `serde_json::Map` would turn other keys into strings by
/// rules this writer does not repeat.
struct KeySink<'a>(&'a mut String);

impl ser::Serializer for KeySink<'_> {
    type Ok = ();
    type Error = StateJsonError;
    type SerializeSeq = Impossible<(), StateJsonError>;
    type SerializeTuple = Impossible<(), StateJsonError>;
    type SerializeTupleStruct = Impossible<(), StateJsonError>;
    type SerializeTupleVariant = Impossible<(), StateJsonError>;
    type SerializeMap = Impossible<(), StateJsonError>;
    type SerializeStruct = Impossible<(), StateJsonError>;
    type SerializeStructVariant = Impossible<(), StateJsonError>;

    fn serialize_str(self, v: &str) -> Result<(), StateJsonError> {
        self.0.push_str(v);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), StateJsonError> {
        value.serialize(self)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, StateJsonError> {
        Err(StateJsonError::KeyNotString("a map"))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, StateJsonError> {
        Err(StateJsonError::KeyNotString("a struct"))
    }

    refuse! {
        KeyNotString;
        serialize_bool(bool) "a bool";
        serialize_i8(i8) "a number";
        serialize_i16(i16) "a number";
        serialize_i32(i32) "a number";
        serialize_i64(i64) "a number";
        serialize_u8(u8) "a number";
        serialize_u16(u16) "a number";
        serialize_u32(u32) "a number";
        serialize_u64(u64) "a number";
        serialize_f32(f32) "a number";
        serialize_f64(f64) "a number";
        serialize_char(char) "a char";
        serialize_bytes(&[u8]) "bytes";
    }

    /// An enum key is its variant's name, as serde_json's map keys have it.
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), StateJsonError> {
        self.0.push_str(variant);
        Ok(())
    }

    refuse_rest!(KeyNotString);
}

#[cfg(test)]
#[path = "state_json_tests.rs"]
mod tests;
