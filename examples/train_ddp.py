"""Train chapter 8's one-stage detector on several processes with DistributedDataParallel.

One process per device, started by ``torchrun`` (the same as ``python -m torch.distributed.run``):

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --steps 1200 --batch-size 8

Each process builds the same model (same seed), reads its own shard of the synthetic shapes
(``DistributedSampler``, reshuffled every epoch), and after every backward pass holds the
gradient averaged over all processes, so the processes take identical optimizer steps. The
global batch is ``--batch-size`` times the number of processes. Rank 0 prints, writes the
checkpoints (weights, optimizer, schedule and step: enough to resume) and evaluates.

GPUs are used when CUDA is available (backend ``nccl``, one GPU per process); otherwise the
processes train on the CPU (backend ``gloo``). Without ``torchrun`` the script trains in one
process. See the book's page "Training on several processes" for several machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from detlib import (
    ShapesDataset,
    collate_detection,
    detection_loss,
    postprocess_detections,
    voc_evaluate,
)
from detlib.distributed import (
    DistributedContext,
    all_reduce_sum,
    destroy_distributed,
    init_distributed,
    shard_batches,
)
from detlib.training import DetectorConfig, horizontal_flip, load_checkpoint, save_checkpoint

# Settings that define the optimisation: a resumed run must use the same ones.
TRAINING_KEYS = (
    "steps",
    "global_batch",
    "lr",
    "weight_decay",
    "seed",
    "num_images",
    "image_size",
    "data_seed",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train chapter 8's small EfficientDet on synthetic shapes with "
            "DistributedDataParallel. Launch with: torchrun --nproc_per_node=N "
            "examples/train_ddp.py [options] (or python -m torch.distributed.run ...); "
            "without torchrun it trains in one process."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=1200, help="optimizer steps in all")
    group.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per process and step; the global batch is this times the processes",
    )
    group.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (OneCycle)")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    group.add_argument("--seed", type=int, default=0, help="weight initialisation and flips")
    group.add_argument(
        "--sync-bn",
        action="store_true",
        help="batch-norm statistics over the global batch (SyncBatchNorm; GPUs only)",
    )
    group = parser.add_argument_group("data")
    group.add_argument("--num-images", type=int, default=2000, help="training images")
    group.add_argument("--image-size", type=int, default=128, help="image height and width")
    group.add_argument("--data-seed", type=int, default=0, help="the training split's seed")
    group.add_argument("--workers", type=int, default=0, help="data-loading workers per process")
    group = parser.add_argument_group("model (chapter 8's defaults)")
    defaults = DetectorConfig()
    group.add_argument(
        "--backbone-widths",
        type=int,
        nargs=5,
        default=list(defaults.backbone_widths),
        metavar="W",
        help="channels of the backbone's five blocks",
    )
    group.add_argument("--channels", type=int, default=defaults.channels, help="BiFPN width")
    group.add_argument("--bifpn-layers", type=int, default=defaults.bifpn_layers)
    group.add_argument("--head-layers", type=int, default=defaults.head_layers)
    group.add_argument(
        "--anchor-scale", type=float, default=defaults.anchor_scale, help="anchor size in strides"
    )
    group = parser.add_argument_group("checkpoints, logging, evaluation")
    group.add_argument(
        "--checkpoint",
        default="checkpoints/shapes_ddp.pt",
        help="where rank 0 saves; '{step}' in the path is replaced by the step",
    )
    group.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints (0: end only)"
    )
    group.add_argument("--resume", metavar="PATH", help="continue from this checkpoint")
    group.add_argument("--log-every", type=int, default=50, help="steps between loss reports")
    group.add_argument(
        "--eval-images", type=int, default=0, help="held-out images rank 0 evaluates at the end"
    )
    group.add_argument("--eval-seed", type=int, default=1, help="the held-out split's seed")
    group.add_argument(
        "--record-dir",
        metavar="DIR",
        help="each rank writes DIR/rank<r>.json: its images, flips and timings per step",
    )
    group.add_argument(
        "--backend", choices=("gloo", "nccl"), help="default: nccl with CUDA, gloo without"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "num_images", "image_size", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("workers", "checkpoint_every", "eval_images"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


class IndexedDataset(Dataset):
    """``dataset[i]`` as ``(i, image, target)``: the loop needs to know which images it got."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return index, image, target


