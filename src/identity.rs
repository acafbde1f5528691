//! Run ids name a run across restarts and become part of store keys, so they are
//! validated before anything touches the store.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(String);

impl RunId {
    pub fn parse(s: &str) -> Result<RunId, String> {
        if s.is_empty() {
            return Err("the run id is empty".into());
        }
        if s.len() > 200 {
            return Err(format!("the run id is {} bytes long; keep it under 200", s.len()));
        }
        if s == "." || s == ".." || s.contains("..") {
            return Err(format!("run id {s:?} contains '..'; use letters, digits, '.', '_', '-', '#'"));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '#' | '+' | '@' | '='))) {
            return Err(format!(
                "run id {s:?} contains {c:?}; a run id may hold only letters, digits and . _ - # + @ = (no '/', spaces or control characters)"
            ));
        }
        if s.starts_with('.') || s.starts_with('-') {
            return Err(format!("run id {s:?} may not start with '.' or '-'"));
        }
        Ok(RunId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turn an HTCondor GlobalJobId (`ap1.chtc.wisc.edu#1234.0#1700000000`) into a run id
/// that is the same for every start of the job. The trailing submit time is kept: it
/// tells apart two clusters with the same number after a schedd's queue is reset.
pub fn from_global_job_id(gjid: &str) -> Option<RunId> {
    let cleaned: String =
        gjid.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '#') { c } else { '_' }).collect();
    RunId::parse(&cleaned.replace("..", "_")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["run1", "resnet50-seed3", "ap1.chtc.wisc.edu#1234.0#1700000000", "a_b=c+d@e"] {
            assert!(RunId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_ids_that_could_escape_a_key() {
        for bad in ["", "a/b", "..", "a..b", "../x", "a\nb", "a b", ".hidden", "-x", "a\u{0}b", &"x".repeat(201)] {
            assert!(RunId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn global_job_id_becomes_a_valid_stable_id() {
        let id = from_global_job_id("ap1.chtc.wisc.edu#1234.0#1700000000").unwrap();
        assert_eq!(id.as_str(), "ap1.chtc.wisc.edu#1234.0#1700000000");
    }
}
