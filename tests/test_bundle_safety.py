"""The bundle is tamper-evident (manifest of SHA-256 digests), loads no pickle, and honours the umask."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.training.bundle import MANIFEST, BundleError, load_bundle, write_bundle, write_manifest
from pipeline.common import file_digest


def tiny_bundle(d: Path) -> Path:
    from pipeline.training.dataset import Standardizer

    torch.manual_seed(0)
    norm = Standardizer({"t": np.zeros(2, np.float32)}, {"t": np.ones(2, np.float32)})
    return write_bundle(d, {}, "dialogue_gru", {"hidden": 4}, ["neutral", "joy", "anger"], ["t"], {"t": 2}, norm,
                        {"state_dict": torch.nn.Linear(2, 3).state_dict(), "seed": 0, "epoch": 1,
                         "dev_weighted_f1": 0.5}, {"t": d.parent})


def test_manifest_digests_every_file(tmp_path):
    b = tiny_bundle(tmp_path / "b")
    files = json.loads((b / MANIFEST).read_text())["files"]
    assert set(files) == {"bundle.json", "weights.pt", "norm.pt", "README.md"}
    assert all(files[f] == file_digest(b / f) for f in files)
    assert load_bundle(b).labels == ["neutral", "joy", "anger"]


def test_permuted_labels_are_refused(tmp_path):
    """Swapping class names in bundle.json would relabel every prediction: refused, naming the file."""
    b = tiny_bundle(tmp_path / "b")
    meta = json.loads((b / "bundle.json").read_text())
    meta["labels"] = ["anger", "joy", "neutral"]
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle.json does not match its digest in manifest.json") as e:
        load_bundle(b)
    assert "\n" not in str(e.value)
    (b / MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(b)
    (b / MANIFEST).write_text(json.dumps({"files": {"weights.pt": file_digest(b / "weights.pt")}}))
    with pytest.raises(BundleError, match="does not cover"):
        load_bundle(b)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_payload_in_weights_is_one_line_refusal(tmp_path, monkeypatch):
    """Even with a matching digest, a weights.pt that needs unpickling is refused (weights_only), never run."""
    monkeypatch.chdir(tmp_path)
    b = tiny_bundle(tmp_path / "b")
    torch.save({"w": Payload()}, b / "weights.pt")
    write_manifest(b, list(json.loads((b / MANIFEST).read_text())["files"]))
    with pytest.raises(BundleError, match=r"weights.pt is not a plain tensor file") as e:
        load_bundle(b)
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()
    torch.save([torch.zeros(1)], b / "weights.pt")  # tensors, but not a {name: tensor} dict
    write_manifest(b, list(json.loads((b / MANIFEST).read_text())["files"]))
    with pytest.raises(BundleError, match="does not hold a"):
        load_bundle(b)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_bundle_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        b = tiny_bundle(tmp_path / "model" / "bundle")
    finally:
        os.umask(old)
    assert stat.S_IMODE(b.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in b.iterdir()} == {0o666 & ~umask}
