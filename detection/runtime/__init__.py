"""Process-level runtime: the distributed set-up (dist), moving a batch and autocast (batch), and stop signals
(signals)."""
