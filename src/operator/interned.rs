//! Values held once however many namespaces hold them. At 10,000 namespaces the same few PSA
//! label sets (one per profile and level, give or take a stricter value kept) were held about
//! eight times per namespace — the plan's desired and declared sets, the ledger's applied and
//! declared sets and what was there before, the decoded record — each a `BTreeMap` of six
//! `String` pairs (~1 KB): tens of MB of copies of a handful of values. Interned, each holder
//! keeps an `Arc` (8 bytes) to the one copy.
//!
//! Pure: no I/O; the table is process-wide so that a plan, the ledger and a decoded record meet
//! the same copy without passing an interner around.

use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

use super::desired::{Labels, Prior};
use super::index;

/// The Pod index's content-addressed table, shared between threads. Entries nobody else holds
/// any more are swept when the table has doubled since the last sweep, so values that came and
/// went (a hand-edited label value, a profile renamed) do not accumulate.
pub struct Interner<T> {
    table: Mutex<Table<T>>,
}

struct Table<T> {
    values: index::Interner<T>,
    sweep_at: usize,
}

/// Sweeps never run below this many entries: a few dozen label sets are the common case.
const MIN_SWEEP: usize = 64;

impl<T: Hash + Eq> Interner<T> {
    pub fn new() -> Self {
        Interner {
            table: Mutex::new(Table {
                values: index::Interner::default(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// The shared copy of `value`.
    pub fn intern(&self, value: T) -> Arc<T> {
        // A panic while holding the lock leaves the table consistent (inserts are atomic).
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.values.len() >= table.sweep_at {
            table.values.sweep();
            table.sweep_at = (2 * table.values.len()).max(MIN_SWEEP);
        }
        table.values.intern(value)
    }

    /// Entries in the table (held elsewhere or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values
            .len()
    }
}

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Interner::new()
    }
}

static LABEL_SETS: LazyLock<Interner<Labels>> = LazyLock::new(Interner::new);
static PRIORS: LazyLock<Interner<Prior>> = LazyLock::new(Interner::new);
static NAME_LISTS: LazyLock<Interner<Vec<String>>> = LazyLock::new(Interner::new);

/// The shared copy of a label set.
pub fn labels(value: Labels) -> Arc<Labels> {
    LABEL_SETS.intern(value)
}

/// The shared copy of a record's values-before-takeover.
pub fn prior(value: Prior) -> Arc<Prior> {
    PRIORS.intern(value)
}

/// The shared copy of a list of names (the profiles that match or govern a namespace).
pub fn names(value: Vec<String>) -> Arc<Vec<String>> {
    NAME_LISTS.intern(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn equal_values_share_one_copy() {
        let interner = Interner::new();
        let a = interner.intern(set(&[("enforce", "baseline")]));
        let b = interner.intern(set(&[("enforce", "baseline")]));
        let c = interner.intern(set(&[("enforce", "restricted")]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, set(&[("enforce", "restricted")]));
    }

    #[test]
    fn values_nobody_holds_are_swept_once_the_table_doubles() {
        let interner = Interner::new();
        let kept = interner.intern(set(&[("kept", "1")]));
        for i in 0..MIN_SWEEP * 4 {
            // Dropped at once: only the table holds them.
            interner.intern(set(&[("value", &i.to_string())]));
        }
        assert!(
            interner.len() <= 2 * MIN_SWEEP,
            "{} entries",
            interner.len()
        );
        let again = interner.intern(set(&[("kept", "1")]));
        assert!(Arc::ptr_eq(&kept, &again), "a held value survives sweeps");
    }
}
