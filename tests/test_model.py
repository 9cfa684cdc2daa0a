"""Model (#2): backbone creation and its errors, layer groups, freezing, the auto rule."""

import huggingface_hub.constants
import pytest
import timm
import torch

from nbaccel.core.model import (
    apply_freeze,
    count_params,
    create_backbone,
    list_freeze_options,
    list_layer_groups,
    resolve_freeze_depth,
    set_train_mode,
)


def test_resnet_groups_are_timm_coarse_groups_without_the_head():
    model = timm.create_model("resnet18", num_classes=5)
    groups = list_layer_groups(model)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert sum(g.num_params for g in groups) + sum(
        p.numel() for p in model.fc.parameters()
    ) == count_params(model)


def test_vit_groups_name_each_block():
    groups = list_layer_groups(timm.create_model("test_vit", num_classes=3))
    assert (
        groups[0].name == "stem"
        and groups[1].name == "blocks.0"
        and groups[-1].name == "blocks.5+norm"
    )


def test_freeze_depth_sets_trainable_params_and_keeps_frozen_batchnorm_in_eval():
    model = timm.create_model("resnet18", num_classes=5)
    groups = list_layer_groups(model)
    counts = []
    for depth in range(len(groups) + 1):
        apply_freeze(model, groups, depth)
        counts.append(count_params(model, trainable_only=True))
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert counts[-1] == sum(p.numel() for p in model.fc.parameters())  # head only
    apply_freeze(model, groups, 2)
    set_train_mode(model)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training and model.fc.training


def test_freeze_options_list_each_depth_with_labels():
    options = list_freeze_options("resnet18", num_classes=5)
    assert [o.depth for o in options] == [0, 1, 2, 3, 4, 5]
    assert (
        options[0].label == "train all"
        and options[0].trainable_params == options[0].total_params
    )
    assert options[2].label == "freeze stem..layer1"
    assert (
        options[-1].label == "head only (freeze all)"
        and options[-1].trainable_params == 5 * 512 + 5
    )


def test_freeze_options_by_name_match_a_real_model_and_leave_the_rng_alone():
    """(#3) The panel lists options while a run trains: no allocation, no RNG draws."""
    state = torch.random.get_rng_state()
    by_name = list_freeze_options("convnext_tiny", num_classes=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    real = timm.create_model("convnext_tiny", num_classes=7)
    assert by_name == list_freeze_options(real)


def test_auto_freeze_keeps_a_pretrained_backbones_early_layers_frozen():
    """(#16) The stem and early stages (at most 2% of the weights, at most half the
    groups) stay frozen, whatever the data size; random weights all train."""
    groups = list_layer_groups(timm.create_model("resnet18", num_classes=2))
    assert resolve_freeze_depth("auto", groups, False)[0] == 0
    depth, reason = resolve_freeze_depth("auto", groups, True)
    assert depth == 2 and "stem..layer1" in reason and "1.4% of the weights" in reason
    lite0 = list_layer_groups(timm.create_model("tf_efficientnet_lite0", num_classes=2))
    assert resolve_freeze_depth("auto", lite0, True)[0] == 4  # stem..blocks.2
    vit = list_layer_groups(timm.create_model("vit_small_patch16_224", num_classes=2))
    assert resolve_freeze_depth("auto", vit, True)[0] == 1  # the patch embedding
    assert resolve_freeze_depth("all", groups, True)[0] == 5


def test_freeze_deeper_than_the_groups_is_refused_listing_them():
    groups = list_layer_groups(timm.create_model("resnet18", num_classes=2))
    with pytest.raises(
        ValueError,
        match=r"freeze=9 is deeper than the backbone's 5 layer groups \(stem, layer1",
    ):
        resolve_freeze_depth(9, groups, True)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(
        ValueError, match="unknown backbone 'resnet19'.*Did you mean 'resnet18'"
    ):
        create_backbone("resnet19", False, 2)


def test_local_weights_file_loads_through_timm_overlay(tmp_path):
    source = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("test_resnet", path, num_classes=3)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.get_classifier().out_features == 3


def test_missing_or_unfit_weights_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_backbone("test_resnet", tmp_path / "missing.pth", 2)
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=2).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit backbone 'test_resnet'"):
        create_backbone("test_resnet", path, 2)


def test_offline_hub_weights_name_the_fix(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ValueError, match="pretrained=False .* or pretrained='path/to/weights.pth'"
    ):
        create_backbone("test_resnet", True, 2)
