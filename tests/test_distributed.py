"""Training on several processes: ``examples/train_ddp.py`` under ``torchrun`` with 2 CPU
processes (gloo, loopback only) against one process on the same global batches.

The script runs twice (about 10-20 s each on 2 cores): 4 steps without a break, saving a
checkpoint at steps 2 and 4, and 2 steps resumed from the step-2 checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from detlib import ShapesDataset, collate_detection, detection_loss
from detlib.distributed import (
    DistributedContext,
    all_reduce_sum,
    init_distributed,
    launched_by_torchrun,
    shard_batches,
)
from detlib.training import DetectorConfig, horizontal_flip

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
WORLD_SIZE, BATCH, STEPS, NUM_IMAGES, IMAGE_SIZE, LR = 2, 2, 4, 12, 64, 4e-3
CONFIG = DetectorConfig(backbone_widths=(4, 4, 8, 8, 8), channels=8, bifpn_layers=1, head_layers=1)
TINY = [
    "--batch-size", str(BATCH), "--steps", str(STEPS), "--num-images", str(NUM_IMAGES),
    "--image-size", str(IMAGE_SIZE), "--lr", str(LR), "--log-every", "1",
    "--backbone-widths", *map(str, CONFIG.backbone_widths), "--channels", str(CONFIG.channels),
    "--bifpn-layers", str(CONFIG.bifpn_layers), "--head-layers", str(CONFIG.head_layers),
]  # fmt: skip
LAUNCH_TIMEOUT_S = 240  # a launch takes 10-20 s; a hang (a lost peer) must not stall CI

# Why a tolerance: gloo's all-reduce sums the two processes' gradients, the single process sums
# the same terms in another order (autograd over the concatenated batch), and the loss is
# rescaled by the global count of positive anchors; float32 addition is not associative, so the
# weights differ by rounding (measured: 1.5e-7 at most after 4 steps), which Adam's normalised
# steps carry on. 1e-5 leaves room for other CPUs' kernels and stays far below one step's change
# (lr 4e-3 moves a weight by up to 4e-3).
ATOL, RTOL = 1e-5, 1e-4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """The processes started below ``pid`` (torchrun puts its workers in new sessions, so
    killing its process group would leave them running)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def launch(tmp_path: Path, *extra: str) -> str:
    """Run the script under ``python -m torch.distributed.run`` with 2 CPU processes; returns
    its output. On a timeout the launcher and every worker it started are killed."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD_SIZE}",
        "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        str(SCRIPT), *TINY, *extra,
    ]  # fmt: skip
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",  # gloo's traffic on the loopback interface only
        CUDA_VISIBLE_DEVICES="",  # gloo on the CPU even on a machine with GPUs
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        workers = descendants(process.pid)
        process.send_signal(signal.SIGTERM)  # torchrun stops its workers on SIGTERM
        time.sleep(5)
        for pid in [process.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s")
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def runs():
    """The uninterrupted run and the resumed one, in a folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="detlib-ddp-") as name:
        yield run_both(Path(name))


def run_both(folder: Path):
    whole = launch(
        folder, "--checkpoint", "whole/step{step}.pt", "--checkpoint-every", "2",
        "--record-dir", "record",
    )  # fmt: skip
    resumed = launch(
        folder, "--checkpoint", "resumed/step{step}.pt", "--checkpoint-every", "0",
        "--resume", "whole/step2.pt",
    )  # fmt: skip
    records = [
        json.loads((folder / "record" / f"rank{rank}.json").read_text())["steps"]
        for rank in range(WORLD_SIZE)
    ]
    return folder, whole, resumed, records


