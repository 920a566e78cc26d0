// SPDX-License-Identifier: GPL-3.0-or-later
// Framework-free model and painter for a hierdiff plan (the JSON of hierdiff_core.schedule
// Plan.to_dict()): a dendrogram laid against the step axis. A bare tree (PromptTree.to_dict(),
// what Prompt Set Cluster reports before any steps are known) is drawn the same way against its merge
// heights. No ComfyUI imports here, so the layout can be tested under plain Node.

export const VIEW_FORMAT = "hierdiff.plan.view";

// Groups thinner than this many CSS pixels are drawn as one fan instead of their subtree, so the cost
// of a paint is bounded by the widget's height, not by the number of prompts.
export const MIN_GROUP_PX = 5;
// Prompt labels are written beside the leaves only when a row is at least this tall.
export const MIN_LABEL_ROW_PX = 11;

const HEADER_PX = 20;
const AXIS_PX = 20;
const PAD_PX = 8;
const AXIS_TITLE_PX = 42;

/**
 * Reduce a plan (schedule.to_dict()) to what drawing needs, as a small object that is stored with the
 * workflow: prompts, steps, the tree's merges (pairs only) and the active groups as flat tuples.
 * Throws an Error naming the problem when the object is not a hierdiff plan.
 * @param {object} plan
 * @param {string} [summary] the node's summary line, kept for redraws after reload
 */
export function compactPlan(plan, summary) {
    if (!plan || plan.format !== "hierdiff.plan") {
        throw new Error("not a hierdiff plan: 'format' must be 'hierdiff.plan'");
    }
    const steps = plan.steps;
    const mergesIn = (plan.linkage && plan.linkage.merges) || [];
    const n = plan.n_prompts ?? mergesIn.length + 1;
    if (mergesIn.length !== n - 1) throw new Error(`${n} prompts need ${n - 1} merges, got ${mergesIn.length}`);
    const merges = new Array(2 * mergesIn.length);
    mergesIn.forEach((m, i) => {
        merges[2 * i] = m[0];
        merges[2 * i + 1] = m[1];
    });
    const nodes = [];
    for (const g of plan.nodes || []) {
        nodes.push(g.id, g.parent === null || g.parent === undefined ? -1 : g.parent, g.size,
            Number(g.height.toPrecision(4)), g.first_step, g.end_step);
    }
    return {
        format: VIEW_FORMAT,
        version: 1,
        kind: "plan",
        axis: { title: "step", start: 0, stop: steps },
        prompts: Array.isArray(plan.prompts) ? plan.prompts.slice(0, n) : null,
        n_prompts: n,
        steps,
        tau: plan.tau,
        merges,
        nodes,
        model_evaluations: plan.model_evaluations,
        independent_evaluations: plan.independent_evaluations,
        saving: plan.saving,
        summary: summary || summaryLine(n, steps, plan.model_evaluations, plan.saving),
    };
}

// Columns of a tree drawn against merge height: the x axis is cut into this many bins.
const TREE_COLUMNS = 200;

/**
 * A view of a bare tree (PromptTree.to_dict()): x runs from the root's merge height (left) down to 0
 * (right), a group lasts from its parent's merge to its own. Same shape as compactPlan's result, with
 * "steps" standing for columns of height, so the same layout, painter and hit test serve both.
 */
