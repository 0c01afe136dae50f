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
