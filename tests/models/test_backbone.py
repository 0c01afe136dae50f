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


def saved(tmp_path, name, make, seed):
    """A torchvision model made with ``seed`` and its state dict saved as ``name`` in tmp_path."""
    torch.manual_seed(seed)
    ref = make()
    torch.save(ref.state_dict(), tmp_path / name)
    return ref, tmp_path / name


def test_pretrained_from_local_file(tmp_path):
    ref, path = saved(tmp_path, "r18.pth", torchvision.models.resnet18, 3)
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
    ref, good = saved(tmp_path, "mbv3.pth", torchvision.models.mobilenet_v3_large, 0)
    body = build_body("mobilenet_v3_large", "frozen_bn", 0, str(good))
    assert torch.equal(body.features[0][0].weight, ref.features[0][0].weight)
    small = tmp_path / "small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), small)
    with pytest.raises(ValueError, match="do not fit mobilenet_v3_large"):
        build_body("mobilenet_v3_large", "frozen_bn", 0, str(small))


@pytest.mark.parametrize("name, expected", [("resnet18", 20), ("resnet50", 53)])
def test_frozen_bn_folding_equals_conv_then_bn(name, expected, tmp_path):
    """The folded body computes what torchvision's conv + FrozenBatchNorm2d compute (outputs and weight
    gradients), with the same state-dict keys, so pretrained files and checkpoints load unchanged."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from models.backbone import FoldedConv2d, fold_frozen_bn

    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(norm_layer=FrozenBatchNorm2d)
    for m in ref.modules():  # BN statistics far from the identity, so that a missed fold shows
        if isinstance(m, FrozenBatchNorm2d):
            for buf in (m.weight, m.bias, m.running_mean):
                buf.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    body = build_body(name, "frozen_bn", -1, str(path))  # every stage trainable: gradients compared below
    assert sum(isinstance(m, FoldedConv2d) for m in body.modules()) == expected
    assert fold_frozen_bn(torchvision.models.resnet18()) == 0  # plain BatchNorm2d is left alone
    keys = {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert {k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.") for k in body.state_dict()} == \
        {k.replace("layer1.", "stages.0.").replace("layer2.", "stages.1.").replace("layer3.", "stages.2.")
         .replace("layer4.", "stages.3.") for k in keys}
    x = torch.randn(2, 3, 64, 64)
    got = body(x)[-1]
    feats = torch.nn.Sequential(*list(ref.children())[:-2])
    want = feats(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got.square().mean().backward()
    want.square().mean().backward()
    torch.testing.assert_close(body.stages[3][-1].conv1.weight.grad, ref.layer4[-1].conv1.weight.grad,
                               rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(body.stem[0].weight.grad, ref.conv1.weight.grad, rtol=1e-3, atol=1e-6)
    # a BN buffer changed after folding (e.g. loading a checkpoint) takes effect on the next call
    body.stages[3][-1].bn1.running_var.mul_(4.0)
    ref.layer4[-1].bn1.running_var.mul_(4.0)
    torch.testing.assert_close(body(x)[-1], feats(x), rtol=1e-4, atol=1e-4)


def test_folding_replaces_modules_instead_of_swapping_classes():
    """Folding builds explicit modules (FoldedConv2d, FoldedBN) that share the original tensors; no object's
    class is changed at run time, and a folded model's state dict loads into an unfolded one and back."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from models.backbone import FoldedBN, FoldedConv2d, FrozenStatsBatchNorm2d, fold_frozen_bn

    for norm in (FrozenBatchNorm2d, FrozenStatsBatchNorm2d):
        net = torchvision.models.resnet18(norm_layer=norm)
        conv, bn = net.layer1[0].conv1, net.layer1[0].bn1
        before = {k: v for k, v in net.state_dict().items()}
        assert fold_frozen_bn(net) == 20
        assert type(conv) is torch.nn.Conv2d and type(bn) is norm  # the originals are untouched objects
        folded, remains = net.layer1[0].conv1, net.layer1[0].bn1
        assert type(folded) is FoldedConv2d and type(remains) is FoldedBN
        assert folded.weight is conv.weight and remains.running_var is bn.running_var
        assert remains.trainable_affine == (norm is FrozenStatsBatchNorm2d)
        after = net.state_dict()
        assert list(after) == [k for k in before if not k.endswith("num_batches_tracked")]
        assert all(torch.equal(after[k], before[k]) for k in after)
        plain = torchvision.models.resnet18(norm_layer=norm)
        plain.load_state_dict(after)
        net.load_state_dict(plain.state_dict())
        assert fold_frozen_bn(net) == 0  # already folded


