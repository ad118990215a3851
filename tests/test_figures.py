"""Every figure kind drawn from small records (two seeds, two architectures, ONE's branches and
CLNN's heads, three transfer backends, a paper-layout table, Fig. 4's gaps): nothing leaves the
canvas (every text and legend inside the figure, measured by the renderer) and no two tick
labels overlap, the intervals of the
tables are drawn where n >= 2, a method has one colour in every figure, the branches of ONE and
CLNN share their network's panel, and the sizes fit a paper's column or page."""
import json
import math

import matplotlib
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.text import Text

from results import build, collect, curves, fig4, plots, style, tabulate

from .test_results import noise, pretrain, write_jsonl

PAIR = ["resnet18", "mobilenet_v2_x0.5"]
TRANSFER = [(backend, detector, task) for backend in ("torchvision", "detectron2", "mmdet")
            for detector, task in (("faster_rcnn", "detection"),
                                   ("mask_rcnn", "instance_segmentation"))] + [
    ("mmseg", "FPNHead", "semantic_segmentation")]  # the smoke chain's 10 groups of bars


def smoke_runs(root):
    """Pre-training records of a smoke chain with seeds 0 and 1, and their metrics.jsonl."""
    runs = [("independent", True, PAIR), ("kdcl_general", True, PAIR),
            ("kdcl_general", False, PAIR), ("one", False, ["branch0", "branch1", "branch2"]),
            ("clnn", False, ["head0", "head1", "head2", "head3"])]
    items = []
    for method, icl, students in runs:
        for seed in (0, 1):
            config = f"smoke/{method}" + ("_icl" if icl and method != "independent" else "")
            run_dir = root / config / f"seed{seed}"
            run_dir.mkdir(parents=True)
            epochs = [{"kind": "epoch", "epoch": e, "val/ensemble/top1": 30.0 + 5 * e + seed,
                       **{f"val/{s}/top1": 20.0 + 5 * e + seed - i for i, s in
                          enumerate(students)}} for e in (1, 2, 3)]
            write_jsonl(run_dir / "metrics.jsonl", epochs)
            for i, student in enumerate(students):
                multi = method in ("one", "clnn")
                items.append(pretrain(
                    method, student, seed, epochs[-1][f"val/{student}/top1"] + (icl and 3),
                    setting="smoke", preset="smoke", icl=icl, group="+".join(students),
                    backbone="resnet18" if multi else student, exported=not multi or i == 0,
                    epochs=3, config=config, run_dir=str(run_dir)))
    return items


def transfer_records():
    items = []
    for method, gain in (("independent", 0.0), ("kdcl_general", 2.0)):
        for seed in (0, 1):
            for backend, model, task in TRANSFER:
                value = 20.0 + gain + seed
                metrics = {"detection": {"bbox_AP": value},
                           "instance_segmentation": {"bbox_AP": value, "segm_AP": value - 2},
                           "semantic_segmentation": {"mIoU": value + 10}}[task]
                items.append({
                    "stage": "transfer", "task": task, "dataset": "synthetic",
                    "backend": backend, "backbone": "resnet18", "method": method, "icl": True,
                    ("head" if task == "semantic_segmentation" else "detector"): model,
                    "metrics": metrics, "seed": seed, "preset": "smoke", "protocol": "smoke",
                    "config": f"{backend}/smoke_{model}", "pretrain_config": f"smoke/{method}",
                    "pretrain_seed": seed, "created": "2026-02-01T00:00:00+00:00",
                    "run_dir": f"runs/transfer/{backend}/{model}/{method}/seed{seed}"})
    return items


def paper_layout_records():
    """Table 4's pairs (a panel each in its figure), two seeds."""
    items = []
    for folder, pair in (("imagenet/r18_mbv2", PAIR), ("imagenet/r50_mbv2x0.5",
                                                       ["resnet50", "mobilenet_v2_x0.5"])):
        for method, gain in (("independent", 0.0), ("kdcl_minlogit", 1.0)):
            for seed in (0, 1):
                for student in pair:
                    items.append(pretrain(method, student, seed, 70.0 + gain + seed,
                                          setting=folder, preset="paper", group="+".join(pair)))
    return items


