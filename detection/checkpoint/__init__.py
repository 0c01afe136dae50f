"""Checkpoints: atomic files (io), the state of a run (state), --resume (resume), model.init_from (init_from),
foreign weights (convert) and what a stopped run can continue from (recovery)."""
