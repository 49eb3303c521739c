"""Knowledge distillation: a student learns from a trained teacher's outputs (and features).

The engine's recovery fine-tune (:func:`compression.compress` with
``FinetuneConfig(distill_alpha > 0)``) uses the same loss with the
uncompressed model as the teacher; :func:`distill` trains a separate, smaller
student.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from rayzor.compression._registry import check_int, check_real
from rayzor.errors import ConfigError

__all__ = ["DistillConfig", "kd_loss", "distill", "teacher_outputs"]


def _check_temperature_alpha(temperature: Any, alpha: Any, prefix: str = "") -> tuple[float, float]:
    t = check_real(f"{prefix}temperature", temperature, 0.0, math.inf, lo_open=True, hi_open=True)
    return t, check_real(f"{prefix}alpha", alpha, 0.0, 1.0)


def soft_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over every row of the last dim.

    Logits of any rank are read as rows of classes along the last dimension
    (a ``(batch, seq, vocab)`` output averages over batch and sequence).
    """
    classes = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.reshape(-1, classes) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.reshape(-1, classes).to(log_s.dtype) / temperature, dim=-1)
    # T^2 keeps the soft term's gradient scale independent of T (Hinton et al. 2015, section 2).
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def mixed_loss(
    output: Tensor,
    teacher_logits: Tensor | None,
    targets: Any,
    hard_loss: Callable[[Tensor, Any], Tensor],
    temperature: float,
    alpha: float,
) -> Tensor:
    """``alpha * soft_loss + (1 - alpha) * hard_loss(output, targets)``; a zero-weight term is skipped."""
    loss = output.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft_loss(output, teacher_logits, temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_loss(output, targets)
    return loss


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor | None, temperature: float, alpha: float
) -> Tensor:
    """Knowledge-distillation loss of Hinton et al. 2015, https://arxiv.org/abs/1503.02531.

    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``,
    the KL divergence averaged over the batch (``reduction="batchmean"``, the
    true KL per sample) and the cross-entropy over the hard labels.

    Args:
        student_logits: ``(batch, classes)`` logits of the student.
        teacher_logits: Teacher logits of the same shape (unused when ``alpha == 0``).
        targets: Class indices for the cross-entropy (unused when ``alpha == 1``).
        temperature: Softmax temperature ``T > 0``; higher spreads the
            teacher's probability over the wrong classes ("dark knowledge").
        alpha: Weight of the soft term, in ``[0, 1]``; 0 is plain cross-entropy.

    Returns:
        The scalar loss.

    Raises:
        ConfigError: ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.
    """
    temperature, alpha = _check_temperature_alpha(temperature, alpha)
    if alpha > 0 and (teacher_logits is None or teacher_logits.shape != student_logits.shape):
        raise ConfigError(
            "teacher_logits",
            None if teacher_logits is None else tuple(teacher_logits.shape),
            f"a tensor of the student's shape {tuple(student_logits.shape)} when alpha > 0",
        )
    return mixed_loss(student_logits, teacher_logits, targets, F.cross_entropy, temperature, alpha)


