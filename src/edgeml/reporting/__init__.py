"""What a person reads: the paper's tables, headline metrics, figures and the PR review."""