export function compactTree(tree, summary) {
    if (!tree || tree.format !== "hierdiff.tree") {
        throw new Error("not a hierdiff tree: 'format' must be 'hierdiff.tree'");
    }
    const mergesIn = tree.merges || [];
    const n = tree.n_prompts ?? mergesIn.length + 1;
    if (mergesIn.length !== n - 1) throw new Error(`${n} prompts need ${n - 1} merges, got ${mergesIn.length}`);
    const total = 2 * n - 1;
    const height = new Float64Array(total); // effective: never below a child's (scipy 'distance' cuts)
    const parent = new Int32Array(total).fill(-1);
    const size = new Int32Array(total).fill(1);
    const merges = [];
    mergesIn.forEach(([a, b, h], i) => {
        height[n + i] = Math.max(h, height[a], height[b]);
        parent[a] = n + i;
        parent[b] = n + i;
        size[n + i] = size[a] + size[b];
        merges.push(a, b);
    });
    const top = height[total - 1] > 0 ? height[total - 1] : 1;
    // The first columns are the root's own, before its merge height, so the root is drawn too.
    const rootColumns = Math.round(TREE_COLUMNS / 20);
    // ... and the last column is the leaves' own, so every prompt shows as a leaf however close its merge.
    const column = (h) => Math.min(TREE_COLUMNS - 1,
        rootColumns + Math.round((1 - h / top) * (TREE_COLUMNS - 1 - rootColumns)));
    const first = (v) => (parent[v] < 0 ? 0 : column(height[parent[v]]));
    const end = (v) => (v < n ? TREE_COLUMNS : column(height[v]));
    const nodes = [];
    for (let v = 0; v < total; v++) {
        if (end(v) <= first(v)) continue;
        let p = parent[v];
        while (p >= 0 && end(p) <= first(p)) p = parent[p];
        nodes.push(v, p, size[v], Number(height[v].toPrecision(4)), first(v), end(v));
    }
    return {
        format: VIEW_FORMAT,
        version: 1,
        kind: "tree",
        axis: { title: "merge height", start: top * (1 + rootColumns / (TREE_COLUMNS - 1 - rootColumns)),
            stop: 0 },
        prompts: Array.isArray(tree.prompts) ? tree.prompts.slice(0, n) : null,
        n_prompts: n,
        steps: TREE_COLUMNS,
        merges,
        nodes,
        summary: summary || `${n.toLocaleString("en-US")} prompts, ${tree.method} linkage: `
            + "a hierarchical sampler shows which steps they share",
    };
}

/** "N images, E model evaluations instead of K x N = T, X % saved", as hierdiff_core.report writes it. */
export function summaryLine(n, steps, evaluations, saving) {
    const f = (v) => v.toLocaleString("en-US");
    const pct = (100 * saving).toFixed(1);
    return `${f(n)} images, ${f(evaluations)} model evaluations instead of ${steps} x ${f(n)} = ${f(steps * n)}, `
        + `${pct} % saved`;
}

/**
 * Build the drawing model from a compact plan: leaf order (depth-first over the full tree, so every
 * group's members are one contiguous run of rows), each group's first row and size, and the active
 * groups as a tree of their own (a group's children are the groups it splits into).
 * Linear in the number of prompts.
 */
export function layoutPlan(view) {
    const n = view.n_prompts;
    const nMerges = n - 1;
    const m = view.merges;
    const nTotal = n + nMerges;
    const fullParent = new Int32Array(nTotal).fill(-1);
    for (let i = 0; i < nMerges; i++) {
        fullParent[m[2 * i]] = n + i;
        fullParent[m[2 * i + 1]] = n + i;
    }
    // Depth-first leaf order from the root (id 2N-2), iterative: trees of 2,000 prompts may be deep.
    const rowOf = new Int32Array(n);
    const leafAtRow = new Int32Array(n);
    const firstRow = new Int32Array(nTotal);
    const size = new Int32Array(nTotal);
    let row = 0;
    const stack = [nTotal - 1];
    const visited = new Uint8Array(nTotal);
    while (stack.length) {
        const id = stack[stack.length - 1];
        if (id < n) {
            stack.pop();
            rowOf[id] = row;
            leafAtRow[row] = id;
            firstRow[id] = row;
            size[id] = 1;
            row++;
            continue;
        }
        const a = m[2 * (id - n)];
        const b = m[2 * (id - n) + 1];
        if (!visited[id]) {
            visited[id] = 1;
            stack.push(b, a);
        } else {
            stack.pop();
            firstRow[id] = firstRow[a];
            size[id] = size[a] + size[b];
        }
    }
    const groups = new Map();
    const t = view.nodes;
    for (let i = 0; i < t.length; i += 6) {
        groups.set(t[i], {
            id: t[i], parent: t[i + 1], size: t[i + 2], height: t[i + 3],
            first: t[i + 4], end: t[i + 5], children: [],
        });
    }
    const roots = [];
    for (const g of groups.values()) {
        const p = groups.get(g.parent);
        if (p) p.children.push(g);
        else roots.push(g);
    }
    const byRow = (x, y) => firstRow[x.id] - firstRow[y.id];
    roots.sort(byRow);
    for (const g of groups.values()) g.children.sort(byRow);
    return { view, n, steps: view.steps, fullParent, rowOf, leafAtRow, firstRow, size, groups, roots };
}