@dataclass(frozen=True)
class DistillConfig:
    """How :func:`distill` trains a student from a teacher.

    The output loss is :func:`kd_loss`. Each pair in ``features`` adds a
    FitNets hint (Romero et al. 2015, https://arxiv.org/abs/1412.6550): the
    mean squared error between the student module's output, passed through a
    learned linear projection where its width differs from the teacher's (a
    1x1 convolution for ``(N, C, H, W)`` maps), and the teacher module's
    output. Unlike the paper's two-stage schedule, hints and the KD loss are
    trained jointly, a common simplification that needs one budget.

    Args:
        temperature: Softmax temperature, > 0.
        alpha: Weight of the soft (teacher) term of :func:`kd_loss`, in ``[0, 1]``.
        features: ``(student_module, teacher_module)`` name pairs (as in
            ``named_modules()``) whose outputs are matched; the shapes may
            differ in one dimension (the width) only.
        feature_weight: Weight of the summed hint losses, >= 0.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    features: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        temperature, alpha = _check_temperature_alpha(self.temperature, self.alpha, "distill.")
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "alpha", alpha)
        valid = "a sequence of (student_module, teacher_module) name pairs"
        if isinstance(self.features, (str, bytes)) or not isinstance(self.features, Iterable):
            raise ConfigError("distill.features", self.features, valid)
        pairs = []
        for i, pair in enumerate(self.features):
            if (
                isinstance(pair, (str, bytes))
                or not isinstance(pair, Sequence)
                or len(pair) != 2
                or not all(isinstance(n, str) for n in pair)
            ):
                raise ConfigError(f"distill.features[{i}]", pair, valid)
            pairs.append((pair[0], pair[1]))
        object.__setattr__(self, "features", tuple(pairs))
        object.__setattr__(
            self,
            "feature_weight",
            check_real("distill.feature_weight", self.feature_weight, 0.0, math.inf, hi_open=True),
        )

    def validate(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Check that every feature pair names a module of the student and of the teacher.

        Raises:
            ConfigError: Naming ``distill.features[i].student`` (or ``.teacher``)
                and the closest module names.
        """
        for side, model in (("student", student), ("teacher", teacher)):
            if not self.features:
                break
            if model is None:
                raise ConfigError("teacher", None, "a teacher module when distill.features are matched")
            names = [n for n, _ in model.named_modules()]
            for i, pair in enumerate(self.features):
                name = pair[0] if side == "student" else pair[1]
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=4, cutoff=0.4) or names[1:5]
                    raise ConfigError(
                        f"distill.features[{i}].{side}",
                        name,
                        f"a module of the {side}; close names: {', '.join(close)}",
                    )


# -- data: batches that carry their dataset indices -------------------------------


class _Indexed(Dataset):
    """``dataset[i]`` as ``(i, dataset[i])``, so precomputed teacher outputs follow any shuffle."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


class _IndexCollate:
    """Collates ``(i, item)`` pairs with the loader's own collate; a class so worker processes can pickle it."""

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[Tensor, Any]:
        return torch.tensor([i for i, _ in items], dtype=torch.long), self.collate([item for _, item in items])


def indexed_loader(loader: DataLoader) -> DataLoader:
    """A loader giving ``(indices, batch)``: the same batches, in the same order, as ``loader`` would.

    It shares ``loader``'s batch sampler (and so its seeded shuffle) and
    collate function, so iterating it instead of ``loader`` changes nothing
    but adding each batch's dataset indices.

    Raises:
        ConfigError: ``loader`` is not a batched DataLoader over a map-style dataset.
    """
    if (
        not isinstance(loader, DataLoader)
        or loader.batch_sampler is None
        or not hasattr(loader.dataset, "__getitem__")
        or not hasattr(loader.dataset, "__len__")
    ):
        raise ConfigError(
            "train_loader",
            type(loader).__name__,
            "a batched torch DataLoader over a map-style dataset (teacher logits follow its indices)",
        )
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(
        _Indexed(loader.dataset),
        batch_sampler=loader.batch_sampler,
        collate_fn=_IndexCollate(loader.collate_fn),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        **extra,
    )


def check_teacher_logits(teacher_logits: Any, n: int) -> Tensor:
    """``teacher_logits`` if it is a tensor with one row per dataset item, else ConfigError."""
    if not isinstance(teacher_logits, Tensor) or teacher_logits.dim() < 1 or teacher_logits.shape[0] != n:
        shape = tuple(teacher_logits.shape) if isinstance(teacher_logits, Tensor) else type(teacher_logits).__name__
        raise ConfigError("teacher_logits", shape, f"a tensor with one row per training item ({n}), in dataset order")
    return teacher_logits


def frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` without gradients; ``model`` is left as it is."""
    out = copy.deepcopy(model).to(device).eval()
    out.requires_grad_(False)
    return out


def check_training_args(
    lr: Any, batch_size: Any, seed: Any, device: Any, train_data: Any
) -> tuple[float, int, int, torch.device, int]:
    """Checked ``lr``, ``batch_size``, ``seed``, ``device`` and the length of ``train_data``.

    Raises:
        ConfigError: Naming the first bad argument, before any training.
    """
    lr = check_real("lr", lr, 0.0, math.inf, lo_open=True, hi_open=True)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    device = parse_device(device)
    try:
        n = len(train_data)
    except TypeError:
        raise ConfigError("train_data", type(train_data).__name__, "a map-style dataset with a length") from None
    if n < 1:
        raise ConfigError("train_data", n, "a dataset with at least one item")
    return lr, batch_size, seed, device, n


def parse_device(device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu' or 'cuda:0'") from None


def teacher_outputs(
    teacher: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu"
) -> Tensor:
    """The teacher's outputs for every item of ``dataset``, in dataset order.

    Computed once (eval mode, no gradients) so that a search can put them in
    the Ray object store and every trial distils from them without running
    the teacher: pass them as ``teacher_logits`` to :func:`distill` or
    :func:`compression.compress`.

    Args:
        teacher: The teacher; left untouched.
        dataset: Map-style dataset of ``(input, target)`` pairs.
        batch_size: Inference batch size.
        device: Where the teacher runs.

    Returns:
        A float32 CPU tensor ``(len(dataset), *output_shape)``.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    device = parse_device(device)
    net = frozen_copy(teacher, device)
    outs = []
    # no_grad, not inference_mode: inference tensors cannot be saved for a later backward.
    with torch.no_grad():
        for inputs, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            outs.append(net(inputs.to(device)).float().cpu())
    return torch.cat(outs)


# -- FitNets hints ---------------------------------------------------------------


class _FeatureTap:
    """Forward hooks keeping the latest output of some named modules (removed by :meth:`close`)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.out: dict[str, Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in dict.fromkeys(names)]

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # Modules returning tuples (e.g. transformer blocks) carry the hidden state first.
            self.out[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Projection(nn.Module):
    """A learned linear map along one dimension: a 1x1 convolution when that dimension is channels."""

    def __init__(self, dim: int, width_in: int, width_out: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(width_in, width_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.movedim(self.dim, -1)).movedim(-1, self.dim)


def _projection(i: int, s: torch.Size, t: torch.Size) -> nn.Module:
    """Identity when shapes match, else a projection along the one dimension where they differ."""
    if s == t:
        return nn.Identity()
    differ = [d for d in range(1, len(s)) if s[d] != t[d]] if len(s) == len(t) and s[0] == t[0] else []
    if len(differ) != 1:
        raise ConfigError(
            f"distill.features[{i}]",
            (tuple(s[1:]), tuple(t[1:])),
            "student and teacher outputs of the same shape up to one (width) dimension",
        )
    return _Projection(differ[0], s[differ[0]], t[differ[0]])


# -- training --------------------------------------------------------------------


def _budget(steps: Any, epochs: Any, batches_per_epoch: int) -> int:
    if steps is None and epochs is None:
        raise ConfigError("steps", None, "a number of steps >= 1, or epochs >= 1 instead")
    if steps is not None and epochs is not None:
        raise ConfigError("epochs", epochs, "None when steps is given (one budget, not both)")
    if steps is not None:
        return check_int("steps", steps, 1)
    return check_int("epochs", epochs, 1) * batches_per_epoch


def cycle_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches epoch after epoch (a seeded shuffle draws a new order each epoch)."""
    for _ in itertools.count():
        yield from loader


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    train_data: Dataset,
    config: DistillConfig = DistillConfig(),
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    teacher_logits: Tensor | None = None,
) -> nn.Module:
    """Train ``student`` on ``train_data`` from ``teacher``'s outputs (knowledge distillation).

    The loss is :func:`kd_loss` (Hinton et al. 2015,
    https://arxiv.org/abs/1503.02531) plus ``config.feature_weight`` times the
    FitNets hints of ``config.features`` (Romero et al. 2015,
    https://arxiv.org/abs/1412.6550), minimised with Adam over the student's
    parameters and the hint projections (discarded afterwards). Batches are
    drawn in a seeded shuffle; with the same arguments on CPU the trained
    weights are identical run to run (on CUDA, as far as its kernels are
    deterministic).

    Args:
        student: Model to train, in place.
        teacher: Trained teacher; left untouched (a frozen eval-mode copy
            runs on ``device``). May be None when ``teacher_logits`` is given
            and no features are matched.
        train_data: Map-style dataset of ``(input, class_index)`` pairs.
        config: Temperature, alpha and feature pairs.
        steps: Optimizer steps; or
        epochs: Passes over ``train_data`` (exactly one of the two, >= 1).
        lr: Adam learning rate, > 0.
        batch_size: Training batch size.
        seed: Seeds parameter init of the projections and the shuffle.
        device: Where training runs.
        teacher_logits: Precomputed teacher outputs in ``train_data`` order
            (:func:`teacher_outputs`); used instead of running the teacher's
            forward for the output loss.

    Returns:
        ``student``, trained, in eval mode, on CPU.

    Raises:
        ConfigError: A missing or double budget, bad ``lr`` / ``batch_size`` /
            ``seed`` / ``device``, ``teacher_logits`` not one row per item,
            no teacher where one is needed, or a feature pair naming a missing
            module or outputs whose shapes cannot be projected; all before
            any training step.
    """
    if not isinstance(config, DistillConfig):
        raise ConfigError("config", config, "a DistillConfig")
    if not isinstance(student, nn.Module):
        raise ConfigError("student", type(student).__name__, "an nn.Module")
    lr, batch_size, seed, device, n = check_training_args(lr, batch_size, seed, device, train_data)
    if teacher_logits is not None:
        teacher_logits = check_teacher_logits(teacher_logits, n)
    elif teacher is None and config.alpha > 0:
        raise ConfigError("teacher", None, "a teacher module, or precomputed teacher_logits")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError("teacher", type(teacher).__name__, "an nn.Module")
    config.validate(student, teacher)
    generator = torch.Generator().manual_seed(seed)
    loader = indexed_loader(DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=generator))
    total = _budget(steps, epochs, len(loader))

    torch.manual_seed(seed)
    student.to(device)
    run_teacher = teacher is not None and (config.features or (teacher_logits is None and config.alpha > 0))
    net_t = frozen_copy(teacher, device) if run_teacher else None
    taps_s = _FeatureTap(student, [s for s, _ in config.features])
    taps_t = _FeatureTap(net_t, [t for _, t in config.features]) if net_t is not None and config.features else None
    try:
        projections = nn.ModuleList()
        if config.features:
            # One eval-mode probe on the first item sizes the projections before any step (and
            # reports unprojectable shapes then); eval mode leaves BN statistics alone.
            _, (x0, *_) = loader.collate_fn([(0, train_data[0])])
            student.eval()
            with torch.no_grad():
                student(x0.to(device))
                net_t(x0.to(device))
            for i, (s, t) in enumerate(config.features):
                projections.append(_projection(i, taps_s.out[s].shape, taps_t.out[t].shape))
            projections.to(device)
        student.train()
        opt = torch.optim.Adam([*student.parameters(), *projections.parameters()], lr=lr)
        for _, (idx, (inputs, targets)) in zip(range(total), cycle_batches(loader)):
            inputs, targets = inputs.to(device), targets.to(device)
            out = student(inputs)
            t_out = None
            if net_t is not None:
                with torch.no_grad():
                    t_out = net_t(inputs)
            soft = teacher_logits[idx].to(device) if teacher_logits is not None else t_out
            loss = mixed_loss(out, soft, targets, F.cross_entropy, config.temperature, config.alpha)
            for (s, t), proj in zip(config.features, projections):
                hint = F.mse_loss(proj(taps_s.out[s]), taps_t.out[t].detach())
                loss = loss + config.feature_weight * hint
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        taps_s.close()
        if taps_t is not None:
            taps_t.close()
    return student.cpu().eval()
