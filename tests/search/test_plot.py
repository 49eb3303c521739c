"""The Pareto plot (PNG and HTML), Pareto run names and the browse hint, on hand-made trial records."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from rayzor.search import (
    TrialRecord,
    browse_hint,
    pareto_figure,
    pareto_html,
    pareto_run_name,
    plot_layout,
    search_note,
)

OBJECTIVES = ("accuracy", "deploy_bytes")
BASELINE = {"accuracy": 0.975, "size_bytes": 150_000.0, "deploy_bytes": 154_000.0, "latency_ms": 0.05}


def _record(number: int, accuracy: float, kib: float, plan: str = "conv2 10%/8b") -> TrialRecord:
    metrics = {"accuracy": accuracy, "deploy_bytes": kib * 1024, "size_bytes": kib * 1000, "compression_ratio": 2.0}
    return TrialRecord(number, f"run{number}", "FINISHED", {}, metrics=metrics, plan_summary=plan)


@pytest.fixture
def search() -> tuple[list[TrialRecord], list[TrialRecord]]:
    """Three front points, two dominated trials near them, one bad trial far below (0.69)."""
    front = [_record(3, 0.960, 12.8), _record(7, 0.970, 20.0), _record(11, 0.974, 40.0)]
    others = [_record(1, 0.955, 30.0), _record(2, 0.962, 60.0), _record(5, 0.69, 14.0)]
    failed = TrialRecord(4, "run4", "FAILED", {}, error="boom")
    return [*front, *others, failed], front


def test_baseline_is_inside_both_ranges_and_the_front_sets_the_y_range(search):
    records, front = search
    lay = plot_layout(records, front, OBJECTIVES, BASELINE)
    assert lay.size == "deploy_bytes" and lay.quality == "accuracy"
    assert lay.xlim[0] < BASELINE["deploy_bytes"] < lay.xlim[1]  # the fp32 model sits beyond every trial
    assert lay.ylim[0] < BASELINE["accuracy"] < lay.ylim[1]
    assert all(lay.ylim[0] < r.metrics["accuracy"] < lay.ylim[1] for r in front)
    # the 0.69 trial does not stretch the axis: it is counted below it
    assert [p.record.number for p in lay.below] == [5]
    assert lay.ylim[0] > 0.9
    assert 5 not in {p.record.number for p in lay.points}
    assert [p.record.number for p in lay.staircase] == [3, 7, 11]


def test_png_labels_front_points_and_ticks_sizes_in_kib(search):
    records, front = search
    fig = pareto_figure(records, front, OBJECTIVES, BASELINE)
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert {"0003", "0007", "0011"} <= labels
    assert not labels & {"0001", "0002", "0005"}  # only front points are labelled
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks and all(t.endswith(("KiB", "MiB")) for t in ticks)
    lo, hi = ax.get_xlim()
    assert lo < BASELINE["deploy_bytes"] < hi
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "1 below the range" in legend and "fp32" in legend


def test_html_hover_shows_trial_metrics_and_plan(search):
    records, front = search
    front[0].plan_summary = "conv2 <b>10%</b>/8b"
    page = pareto_html(records, front, OBJECTIVES, BASELINE, title="rayzor search demo")
    assert page.startswith("<!doctype html>") and "<svg" in page and "http" not in page.split("<svg", 1)[0]
    assert page.count('class="pt"') == 7  # six finished trials and the fp32 star; the failed one has no point
    assert "trial-0003  ★ Pareto-optimal&#10;accuracy 0.9600&#10;deploy 12.8 KiB" in page.replace("\n", "&#10;")
    assert "plan conv2 &lt;b&gt;10%&lt;/b&gt;/8b" in page  # escaped, never markup
    assert "<b>10%</b>" not in page


def test_pareto_run_name():
    record = _record(18, 0.97222, 12.8)
    assert pareto_run_name(record, OBJECTIVES) == "trial-0018 ★ acc 0.972 · 12.8 KiB"
    with_latency = TrialRecord(
        2, "r", "FINISHED", {}, metrics={"accuracy": 0.9, "size_bytes": 3 * 2**20, "latency_ms": 0.412}
    )
    assert pareto_run_name(with_latency, ("accuracy", "size_bytes", "latency_ms")) == (
        "trial-0002 ★ acc 0.900 · 3.00 MiB · 0.412 ms"
    )


def test_browse_hint_gives_the_url_and_the_filter():
    local = browse_hint("sqlite:////tmp/x/mlflow.db", "7", "abc")
    assert local[0] == "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db"
    url = local[1].removeprefix("then open ")
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    assert "searchFilter=" + "tags.\"rayzor.pareto\" = 'true' and tags.\"mlflow.parentRunId\" = 'abc'" in unquote(url)
    assert local[-1] == "filter: tags.\"rayzor.pareto\" = 'true'"
    remote = browse_hint("http://mlflow.example:5000/", "7", "abc")
    assert remote[0].startswith("open http://mlflow.example:5000/#/experiments/7/runs?")
    assert not any("mlflow ui" in line for line in remote)


def test_search_note_fits_mlflow_tag_limit_with_a_large_front():
    plan = "  ".join(f"layer{i} 10%/8b" for i in range(400))  # a big model's summary
    front = [_record(i, 0.9 + i / 1000, 10.0 + i, plan) for i in range(1, 81)]
    note = search_note(
        name="big",
        parent_run_id="p" * 32,
        experiment_id="3",
        tracking_uri="sqlite:////a/long/path/to/mlflow.db",
        records=front,
        front=front,
        objectives=OBJECTIVES,
        baseline=BASELINE,
        hypervolume=0.5,
    )
    assert len(note) <= 8000  # MLflow's cap on a tag value
    rows, commands = note.count("| [trial-"), note.count("rayzor export --run ")
    assert 0 < rows == commands < 80
    assert f"{80 - rows} more points, with their run ids, in `pareto.csv`." in note
    assert note.count("```") % 2 == 0  # every code block is closed
