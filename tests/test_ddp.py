"""Two-process DistributedDataParallel on the CPU (gloo): the mixer is given the DDP wrapper and the
original layer names; each rank draws its own plans; gradients are synchronised by DDP.
"""

from __future__ import annotations

import copy
import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import manifold_mixup as mm

WORLD = 2
TIMEOUT_S = 60


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(h + self.block(h))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_gradient(model: nn.Module, x, y, plan) -> torch.Tensor:
    """This rank's gradient without DDP: the block's output mixed by a hook written here."""
    w = plan.lam[:, None]

    def hook(module, inputs, h):
        return w * h + (1 - w) * h[plan.perm]

    handle = model.block.register_forward_hook(hook)
    try:
        onehot = nn.functional.one_hot(y, 4).float()
        targets = w * onehot + (1 - w) * onehot[plan.perm]
        loss = mm.soft_cross_entropy(model(x), targets)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    finally:
        handle.remove()
    return torch.cat([g.flatten() for g in grads])


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        g = torch.Generator().manual_seed(0)
        model = Net()
        with torch.no_grad():  # the same weights on every rank, from a seed
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        reference = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        # the same data on both ranks: any difference between their plans comes from the rank
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(2))

        mixer = mm.ManifoldMixup(ddp, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(0))
        logits, targets = mixer(x, y)
        plan = mixer.last_plan
        assert plan.layer == "block"
        mm.soft_cross_entropy(logits, targets).backward()

        perms = [torch.empty_like(plan.perm) for _ in range(WORLD)]
        lams = [torch.empty_like(plan.lam) for _ in range(WORLD)]
        dist.all_gather(perms, plan.perm)
        dist.all_gather(lams, plan.lam.contiguous())
        assert not (torch.equal(perms[0], perms[1]) and torch.equal(lams[0], lams[1])), "ranks drew the same plan"

        grad = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])
        grads = [torch.empty_like(grad) for _ in range(WORLD)]
        dist.all_gather(grads, grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)  # DDP synchronised them

        # and they are the mean of the ranks' own gradients, each under its own plan
        local = _local_gradient(reference, x, y, plan)
        dist.all_reduce(local)
        torch.testing.assert_close(grad, local / WORLD, rtol=1e-5, atol=1e-6)

        # a second step draws a new plan on each rank
        mixer(x, y)
        assert not (torch.equal(mixer.last_plan.perm, plan.perm) and torch.equal(mixer.last_plan.lam, plan.lam))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~7-11 s on 2 CPU cores: two fresh interpreters import torch, and DDP's constructor takes ~4 s
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_rank_ddp_mixes_with_rank_plans_and_synchronised_gradients():
    ctx = mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=False)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=TIMEOUT_S + 30)
    try:
        while not ctx.join(timeout=1):  # raises (with the rank's traceback) if a rank failed
            if datetime.datetime.now() > deadline:
                pytest.fail(f"the two DDP ranks did not finish within {TIMEOUT_S + 30} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
