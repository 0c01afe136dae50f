import pytest
import torch


@pytest.fixture
def host_reads(monkeypatch):
    """Start recording every tensor read that forces a host synchronisation on a GPU; returns the list
    that the names of such calls (item, cpu, tolist, ...) are appended to."""
    calls = []

    def start():
        for name in ("item", "cpu", "tolist", "__float__", "numpy", "__bool__"):
            orig = getattr(torch.Tensor, name)

            def spy(self, *a, _orig=orig, _name=name, **k):
                calls.append(_name)
                return _orig(self, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, spy)
        return calls

    return start


@pytest.fixture
def overfit():
    """``overfit(model, images, targets, steps, lr=2e-3) -> (first, last)``: AdamW steps on one fixed batch,
    returning the first step's total loss (a float) and the last step's (a tensor)."""

    def run(model, images, targets, steps, lr=2e-3):
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        first = None
        for _ in range(steps):
            total = sum(model(images, targets).values())
            first = first if first is not None else total.item()
            opt.zero_grad()
            total.backward()
            opt.step()
        return first, total

    return run
