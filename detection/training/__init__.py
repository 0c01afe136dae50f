"""The training loop: the trainer and its step (trainer), the non-finite guard (guard), its hooks (hooks,
eval_hook) and the work dir (workdir)."""
