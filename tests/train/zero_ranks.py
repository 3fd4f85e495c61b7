"""Two gloo ranks take one DeepSpeed step on batches whose missing-modality graphs differ.

Run as a script by ``test_zero_consistency.py``::

    python zero_ranks.py STAGE GRAD_ACCUM OUT

Rank 0's batch has EEG and EOG; rank 1's has no EOG at all, so its forward pass skips the EOG
branch and the cross-attention. Both ranks start from the same weights; after one optimizer step
(SGD, ``GRAD_ACCUM`` micro-batches) rank 0 saves the weights to ``OUT``. Whatever the ZeRO stage,
they must equal stage 0's, whose all-reduce is correct by construction.
"""

import os
import socket
import sys

os.environ["DS_ACCELERATOR"] = "cpu"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD, BATCH, LENGTH = 2, 2, 5


def rank_main(rank: int, port: int, stage: int, accum: int, out: str) -> None:
    """One rank: build the same model, a rank-specific batch, take one DeepSpeed step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import deepspeed

    from somnray.models import create_model
    from somnray.models.base import SleepBatch
    from somnray.train.loop import ForwardBackward

    torch.manual_seed(0)
    model = create_model("coresleep_tiny")
    gen = torch.Generator().manual_seed(100 + rank)
    n = BATCH * accum
    signals = {m: torch.randn(n, LENGTH, 3000, generator=gen) for m in ("eeg", "eog")}
    present = torch.ones(n, LENGTH, 2, dtype=torch.bool)
    if rank == 1:
        present[..., 1] = False  # no EOG anywhere in this rank's batch: another graph
    labels = torch.randint(0, 5, (n, LENGTH), generator=gen)
    config = {"train_batch_size": n * WORLD, "train_micro_batch_size_per_gpu": BATCH,
              "gradient_accumulation_steps": accum, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 2 ** 31 - 1}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                      config=config, dist_init_required=False)
    weights = engine.module.resolve_loss_weights({})
    forward_backward = ForwardBackward(engine, world=WORLD, zero_stage=stage)
    for k in range(accum):
        part = slice(k * BATCH, (k + 1) * BATCH)
        batch = SleepBatch({m: x[part] for m, x in signals.items()}, present[part], labels[part], ("eeg", "eog"))
        forward_backward(batch, weights)
        engine.step()
    if rank == 0:
        torch.save({name: p.detach().float().clone() for name, p in engine.module.named_parameters()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    stage, accum, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(port, stage, accum, out), nprocs=WORLD)