/** The active group that holds prompt `leaf` at step `step`, or null. */
export function groupAt(layout, leaf, step) {
    for (let id = leaf; id >= 0; id = layout.fullParent[id]) {
        const g = layout.groups.get(id);
        if (g && g.first <= step && step < g.end) return g;
    }
    return null;
}

/** Leaf ids of a node of the full tree, in row order. */
export function membersOf(layout, id) {
    const out = [];
    const start = layout.firstRow[id];
    for (let r = start; r < start + layout.size[id]; r++) out.push(layout.leafAtRow[r]);
    return out;
}

/** Geometry shared by the painter and the hit test, for a canvas of width x height CSS pixels. */
export function frame(layout, width, height) {
    const plotTop = HEADER_PX;
    const plotBottom = Math.max(plotTop + 1, height - AXIS_PX);
    const rowPx = (plotBottom - plotTop) / layout.n;
    const labels = rowPx >= MIN_LABEL_ROW_PX && layout.view.prompts !== null;
    const left = PAD_PX;
    const right = Math.max(left + 1, labels ? Math.round(width * 0.55) : width - AXIS_TITLE_PX);
    const stepPx = (right - left) / layout.steps;
    return {
        width, height, left, right, plotTop, plotBottom, rowPx, labels, stepPx,
        x: (step) => left + step * stepPx,
        y: (row) => plotTop + row * rowPx,
    };
}

/** Which prompt row and step lie under a point, or null outside the plot. */
export function hitTest(layout, fr, px, py) {
    if (py < fr.plotTop || py >= fr.plotBottom || px < fr.left) return null;
    const row = Math.min(layout.n - 1, Math.floor((py - fr.plotTop) / fr.rowPx));
    const step = Math.min(layout.steps - 1, Math.floor((px - fr.left) / fr.stepPx));
    return { leaf: layout.leafAtRow[row], step };
}

function hue(layout, g) {
    const mid = layout.firstRow[g.id] + g.size / 2;
    return Math.round((300 * mid) / layout.n);
}

/**
 * Paint the dendrogram: one horizontal bar per active group over the steps it is shared (thicker for
 * bigger groups), a vertical joint where it splits, fans for groups too thin to draw, labels when
 * there is room, the step axis and the summary line. Returns the number of groups painted.
 * @param {CanvasRenderingContext2D} ctx already scaled so that one unit is one CSS pixel
 */
