//! [`Entries`]: what a read step hands on — entries in file order, kept in the
//! runs they were parsed in, so that nothing copies them between the parser
//! and the one place that builds the caller's `Vec` (or the stream that
//! yields them one by one).

use chrono::{DateTime, Utc};

use crate::log::LogEntry;

/// Entries in file order, as the runs they were parsed in.
#[derive(Debug, Default)]
pub struct Entries {
    runs: Vec<Vec<LogEntry>>,
    len: usize,
    /// Whether every entry so far is at or after the one before it.
    in_order: bool,
    last: Option<DateTime<Utc>>,
}

impl Entries {
    /// No entries (in time order, trivially).
    pub fn new() -> Self {
        Self {
            in_order: true,
            ..Self::default()
        }
    }

    /// Appends a run parsed after everything already here; `run_in_order`
    /// says whether the run itself is in time order.
    pub fn push_run(&mut self, run: Vec<LogEntry>, run_in_order: bool) {
        if self.count(&run, run_in_order) {
            self.runs.push(run);
        }
    }

    /// Appends all of `other` into one contiguous run. Each of its runs is
    /// freed as soon as it is copied, so the next batch's parser reuses that
    /// memory instead of touching fresh pages.
    pub fn append_contiguous(&mut self, other: Entries) {
        for mut run in other.runs {
            if !self.count(&run, other.in_order) {
                continue;
            }
            match self.runs.last_mut() {
                Some(all) => all.append(&mut run),
                None => self.runs.push(run),
            }
        }
    }

    /// Counts a non-empty run about to be appended, and its order against
    /// what is here; `false` for an empty run.
    fn count(&mut self, run: &[LogEntry], run_in_order: bool) -> bool {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return false;
        };
        self.in_order &= run_in_order && self.last.is_none_or(|before| before <= first.timestamp);
        self.last = Some(last.timestamp);
        self.len += run.len();
        true
    }

    /// Makes room for `additional` more entries in the last run, where
    /// [`append_contiguous`](Self::append_contiguous) puts them.
    pub fn reserve(&mut self, additional: usize) {
        match self.runs.last_mut() {
            Some(run) => run.reserve(additional),
            None => self.runs.push(Vec::with_capacity(additional)),
        }
        if let Some(run) = self.runs.last_mut() {
            crate::host::memory::prefer_huge_pages(run);
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the entries are in time order (ties in file order).
    pub fn in_order(&self) -> bool {
        self.in_order
    }

    /// The last entry.
    pub fn last(&self) -> Option<&LogEntry> {
        self.runs.last().and_then(|run| run.last())
    }

    /// The runs, for changing entries in place.
    pub fn runs_mut(&mut self) -> &mut Vec<Vec<LogEntry>> {
        &mut self.runs
    }

    /// Every entry, in order, by reference.
    pub fn iter(&self) -> impl Iterator<Item = &LogEntry> {
        self.runs.iter().flatten()
    }

    /// Keeps the first `keep` entries.
    pub fn truncate(&mut self, keep: usize) {
        let mut left = keep;
        self.runs.retain_mut(|run| {
            let take = run.len().min(left);
            run.truncate(take);
            left -= take;
            take > 0
        });
        self.len = keep.min(self.len);
        self.last = self
            .runs
            .last()
            .and_then(|run| run.last())
            .map(|e| e.timestamp);
    }

    /// One `Vec` of every entry in order: the runs' one copy (none for a
    /// single run).
    pub fn into_vec(mut self) -> Vec<LogEntry> {
        if self.runs.len() == 1 {
            return self.runs.pop().unwrap_or_default();
        }
        let mut all = Vec::with_capacity(self.len);
        for mut run in self.runs {
            all.append(&mut run);
        }
        all
    }
}

impl IntoIterator for Entries {
    type Item = LogEntry;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<LogEntry>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.runs.into_iter().flatten()
    }
}
