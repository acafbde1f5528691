//! Bounded retries with exponential backoff that honour `Retry-After`.

use std::time::{Duration, Instant};

use super::Error;
use crate::error::Classify;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub tries: u32,
    pub budget: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tries: 5,
            budget: Duration::from_secs(20),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

pub(super) struct Retry {
    start: Instant,
    tries: u32,
    policy: Policy,
    what: String,
}

impl Retry {
    pub(super) fn new(policy: Policy, what: String) -> Retry {
        Retry { start: Instant::now(), tries: 0, policy, what }
    }

    /// After a failed try: `Ok` to try again (having waited), `Err` to give up.
    pub(super) async fn again(&mut self, e: Error) -> Result<(), Error> {
        self.tries += 1;
        if !e.is_transient() {
            return Err(e);
        }
        let elapsed = self.start.elapsed();
        if self.tries >= self.policy.tries || elapsed >= self.policy.budget {
            return Err(Error::GaveUp { tries: self.tries, secs: elapsed.as_secs_f64(), last: Box::new(e) });
        }
        let backoff = self.policy.first_backoff.saturating_mul(1 << (self.tries - 1).min(16)).min(self.policy.max_backoff);
        let wait = e.retry_after().map(|d| d.min(self.policy.max_retry_after)).unwrap_or(backoff);
        let wait = wait.min(self.policy.budget.saturating_sub(elapsed));
        tracing::info!(
            "pelican: {}: {e}; trying again in {:.1} s (try {} of {})",
            self.what,
            wait.as_secs_f64(),
            self.tries + 1,
            self.policy.tries
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_are_bounded_and_honour_retry_after() {
        let policy = Policy {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(80),
            ..Policy::default()
        };
        let mut r = Retry::new(policy, "x".into());
        let t0 = Instant::now();
        let e = |ra| Error::Http { what: "x".into(), status: 429, detail: String::new(), retry_after: ra };
        r.again(e(Some(Duration::from_secs(2)))).await.unwrap();
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(80) && waited < Duration::from_secs(2), "Retry-After capped: {waited:?}");
        r.again(e(None)).await.unwrap();
        r.again(e(None)).await.unwrap();
        r.again(e(None)).await.unwrap();
        let last = r.again(e(None)).await.unwrap_err();
        assert!(last.to_string().contains("gave up after 5 tries"), "{last}");
        let mut r = Retry::new(policy, "x".into());
        assert!(matches!(r.again(Error::Denied("no".into())).await, Err(Error::Denied(_))));
    }
}
