import pytest
import torch
import torchvision

from models.backbone import BackboneFPN, build_body


def test_resnet_fpn_levels_and_shapes():
    bb = BackboneFPN(build_body("resnet18", "frozen_bn", 1, None), 32, [3, 4, 5], "p6p7")
    assert bb.strides == [8, 16, 32, 64, 128]
    outs = bb(torch.randn(2, 3, 96, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4), (2, 32, 2, 2), (2, 32, 1, 1)]
    two_stage = BackboneFPN(build_body("resnet18", "bn", -1, None), 16, [2, 3, 4, 5], "maxpool")
    assert two_stage.strides == [4, 8, 16, 32, 64] and len(two_stage(torch.randn(1, 3, 64, 64))) == 5


def test_frozen_stages_follow_mmdetection():
    body = build_body("resnet18", "frozen_bn", 1, None)
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.stages[0].parameters())
    assert all(p.requires_grad for p in body.stages[1].parameters())
    assert all(p.requires_grad for p in build_body("resnet18", "bn", -1, None).parameters())


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    body = build_body("resnet18", "frozen_bn", 1, str(path))
    assert torch.equal(body.stem[0].weight, ref.conv1.weight)
    assert torch.equal(body.stages[3][1].conv2.weight, ref.layer4[1].conv2.weight)
    # frozen BN takes the file's running statistics
    assert torch.equal(body.stem[1].running_mean, ref.bn1.running_mean)


def test_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_body("resnet18", "frozen_bn", 1, str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pth"):
        build_body("resnet18", "frozen_bn", 1, str(bad))
    other = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), other)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        build_body("resnet18", "frozen_bn", 1, str(other))


def test_mobilenet_body():
    body = build_body("mobilenet_v3_large", "bn", 0, None)
    outs = body(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    assert [o.shape[1] for o in outs] == body.channels
    bb = BackboneFPN(body, 16, [3, 4, 5], "p6p7")
    assert [o.shape[-1] for o in bb(torch.randn(1, 3, 64, 64))] == [8, 4, 2, 1, 1]


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        build_body("resnet19", "bn", 0, None)


def test_mobilenet_pretrained_strict(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_large()
    good = tmp_path / "mbv3.pth"
    torch.save(ref.state_dict(), good)
    body = build_body("mobilenet_v3_large", "frozen_bn", 0, str(good))
    assert torch.equal(body.features[0][0].weight, ref.features[0][0].weight)
    small = tmp_path / "small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), small)
    with pytest.raises(ValueError, match="do not fit mobilenet_v3_large"):
        build_body("mobilenet_v3_large", "frozen_bn", 0, str(small))
