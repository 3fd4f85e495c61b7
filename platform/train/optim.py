"""Optimizers and learning-rate schedules built from :class:`~somnray.train.config.OptimConfig`.

DeepSpeed receives the optimizer as a torch *client* optimizer (DeepSpeed's own FusedAdam /
DeepSpeedCPUAdam are compiled just in time on first use, about a minute on a CPU machine, and do
not build on every machine; see docs/training.md), and the schedule as a ``LambdaLR`` stepped once
per optimizer step.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch

from .config import OptimConfig


def learning_rate_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                         parameter_groups: Mapping[str, Sequence[str]], cfg: OptimConfig) -> list[dict[str, Any]]:
    """Optimizer param groups of ``cfg.group_lr``: one per named group with trainable parameters.

    A parameter in several named groups takes the rate of the smallest one (``{all: 1e-5,
    heads: 1e-3}`` trains the heads faster than the rest); parameters in none stay at ``cfg.lr``
    in a first, unnamed group. Each group records its name under ``"group"``, so the rates can be
    re-applied after an optimizer state is loaded (:func:`group_base_lrs`).
    """
    owner: dict[str, str] = {}
    # Larger groups first, so a smaller group's rate overwrites theirs.
    for group in sorted(cfg.group_lr, key=lambda g: len(parameter_groups[g]), reverse=True):
        owner.update({name: group for name in parameter_groups[group]})
    members: dict[str | None, list[torch.nn.Parameter]] = {}
    for name, param in named_parameters:
        if param.requires_grad:
            members.setdefault(owner.get(name), []).append(param)
    groups = [{"params": members.pop(None), "group": None}] if None in members else []
    return groups + [{"params": members[g], "lr": cfg.group_lr[g], "group": g} for g in sorted(members)]


def group_base_lrs(param_groups: Sequence[Mapping[str, Any]], cfg: OptimConfig) -> list[float]:
    """The configured base rate of each optimizer param group (``cfg.lr`` unless ``group_lr`` names it)."""
    return [cfg.group_lr.get(g.get("group"), cfg.lr) if g.get("group") else cfg.lr for g in param_groups]


def build_optimizer(params: Iterable[torch.nn.Parameter] | Sequence[Mapping[str, Any]],
                    cfg: OptimConfig) -> torch.optim.Optimizer:
    """The torch optimizer of ``cfg`` over the parameters that require a gradient.

    ``params`` are parameters, or param groups from :func:`learning_rate_groups` (learning rates
    per named parameter group).

    Raises
    ------
    ValueError
        If no parameter requires a gradient (everything frozen).
    """
    params = list(params)
    if params and isinstance(params[0], Mapping):
        trainable = [g for g in params if g["params"]]
    else:
        trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: every parameter group is frozen")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
               amsgrad=cfg.amsgrad)


def lr_factor(cfg: OptimConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer ``step`` (0-based).

    ``constant``: 1 (after an optional linear warm-up). ``warmup_cosine``: linear warm-up from 0
    over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``. ``step``: multiplied
    by ``step_gamma`` at each of ``step_milestones`` (after the warm-up, if any).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "warmup_cosine":
        span = max(cfg.max_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        floor = cfg.min_lr / cfg.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(step >= m for m in cfg.step_milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
