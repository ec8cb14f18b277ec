"""Networks of conf/model and the baselines' feature extractor: shapes, embeddings, errors."""

from __future__ import annotations

import pytest
import torch

from ihcflow.training.networks import CompactCNN, ImageFeatures, ResNet


@pytest.mark.parametrize("size", [28, 64, 128])
def test_compact_cnn_any_input_size(size: int) -> None:
    net = CompactCNN(num_classes=5, input_size=size).eval()
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        logits = net(x)
        emb = net.features(x)
    assert logits.shape == (3, 5)
    assert emb.shape == (3, net.embed_dim)
    # the classifier is the head applied to the embedding: what the ONNX export relies on
    torch.testing.assert_close(net.head(emb), logits)


@pytest.mark.parametrize(("size", "stem"), [(28, "small"), (112, "imagenet")])
def test_resnet_stem_by_size(size: int, stem: str) -> None:
    net = ResNet(num_classes=4, input_size=size, width=8).eval()
    first = net.stem[0]
    assert first.kernel_size == ((3, 3) if stem == "small" else (7, 7))
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, 4)
    assert net.embed_dim == 8 * 2**3


def test_resnet18_has_eight_blocks_and_11m_weights() -> None:
    net = ResNet(num_classes=8, input_size=28)
    assert len(net.stages) == 8
    assert 10.5e6 < sum(p.numel() for p in net.parameters()) < 11.5e6


def test_networks_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes is 1"):
        CompactCNN(num_classes=1, input_size=28)
    with pytest.raises(ValueError, match="too small"):
        CompactCNN(num_classes=3, input_size=4)
    with pytest.raises(ValueError, match="stem is 'big'"):
        ResNet(num_classes=3, input_size=28, stem="big")


def test_image_features_are_thumbnail_and_channel_stats() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :4, :4] = 1.0  # red top-left quadrant
    feats = ImageFeatures(grid=2)(x)
    assert feats.shape == (1, ImageFeatures(grid=2).embed_dim) == (1, 3 * 4 + 6)
    thumb = feats[0, :12].view(3, 2, 2)
    assert thumb[0, 0, 0] == 1.0 and thumb[0].sum() == 1.0 and thumb[1:].sum() == 0.0
    mean_r, std_r = feats[0, 12], feats[0, 15]
    assert mean_r == pytest.approx(0.25)
    assert std_r == pytest.approx((0.25 * 0.75) ** 0.5)


def test_compact_cnn_convs_per_block_list() -> None:
    net = CompactCNN(num_classes=3, input_size=28, convs_per_block=[1, 2, 2])
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 128, 128]
    with pytest.raises(ValueError, match="convs_per_block has 2 entries for 3 blocks"):
        CompactCNN(num_classes=3, input_size=28, convs_per_block=[1, 2])
