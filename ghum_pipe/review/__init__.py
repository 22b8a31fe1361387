"""Review flags: is a registration fit to use? A verdict (ok / look / failed) and its reasons
from residuals, landmarks, coverage, body-part consistency, skeleton plausibility and
self-intersection (docs/review.md)."""

from ghum_pipe.review.stage import review_result, review_scan, review_table
from ghum_pipe.review.verdict import DEFAULT_RULES, Review, ReviewConfig, Rule, apply_rules, review_registration

__all__ = ["DEFAULT_RULES", "Review", "ReviewConfig", "Rule", "apply_rules", "review_registration", "review_result",
           "review_scan", "review_table"]
