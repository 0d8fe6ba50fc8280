//! What a conversion could not do, for the user and for the exit status.

use std::fmt::Write as _;

/// One statement left for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Todo {
    /// Line in the Python testScript (1-based).
    pub line: usize,
    /// Why it was not converted.
    pub reason: String,
    /// The statement's first line.
    pub original: String,
}

/// The outcome of converting one test.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The test's name.
    pub name: String,
    /// Where the files went (empty before writing).
    pub out_dir: String,
    /// Statements not converted (lines relative to the source file).
    pub todos: Vec<Todo>,
    /// Host-side Python the script uses (never converted).
    pub host_side: Vec<String>,
    /// Node names taken from the script because the Nix file had none.
    pub guessed_nodes: Vec<String>,
    /// Nix interpolations kept verbatim.
    pub interpolations: usize,
    /// The whole script could not be read (not a string, or no Python).
    pub fatal: Option<String>,
    /// Where the script came from, when the reader should know.
    pub notes: Vec<String>,
}

impl Summary {
    /// Whether nothing is left to do by hand.
    pub fn complete(&self) -> bool {
        self.todos.is_empty() && self.fatal.is_none()
    }

    /// The human summary.
    pub fn render(&self, source: &str) -> String {
        let mut s = String::new();
        let state = if self.complete() {
            "converted completely".to_owned()
        } else if let Some(f) = &self.fatal {
            format!("NOT converted: {f}")
        } else {
            format!("{} statement(s) need a hand", self.todos.len())
        };
        let _ = writeln!(s, "{} → {}: {state}", self.name, self.out_dir);
        for t in &self.todos {
            let _ = writeln!(
                s,
                "  {source}:{}: {}\n      {}",
                t.line, t.reason, t.original
            );
        }
        if !self.host_side.is_empty() {
            let _ = writeln!(
                s,
                "  host-side Python (runs on the driver's host; rewrite as guest commands): {}",
                self.host_side.join(", ")
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "  {n}");
        }
        if !self.guessed_nodes.is_empty() {
            let _ = writeln!(
                s,
                "  node names guessed from the script (the Nix file computes `nodes`): {}",
                self.guessed_nodes.join(", ")
            );
        }
        if self.interpolations > 0 {
            let _ = writeln!(
                s,
                "  {} Nix interpolation(s) kept verbatim as `${{…}}` in strings: run the test from Nix with test-script.nix, or replace them by hand",
                self.interpolations
            );
        }
        s
    }
}