def collate_indexed(items):
    """``(indices [B], images [B, 3, H, W], boxes [B, G, 4], labels [B, G])``."""
    indices = torch.tensor([index for index, _, _ in items])
    return (indices, *collate_detection([(image, target) for _, image, target in items]))


def flip_table(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """``Tensor[num_items]`` of bools: which images are mirrored in this epoch.

    Drawn for the whole dataset by every process alike, so an image's flip does not depend on
    which process reads it: the run is the same for any number of processes.
    """
    generator = torch.Generator().manual_seed(1_000_003 * (seed + 1) + epoch)
    return torch.rand(num_items, generator=generator) < 0.5


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig(
        backbone_widths=tuple(args.backbone_widths),
        channels=args.channels,
        bifpn_layers=args.bifpn_layers,
        head_layers=args.head_layers,
        anchor_scale=args.anchor_scale,
    )


def training_settings(args: argparse.Namespace, world_size: int) -> dict:
    settings = {key: getattr(args, key) for key in TRAINING_KEYS if hasattr(args, key)}
    settings["global_batch"] = args.batch_size * world_size
    settings["world_size"] = world_size
    return settings


def check_resumable(path: str, saved: dict, current: dict) -> None:
    """Refuse a checkpoint whose optimisation settings differ from this run's."""
    differences = [
        f"{key}={saved.get(key)!r} (this run: {current[key]!r})"
        for key in TRAINING_KEYS
        if saved.get(key) != current[key]
    ]
    if differences:
        raise SystemExit(
            f"--resume {path}: the checkpoint was trained with other settings: "
            + ", ".join(differences)
        )


def _plain_state(state: dict) -> dict:
    """A scheduler's state without the functions older PyTorch versions keep in it (OneCycleLR's
    ``anneal_func`` in torch 2.2, for one): a checkpoint stores data, and the scheduler rebuilds
    them when it is constructed."""
    return {key: value for key, value in state.items() if not callable(value)}


def save(path_template: str, model, config, optimizer, schedule, step: int, settings: dict):
    """Rank 0's checkpoint, written to a temporary file first so that a crash mid-write never
    leaves a truncated checkpoint behind."""
    path = Path(path_template.format(step=step))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_checkpoint(
        partial,
        model,
        config,
        step=step,
        optimizer=optimizer.state_dict(),
        scheduler=_plain_state(schedule.state_dict()),
        training=settings,
    )
    os.replace(partial, path)
    return path


def evaluate(model, anchors, args, device) -> float:
    """VOC mAP@0.5 on ``--eval-images`` held-out images."""
    test_set = ShapesDataset(args.eval_images, args.image_size, seed=args.eval_seed)
    predictions, targets = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(test_set), 50):
            items = [test_set[i] for i in range(start, min(start + 50, len(test_set)))]
            images = torch.stack([image for image, _ in items]).to(device)
            outputs = model(images)
            size = (args.image_size, args.image_size)
            for result in postprocess_detections(
                outputs.class_logits, outputs.box_deltas, anchors, size, max_detections=100
            ):
                predictions.append(
                    {"boxes": result.boxes, "scores": result.scores, "labels": result.labels}
                )
            targets.extend(target for _, target in items)
    predictions = [{key: value.cpu() for key, value in p.items()} for p in predictions]
    return voc_evaluate(predictions, targets).mean_ap


def log(context: DistributedContext, message: str) -> None:
    if context.is_main:
        print(message, flush=True)


