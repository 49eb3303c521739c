"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Unlike the plan's methods, which prune a trained model in one shot, IMP needs
training data and repeated training runs from (near) initialisation, so it is
a function of its own rather than a registered sparsify method. Its result
plugs into the engine through :meth:`LotteryTicket.plan`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from rayzor.compression._distill import check_training_args, cycle_batches
from rayzor.compression._layers import compressible_layers
from rayzor.compression._plan import CompressionPlan, FinetuneConfig
from rayzor.compression._pruning import MagnitudePruning
from rayzor.compression._registry import MethodConfig, check_int, check_real, get_handler
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = ["LotteryTicket", "lottery_ticket"]


@dataclass
class LotteryTicket:
    """Result of :func:`lottery_ticket`.

    Attributes:
        model: The ticket: the rewound weights with the final masks, trained
            with the masks held fixed; on CPU, in eval mode, pruned weights
            exactly zero.
        masks: Layer name -> bool mask (True = kept), for every pruned layer.
        rewind_state: The state dict (weights after ``rewind_step`` training
            steps) every round restarted from, on CPU.
        history: Per pruning round: ``{"round": r, "sparsity": s}``, the
            fraction of the pruned layers' weights removed after round ``r``.
    """

    model: nn.Module
    masks: dict[str, Tensor]
    rewind_state: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def sparsity(self) -> dict[str, float]:
        """Layer name -> fraction of its weights pruned."""
        return {name: 1.0 - float(mask.sum()) / mask.numel() for name, mask in self.masks.items()}

    def plan(
        self, quantize: MethodConfig | None = None, finetune: FinetuneConfig = FinetuneConfig()
    ) -> CompressionPlan:
        """A plan that keeps exactly this ticket's masks when it compresses :attr:`model`.

        Each layer gets :class:`MagnitudePruning` at its ticket sparsity: the
        ticket's pruned weights are its only zeros, so they are exactly the
        smallest magnitudes the method removes. ``quantize`` (a quantize-stage
        config) is added to every layer; ``finetune`` is the plan's fine-tune.
        """
        if quantize is not None and (not isinstance(quantize, MethodConfig) or quantize.stage != "quantize"):
            raise ConfigError("quantize", quantize, "a quantize-stage MethodConfig such as UniformQuantization(4)")
        extra = () if quantize is None else (quantize,)
        return CompressionPlan({name: (MagnitudePruning(s), *extra) for name, s in self.sparsity.items()}, finetune)


def _round_sparsity(target: float, r: int, rounds: int) -> float:
    """Sparsity after round ``r`` of ``rounds``: the same fraction of the survivors goes each round."""
    return 1.0 - (1.0 - target) ** (r / rounds)