export function paint(ctx, layout, fr, theme, highlight) {
    const { x, y, rowPx } = fr;
    ctx.fillStyle = theme.background;
    ctx.fillRect(0, 0, fr.width, fr.height);
    ctx.font = theme.font;
    ctx.textBaseline = "middle";
    ctx.fillStyle = theme.text;
    ctx.fillText(layout.view.summary, PAD_PX, HEADER_PX / 2, fr.width - 2 * PAD_PX);

    const center = (g) => y(layout.firstRow[g.id] + g.size / 2);
    let painted = 0;
    const stack = layout.roots.slice().reverse();
    while (stack.length) {
        const g = stack.pop();
        painted++;
        const extent = g.size * rowPx;
        const colour = `hsl(${hue(layout, g)}, 70%, ${highlight === g ? 75 : 58}%)`;
        const yc = center(g);
        ctx.strokeStyle = colour;
        // Thicker for bigger groups, but never thicker than the rows the group covers.
        ctx.lineWidth = Math.max(1, Math.min(6, 1.5 + Math.log2(g.size), 0.8 * extent));
        ctx.beginPath();
        ctx.moveTo(x(g.first), yc);
        ctx.lineTo(x(g.end), yc);
        ctx.stroke();
        if (g.size > 1 && extent >= 14 && x(g.end) - x(g.first) >= 22) {
            ctx.fillStyle = theme.text;
            ctx.fillText(String(g.size), x(g.first) + 2, yc - 8);
        }
        if (!g.children.length) continue;
        if (extent < MIN_GROUP_PX) {
            // Collapsed: a fan from the split to the last step covering the group's rows.
            const top = y(layout.firstRow[g.id]);
            ctx.fillStyle = colour;
            ctx.globalAlpha = 0.45;
            ctx.beginPath();
            ctx.moveTo(x(g.end), yc);
            ctx.lineTo(x(layout.steps), top);
            ctx.lineTo(x(layout.steps), top + Math.max(1, extent));
            ctx.closePath();
            ctx.fill();
            ctx.globalAlpha = 1;
            continue;
        }
        const ys = g.children.map(center);
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(x(g.end), Math.min(...ys));
        ctx.lineTo(x(g.end), Math.max(...ys));
        ctx.stroke();
        for (let i = g.children.length - 1; i >= 0; i--) stack.push(g.children[i]);
    }

    if (fr.labels) {
        ctx.fillStyle = theme.text;
        const maxWidth = fr.width - fr.right - 2 * PAD_PX;
        for (let r = 0; r < layout.n; r++) {
            const text = layout.view.prompts[layout.leafAtRow[r]];
            ctx.fillText(text, fr.right + PAD_PX, y(r + 0.5), maxWidth);
        }
    }

    // Step axis: first and last step and a few in between.
    ctx.strokeStyle = theme.axis;
    ctx.fillStyle = theme.axis;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x(0), fr.plotBottom + 2);
    ctx.lineTo(x(layout.steps), fr.plotBottom + 2);
    ctx.stroke();
    const axis = layout.view.axis;
    const ticks = Math.max(1, Math.floor((fr.right - fr.left) / 48));
    const every = layout.view.kind === "plan" ? Math.max(1, Math.ceil(layout.steps / ticks)) : layout.steps / ticks;
    ctx.textAlign = "center";
    for (let k = 0; k <= layout.steps + 1e-9; k += every) {
        const value = axis.start + ((axis.stop - axis.start) * k) / layout.steps;
        ctx.fillText(layout.view.kind === "plan" ? String(value) : value.toPrecision(2), x(k), fr.plotBottom + 12);
    }
    ctx.textAlign = "left";
    ctx.fillText(layout.view.kind === "plan" ? "step" : "height", fr.right + PAD_PX, fr.plotBottom + 12);
    return painted;
}

/** Tooltip text for the group under a hit: size, steps shared, and its first prompts. */
export function describe(layout, hit, maxPrompts = 8) {
    const g = groupAt(layout, hit.leaf, hit.step);
    if (!g) return "";
    const prompts = layout.view.prompts;
    const members = membersOf(layout, g.id);
    let head;
    if (layout.view.kind === "tree") {
        head = g.size === 1 ? "1 prompt" : `${g.size} prompts, merged at height ${g.height}`;
    } else {
        head = g.size === 1
            ? `1 prompt, alone from step ${g.first}`
            : `${g.size} prompts share steps ${g.first}\u2013${g.end - 1} (of ${layout.steps})`;
    }
    const lines = [head];
    for (const leaf of members.slice(0, maxPrompts)) {
        lines.push(prompts ? `\u2022 ${prompts[leaf]}` : `\u2022 prompt ${leaf}`);
    }
    if (members.length > maxPrompts) lines.push(`\u2026 and ${members.length - maxPrompts} more`);
    return lines.join("\n");
}
