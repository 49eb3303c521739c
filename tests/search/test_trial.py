"""A trial's clock: what the first trial of a fresh worker counts as its own compute."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from rayzor.search import load_config

#: What a fresh trial worker does, in a new interpreter: unpickle the task and space (as they arrive
#: from Ray's object store), run one trial, and record when each heavy lazy import actually ran
#: (the ``import`` audit event; a mere ``find_spec`` does not raise it) against the trial's start.
_WORKER = textwrap.dedent(
    """
    import json, pickle, sys, tempfile, time
    from pathlib import Path

    HEAVY = ("torch._dynamo", "onnx", "onnxruntime")
    imported = {}

    def audit(event, args):
        if event == "import" and args[0] in HEAVY:
            imported.setdefault(args[0], time.time())

    from rayzor.search import evaluate_plan

    with open(sys.argv[1], "rb") as f:
        task, space, params, target = pickle.load(f)
    already = [name for name in HEAVY if name in sys.modules]
    sys.addaudithook(audit)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_plan(task, space, params, Path(tmp), target=target, latency_seconds=0.0)
    print(json.dumps({"already": already, "imported": imported, "started": metrics["trial_started"]}))
    """
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # the default search: torch.optim and the FLOP count import torch._dynamo, the ONNX deploy artifact onnx
        ({}, {"torch._dynamo", "onnx", "onnxruntime"}),
        ({"finetune_epochs": 0, "target": "packed"}, {"torch._dynamo"}),  # no optimizer, no ONNX: the FLOP count
    ],
)
def test_a_fresh_workers_first_trial_does_not_time_its_lazy_imports(digits, tmp_path, options, expected):
    """They cost seconds (torch._dynamo 2.5 s, onnx 0.75 s here) and made a worker's first
    trial_seconds 15x its next ones' on digits: they are imported before the trial's clock starts,
    ONNX's only when the trial exports to it."""
    from ray import cloudpickle

    config = load_config(None, trials=4, **options)
    space = config.space.build(
        digits.model, config.finetune(), example_input=digits.example_input, target=config.target
    )
    params = space.uniform_params(8)
    (tmp_path / "trial.pkl").write_bytes(cloudpickle.dumps((digits, space, params, config.target)))
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(tmp_path / "trial.pkl")], capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not seen["already"]  # a worker's imports (rayzor, the task, the space) do not pull them in
    assert set(seen["imported"]) == expected
    assert all(at <= seen["started"] for at in seen["imported"].values()), seen
