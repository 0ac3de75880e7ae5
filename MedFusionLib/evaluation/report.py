"""Writing an :class:`~MedFusionLib.evaluation.scoring.Evaluation` out: CSV, Markdown, figures, HTML.

Tables show mean ± std per metric and method, the best *fusion* method per column in bold, and
the two single-source references (one source passed through unchanged) below them, marked where
a reference scores at least as well as the best fusion method: there the metric does not need
fusion to be high, and must not be read as quality. Figures are drawn with Pillow.
"""

from __future__ import annotations

import base64
import csv
import html
import io as _bytes_io
import math
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from MedFusionLib.evaluation import metrics
from MedFusionLib.evaluation.figures import examples_figure
from MedFusionLib.evaluation.scoring import REFERENCE_A, Evaluation, VolumeEvaluation

REFERENCE_MARK = "▲"

CONVENTIONS = (
    "Scored on the 8-bit scale on the Y (luminance, BT.601 full range) channel of colour images "
    "and on the gray levels otherwise; fused outputs rounded to 8 bits as a saved PNG. A = MRI, "
    "B = CT/PET/SPECT. EN in bits; MI in nats, summed over both sources; SCD, VIF (pixel domain) "
    "and SSIM (7×7 window, L = 255) summed over both sources, so SSIM and SCD lie in [-2, 2]; "
    "CC averaged over the sources; PSNR in dB with the fused image's peak; Q^AB/F with the "
    "Xydeas–Petrović constants (maximum 0.975). Every metric is higher-is-better. Published SSIM "
    "from CDDFuse's evaluator used L = 2 in effect (scikit-image 0.19 on float images), which on "
    "the CT-MRI val pairs gives 0.09–0.14 lower sums than L = 255: compare published SSIM with care."
)

READING_GUIDE = (
    "EN, SD, SF and AG look at the fused image alone: they reward contrast and edges from any "
    "origin, noise and artefacts included. MI, VIF and SSIM reward closeness to the sources, and "
    "one source passed through unchanged already scores high on them. Pixel-wise maximum keeps "
    "the brighter source at every pixel: on CT-MRI that is the CT's saturated bone and the "
    "brighter of the two soft tissues, which tends to score well on SD, SCD, MI and Q^AB/F while "
    "covering the MRI wherever the CT is bright (see the figures). The reference rows make such "
    f"effects visible: a cell marked {REFERENCE_MARK} is a single source scoring at least as well "
    "as the best fusion method. Look at the figures before believing a column."
)


# ----------------------------------------------------------------------------- tables


def _format(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _reference_label(method: str, task: str) -> str:
    """``"A only (MRI), reference"``: a single-source row named with its modality in ``task``."""
    other_modality, _, mri = task.partition("-")
    modality = mri if method == REFERENCE_A else other_modality
    return f"{method} ({modality}), reference"


def _table_cells(evaluation: Evaluation, task: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, then per-method cell texts and per-cell markers ('best', 'reference-beats', '')."""
    summary = evaluation.summary(task)
    fusion_methods = [m for m in evaluation.methods if m in summary]
    best = {
        name: max((summary[m][name][0] for m in fusion_methods), default=math.nan)
        for name in evaluation.metric_names
    }
    header = ["method", *(f"{name} ↑" for name in evaluation.metric_names), "ms/pair"]
    cells, marks = [], []
    for method in [*fusion_methods, *[m for m in evaluation.reference_methods if m in summary]]:
        is_reference = method in evaluation.reference_methods
        row_cells = [_reference_label(method, task) if is_reference else method]
        row_marks = [""]
        for name in evaluation.metric_names:
            mean, std = summary[method][name]
            row_cells.append(f"{_format(mean)} ± {_format(std)}")
            if not is_reference and mean == best[name]:
                row_marks.append("best")
            elif is_reference and mean >= best[name]:
                row_marks.append("reference-beats")
            else:
                row_marks.append("")
        milliseconds = evaluation.milliseconds_per_pair(task, method)
        row_cells.append("—" if milliseconds is None else f"{milliseconds:.1f}")
        row_marks.append("")
        cells.append(row_cells)
        marks.append(row_marks)
    return header, cells, marks


def markdown_table(evaluation: Evaluation, task: str) -> str:
    """Mean ± std per metric (columns) and method (rows); best fusion value in bold."""
    header, cells, marks = _table_cells(evaluation, task)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_cells, row_marks in zip(cells, marks):
        decorated = []
        for text, mark in zip(row_cells, row_marks):
            if mark == "best":
                text = f"**{text}**"
            elif mark == "reference-beats":
                text = f"{text} {REFERENCE_MARK}"
            decorated.append(text)
        lines.append("| " + " | ".join(decorated) + " |")
    return "\n".join(lines)


def markdown_summary(evaluation: Evaluation) -> str:
    """The Markdown document: conventions, one table per task, skipped models."""
    parts = [f"# Fusion evaluation, {evaluation.split} split\n", CONVENTIONS + "\n", READING_GUIDE + "\n"]
    for task in evaluation.tasks:
        parts.append(f"## {task} ({evaluation.pair_count(task)} pairs)\n")
        parts.append(markdown_table(evaluation, task) + "\n")
        parts.append(
            f"**bold**: best fusion method per column. {REFERENCE_MARK}: a single source alone scores "
            "at least as well. ms/pair: forward pass on " + evaluation.device + ".\n"
        )
    if evaluation.skipped:
        parts.append("## Skipped\n")
        parts.extend(f"- `{name}`: {reason}" for name, reason in evaluation.skipped.items())
        parts.append("")
    return "\n".join(parts)


def write_scores_csv(evaluation: Evaluation, path: Path) -> None:
    """One row per (task, pair, method): the metrics and the fusion time in ms (empty if unknown)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "id", "case", "method", "reference", *evaluation.metric_names, "ms"])
        for row in evaluation.rows:
            writer.writerow(
                [
                    row.task,
                    row.pair_id,
                    row.case,
                    row.method,
                    int(row.method in evaluation.reference_methods),
                    *(repr(row.scores[name]) for name in evaluation.metric_names),
                    "" if row.seconds is None else f"{1000 * row.seconds:.3f}",
                ]
            )