def test_bn_frozen_stats_is_eval_mode_batchnorm_with_trainable_affine(tmp_path):
    """mmdetection's ``requires_grad=True, norm_eval=True``: the body computes what torchvision's ResNet with
    BatchNorm2d in eval mode computes, in train mode too; BN statistics never move, BN weights and biases of
    the trainable stages get the same gradients, and the frozen stages' BN gets none."""
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)  # present in torchvision files: must load without complaint
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    body = build_body("resnet18", "bn_frozen_stats", 1, str(path)).train()
    ref.eval()  # norm_eval: BN uses its running statistics
    stats_before = body.stages[2][0].bn1.running_mean.clone()
    x = torch.randn(2, 3, 64, 64)
    got = body(x)[-1]
    want = torch.nn.Sequential(*list(ref.children())[:-2])(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got.square().mean().backward()
    want.square().mean().backward()
    assert torch.equal(body.stages[2][0].bn1.running_mean, stats_before)
    for mine, theirs in ((body.stages[3][1].bn2, ref.layer4[1].bn2), (body.stages[1][0].bn1, ref.layer2[0].bn1)):
        assert mine.weight.requires_grad and mine.bias.requires_grad
        torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(mine.bias.grad, theirs.bias.grad, rtol=1e-3, atol=1e-7)
    assert body.stem[1].weight.grad is None and body.stages[0][0].bn1.weight.grad is None  # frozen_stages = 1
    assert "stages.0.0.bn1.num_batches_tracked" not in body.state_dict()


def test_bn_frozen_stats_is_not_turned_into_sync_batchnorm():
    body = build_body("resnet18", "bn_frozen_stats", 1, None)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(body)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())


@pytest.mark.parametrize("p7_relu", [True, False])
def test_p7_from_p6_with_or_without_relu(p7_relu):
    torch.manual_seed(0)
    bb = BackboneFPN(build_body("resnet18", "bn", -1, None), 8, [3, 4, 5], "p6p7", p7_relu=p7_relu).eval()
    with torch.no_grad():
        p6, p7 = bb(torch.randn(1, 3, 128, 128))[3:]
        conv = bb.fpn.extra_blocks.p7
        assert p6.min() < 0  # otherwise the ReLU would change nothing and the test could not tell
        with_relu, without = conv(torch.relu(p6)), conv(p6)
    assert not torch.allclose(with_relu, without)
    torch.testing.assert_close(p7, with_relu if p7_relu else without)


def test_torchvision_weight_names_read_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    ref, _ = saved(tmp_path / "checkpoints", "resnet18-f37072fd.pth", torchvision.models.resnet18, 5)
    for name in ("torchvision", "IMAGENET1K_V1", "resnet18-f37072fd.pth"):  # the hub file, by any of its names
        assert torch.equal(build_body("resnet18", "bn", 1, name).stem[0].weight, ref.conv1.weight)
    # V2 exists for ResNet-50 / 101 only; a missing file names the path torchvision would use
    with pytest.raises(FileNotFoundError, match=r"IMAGENET1K_V2.*checkpoints/resnet50-11ad3fa6\.pth"):
        build_body("resnet50", "bn", 1, "IMAGENET1K_V2")
    with pytest.raises(FileNotFoundError, match=r"resnet101-63fe2227\.pth"):
        build_body("resnet101", "bn", 1, "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="no IMAGENET1K_V2 weights for resnet18"):
        build_body("resnet18", "bn", 1, "IMAGENET1K_V2")


def test_bn_eps_and_unfolded_frozen_bn(tmp_path):
    from torchvision.ops.misc import FrozenBatchNorm2d

    def make():  # BNs with statistics away from (0, 1): folding then changes the rounding
        net = torchvision.models.resnet18()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        return net

    _, path = saved(tmp_path, "r18.pth", make, 3)
    body = build_body("resnet18", "frozen_bn", 1, str(path), bn_eps=0.0, fold_bn=False)
    assert type(body.stem[1]) is FrozenBatchNorm2d and body.stem[1].eps == 0.0
    folded = build_body("resnet18", "frozen_bn", 1, str(path), bn_eps=0.0)
    assert type(folded.stem[0]).__name__ == "FoldedConv2d" and folded.stem[1].eps == 0.0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = body(x)[-1], folded(x)[-1]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4) and not torch.equal(a, b)  # same maths, other rounding
