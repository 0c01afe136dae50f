"""MobileNetV2 body: torchvision's ImageNet network read into frozen-statistics BatchNorm with the eps it was
trained with (1e-5, not MobileNetV3's 1e-3), its C2-C5 taps, frozen stages, and the opt-in download."""
import os

import pytest
import torch
import torchvision

from models.backbone import BackboneFPN, build_body


def _skewed_mobilenet_v2(seed=0):
    """A torchvision MobileNetV2 whose BN running variances are tiny (1e-4 .. 1e-3), so that dividing by
    sqrt(var + 1e-3) instead of sqrt(var + 1e-5) changes every activation by far more than float noise."""
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v2()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.05)
            m.running_var.uniform_(1e-4, 1e-3)
            m.weight.data.uniform_(0.01, 0.05)  # keeps the deep activations finite with tiny variances
    return net.eval()


def test_mobilenet_v2_frozen_body_equals_torchvision_features(tmp_path):
    net = _skewed_mobilenet_v2()
    path = tmp_path / "mbv2.pth"
    torch.save(net.state_dict(), path)
    body = build_body("mobilenet_v2", "frozen_bn", -1, str(path))
    assert body.channels == [24, 32, 96, 1280] and body.ends == [3, 6, 13, 18]
    x = torch.randn(2, 3, 64, 96)
    outs = body(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    with torch.no_grad():
        want = net.features(x)
        torch.testing.assert_close(outs[-1].detach(), want, rtol=1e-4, atol=1e-5)
        c4 = net.features[:14](x)
        torch.testing.assert_close(outs[2].detach(), c4, rtol=1e-4, atol=1e-5)
    # the same statistics read with MobileNetV3's eps give another network: the test above can tell
    wrong = torchvision.models.mobilenet_v2(norm_layer=lambda c: torch.nn.BatchNorm2d(c, eps=1e-3))
    wrong.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert (wrong.eval().features(x) - want).abs().max() > 1e-2 * want.abs().max()


def test_mobilenet_v2_fpn_levels():
    bb = BackboneFPN(build_body("mobilenet_v2", "bn", -1, None), 32, [3, 4, 5], "p6p7")
    assert bb.strides == [8, 16, 32, 64, 128]
    outs = bb(torch.randn(1, 3, 128, 128))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]


@pytest.mark.parametrize("stages, last_frozen", [(-1, None), (0, 0), (2, 6)])
def test_mobilenet_frozen_stages_follow_the_resnet_convention(stages, last_frozen):
    body = build_body("mobilenet_v2", "frozen_bn", stages, None)
    frozen = [i for i, block in enumerate(body.features)
              if any(True for _ in block.parameters()) and not any(p.requires_grad for p in block.parameters())]
    assert frozen == ([] if last_frozen is None else list(range(last_frozen + 1)))


def test_mobilenet_frozen_stages_out_of_range():
    with pytest.raises(ValueError, match="frozen_stages must be -1 .. 4 for mobilenet_v2, got 5"):
        build_body("mobilenet_v2", "frozen_bn", 5, None)


def test_missing_hub_file_names_the_path_and_the_download_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", "mobilenet_v2-b0353104.pth")
    with pytest.raises(FileNotFoundError) as err:
        build_body("mobilenet_v2", "frozen_bn", 1, "IMAGENET1K_V1")
    assert expected in str(err.value) and "model.backbone.download=true" in str(err.value)
    assert "scripts/fetch_weights.py" in str(err.value)


def test_download_switch_fetches_torchvisions_file_with_its_hash_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(torchvision.models.mobilenet_v2().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    build_body("mobilenet_v2", "frozen_bn", 1, "torchvision", download=True)
    dst = os.path.join(str(tmp_path), "hub", "checkpoints", "mobilenet_v2-b0353104.pth")
    assert calls == [(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url, dst, "b0353104")]
    build_body("mobilenet_v2", "frozen_bn", 1, "torchvision", download=True)
    assert len(calls) == 1  # a file already in the cache is not fetched again

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match="cannot download .*mobilenet_v3_small.*name resolution"):
        build_body("mobilenet_v3_small", "frozen_bn", 1, "torchvision", download=True)