def load_state(path: Path) -> tuple[dict, dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["state_dict"], checkpoint["metadata"]


def single_process(records: list[list[dict]], steps: int) -> torch.nn.Module:
    """One process trains on the same global batches (the ranks' batches together, with their
    flips), with one loss over the whole batch. Batch norm is computed per rank's part, as the
    DDP processes do (each normalises over its own images); everything else sees the global
    batch at once."""
    torch.manual_seed(0)
    model = CONFIG.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=steps, pct_start=0.1
    )
    anchors = model.anchors((IMAGE_SIZE, IMAGE_SIZE))
    dataset = ShapesDataset(NUM_IMAGES, IMAGE_SIZE, seed=0)
    model.train()
    for step in range(steps):
        parts = [rank_steps[step] for rank_steps in records]
        indices = [i for part in parts for i in part["indices"]]
        flips = torch.tensor([f for part in parts for f in part["flips"]])
        images, boxes, labels = collate_detection([dataset[i] for i in indices])
        images, boxes = horizontal_flip(images, boxes, labels, flips)
        outputs = [model(chunk) for chunk in images.split(BATCH)]
        class_logits = torch.cat([o.class_logits for o in outputs])
        box_deltas = torch.cat([o.box_deltas for o in outputs])
        loss = detection_loss(class_logits, box_deltas, anchors, boxes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        schedule.step()
    return model


def inert_parameters(model: torch.nn.Module, images: torch.Tensor) -> set[str]:
    """The parameters the training-mode output does not depend on: mostly a conv bias right
    before a batch norm, which subtracts the batch mean and the bias with it (and, at this tiny
    image size, what feeds the 1 x 1 P7 map, which the head's batch norm flattens). Each is
    shifted by 0.5, one at a time, and the output compared."""
    model.train()
    with torch.no_grad():
        before = torch.cat(model(images), dim=2)
        inert = set()
        for name, parameter in model.named_parameters():
            parameter += 0.5
            if torch.allclose(torch.cat(model(images), dim=2), before, atol=1e-4):
                inert.add(name)
            parameter -= 0.5
    return inert


def test_two_processes_train_like_one_on_the_global_batch(runs):
    folder, whole, _, records = runs
    assert f"global batch {WORLD_SIZE * BATCH} ({BATCH} per process)" in whole
    distributed, metadata = load_state(folder / "whole" / f"step{STEPS}.pt")
    assert metadata["step"] == STEPS and metadata["training"]["world_size"] == WORLD_SIZE
    reference = single_process(records, STEPS)
    images = torch.stack([ShapesDataset(4, IMAGE_SIZE, seed=9)[i][0] for i in range(4)])
    # Inert parameters get a gradient of pure rounding noise (their true gradient is 0), and
    # Adam divides a gradient by its own running magnitude: noise becomes steps of +-lr with a
    # random sign, different in the two runs. So they are left out; the output checks below
    # show that they make no difference.
    inert = inert_parameters(reference, images)
    assert "bifpn.inputs.p3.0.bias" in inert  # a 1 x 1 conv's bias, then batch norm
    assert len(inert) < len(list(reference.parameters())) / 3
    torch.manual_seed(0)
    initial = CONFIG.build().state_dict()
    moved = 0.0
    for name, weight in reference.named_parameters():
        if name not in inert:
            torch.testing.assert_close(distributed[name], weight.detach(), atol=ATOL, rtol=RTOL)
            moved = max(moved, float((distributed[name] - initial[name]).abs().max()))
    # the comparison can fail: training moved the weights far more than the tolerance
    assert moved > 100 * ATOL
    model = CONFIG.build()
    model.load_state_dict(distributed)
    model.train()
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    torch.testing.assert_close(ours.class_logits, theirs.class_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.box_deltas, theirs.box_deltas, atol=1e-4, rtol=1e-4)


def test_resuming_from_the_rank0_checkpoint_continues_identically(runs):
    folder, _, resumed, _ = runs
    assert "resumed from whole/step2.pt at step 2" in resumed
    uninterrupted, _ = load_state(folder / "whole" / f"step{STEPS}.pt")
    continued, metadata = load_state(folder / "resumed" / f"step{STEPS}.pt")
    assert metadata["step"] == STEPS
    assert uninterrupted.keys() == continued.keys()
    for name, value in uninterrupted.items():  # weights and batch-norm statistics
        torch.testing.assert_close(continued[name], value, atol=ATOL, rtol=RTOL)
    # the optimizer's moments and the schedule carried on too
    assert metadata["scheduler"]["last_epoch"] == STEPS
    assert not (folder / "resumed" / "step2.pt").exists()  # --checkpoint-every 0: the end only


def test_each_rank_reads_a_disjoint_shard_from_the_distributed_sampler(runs):
    _, _, _, records = runs
    steps_per_epoch = (NUM_IMAGES // WORLD_SIZE) // BATCH
    assert STEPS > steps_per_epoch  # the run crosses an epoch, so set_epoch is exercised
    for epoch in range(2):
        shards = []
        for rank, rank_steps in enumerate(records):
            seen = [i for s in rank_steps if s["epoch"] == epoch for i in s["indices"]]
            sampler = DistributedSampler(
                range(NUM_IMAGES), WORLD_SIZE, rank, shuffle=True, seed=0, drop_last=True
            )
            sampler.set_epoch(epoch)
            assert seen == list(sampler)[: len(seen)]
            shards.append(set(seen))
            assert len(seen) == len(set(seen))  # no image twice in an epoch
        assert not shards[0] & shards[1]
    first = [s["indices"] for s in records[0]]
    assert first[0] != first[steps_per_epoch]  # reshuffled in the second epoch


# ----------------------------------------------------------------------- the helpers alone
def test_shard_batches_cover_the_data_once_across_ranks():
    for world_size in (1, 2, 3):
        batches = [
            shard_batches(20, 3, rank=rank, world_size=world_size, epoch=1, seed=5)
            for rank in range(world_size)
        ]
        seen = [i for rank_batches in batches for batch in rank_batches for i in batch]
        assert len(seen) == len(set(seen)) == world_size * ((20 // world_size) // 3) * 3
        assert all(len(batch) == 3 for rank_batches in batches for batch in rank_batches)
    assert shard_batches(20, 3, epoch=0) != shard_batches(20, 3, epoch=1)
    assert shard_batches(4, 8) == []
    assert shard_batches(5, 2, shuffle=False) == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_items": 0}, "num_items must be a positive int"),
        ({"batch_size": 2.0}, "batch_size must be a positive int"),
        ({"rank": 2, "world_size": 2}, r"rank must be an int in \[0, 2\)"),
        ({"epoch": -1}, "epoch must be an int >= 0"),
    ],
)
def test_shard_batches_rejects_bad_input(kwargs, message):
    arguments = {"num_items": 10, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        shard_batches(**arguments)


def test_without_torchrun_one_process_and_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    context = init_distributed("gloo")
    assert isinstance(context, DistributedContext)
    assert (context.rank, context.world_size, context.backend, context.is_main) == (
        0,
        1,
        None,
        True,
    )
    value = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(value) is value
    with pytest.raises(ValueError, match="backend must be one of"):
        init_distributed("mpi")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'nccl' needs CUDA"):
            init_distributed("nccl")


def test_script_help_lists_the_options(capsys):
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--nproc_per_node", "--batch-size", "--resume", "--checkpoint-every"):
        assert option in text
    with pytest.raises(SystemExit):
        script.parse_args(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
