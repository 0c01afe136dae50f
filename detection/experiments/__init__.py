"""Experiment orchestration on top of the engine: side-by-side comparisons (``compare``), the paper's tables
(``tables``: the spec in configs/tables.yaml; ``reproduce``: runs and collects them) and plots of logs."""
