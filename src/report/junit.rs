//! JUnit XML: one test case per subtest (nested names joined with ` / `), plus
//! one for failures outside any subtest.

use std::collections::HashMap;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::events::{Event, EventKind};

/// Collects subtests into a JUnit report.
pub struct JunitAggregator {
    name: String,
    cases: Vec<TestCase>,
    /// Open subtests: id → full name.
    open: HashMap<u64, String>,
    /// Parent of every open section, to find enclosing subtests.
    parents: HashMap<u64, Option<u64>>,
}

impl JunitAggregator {
    /// An empty report for the test `name`.
    pub fn new(name: &str) -> Self {
        JunitAggregator {
            name: name.to_owned(),
            cases: Vec::new(),
            open: HashMap::new(),
            parents: HashMap::new(),
        }
    }

    fn enclosing_subtest(&self, mut parent: Option<u64>) -> Option<&String> {
        while let Some(p) = parent {
            if let Some(name) = self.open.get(&p) {
                return Some(name);
            }
            parent = self.parents.get(&p).copied().flatten();
        }
        None
    }

    /// Takes one event into account.
    pub fn handle(&mut self, event: &Event) {
        match &event.kind {
            EventKind::SectionStarted {
                id,
                parent,
                name,
                subtest,
                ..
            } => {
                self.parents.insert(*id, *parent);
                if *subtest {
                    let full = match self.enclosing_subtest(*parent) {
                        Some(outer) => format!("{outer} / {name}"),
                        None => name.clone(),
                    };
                    self.open.insert(*id, full);
                }
            }
            EventKind::SectionFinished {
                id,
                subtest,
                duration,
                error,
                ..
            } => {
                self.parents.remove(id);
                if *subtest {
                    let name = self.open.remove(id).unwrap_or_default();
                    let status = match error {
                        None => TestCaseStatus::success(),
                        Some(e) => {
                            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                            s.set_message(e.clone());
                            s
                        }
                    };
                    let mut case = TestCase::new(name, status);
                    case.set_time(std::time::Duration::from_secs_f64(duration.max(0.0)));
                    self.cases.push(case);
                }
            }
            EventKind::TestFinished {
                outcome,
                error,
                cause,
                duration,
            } => {
                // The whole script is a case too, so a failure outside any
                // subtest (or a test without subtests) is visible.
                let status = match (outcome.as_str(), error) {
                    // A REPL session is not a test case.
                    ("closed", _) => return,
                    ("passed", _) => TestCaseStatus::success(),
                    (_, e) => {
                        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                        if let Some(e) = e {
                            s.set_message(e.clone());
                        }
                        if let Some(c) = cause {
                            s.set_type(c.name());
                        }
                        s
                    }
                };
                let mut case = TestCase::new("test script", status);
                case.set_time(std::time::Duration::from_secs_f64(duration.max(0.0)));
                self.cases.push(case);
            }
            _ => {}
        }
    }

    /// The XML.
    pub fn to_xml(&self) -> Result<String, quick_junit::SerializeError> {
        let mut report = Report::new("attest");
        let mut suite = TestSuite::new(self.name.clone());
        suite.add_test_cases(self.cases.iter().cloned());
        report.add_test_suite(suite);
        report.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::events::at_start as ev;

    #[test]
    fn nested_subtests_become_cases_with_failures() {
        let mut j = JunitAggregator::new("t");
        let start = |id, parent, name: &str| {
            ev(EventKind::SectionStarted {
                id,
                parent,
                name: name.into(),
                machine: None,
                subtest: true,
                depth: 0,
            })
        };
        let end = |id, error: Option<&str>| {
            ev(EventKind::SectionFinished {
                id,
                name: String::new(),
                machine: None,
                subtest: true,
                depth: 0,
                duration: 1.0,
                error: error.map(str::to_owned),
            })
        };
        for e in [
            start(1, None, "outer"),
            start(2, Some(1), "inner"),
            end(2, Some("boom")),
            end(1, None),
            ev(EventKind::TestFinished {
                outcome: "failed".into(),
                error: Some("boom".into()),
                cause: Some(crate::report::FailureCause::CommandFailed),
                duration: 2.0,
            }),
        ] {
            j.handle(&e);
        }
        let xml = j.to_xml().unwrap();
        assert!(xml.contains(r#"name="outer / inner""#), "{xml}");
        assert!(xml.contains(r#"<failure message="boom""#), "{xml}");
        assert!(xml.contains(r#"name="outer""#), "{xml}");
        assert!(xml.contains(r#"type="command-failed""#), "{xml}");
        assert!(xml.contains(r#"tests="3""#), "{xml}");
    }
}
