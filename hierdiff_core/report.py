"""Pictures and tables of a plan: the hierarchy laid against the step axis, and the savings.

Pillow only. The dendrogram draws one band per group (node active at some step): x runs over
the steps during which the group is shared, y over its members in dendrogram leaf order, so a
group's height in the picture is its size. A vertical connector marks each split. Prompt texts
are written beside the groups of the last step when there is room; dense sets (thousands of
prompts) get bands and group sizes only, so drawing stays O(number of groups).
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .schedule import Plan

_BACKGROUND = (255, 255, 255)
_INK = (33, 37, 41)
_GRID = (225, 228, 232)
_BAND_FILL = (189, 215, 238)
_BAND_FILL_SHARED = (107, 174, 214)
_BAND_EDGE = (49, 130, 189)
_CONNECTOR = (8, 69, 148)


def summary_line(schedule: Plan) -> str:
    """'N images, E model evaluations instead of K x N, X % saved'."""
    n, k = schedule.tree.n_prompts, schedule.steps
    return (
        f"{n:,} images, {schedule.model_evaluations:,} model evaluations instead of "
        f"{k} x {n:,} = {schedule.independent_evaluations:,}, {100.0 * schedule.saving:.1f} % saved"
    )


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    """Longest prefix of ``text`` (with an ellipsis when cut) no wider than max_width pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if draw.textlength(text[:mid] + "...", font=font) <= max_width:
            lo = mid
        else:
            hi = mid
    return text[:lo] + "..." if lo else ""


def render_dendrogram(
    schedule: Plan, width: int = 1200, height: int | None = None, font_size: int = 12
) -> Image.Image:
    """Draw the plan's hierarchy against the step axis.

    Parameters
    ----------
    schedule : Plan
    width : int
        Image width in pixels (>= 200).
    height : int, optional
        Image height; default fits one text line per prompt up to 2500 pixels, else 1000.
    font_size : int
        Text size in pixels.

    Returns
    -------
    PIL.Image.Image, mode "RGB", size (width, height)
    """
    tree = schedule.tree
    n, k = tree.n_prompts, schedule.steps
    first, end = schedule.first_steps, schedule.end_steps
    nodes = schedule.active_nodes
    line = font_size + 4
    final_groups = nodes[end[nodes] == k]
    if height is None:
        # Tall enough for one text line per prompt when that stays reasonable; else bands only.
        wanted = 90 + line * n
        height = max(300, wanted) if wanted <= 2500 else 1000
    if width < 200 or height < 150:
        raise ValueError(f"dendrogram size must be at least 200 x 150 pixels, got {width} x {height}")
    font = ImageFont.load_default(size=font_size)
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)

    top, bottom, left = 2 * line + 12, height - 2 * line - 6, 10
    plot_h = bottom - top
    labelled = plot_h / n >= line  # every prompt gets a text line: room for labels
    right = int(width * 0.6) if labelled else width - 12
    plot_w = right - left

    def x_at(step: float) -> float:
        return left + plot_w * step / k

    def y_at(position: float) -> float:
        return top + plot_h * position / n

    # Title and the second line with the plan's parameters.
    exact = "" if tree.exact else " (approximate bucketed tree)"
    detail = f"{k} steps, tau = {schedule.tau:.4g}, {tree.method} linkage over {tree.metric} distances{exact}"
    for row, text in enumerate((summary_line(schedule), detail)):
        draw.text((left, 4 + row * line), _fit_text(draw, text, font, width - 2 * left), fill=_INK, font=font)

    # Step axis with about ten ticks.
    tick = max(1, -(-k // 10))
    for step in list(range(0, k, tick)) + [k]:
        x = x_at(step)
        draw.line([(x, top), (x, bottom)], fill=_GRID)
        draw.text((x, bottom + 4), str(step), fill=_INK, font=font, anchor="ma")
    draw.text((left + plot_w / 2, bottom + 4 + line), "sampling step", fill=_INK, font=font, anchor="ma")

    starts = tree.node_starts
    sizes = tree.node_sizes
    parents = schedule.active_parents
    centre = {}
    for node in nodes.tolist():
        y0, y1 = y_at(starts[node]), y_at(starts[node] + sizes[node])
        x0, x1 = x_at(first[node]), x_at(end[node])
        centre[node] = (y0 + y1) / 2
        fill = _BAND_FILL_SHARED if sizes[node] > 1 else _BAND_FILL
        if y1 - y0 >= 3:
            draw.rectangle([x0, y0 + 1, x1, y1 - 1], fill=fill, outline=_BAND_EDGE)
        else:  # thinner than an outline: fill only, so dense sets read as shades of shared/unshared
            draw.rectangle([x0, y0, x1, max(y0, y1 - 1)], fill=fill)
        size_text = str(int(sizes[node]))
        if sizes[node] > 1 and y1 - y0 >= line and draw.textlength(size_text, font=font) + 6 <= x1 - x0:
            draw.text((x0 + 3, centre[node]), size_text, fill=_INK, font=font, anchor="lm")
    # Splits: a connector at the split step from the parent's centre to each child's centre.
    for node in nodes.tolist():
        p = int(parents[node])
        if p >= 0:
            x = x_at(first[node])
            draw.line([(x, centre[p]), (x, centre[node])], fill=_CONNECTOR, width=2)

    if labelled and tree.prompts is not None:
        label_left = right + 8
        for node in final_groups.tolist():
            members = tree.members(node)
            text = tree.prompts[int(members[0])]
            if len(members) > 1:
                text = f"[{len(members)}x] {text}"
            draw.text(
                (label_left, centre[node]),
                _fit_text(draw, text, font, width - label_left - 6),
                fill=_INK,
                font=font,
                anchor="lm",
            )
    return image


def savings_table(schedule: Plan) -> str:
    """Plain-text table of model evaluations per step (runs of equal counts folded) and totals."""
    counts = schedule.evaluations_per_step.tolist()
    thr = schedule.thresholds.tolist()
    n, k = schedule.tree.n_prompts, schedule.steps
    rows = [("steps", "threshold", "groups", "evaluations")]
    start = 0
    for step in range(1, k + 1):
        if step == k or counts[step] != counts[start]:
            steps = str(start) if step - 1 == start else f"{start}-{step - 1}"
            span = f"{thr[start]:.4g}" if step - 1 == start else f"{thr[start]:.4g}..{thr[step - 1]:.4g}"
            rows.append((steps, span, f"{counts[start]:,}", f"{counts[start] * (step - start):,}"))
            start = step
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cfg = schedule.accounting(guidance=True)
    probe = schedule.probe_evaluations
    lines += [
        "",
        *([f"choosing the tree (first-step predictions): {probe:,} evaluations"] if probe else []),
        f"model evaluations: {schedule.model_evaluations:,} instead of {k} x {n:,} = "
        f"{schedule.independent_evaluations:,} ({100.0 * schedule.saving:.1f} % saved, "
        f"{schedule.evaluations_per_image:.2f} per image)",
        f"with classifier-free guidance: {cfg['model_evaluations']:,} instead of "
        f"{cfg['independent_evaluations']:,} rows (same saving)",
    ]
    return "\n".join(lines)
