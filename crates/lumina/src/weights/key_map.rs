//! Checkpoint layouts other than the model's own: where a parameter the model asks for by its
//! diffusers name is stored — under another name, under a prefix, or as some rows of a fused
//! tensor (upstream Lumina-Image-2.0 keeps q, k and v in one `attention.qkv`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Where one parameter is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    /// For a parameter fused with others along its first axis: its rows, and the first-axis
    /// length the fused tensor must have.
    pub rows: Option<FusedRows>,
}

/// The rows of a fused tensor that hold one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusedRows {
    pub range: Range<usize>,
    pub total: usize,
}

impl Stored {
    pub fn whole(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            rows: None,
        }
    }
}

impl Stored {
    /// The shape the stored tensor must have for a parameter of `shape`: the whole fused
    /// tensor's first axis when this is a row range of one.
    pub fn stored_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut stored = shape.to_vec();
        if let (Some(rows), Some(first)) = (&self.rows, stored.first_mut()) {
            *first = rows.total;
        }
        stored
    }
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rows {
            None => write!(f, "{}", self.key),
            Some(r) => write!(
                f,
                "{} (rows {}..{} of {})",
                self.key, r.range.start, r.range.end, r.total
            ),
        }
    }
}

/// Maps the key a model asks for to where a checkpoint stores it.
pub trait KeyMap: Send + Sync {
    fn locate(&self, key: &str) -> Stored;
}

/// A plain renaming, one stored tensor per parameter.
#[derive(Clone, Copy)]
pub struct Renamed(pub fn(&str) -> String);

impl KeyMap for Renamed {
    fn locate(&self, key: &str) -> Stored {
        Stored::whole((self.0)(key))
    }
}

/// Another layout under a key prefix (ComfyUI's `model.diffusion_model.`).
pub struct Prefixed {
    pub prefix: String,
    pub inner: Option<Arc<dyn KeyMap>>,
}

impl KeyMap for Prefixed {
    fn locate(&self, key: &str) -> Stored {
        let stored = match &self.inner {
            Some(inner) => inner.locate(key),
            None => Stored::whole(key),
        };
        Stored {
            key: format!("{}{}", self.prefix, stored.key),
            ..stored
        }
    }
}

/// `inner` under `prefix`, or `inner` itself when the prefix is empty.
pub fn prefixed(prefix: &str, inner: Option<Arc<dyn KeyMap>>) -> Option<Arc<dyn KeyMap>> {
    if prefix.is_empty() {
        return inner;
    }
    Some(Arc::new(Prefixed {
        prefix: prefix.to_string(),
        inner,
    }))
}

/// Renames by the first entry of `table` that matches: an entry ending in `.` renames a key
/// prefix, any other the whole key.
pub fn rename(key: &str, table: &[(&str, &str)]) -> Option<String> {
    table.iter().find_map(|(from, to)| {
        if key == *from {
            Some((*to).to_string())
        } else if from.ends_with('.') {
            key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
        } else {
            None
        }
    })
}