def robustness_records():
    items = []
    for method, icl, slope in (("kdcl_general", True, 1.0), ("kdcl_general", False, 1.5),
                               ("independent", False, 3.0), ("dml", False, 2.0)):
        for seed in (0, 1):
            for student in ("cifar_resnet32", "wrn_16_2"):
                items += [noise(method, seed, d, 1.0 + slope * d + 0.1 * seed, icl=icl,
                                student=student, preset="smoke",
                                config=f"smoke/{method}{'_icl' if icl else ''}",
                                run_dir=f"runs/pretrain/smoke/{method}{icl}/seed{seed}")
                          for d in (0.0, 0.05, 0.1, 0.15)]
    return items


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """{name: figure} of every kind, drawn as results/figures would be (not yet saved)."""
    root = tmp_path_factory.mktemp("runs")
    items = smoke_runs(root) + transfer_records() + paper_layout_records() + robustness_records()
    data = collect.frame(items)
    tables = build.tables(data, tabulate.load_paper())
    out = {f"delta_{t.name}": f for t in tables if (f := plots.delta_figure(t)) is not None}
    smoke = data[(data["stage"] == "pretrain") & (data["setting"] == "smoke")]
    out["curves"] = plots.curve_figure(curves.read(smoke), smoke["group"],
                                       "Validation top-1 per epoch: smoke (smoke preset)", True)
    spread = fig4.summary(fig4.gaps(data))
    out["fig4"] = plots.fig4_figure(spread, "smoke", True)
    yield out
    for fig in out.values():
        matplotlib.pyplot.close(fig)


def test_every_figure_kind_is_drawn(figures):
    assert {"delta_pretrain_smoke", "delta_transfer_smoke", "delta_paper_table4", "curves",
            "fig4"} <= set(figures)


