//! Client frames, rate-limited per connection: a token bucket (default 50 a second, bursts
//! of 100). A frame over the limit is dropped and answered `rate_limited` (once a second at
//! most, so that a flood is not answered by a flood); a client that keeps sending at more
//! than ten times the limit for ten seconds is closed with 1008 `rate limit`.

use std::time::{Duration, Instant};

use herald::limits::TokenBucket;

/// Frames a second a client may send, unless configured otherwise.
pub const DEFAULT_FRAMES_PER_SECOND: u32 = 50;
/// Frames a client may send at once after resting, unless configured otherwise.
pub const DEFAULT_FRAME_BURST: u32 = 100;
/// How many times the rate counts as abuse.
const ABUSE_FACTOR: u32 = 10;
/// How long abuse may go on before the connection is closed.
pub const DEFAULT_ABUSE_PERIOD: Duration = Duration::from_secs(10);
/// The window over which abuse is measured.
const WINDOW: Duration = Duration::from_secs(1);

/// How fast a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRate {
    /// Frames a second.
    pub per_second: u32,
    /// Frames at once after resting.
    pub burst: u32,
    /// How long sending at ten times the rate may go on before the connection is closed.
    pub abuse_period: Duration,
}

impl Default for FrameRate {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_FRAMES_PER_SECOND,
            burst: DEFAULT_FRAME_BURST,
            abuse_period: DEFAULT_ABUSE_PERIOD,
        }
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Pass,
    /// Drop it, and answer `rate_limited`.
    Refuse,
    /// Drop it silently: this window was already answered.
    Drop,
    /// Close the connection with 1008.
    Close,
}

/// One connection's limiter.
pub(crate) struct Limiter {
    rate: FrameRate,
    bucket: TokenBucket,
    /// Start of the current window, and the frames seen in it.
    window: (Instant, u32),
    /// Whether this window's refusal was answered.
    answered: bool,
    /// Since when every window was abusive.
    abusing_since: Option<Instant>,
}

