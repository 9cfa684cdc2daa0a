"""TrainConfig (#2): malformed values fail at construction with a message naming the fix."""

import pytest

from nbaccel.core.config import TrainConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(precision="fp8"), "precision must be one of"),
        (dict(epochs=0), "epochs must be"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(lr=-1.0), "lr must be"),
        (dict(val=1.5), "val must be a fraction"),
        (dict(freeze=-1), "freeze must be"),
        (dict(freeze="most"), "freeze must be"),
        (dict(image_size=4), "image_size must be"),
        (dict(augment="heavy"), "augment must be"),
        (dict(stop="patience"), "bad stop rule term"),
        (dict(pretrained=3), "pretrained must be"),
    ],
)
def test_malformed_values_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="unused", **kwargs)


def test_freeze_given_as_text_digits_becomes_a_number():
    assert TrainConfig(data="unused", freeze="3").freeze == 3


def test_config_is_frozen_and_its_repr_leaves_out_the_data():
    config = TrainConfig(data=list(range(10_000)))
    with pytest.raises(AttributeError):
        config.epochs = 3  # type: ignore[misc]
    assert "10000" not in repr(config) and "backbone='resnet18'" in repr(config)
