"""The training loop: the trainer and its step (trainer), its hooks (hooks, eval_hook) and the work dir (workdir)."""
