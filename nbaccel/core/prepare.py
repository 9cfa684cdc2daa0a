"""prepare_plan: check every choice against the data, the model and this machine, and build
the model and datasets, on the caller's thread, so that bad input raises from fasttrain()
itself before any thread starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nbaccel.core.auto_precision import plan_precision
from nbaccel.core.balance import decide_balance
from nbaccel.core.checkpoint import (
    check_writable,
    checkpoint_bytes,
    default_checkpoint_dir,
    new_run_directory,
    prune_runs,
)
from nbaccel.core.compiling import check_compile
from nbaccel.core.config import TrainConfig
from nbaccel.core.decision import Decision
from nbaccel.core.features import decide_feature_cache
from nbaccel.core.history_log import plan_log_dir
from nbaccel.core.layout import decide_channels_last
from nbaccel.core.loaders import (
    TransformedImages,
    create_transforms,
    decide_image_cache,
    decide_workers,
    resolve_augment,
)
from nbaccel.core.memory import plan_batch_size
from nbaccel.core.model import (
    apply_freeze,
    create_backbone,
    describe_weights,
    init_head,
    is_pretrained,
    list_layer_groups,
    resolve_freeze_depth,
)
from nbaccel.core.optimizer import decide_fused, resolve_learning_rates
from nbaccel.core.plan import Plan
from nbaccel.core.precision import resolve_device
from nbaccel.core.ranks import decide_devices, share_workers
from nbaccel.core.resume import (
    Resumed,
    check_same_data,
    data_fingerprint,
    plain_config,
)
from nbaccel.core.splits import resolve_sources


def prepare_plan(config: TrainConfig, resumed: Optional[Resumed] = None) -> Plan:
    """Resolves `config` into a Plan; `resumed`: the checkpoint it goes on from (its
    options already merged into `config` by resume.open_resume).

    Raises:
        ValueError: a choice that does not fit the data, the model or this machine.
    """
    device = resolve_device(config.device)
    devices = decide_devices(config.devices, device, str(config.device))
    precision, probe_precision = plan_precision(config.precision, device)
    check_compile(config.compile, device)
    if devices.value > 1 and config.compile is True:
        raise ValueError(
            f"compile=True with devices={devices.value} is not supported yet: use "
            "compile='auto' (the processes train uncompiled) or devices=1"
        )
    sources = resolve_sources(config.data, config.val, config.seed)
    train, val = sources.train, sources.val
    fingerprint = data_fingerprint(config.data, train, val)
    if resumed is not None:
        check_same_data(resumed, fingerprint)
    with torch.random.fork_rng(devices=[]):  # a seeded head; the user's RNG untouched
        torch.manual_seed(config.seed)
        model = create_backbone(  # resumed: the checkpoint has the weights
            config.backbone,
            False if resumed else config.pretrained,
            len(train.class_names),
        )
    balance, class_weights = decide_balance(
        config.balance, train.labels, train.class_names
    )
    pretrained = is_pretrained(config.pretrained)
    head_init = init_head(model, config.head_init, pretrained, len(train.class_names))
    if (
        resumed is not None
    ):  # now: the feature cache and the warm-ups read these weights
        resumed.load_weights(model)
    groups = list_layer_groups(model)
    depth, reason = resolve_freeze_depth(config.freeze, groups, pretrained)
    apply_freeze(model, groups, depth)
    frozen_all = depth == len(groups)
    augment = resolve_augment(config.augment, frozen_all, config.epochs)
    train_tf, eval_tf, data_config = create_transforms(
        model, config.image_size, augment
    )
    feature_cache = (
        decide_feature_cache(
            config.cache,
            model,
            frozen_all,
            augment,
            len(train) + len(val),
            data_config["input_size"],
            device,
        )
        if devices.value == 1
        else Decision(
            "feature cache",
            False,
            f"devices={devices.value}: each process runs the backbone on its own shard",
        )
    )
    images = TransformedImages(train, train_tf), TransformedImages(val, eval_tf)
    if devices.value > 1 and config.cache is True:
        raise ValueError(
            f"cache=True with devices={devices.value}: each process would keep every "
            "image (its shard changes each epoch); use cache='auto' (off) or devices=1"
        )
    image_cache = (
        decide_image_cache(config.cache, images, feature_cache)
        if devices.value == 1
        else Decision(
            "image cache",
            False,
            f"devices={devices.value}: each process reads a new shard each epoch",
        )
    )
    train_images, val_images = (
        TransformedImages(d.source, d.transform, image_cache.value) for d in images
    )
    batch_size, probe_batch = plan_batch_size(config.batch_size, device, len(train))
    head_lr, backbone_lr = resolve_learning_rates(
        config.lr, pretrained, backbone_trains=not frozen_all, devices=devices.value
    )
    run_directory = plan_run_directory(config, model, resumed)
    return Plan(
        run_directory=run_directory,
        log_dir=plan_log_dir(config.log_dir, run_directory),
        checkpoint_meta=dict(
            config=plain_config(config), data=fingerprint, data_config=data_config
        ),
        resumed=resumed,
        backbone=config.backbone,
        weights=describe_weights(config.pretrained),
        device=device,
        precision_choice=precision,
        probe_precision=probe_precision,
        model=model,
        groups=tuple(groups),
        freeze_depth=depth,
        freeze_reason=reason,
        head_init=head_init,
        bn_stats=config.bn_stats is not False,
        ema=config.ema is not False,
        class_names=train.class_names,
        train=train_images,
        val=val_images,
        test=None if sources.test is None else TransformedImages(sources.test, eval_tf),
        data_config=data_config,
        augment=augment,
        head_lr=head_lr,
        backbone_lr=backbone_lr,
        stop_rule=config.stop_rule,
        epochs=config.epochs,
        seed=config.seed,
        measure_baseline=config.baseline == "measure",
        batch_size=batch_size,
        probe_batch=probe_batch,
        compile=config.compile,
        feature_cache=feature_cache,
        image_cache=image_cache,
        workers=share_workers(
            decide_workers(config.workers, train_images, device),
            devices.value,
            config.workers == "auto",
        ),
        channels_last=decide_channels_last(
            config.channels_last, model, device, str(precision.value)
        ),
        fused=decide_fused(config.fused, device),
        devices=devices,
        balance=balance,
        class_weights=class_weights,
    )


def plan_run_directory(
    config: TrainConfig, model: nn.Module, resumed: Optional[Resumed]
) -> Optional[Path]:
    """Where this run's checkpoints go (a resumed run goes on in its own directory), once
    that place is known to take them; None with checkpoint=False.

    Raises:
        ValueError: the directory cannot be written, or lacks the space.
    """
    if not config.checkpoint:
        return None
    if resumed is not None:
        directory = resumed.checkpoint.directory
        root = directory
    else:
        root = Path(config.checkpoint_dir or default_checkpoint_dir()).expanduser()
        if config.checkpoint_dir is None:  # the cache; a directory you chose is yours
            prune_runs(root)
        data = config.data
        tag = Path(data).name if isinstance(data, (str, Path)) else type(data).__name__
        directory = new_run_directory(root, config.backbone, tag)
    check_writable(root, checkpoint_bytes(model, config.ema is not False))
    return directory
