"""Data-parallel training (train.train_stage under torch.distributed, gloo on CPU): two processes that share each
batch take the same steps as one process; a process group of one changes nothing; `torchrun` runs train_task.py."""
import datetime
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import GPT, GPTConfig
from train import StageConfig, train_stage
from train_toy import ToyData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

# No dropout, and every sequence of a batch has as many valid targets, so the mean of the ranks' mean losses is the
# mean over the whole batch: N processes must then match one process up to float rounding. Streams on half of the
# positions (drawn from the whole batch: the same rows on every rank).
CONFIG = GPTConfig(vocab_size=len(ToyData(10, seed=0).words), block_size=32, n_layer=2, n_head=2, n_embd=16,
                   n_streams=2, n_msa_layers=1, dropout=0.0)
STAGE = StageConfig("ddp", steps=12, lr=1e-2, save_every=5, seed=3, stream_fraction=0.5)


def batches(batch_size: int):
    data = ToyData(200, seed=0)
    return lambda step: data.batch(step, batch_size, 16, seed=1)


def train_once(ckpt: str):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    history = train_stage(model, batches(4), STAGE, ckpt, quiet=True)
    return model.state_dict(), history


def worker(rank: int, world: int, folder: str):
    """One rank: train, save what it got, and check the error for a batch that does not split over the ranks."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # a failed rank must not hang the other
    try:
        torch.manual_seed(rank)  # ranks start from different weights on purpose: train_stage takes rank 0's
        model = GPT(CONFIG)
        history = train_stage(model, batches(4), STAGE, os.path.join(folder, "stage.pt"), quiet=True)
        try:
            train_stage(GPT(CONFIG), batches(3), StageConfig("odd", 1, 1e-2), quiet=True)
            error = None
        except ValueError as e:
            error = str(e)
        torch.save(dict(model=model.state_dict(), history=history, error=error), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_take_the_steps_of_one_process(tmp_path):
    single, single_history = train_once(str(tmp_path / "single.pt"))
    # spawn, not fork: a fork after this process ran autograd (any earlier test) can break the child's backward
    workers = mp.start_processes(worker, args=(2, str(tmp_path)), nprocs=2, start_method="spawn", join=False)
    deadline = time.time() + 120
    while not workers.join(timeout=1):
        if time.time() > deadline:
            for p in workers.processes:
                p.kill()
            pytest.fail("the two training processes did not finish in 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for k in single:
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k  # every rank took the same steps
        torch.testing.assert_close(ranks[0]["model"][k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    assert ranks[0]["history"] == ranks[1]["history"]  # logged values are means over the ranks
    assert ranks[0]["history"]["step"] == single_history["step"]
    torch.testing.assert_close(ranks[0]["history"]["loss"], single_history["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["history"]["stream_acc"], single_history["stream_acc"])
    saved = torch.load(tmp_path / "stage.pt")  # the checkpoint (rank 0 writes it) holds the final weights
    assert saved["done"] and all(torch.equal(saved["model"][k], ranks[0]["model"][k]) for k in single)
    for r in ranks:
        assert "a batch of 3 sequences does not split over 2 processes" in r["error"]


def test_one_rank_process_group_changes_nothing(tmp_path):
    """N = 1 under a process group (torchrun --nproc_per_node=1) is bit-identical to a plain run."""
    plain, plain_history = train_once(str(tmp_path / "plain.pt"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        grouped, grouped_history = train_once(str(tmp_path / "grouped.pt"))
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(plain[k], grouped[k]) for k in plain) and plain_history == grouped_history


DATA = os.environ.get("SPECSTREAM_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data")
TOKENIZER = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "tiktoken_cache")


@pytest.mark.skipif(not os.path.isdir(DATA) or not os.path.isdir(TOKENIZER),
                    reason="train_task.py needs the real-task data and the GPT-2 tokenizer files (no downloads)")
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="no torchrun next to this Python")
def test_torchrun_two_processes_train_task_quick(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=TOKENIZER, SPECSTREAM_DATA=DATA, OMP_NUM_THREADS="1")
    # --stream-targets data: no generation of the model's own continuations, which every rank would repeat
    command = [torchrun, "--standalone", "--nproc_per_node=2", "train_task.py", "--task", "e2e", "--quick",
               "--method", "ss", "--stream-targets", "data", "--threads", "1", "--out-dir", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [line for line in run.stdout.splitlines() if "trained in" in line]
    assert len(reports) == 1, run.stdout  # rank 0 reports, the other rank is silent
    paths = reports[0].split(" -> ")[1].split(", ")
    assert len(paths) >= 3  # the next-token model, SS and its pruning adapter
    for path in paths:
        ckpt = torch.load(path, weights_only=False)
        assert ckpt["done"] and ckpt["history"]["loss"], path