def train(args: argparse.Namespace, context: DistributedContext) -> None:
    device, world_size = context.device, context.world_size
    config = detector_config(args)
    settings = training_settings(args, world_size)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    model = config.build().to(device)
    if args.sync_bn:
        if device.type != "cuda":
            raise SystemExit("--sync-bn: SyncBatchNorm needs GPUs (nccl)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    step = 0
    if args.resume:
        metadata = load_checkpoint(args.resume, model, config)
        check_resumable(args.resume, metadata.get("training", {}), settings)
        optimizer.load_state_dict(metadata["optimizer"])
        schedule.load_state_dict(metadata["scheduler"])
        step = int(metadata["step"])
        if metadata["training"].get("world_size") != world_size:
            log(
                context,
                "note: another number of processes than the checkpoint's: the same "
                "global batch, but the images come in another order than without the break",
            )
        log(context, f"resumed from {args.resume} at step {step}")
    # DDP broadcasts rank 0's weights to the others here, then all-reduces gradients in
    # buckets while backward runs.
    network = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if context.backend
        else model
    )
    anchors = model.anchors((args.image_size, args.image_size), device=device)
    dataset = ShapesDataset(args.num_images, args.image_size, seed=args.data_seed)
    steps_per_epoch = (len(dataset) // world_size) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(
            f"--num-images {args.num_images} is fewer than one global batch "
            f"({args.batch_size} x {world_size} processes)"
        )
    log(
        context,
        f"{world_size} process(es), backend {context.backend or 'none'}, device {device.type}; "
        f"global batch {settings['global_batch']} ({args.batch_size} per process), "
        f"{steps_per_epoch} steps per epoch, steps {step} -> {args.steps}",
    )
    record, timings = [], []
    network.train()
    while step < args.steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = shard_batches(
            len(dataset),
            args.batch_size,
            rank=context.rank,
            world_size=world_size,
            epoch=epoch,
            seed=args.data_seed,
        )[offset : offset + args.steps - step]
        flips = flip_table(len(dataset), args.seed, epoch)
        loader = DataLoader(
            IndexedDataset(dataset),
            batch_sampler=batches,
            collate_fn=collate_indexed,
            num_workers=args.workers,
        )
        started = time.perf_counter()
        for indices, images, boxes, labels in loader:
            loaded = time.perf_counter()
            flip = flips[indices]
            images, boxes, labels = images.to(device), boxes.to(device), labels.to(device)
            images, boxes = horizontal_flip(images, boxes, labels, flip.to(device))
            outputs = network(images)
            loss = detection_loss(outputs.class_logits, outputs.box_deltas, anchors, boxes, labels)
            # detection_loss divides by this process's positive anchors; one process on the
            # global batch divides by all of them. Summing the counts (and, for the log, the
            # losses) over the processes makes the gradient the global batch's.
            local_positive = loss.num_positive.sum().clamp(min=1).to(loss.total.dtype)
            totals = all_reduce_sum(
                torch.stack(
                    (
                        loss.num_positive.sum().to(loss.total.dtype),
                        loss.classification.detach() * local_positive,
                        loss.regression.detach() * local_positive,
                    )
                )
            )
            global_positive = totals[0].clamp(min=1)
            # DDP averages the gradients over the processes: hence the factor world_size.
            scaled = loss.total * (local_positive / global_positive * world_size)
            optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            finished = time.perf_counter()
            timings.append((loaded - started, finished - loaded))
            if args.record_dir:
                record.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "indices": indices.tolist(),
                        "flips": flip.tolist(),
                        "data_seconds": loaded - started,
                        "compute_seconds": finished - loaded,
                    }
                )
            if step % args.log_every == 0 or step == args.steps:
                classification, regression = (totals[1:] / global_positive).tolist()
                log(
                    context,
                    f"step {step:5d}  loss {classification + regression:.4f} "
                    f"(class {classification:.4f}, box {regression:.4f})  "
                    f"lr {schedule.get_last_lr()[0]:.2e}",
                )
            last = step == args.steps
            if context.is_main and (
                last or (args.checkpoint_every and step % args.checkpoint_every == 0)
            ):
                path = save(args.checkpoint, model, config, optimizer, schedule, step, settings)
                log(context, f"step {step:5d}  checkpoint {path}")
            started = time.perf_counter()
    if args.record_dir:
        folder = Path(args.record_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"rank": context.rank, "world_size": world_size, "steps": record}
        (folder / f"rank{context.rank}.json").write_text(json.dumps(payload))
    report_timings(context, timings)
    if args.eval_images and context.is_main:
        log(
            context,
            f"VOC mAP@0.5 on {args.eval_images} held-out images: "
            f"{evaluate(model, anchors, args, device):.3f}",
        )


def report_timings(context: DistributedContext, timings: list[tuple[float, float]]) -> None:
    """Median seconds per step on rank 0, data loading and the rest apart (the first steps,
    which warm up the allocator and the communication, are left out)."""
    measured = timings[2:] if len(timings) > 4 else timings
    if not measured:
        return
    data = statistics.median(t[0] for t in measured)
    compute = statistics.median(t[1] for t in measured)
    log(
        context,
        f"time per step (median of {len(measured)}): {1000 * (data + compute):.0f} ms = "
        f"{1000 * data:.0f} ms data + {1000 * compute:.0f} ms forward, backward, all-reduce, step",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = init_distributed(args.backend)
    try:
        train(args, context)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
