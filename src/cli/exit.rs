//! From an error chain to baton's exit status, as ripgrep's `main` does: the first
//! cause that knows its kind decides; anything else is a generic failure (1).

use baton::data::DataError;
use baton::error::{Classify, Failure};
use baton::restore::RestoreError;
use baton::store::StoreError;

pub fn code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        let kind = if let Some(f) = cause.downcast_ref::<Failure>() {
            f.kind()
        } else if let Some(r) = cause.downcast_ref::<RestoreError>() {
            r.kind()
        } else if let Some(s) = cause.downcast_ref::<StoreError>() {
            s.kind()
        } else if let Some(d) = cause.downcast_ref::<DataError>() {
            d.kind()
        } else {
            continue;
        };
        return kind.exit_code() as i32;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton::error::ErrorKind;

    #[test]
    fn the_first_classified_cause_decides() {
        let damaged = anyhow::Error::from(RestoreError::File { seq: 3, path: "w.pt".into(), detail: "hash".into() });
        assert_eq!(code_of(&damaged.context("restoring")), 71);
        let outage = StoreError::Unreachable { store: "s3://b".into(), detail: "refused".into() };
        assert_eq!(code_of(&anyhow::Error::from(RestoreError::Unavailable { seq: 3, source: outage })), 70);
        let conflict = StoreError::Conflict { key: "k".into(), detail: "d".into() };
        assert_eq!(code_of(&anyhow::Error::from(conflict)), 73);
        assert_eq!(code_of(&anyhow::Error::from(Failure::new(ErrorKind::Usage, "bad flag"))), 2);
        assert_eq!(code_of(&anyhow::anyhow!("something else")), 1);
    }
}