# ----------------------------------------------------------------------------- HTML


def _png_data_uri(picture: Image.Image) -> str:
    buffer = _bytes_io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(evaluation: Evaluation, task: str) -> str:
    header, cells, marks = _table_cells(evaluation, task)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row_cells, row_marks in zip(cells, marks):
        is_reference = row_cells[0].endswith(", reference")
        tds = []
        for text, mark in zip(row_cells, row_marks):
            mean, separator, spread = text.partition(" ± ")
            content = html.escape(mean) + (f"<small> ± {html.escape(spread)}</small>" if separator else "")
            if mark == "best":
                tds.append(f'<td class="best">{content}</td>')
            elif mark == "reference-beats":
                tds.append(f'<td class="refbeats">{content} {REFERENCE_MARK}</td>')
            else:
                tds.append(f"<td>{content}</td>")
        body.append(f'<tr class="{"reference" if is_reference else ""}">{"".join(tds)}</tr>')
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 5px; text-align: right; white-space: nowrap; }
td small { color: #777; font-size: 10px; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
td.best { font-weight: bold; background: #e3f4e3; }
td.refbeats { background: #fde8c8; }
tr.reference td { font-style: italic; color: #555; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 8px 12px; max-width: 1100px; }
.conventions { font-size: 13px; color: #444; max-width: 1100px; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _page(title: str, body: list[str]) -> str:
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p class='conventions'>{html.escape(created)}</p>",
            *body,
            "<h2>Metric conventions</h2>",
            f"<p class='conventions'>{html.escape(CONVENTIONS)}</p>",
            "<table><thead><tr><th>metric</th><th>unit / convention</th><th>range</th></tr></thead><tbody>",
            *(
                f"<tr><td>{html.escape(m.name)}</td><td>{html.escape(m.unit)}</td>"
                f"<td>{html.escape(m.value_range)}</td></tr>"
                for m in metrics.METRICS.values()
            ),
            "</tbody></table></body></html>",
        ]
    )


def html_report(evaluation: Evaluation) -> str:
    """One self-contained HTML page: tables, example figures, skipped models (PNG data URIs)."""
    body = [
        f"<p class='conventions'>timing device: {html.escape(evaluation.device)}</p>",
        f"<p class='note'><b>Metrics are not quality.</b> {html.escape(READING_GUIDE)}</p>",
    ]
    if evaluation.skipped:
        body.append("<h2>Skipped models</h2><ul>")
        body.extend(
            f"<li><code>{html.escape(name)}</code>: {html.escape(reason)}</li>"
            for name, reason in evaluation.skipped.items()
        )
        body.append("</ul>")
    for task in evaluation.tasks:
        body.append(f"<h2>{html.escape(task)} ({evaluation.pair_count(task)} pairs)</h2>")
        body.append(_html_table(evaluation, task))
        body.append(
            "<p class='conventions'>Green bold: best fusion method per column. "
            f"Orange {REFERENCE_MARK}: one source alone scores at least as well as the best "
            "fusion method. Mean ± std over pairs; ms/pair is the forward pass alone.</p>"
        )
        if evaluation.examples.get(task):
            figure = examples_figure(evaluation.examples[task], f"{task}: sources and fused images")
            body.append(f"<img alt='{html.escape(task)} examples' src='{_png_data_uri(figure)}'>")
    return _page(f"MedFusion evaluation — {evaluation.split} split", body)


def volume_html_report(volume: VolumeEvaluation, figure: Image.Image, name: str) -> str:
    """One self-contained HTML page for a fused volume: its scores and the consistency figure."""
    rows = "".join(
        f"<tr><td>{html.escape(metric)}</td><td>{_format(value)}</td></tr>" for metric, value in volume.scores.items()
    )
    body = [
        f"<p>{html.escape(name)}: {int(volume.foreground.sum())} foreground slices of {volume.foreground.size}; "
        "metrics averaged over them.</p>",
        f"<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>",
        "<p class='note'>Flicker ratio: the fused volume's mean change between neighbouring slices divided "
        "by the pixelwise larger change of the two sources, which no pixelwise rule can exceed. "
        f"Median {volume.median_flicker:.2f}, worst {volume.worst_flicker:.2f}; well above 1 means stripes.</p>",
        f"<img alt='inter-slice consistency' src='{_png_data_uri(figure)}'>",
    ]
    return _page("MedFusion volume evaluation", body)


def write_evaluation(evaluation: Evaluation, directory: Path) -> list[Path]:
    """Write ``scores.csv``, ``summary.md`` and ``examples_<task>.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "scores.csv", directory / "summary.md"]
    write_scores_csv(evaluation, written[0])
    written[1].write_text(markdown_summary(evaluation), encoding="utf-8")
    for task in evaluation.tasks:
        if evaluation.examples.get(task):
            path = directory / f"examples_{task}.png"
            examples_figure(evaluation.examples[task], f"{task}: sources and fused images").save(path)
            written.append(path)
    return written