def outside(fig) -> list[str]:
    """The texts and legends whose drawn extent leaves the canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    out = []
    texts = list(fig.texts)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label,
                  *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):  # the tick labels drawn: those in the view
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            texts += [t.label1 for t in axis.get_major_ticks()
                      if low - span <= t.get_loc() <= high + span]
    artists = [t for t in texts if t.get_visible() and t.get_text().strip()]
    artists += [lg for lg in fig.legends] + [ax.get_legend() for ax in fig.axes
                                             if ax.get_legend() is not None]
    for artist in artists:
        box = artist.get_window_extent(renderer)
        if (box.x0 < canvas.x0 - 0.5 or box.y0 < canvas.y0 - 0.5 or box.x1 > canvas.x1 + 0.5
                or box.y1 > canvas.y1 + 0.5):
            out.append(artist.get_text() if isinstance(artist, Text) else "a legend")
    return out


@pytest.mark.parametrize("name", ["delta_pretrain_smoke", "delta_transfer_smoke",
                                  "delta_paper_table4", "curves", "fig4"])
def test_no_text_or_legend_leaves_the_canvas(figures, name):
    assert outside(figures[name]) == []


@pytest.mark.parametrize("name", ["delta_pretrain_smoke", "delta_transfer_smoke",
                                  "delta_paper_table4", "curves", "fig4"])
def test_no_two_tick_labels_overlap(figures, name):
    fig = figures[name]
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        angle = math.radians(labels[0].get_rotation()) if labels else 0
        if angle:  # parallel lines of text: apart by the ticks' spacing across them
            ticks = sorted(ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0])
            across = min(b - a for a, b in zip(ticks, ticks[1:])) * math.sin(angle)
            line = max(t.get_fontsize() for t in labels) * fig.dpi / 72
            assert across > 1.2 * line, [t.get_text() for t in labels]
            continue
        boxes = [t.get_window_extent(renderer) for t in labels]
        crowded = [(a, b) for a, b in zip(boxes, boxes[1:]) if a.overlaps(b)]
        assert not crowded, [t.get_text() for t in labels]


def test_no_long_title_and_sizes_of_a_column_or_a_page(figures):
    for name, fig in figures.items():
        width, height = fig.get_size_inches()
        assert style.COLUMN <= width <= style.PAGE and height <= 6, name
        assert fig.texts[0].get_text().count("\n") <= 1, name  # a short title
        assert "Smoke preset" in fig.texts[1].get_text() or "paper" in name, name


def legend_colours(fig) -> dict[str, str]:
    legend = fig.legends[0]
    out = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        colour = handle.get_color() if hasattr(handle, "get_color") and not isinstance(
            handle, matplotlib.patches.Patch) else handle.get_facecolor()
        out[text.get_text()] = matplotlib.colors.to_hex(colour)
    return out


def test_one_colour_per_method_in_every_figure(figures):
    general = matplotlib.colors.to_hex(style.colour("kdcl_general"))
    vanilla = matplotlib.colors.to_hex(style.colour("independent"))
    delta, lines = legend_colours(figures["delta_pretrain_smoke"]), legend_colours(
        figures["curves"])
    assert delta["KDCL-General + ICL"] == lines["KDCL-General + ICL"] == general
    assert delta["KDCL-General"] == lines["KDCL-General"] == general  # told apart by style
    assert legend_colours(figures["delta_transfer_smoke"])["KDCL-General + ICL"] == general
    assert lines["Vanilla + ICL"] == legend_colours(figures["fig4"])[
        "Vanilla − KDCL-General + ICL"] == vanilla
    assert len(set(style.colours().values())) == len(style.colours())  # no two methods alike


def test_the_tables_interval_is_drawn_where_n_is_two(figures):
    # Δ bars: the Welch 95 % CI of the table, as error bars
    fig = figures["delta_transfer_smoke"]
    bars = [segment for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)
            for segment in c.get_segments()]
    assert bars and all(abs(s[1][1] - s[0][1]) > 0 for s in bars)
    assert "Welch 95 % CI" in fig.texts[1].get_text()
    # curves and Fig. 4: ± std bands over the two seeds
    for name in ("curves", "fig4"):
        assert any(isinstance(c, PolyCollection) for ax in figures[name].axes
                   for c in ax.collections), name
        assert "± std" in figures[name].texts[1].get_text()


def test_curves_one_panel_per_architecture_with_the_branches_inside(figures):
    fig = figures["curves"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["resnet18", "mobilenet_v2_x0.5", "ensemble"]  # no panel per branch
    one = matplotlib.colors.to_hex(style.colour("one"))
    clnn = matplotlib.colors.to_hex(style.colour("clnn"))
    resnet = fig.axes[0]
    thin = [matplotlib.colors.to_hex(line.get_color()) for line in resnet.lines
            if line.get_linewidth() < 1]
    assert thin.count(one) == 2 and thin.count(clnn) == 3  # the branches and heads not exported


def test_results_writes_each_figure_as_png_and_pdf(tmp_path):
    items = smoke_runs(tmp_path / "runs") + transfer_records() + robustness_records()
    items += paper_layout_records()  # their runs have no metrics.jsonl: warned, no curves
    source = tmp_path / "records.jsonl"
    source.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "out"
    assert build.build([source], out, log=lambda _: None) == 0
    names = {p.name for p in (out / "figures").iterdir()}
    for stem in ("curves_pretrain_smoke", "delta_pretrain_smoke", "delta_transfer_smoke",
                 "fig4_robustness_smoke", "delta_paper_table4",
                 "delta_pretrain_paper_imagenet_r50_mbv2x0.5"):  # x0.5 is no file suffix
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert (out / "figures" / "fig4_robustness_smoke.pdf").read_bytes()[:4] == b"%PDF"
    readme = (out / "README.md").read_text()
    assert ("- delta_pretrain_smoke: [png](figures/delta_pretrain_smoke.png) "
            "[pdf](figures/delta_pretrain_smoke.pdf)") in readme