impl Limiter {
    pub(crate) fn new(rate: FrameRate, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::new(rate.per_second, rate.burst, now),
            rate,
            window: (now, 0),
            answered: false,
            abusing_since: None,
        }
    }

    /// The verdict on a frame that arrived at `now`.
    pub(crate) fn frame(&mut self, now: Instant) -> Verdict {
        if self.count(now) {
            return Verdict::Close;
        }
        if self.bucket.take(now) {
            Verdict::Pass
        } else if self.answered {
            Verdict::Drop
        } else {
            self.answered = true;
            Verdict::Refuse
        }
    }

    /// Counts a fragment that arrived at `now`, which cannot be refused on its own: it spends
    /// the rate, so that the message it belongs to (judged by [`Limiter::frame`] when it
    /// ends) is refused when its fragments went over. True when the connection must close.
    pub(crate) fn fragment(&mut self, now: Instant) -> bool {
        let close = self.count(now);
        self.bucket.take(now);
        close
    }

    /// Counts a frame in its window; true once the client has abused the rate for the abuse
    /// period.
    fn count(&mut self, now: Instant) -> bool {
        let (start, seen) = &mut self.window;
        if now.saturating_duration_since(*start) >= WINDOW {
            let abusive = *seen > self.rate.per_second.saturating_mul(ABUSE_FACTOR);
            let elapsed_windows = now.saturating_duration_since(*start) >= WINDOW * 2;
            self.abusing_since = match (abusive && !elapsed_windows, self.abusing_since) {
                (true, None) => Some(*start),
                (true, since) => since,
                (false, _) => None,
            };
            *start = now;
            *seen = 0;
            self.answered = false;
        }
        *seen += 1;
        self.abusing_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.rate.abuse_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32, abuse: Duration, now: Instant) -> Limiter {
        Limiter::new(
            FrameRate {
                per_second,
                burst,
                abuse_period: abuse,
            },
            now,
        )
    }

    #[test]
    fn over_the_limit_one_refusal_a_second_then_silence() {
        let start = Instant::now();
        let mut l = limiter(50, 100, DEFAULT_ABUSE_PERIOD, start);
        for _ in 0..100 {
            assert_eq!(l.frame(start), Verdict::Pass);
        }
        assert_eq!(l.frame(start), Verdict::Refuse);
        assert_eq!(l.frame(start), Verdict::Drop);
        assert_eq!(l.frame(start + Duration::from_millis(10)), Verdict::Drop);
        // A new second: a frame that fits passes, one that does not is answered again.
        let next = start + Duration::from_millis(1000);
        assert_eq!(l.frame(next), Verdict::Pass);
        let mut verdicts = Vec::new();
        for _ in 0..60 {
            verdicts.push(l.frame(next));
        }
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Refuse).count(),
            1
        );
    }

    #[test]
    fn fragments_spend_the_rate_and_leave_the_answer_to_their_message() {
        let start = Instant::now();
        let mut l = limiter(50, 3, DEFAULT_ABUSE_PERIOD, start);
        for _ in 0..4 {
            assert!(
                !l.fragment(start),
                "one past the burst is spent, not refused"
            );
        }
        assert_eq!(l.frame(start), Verdict::Refuse, "the message is answered");
        assert_eq!(l.frame(start), Verdict::Drop);
    }

    #[test]
    fn fragments_far_over_the_rate_for_the_abuse_period_close() {
        let start = Instant::now();
        let mut l = limiter(5, 5, Duration::from_secs(2), start);
        let closed = (0..400u64)
            .map(|n| start + Duration::from_millis(n * 10))
            .position(|at| l.fragment(at));
        // 100 fragments a second: abusive from the first window, closed two seconds on.
        assert_eq!(closed, Some(200));
    }

    #[test]
    fn ten_times_the_rate_for_the_abuse_period_closes() {
        let start = Instant::now();
        let mut l = limiter(5, 5, Duration::from_secs(3), start);
        let mut closed_at = None;
        // 60 frames a second (more than 10 × 5) for 5 seconds.
        'sending: for second in 0..5u32 {
            for n in 0..60u32 {
                let at = start
                    + Duration::from_secs(second.into())
                    + Duration::from_millis((n * 16).into());
                if l.frame(at) == Verdict::Close {
                    closed_at = Some(at);
                    break 'sending;
                }
            }
        }
        let closed_at = closed_at.expect("closed");
        let after = closed_at.saturating_duration_since(start);
        assert!(
            after >= Duration::from_secs(3) && after < Duration::from_secs(4),
            "{after:?}"
        );
    }

    #[test]
    fn just_under_ten_times_the_rate_is_refused_but_never_closed() {
        let start = Instant::now();
        let mut l = limiter(5, 5, Duration::from_secs(2), start);
        // 50 frames a second: exactly ten times, not more.
        for second in 0..6u32 {
            for n in 0..50u32 {
                let at = start
                    + Duration::from_secs(second.into())
                    + Duration::from_millis((n * 19).into());
                assert_ne!(l.frame(at), Verdict::Close, "second {second}, frame {n}");
            }
        }
    }

    #[test]
    fn a_pause_forgives_past_abuse() {
        let start = Instant::now();
        let mut l = limiter(5, 5, Duration::from_secs(3), start);
        for second in 0..2u32 {
            for n in 0..60u32 {
                let at = start
                    + Duration::from_secs(second.into())
                    + Duration::from_millis((n * 16).into());
                assert_ne!(l.frame(at), Verdict::Close);
            }
        }
        // Quiet for five seconds, then abusive again: the count starts over.
        let back = start + Duration::from_secs(7);
        for second in 0..2u32 {
            for n in 0..60u32 {
                let at = back
                    + Duration::from_secs(second.into())
                    + Duration::from_millis((n * 16).into());
                assert_ne!(l.frame(at), Verdict::Close);
            }
        }
    }
}