def _train_masked(
    net: nn.Module,
    masks: Mapping[str, Tensor],
    loader: DataLoader,
    *,
    start: int,
    total: int,
    lr: float,
    loss_fn: Callable[[Tensor, Any], Tensor],
    device: torch.device,
    seed: int,
    snapshot_at: int | None = None,
) -> dict[str, Tensor] | None:
    """Train ``net`` in place for steps ``start .. total - 1`` of the loader's seeded order, masks held fixed.

    Steps before ``start`` are drawn and skipped, so a rewound run sees the
    same batches the first run saw after its rewind point. Returns the state
    dict before step ``snapshot_at`` when asked.
    """
    torch.manual_seed(seed)
    net.to(device).train()
    modules = dict(net.named_modules())
    masked = [(modules[name].weight, mask.to(device)) for name, mask in masks.items()]
    with torch.no_grad():
        for w, mask in masked:
            w.masked_fill_(~mask, 0.0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    snapshot = None
    for step, (inputs, targets) in zip(range(total), cycle_batches(loader)):
        if step == snapshot_at:
            snapshot = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if step < start:
            continue
        opt.zero_grad(set_to_none=True)
        loss_fn(net(inputs.to(device)), targets.to(device)).backward()
        opt.step()
        # Adam's momentum moves pruned weights even with zero gradient; re-zero them.
        with torch.no_grad():
            for w, mask in masked:
                w.masked_fill_(~mask, 0.0)
    net.cpu().eval()
    return snapshot


def lottery_ticket(
    model: nn.Module,
    train_data: Dataset,
    *,
    sparsity: float | Mapping[str, float],
    rounds: int,
    epochs_per_round: int,
    rewind_step: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Any], Tensor] = F.cross_entropy,
    device: str | torch.device = "cpu",
) -> LotteryTicket:
    """Find a sparse trainable subnetwork by iterative magnitude pruning with rewinding.

    The lottery ticket procedure (Frankle & Carbin 2019,
    https://arxiv.org/abs/1803.03635) with weight rewinding (Frankle et al.
    2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
    https://arxiv.org/abs/1912.05671): train from ``model``'s weights for
    ``T = epochs_per_round`` epochs, keeping the weights ``theta_k`` after
    ``k = rewind_step`` steps; then, ``rounds`` times, prune each layer by
    magnitude (layer-wise, the same fraction of the survivors each round, so
    round ``r`` of ``R`` reaches ``1 - (1 - s)^(r/R)``) and rewind the
    survivors (and every other parameter and buffer) to ``theta_k``, training
    the masked network for the remaining ``T - k`` steps of the same data
    order before the next pruning. The last round's rewound network, trained
    once more, is the ticket. ``k = 0`` is the original paper's rewinding to
    initialisation. Each run uses a fresh Adam optimizer.

    Budget: ``rounds + 1`` trainings of ``T - k`` steps, plus the first ``k``.

    Args:
        model: The network at initialisation (e.g. rebuilt untrained from a
            task's ``arch``); left untouched.
        train_data: Map-style dataset of ``(input, target)`` pairs.
        sparsity: Final fraction of weights pruned, in ``[0, 1)``: one value
            for every compressible layer, or layer name -> value for those
            layers only (e.g. a lower rate for the output layer, as the paper does).
        rounds: Pruning rounds, >= 1.
        epochs_per_round: Training epochs per round (``T``), >= 1.
        rewind_step: Step ``k`` to rewind to, ``0 <= k < T`` in steps.
        lr: Adam learning rate.
        batch_size: Training batch size.
        seed: Seeds the data order (the same every round) and the training.
        loss_fn: ``loss_fn(output, target) -> scalar``.
        device: Where training runs.

    Returns:
        The ticket, its masks, the rewind state and the per-round sparsity.

    Raises:
        ConfigError: A sparsity outside ``[0, 1)`` or naming a layer that is
            not compressible, ``rounds`` / ``epochs_per_round`` < 1, a rewind
            step outside the round, bad ``lr`` / ``batch_size`` / ``seed`` /
            ``device``, or an empty dataset; before any training.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "an nn.Module")
    layers = compressible_layers(model)
    if isinstance(sparsity, Mapping):
        targets = {}
        for name, value in sparsity.items():
            if name not in layers:
                raise ConfigError(f"sparsity[{name!r}]", name, list(layers))
            targets[name] = check_real(f"sparsity[{name!r}]", value, 0.0, 1.0, hi_open=True)
    else:
        s = check_real("sparsity", sparsity, 0.0, 1.0, hi_open=True)
        targets = {name: s for name in layers}
    rounds = check_int("rounds", rounds, 1)
    epochs_per_round = check_int("epochs_per_round", epochs_per_round, 1)
    lr, batch_size, seed, device, n = check_training_args(lr, batch_size, seed, device, train_data)
    steps_per_round = epochs_per_round * math.ceil(n / batch_size)
    rewind_step = check_int("rewind_step", rewind_step, 0, steps_per_round - 1, " (steps of one round)")

    def loader() -> DataLoader:
        # A fresh loader per run with the same seed: every round sees the same data order.
        return DataLoader(
            train_data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )

    train = dict(lr=lr, loss_fn=loss_fn, device=device, seed=seed)
    net = copy.deepcopy(model)
    masks = {name: torch.ones_like(layers[name].weight, dtype=torch.bool, device="cpu") for name in targets}
    rewind = _train_masked(net, {}, loader(), start=0, total=steps_per_round, snapshot_at=rewind_step, **train)
    history = []
    for r in range(1, rounds + 1):
        trained = compressible_layers(net)
        for name, target in targets.items():
            cfg = MagnitudePruning(_round_sparsity(target, r, rounds))
            cw = get_handler(cfg)(trained[name], CompressedWeight.from_dense(trained[name].weight, masks[name]), cfg)
            if cw.mask is not None:
                masks[name] = cw.mask
        kept = sum(int(m.sum()) for m in masks.values())
        history.append({"round": r, "sparsity": 1.0 - kept / max(sum(m.numel() for m in masks.values()), 1)})
        net.load_state_dict(rewind)
        _train_masked(net, masks, loader(), start=rewind_step, total=steps_per_round, **train)
    return LotteryTicket(net.eval(), masks, rewind, history)
