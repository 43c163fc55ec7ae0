//! Per-provider rate limits over a rolling 60 s: requests per minute and tokens
//! per minute. A provider at its ceiling is skipped by the router; when every
//! eligible provider is, the caller gets 429 `rate_limit`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::breaker::Clock;

/// A provider's ceilings; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl RateLimits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u32,
    tokens: u64,
}

/// Usage over the last minute, in per-second buckets.
pub struct RateLimiter {
    limits: RateLimits,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    buckets: Mutex<[Bucket; 60]>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish()
    }
}

/// What is left of each ceiling this minute (`None`: no ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<u32>,
    pub tokens: Option<u64>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits, clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        RateLimiter {
            limits,
            clock,
            epoch,
            buckets: Mutex::new([Bucket::default(); 60]),
        }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    fn second(&self) -> u64 {
        self.clock
            .now()
            .saturating_duration_since(self.epoch)
            .as_secs()
    }

    fn used(buckets: &[Bucket; 60], second: u64) -> (u32, u64) {
        buckets
            .iter()
            .filter(|b| b.second + 60 > second && b.second <= second)
            .fold((0, 0), |(r, t), b| (r + b.requests, t + b.tokens))
    }

    fn bucket(buckets: &mut [Bucket; 60], second: u64) -> &mut Bucket {
        let b = &mut buckets[(second % 60) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                requests: 0,
                tokens: 0,
            };
        }
        b
    }

    /// Takes one request from this minute's allowance, if there is room.
    pub fn try_acquire(&self) -> bool {
        let second = self.second();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, tokens) = Self::used(&buckets, second);
        let room = self
            .limits
            .requests_per_minute
            .is_none_or(|max| requests < max)
            && self.limits.tokens_per_minute.is_none_or(|max| tokens < max);
        if room {
            Self::bucket(&mut buckets, second).requests += 1;
        }
        room
    }

    /// Counts the tokens a call used.
    pub fn add_tokens(&self, tokens: u64) {
        if tokens == 0 || self.limits.tokens_per_minute.is_none() {
            return;
        }
        let second = self.second();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        Self::bucket(&mut buckets, second).tokens += tokens;
    }

    /// Seconds until the oldest second of use in the window leaves it (0
    /// when the window is empty).
    pub fn retry_after_secs(&self) -> u32 {
        let second = self.second();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .iter()
            .filter(|b| {
                b.second + 60 > second && b.second <= second && (b.requests > 0 || b.tokens > 0)
            })
            .map(|b| b.second + 60 - second)
            .min()
            .map_or(0, |s| u32::try_from(s).unwrap_or(60))
    }

    pub fn headroom(&self) -> Headroom {
        let second = self.second();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, tokens) = Self::used(&buckets, second);
        Headroom {
            requests: self
                .limits
                .requests_per_minute
                .map(|m| m.saturating_sub(requests)),
            tokens: self
                .limits
                .tokens_per_minute
                .map(|m| m.saturating_sub(tokens)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock;
    use std::time::Duration;

    #[test]
    fn requests_per_minute_roll_over_sixty_seconds() {
        let clock = Arc::new(ManualClock::default());
        let l = RateLimiter::new(
            RateLimits {
                requests_per_minute: Some(3),
                tokens_per_minute: None,
            },
            clock.clone(),
        );
        assert!(l.try_acquire());
        clock.advance(Duration::from_secs(30));
        assert!(l.try_acquire());
        assert!(l.try_acquire());
        assert!(!l.try_acquire(), "at the ceiling");
        assert_eq!(l.headroom().requests, Some(0));
        clock.advance(Duration::from_secs(30));
        assert!(l.try_acquire(), "the first request left the window");
        assert!(!l.try_acquire());
    }

    #[test]
    fn tokens_per_minute_count_what_calls_used() {
        let clock = Arc::new(ManualClock::default());
        let l = RateLimiter::new(
            RateLimits {
                requests_per_minute: None,
                tokens_per_minute: Some(100),
            },
            clock.clone(),
        );
        assert!(l.try_acquire());
        l.add_tokens(60);
        assert!(l.try_acquire());
        l.add_tokens(60);
        assert!(!l.try_acquire(), "120 of 100 tokens used");
        assert_eq!(
            l.headroom(),
            Headroom {
                requests: None,
                tokens: Some(0)
            }
        );
        clock.advance(Duration::from_secs(60));
        assert!(l.try_acquire());
    }
}
