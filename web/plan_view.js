// SPDX-License-Identifier: GPL-3.0-or-later
// Framework-free model and painter for a hierdiff plan (the JSON of hierdiff_core.schedule
// Plan.to_dict()): a dendrogram laid against the step axis. A bare tree (PromptTree.to_dict(), what
// Prompt Set Cluster reports before any steps are known) is drawn the same way against merge height.
// No ComfyUI imports here, so the model, the packed form and the painter can be tested under Node.
//
// The model of a plan is its tree (the merges, in scipy's numbering) and, for every merge, the step
// at which that group stops being shared (its end step). That is all the planner decided: a group
// starts where its parent ends, is active when it lasts at least a step, and a prompt is alone from
// its last group's end to the last step. Nothing here plans: the end steps come from the planner.

export const PACKED_FORMAT = "hierdiff.plan.packed";
export const PACKED_VERSION = 1;
const LEGACY_VIEW_FORMAT = "hierdiff.plan.view"; // what earlier versions kept in node properties

// Columns of a tree drawn against merge height: the x axis is cut into this many bins.
export const TREE_COLUMNS = 200;
// A prompt label needs rows at least this tall (CSS pixels at graph zoom 1).
export const MIN_LABEL_ROW_PX = 11;
// The collapsed view aims at rows this tall, so every row keeps a readable label.
export const TARGET_ROW_PX = 16;
// A click on a collapsed group opens it into about this many rows.
export const EXPAND_ROWS = 8;
// Top-level clusters get their own colour; above them (the shared trunk) bars are neutral.
export const COLOUR_GROUPS = 8;

export const PALETTE = ["#4e9af1", "#f28e2b", "#59c26a", "#e15759", "#c77dff", "#a3e635", "#2ec4b6", "#ff6fb5"];
export const TRUNK_COLOUR = "#aab4c3";
export const FOUND_COLOUR = "#ffe600";
export const STALE_COLOUR = "#f0a030";

const LINE_PX = 16;
const AXIS_PX = 20;
const PAD_PX = 8;
const AXIS_TITLE_PX = 42;

// ----- the model -------------------------------------------------------------------------------------

function checkMerges(mergesIn, n) {
    if (!Array.isArray(mergesIn) || mergesIn.length !== n - 1) {
        throw new Error(`${n} prompts need ${n - 1} merges, got ${mergesIn?.length}`);
    }
}

/** Pairs and effective heights (never below a child's, as scipy's 'distance' cut sees them). */
function treeArrays(mergesIn, n) {
    const merges = new Int32Array(2 * (n - 1));
    const heights = new Float64Array(n - 1);
    const heightOf = (v) => (v < n ? 0 : heights[v - n]);
    mergesIn.forEach((m, i) => {
        const [a, b] = [Number(m[0]), Number(m[1])];
        if (!(a >= 0 && b >= 0 && a < n + i && b < n + i)) throw new Error(`merge ${i} joins unknown nodes ${a}, ${b}`);
        merges[2 * i] = a;
        merges[2 * i + 1] = b;
        heights[i] = Math.max(Number(m[2]) || 0, heightOf(a), heightOf(b));
    });
    return { merges, heights };
}

function parentsOf(merges, n) {
    const parent = new Int32Array(2 * n - 1).fill(-1);
    for (let i = 0; i < n - 1; i++) {
        parent[merges[2 * i]] = n + i;
        parent[merges[2 * i + 1]] = n + i;
    }
    return parent;
}

/** Every merge's end step from the active groups of a plan; an inactive merge ends where its parent does. */
function endsFromGroups(merges, n, groups) {
    const parent = parentsOf(merges, n);
    const known = new Map();
    for (const [id, end] of groups) known.set(id, end);
    const ends = new Int32Array(n - 1);
    for (let v = 2 * n - 2; v >= n; v--) { // parents have larger ids: top-down
        const p = parent[v];
        ends[v - n] = known.has(v) ? known.get(v) : (p < 0 ? 0 : ends[p - n]);
    }
    return ends;
}

/** "N images, E model evaluations instead of K x N = T, X % saved", as hierdiff_core.report writes it. */
export function summaryLine(n, steps, evaluations, saving) {
    const f = (v) => v.toLocaleString("en-US");
    const pct = (100 * saving).toFixed(1);
    return `${f(n)} images, ${f(evaluations)} model evaluations instead of ${steps} x ${f(n)} = ${f(steps * n)}, `
        + `${pct} % saved`;
}

/**
 * The model of a plan (schedule.to_dict()). Throws an Error naming the problem when it is not one.
 * @param {object} plan
 * @param {string} [summary] the summary line the planner wrote for it
 */
export function modelFromPlan(plan, summary) {
    if (!plan || plan.format !== "hierdiff.plan") throw new Error("not a hierdiff plan: 'format' must be 'hierdiff.plan'");
    const mergesIn = plan.linkage?.merges ?? [];
    const n = plan.n_prompts ?? mergesIn.length + 1;
    checkMerges(mergesIn, n);
    const { merges, heights } = treeArrays(mergesIn, n);
    const ends = endsFromGroups(merges, n, (plan.nodes ?? []).map((g) => [g.id, g.end_step]));
    return {
        kind: "plan", n, steps: plan.steps, merges, heights, ends,
        axis: { title: "step", start: 0, stop: plan.steps },
        prompts: Array.isArray(plan.prompts) ? plan.prompts.slice(0, n) : null,
        method: plan.linkage?.method ?? null,
        tau: plan.tau,
        probe: plan.probe_evaluations ?? 0,
        model_evaluations: plan.model_evaluations,
        saving: plan.saving,
        summary: summary || summaryLine(n, plan.steps, plan.model_evaluations, plan.saving),
    };
}

/** Columns of merge height, root at the left, leaves at the right; its own columns keep the root visible. */
function treeEnds(heights, n) {
    const top = n > 1 && heights[n - 2] > 0 ? heights[n - 2] : 1;
    const rootColumns = Math.round(TREE_COLUMNS / 20);
    const column = (h) => Math.min(TREE_COLUMNS - 1,
        rootColumns + Math.round((1 - h / top) * (TREE_COLUMNS - 1 - rootColumns)));
    const ends = new Int32Array(n - 1);
    for (let i = 0; i < n - 1; i++) ends[i] = column(heights[i]);
    const axis = { title: "height", start: top * (1 + rootColumns / (TREE_COLUMNS - 1 - rootColumns)), stop: 0 };
    return { ends, axis };
}

/** The model of a bare tree (PromptTree.to_dict()): "steps" are columns of merge height. */
export function modelFromTree(tree, summary) {
    if (!tree || tree.format !== "hierdiff.tree") throw new Error("not a hierdiff tree: 'format' must be 'hierdiff.tree'");
    const mergesIn = tree.merges ?? [];
    const n = tree.n_prompts ?? mergesIn.length + 1;
    checkMerges(mergesIn, n);
    const { merges, heights } = treeArrays(mergesIn, n);
    const { ends, axis } = treeEnds(heights, n);
    return {
        kind: "tree", n, steps: TREE_COLUMNS, merges, heights, ends, axis,
        prompts: Array.isArray(tree.prompts) ? tree.prompts.slice(0, n) : null,
        method: tree.method ?? null,
        summary: summary || treeSummary(n, tree.method),
    };
}

function treeSummary(n, method) {
    return `${n.toLocaleString("en-US")} prompts, ${method} linkage: a hierarchical sampler shows which steps they share`;
}

/** The tree of a plan's model, drawn against merge height (what Prompt Set Cluster shows). */
export function treeModelOf(model, summary) {
    const { ends, axis } = treeEnds(model.heights, model.n);
    return {
        kind: "tree", n: model.n, steps: TREE_COLUMNS, merges: model.merges, heights: model.heights, ends, axis,
        get prompts() { return model.prompts; }, // labels arrive with the plan's (a saved plan has none at first)
        method: model.method,
        summary: summary || treeSummary(model.n, model.method),
    };
}

// ----- the packed form kept in a workflow --------------------------------------------------------------

function toBase64(typed) {
    const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
}

function fromBase64(text, Type) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    if (bytes.length % Type.BYTES_PER_ELEMENT) throw new Error("packed array has a partial element");
    return new Type(bytes.buffer);
}

/**
 * A plan's model as the small object kept in node properties (and so in saved workflows and PNGs):
 * the merges as 16-bit ids (32-bit beyond 32,767 prompts), each merge's end step, its height to 1/65,535
 * of the tree's (enough to draw the tree), and the summary; no prompt texts (they are in the workflow
 * already, in Prompt Set Cluster's widget). About 8 bytes of base64 per prompt.
 * @param {object} model a plan's model
 * @param {object} [extra] fields kept as they are (the inputs' key, tree_from, ...)
 */
export function packModel(model, extra = {}) {
    if (model.kind !== "plan") throw new Error("only plans are packed");
    const wide = 2 * model.n - 1 > 0xffff;
    const merges = wide ? Uint32Array.from(model.merges) : Uint16Array.from(model.merges);
    const top = model.n > 1 ? model.heights[model.n - 2] : 0;
    const heights = Uint16Array.from(model.heights, (h) => (top > 0 ? Math.round((h / top) * 0xffff) : 0));
    return {
        format: PACKED_FORMAT, version: PACKED_VERSION, n: model.n, steps: model.steps,
        tau: model.tau, probe: model.probe, model_evaluations: model.model_evaluations, saving: model.saving,
        method: model.method, summary: model.summary, ...extra,
        id_bits: wide ? 32 : 16, top_height: top,
        merges: toBase64(merges), ends: toBase64(Uint16Array.from(model.ends)), heights: toBase64(heights),
    };
}

/** The model of a packed plan (prompts unknown: null). Throws when the object is not one. */
export function unpackModel(packed) {
    if (!packed || packed.format !== PACKED_FORMAT || packed.version !== PACKED_VERSION) {
        throw new Error(`not a packed hierdiff plan (format ${PACKED_FORMAT} version ${PACKED_VERSION})`);
    }
    const n = packed.n;
    const merges = Int32Array.from(fromBase64(packed.merges, packed.id_bits === 32 ? Uint32Array : Uint16Array));
    const ends = Int32Array.from(fromBase64(packed.ends, Uint16Array));
    const scaled = fromBase64(packed.heights, Uint16Array);
    if (merges.length !== 2 * (n - 1) || ends.length !== n - 1 || scaled.length !== n - 1) {
        throw new Error(`packed plan of ${n} prompts has arrays of the wrong length`);
    }
    const heights = Float64Array.from(scaled, (h) => (h / 0xffff) * packed.top_height);
    return {
        kind: "plan", n, steps: packed.steps, merges, heights, ends,
        axis: { title: "step", start: 0, stop: packed.steps },
        prompts: null, method: packed.method, tau: packed.tau, probe: packed.probe ?? 0,
        model_evaluations: packed.model_evaluations, saving: packed.saving, summary: packed.summary,
    };
}

/** The model of what earlier versions kept in properties (format "hierdiff.plan.view", version 1). */
export function modelFromLegacy(view) {
    if (!view || view.format !== LEGACY_VIEW_FORMAT) throw new Error("not a saved hierdiff view");
    const n = view.n_prompts;
    const pairs = [];
    for (let i = 0; i < n - 1; i++) pairs.push([view.merges[2 * i], view.merges[2 * i + 1], 0]);
    const { merges } = treeArrays(pairs, n);
    const groups = [];
    const heights = new Float64Array(n - 1);
    for (let i = 0; i < view.nodes.length; i += 6) {
        groups.push([view.nodes[i], view.nodes[i + 5]]);
        if (view.nodes[i] >= n) heights[view.nodes[i] - n] = view.nodes[i + 3];
    }
    return {
        kind: view.kind === "tree" ? "tree" : "plan", n, steps: view.steps, merges, heights,
        ends: endsFromGroups(merges, n, groups), axis: view.axis, prompts: view.prompts ?? null,
        method: null, tau: view.tau, probe: 0, model_evaluations: view.model_evaluations, saving: view.saving,
        summary: view.summary,
    };
}

// ----- layout ----------------------------------------------------------------------------------------------

/**
 * What drawing needs from a model: the leaf order (depth-first over the tree, so every group's members
 * are one contiguous run), each node's first row, size, first and end step, smallest member (the
 * engine's representative row of a group), and the active groups as a tree of their own (a group's
 * children are the groups it splits into). Linear in the number of prompts.
 */
export function layoutModel(model) {
    const n = model.n;
    const total = 2 * n - 1;
    const m = model.merges;
    const fullParent = parentsOf(m, n);
    const rowOf = new Int32Array(n);
    const leafAtRow = new Int32Array(n);
    const firstRow = new Int32Array(total);
    const size = new Int32Array(total);
    const minMember = new Int32Array(total);
    let row = 0;
    const stack = [total - 1];
    const visited = new Uint8Array(total);
    while (stack.length) { // iterative: trees of thousands of prompts may be deep
        const id = stack[stack.length - 1];
        if (id < n) {
            stack.pop();
            rowOf[id] = row;
            leafAtRow[row] = id;
            firstRow[id] = row;
            size[id] = 1;
            minMember[id] = id;
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
            minMember[id] = Math.min(minMember[a], minMember[b]);
        }
    }
    const end = (v) => (v < n ? model.steps : model.ends[v - n]);
    const first = (v) => (fullParent[v] < 0 ? 0 : end(fullParent[v]));
    const groups = new Map();
    const activeAbove = new Int32Array(total).fill(-1); // nearest active ancestor, top-down
    for (let v = total - 1; v >= 0; v--) {
        const p = fullParent[v];
        if (p >= 0) activeAbove[v] = groups.has(p) ? p : activeAbove[p];
        if (end(v) > first(v)) {
            groups.set(v, { id: v, parent: activeAbove[v], size: size[v], first: first(v), end: end(v), children: [] });
        }
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
    // Merges from the highest down (ties: larger id, which is never below a smaller one): any prefix of
    // this order is a top part of the tree, what a cut into a number of groups opens.
    const byHeight = Int32Array.from({ length: n - 1 }, (_, i) => n + i)
        .sort((x, y) => model.heights[y - n] - model.heights[x - n] || y - x);
    return { model, n, steps: model.steps, fullParent, rowOf, leafAtRow, firstRow, size, minMember, first, end,
        groups, roots, byHeight };
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
    const start = layout.firstRow[id];
    return Array.from(layout.leafAtRow.subarray(start, start + layout.size[id]));
}

/** Whether node `v` lies in the subtree of node `d` (or is d). */
export function within(layout, v, d) {
    const s = layout.firstRow[d];
    return layout.firstRow[v] >= s && layout.firstRow[v] + layout.size[v] <= s + layout.size[d];
}

// ----- the collapsed view: rows that are prompts or whole groups ----------------------------------------------

/** Open the `count` highest merges inside node `d` (d first), so that d shows as count + 1 rows. */
function openTop(layout, open, d, count) {
    if (d < layout.n || count < 1) return;
    let opened = 0;
    for (const v of layout.byHeight) {
        if (opened >= count) break;
        if (!within(layout, v, d) || open[v]) continue;
        const p = layout.fullParent[v];
        if (v !== d && !open[p]) continue; // only below what is open already, so rows stay whole groups
        open[v] = 1;
        opened++;
    }
}

/**
 * The rows to draw: the tree cut into at most `maxRows` groups (the highest merges opened first, so the
 * rows are the plan's top groups), then the user's clicks: {op: "open", node} opens a group into about
 * EXPAND_ROWS rows, {op: "fold", node} closes a group and everything below it into one row.
 * Returns {rows: node ids in leaf order, open: Uint8Array over nodes, rowOfLeaf, rowStart/rowEnd
 * (Int32Array over nodes: the rows an open node covers)}.
 */
export function cutRows(layout, maxRows, ops = []) {
    const n = layout.n;
    const total = 2 * n - 1;
    const open = new Uint8Array(total);
    if (n <= maxRows) open.fill(1, n);
    else openTop(layout, open, total - 1, Math.max(0, maxRows - 1));
    for (const { op, node } of ops) {
        if (node < n || node >= total) continue;
        if (op === "open") {
            if (open[node]) continue;
            let p = layout.fullParent[node];
            while (p >= 0 && !open[p]) { open[p] = 1; p = layout.fullParent[p]; } // keep the open part whole
            openTop(layout, open, node, EXPAND_ROWS - 1);
        } else if (op === "fold") {
            const s = layout.firstRow[node];
            for (let v = n; v < total; v++) {
                if (open[v] && layout.firstRow[v] >= s && layout.firstRow[v] + layout.size[v] <= s + layout.size[node]) {
                    open[v] = 0;
                }
            }
        }
    }
    const rows = [];
    const stack = [total - 1];
    while (stack.length) {
        const v = stack.pop();
        if (v >= n && open[v]) {
            const i = v - n;
            stack.push(layout.model.merges[2 * i + 1], layout.model.merges[2 * i]);
        } else {
            rows.push(v);
        }
    }
    const rowOfLeaf = new Int32Array(n);
    rows.forEach((v, r) => {
        for (let k = layout.firstRow[v]; k < layout.firstRow[v] + layout.size[v]; k++) rowOfLeaf[layout.leafAtRow[k]] = r;
    });
    const rowStart = new Int32Array(total).fill(-1);
    const rowEnd = new Int32Array(total).fill(-1);
    for (let v = n; v < total; v++) {
        if (!open[v]) continue;
        rowStart[v] = rowOfLeaf[layout.leafAtRow[layout.firstRow[v]]];
        rowEnd[v] = rowOfLeaf[layout.leafAtRow[layout.firstRow[v] + layout.size[v] - 1]] + 1;
    }
    return { rows, open, rowOfLeaf, rowStart, rowEnd };
}

/**
 * Colour index of every node: the top groups (COLOUR_GROUPS of them, fewer for small sets, so that
 * groups, not single prompts, carry the colours) and everything inside; -1 above them (the trunk).
 */
export function colourIndex(layout) {
    const n = layout.n;
    const top = cutRows(layout, Math.max(2, Math.min(COLOUR_GROUPS, Math.floor(n / 2)))).rows;
    const index = new Int16Array(2 * n - 1).fill(-1);
    top.forEach((d, c) => {
        const s = layout.firstRow[d];
        for (let v = 0; v < 2 * n - 1; v++) {
            if (layout.firstRow[v] >= s && layout.firstRow[v] + layout.size[v] <= s + layout.size[d]) index[v] = c;
        }
    });
    return index;
}

/** The label of a row: the prompt, or "[size] representative prompt" (the group's smallest member). */
export function rowLabel(layout, v) {
    const prompts = layout.model.prompts;
    const rep = layout.minMember[v];
    const text = prompts ? prompts[rep] : `prompt ${rep}`;
    return layout.size[v] === 1 ? text : `[${layout.size[v].toLocaleString("en-US")}] ${text}`;
}

/** Prompts (leaf ids) holding `query`, case-insensitively, in prompt order. */
export function findPrompts(model, query) {
    const q = query.trim().toLowerCase();
    if (!q || !model.prompts) return [];
    const out = [];
    model.prompts.forEach((p, i) => { if (p.toLowerCase().includes(q)) out.push(i); });
    return out;
}

/** The active groups a prompt belongs to, from the first step to the last: its path through the plan. */
export function pathOf(layout, leaf) {
    const path = [];
    for (let v = leaf; v >= 0; v = layout.fullParent[v]) if (layout.groups.has(v)) path.push(layout.groups.get(v));
    return path.reverse();
}

// ----- geometry, hit test, painting ------------------------------------------------------------------------

/**
 * The header's text lines: the summary (cut in two at a comma when it is wider than the picture) and
 * the status line, if any.
 */
export function headerLines(ctx, summary, width, status = null) {
    const room = width - 2 * PAD_PX;
    let lines = [summary];
    if (ctx.measureText && ctx.measureText(summary).width > room) {
        const cuts = [...summary.matchAll(/, /g)].map((m) => m.index).reverse();
        const cut = cuts.find((i) => ctx.measureText(summary.slice(0, i + 1)).width <= room);
        if (cut !== undefined) lines = [summary.slice(0, cut + 1), summary.slice(cut + 2)];
    }
    return status ? [...lines, status] : lines;
}

/** Pixels the header takes for a number of text lines. */
export function headerHeight(lines) {
    return 2 + LINE_PX * Math.max(1, lines);
}

/**
 * Geometry shared by the painter and the hit test, for a canvas of width x height CSS pixels.
 * @param {number} [header] pixels above the plot (headerHeight of the header's lines)
 */
export function frame(layout, display, width, height, header = headerHeight(2)) {
    const plotTop = header;
    const plotBottom = Math.max(plotTop + 1, height - AXIS_PX);
    const rowPx = (plotBottom - plotTop) / display.rows.length;
    const labels = rowPx >= MIN_LABEL_ROW_PX;
    const left = PAD_PX;
    const right = Math.max(left + 1, labels ? Math.round(width * 0.55) : width - AXIS_TITLE_PX);
    const stepPx = (right - left) / layout.steps;
    const x = (step) => left + step * stepPx;
    const y = (row) => plotTop + row * rowPx;
    // Where a node is drawn: the middle of the rows it covers, or of the one row it lies in.
    const centre = (v) => (display.open[v]
        ? y((display.rowStart[v] + display.rowEnd[v]) / 2)
        : y(display.rowOfLeaf[layout.leafAtRow[layout.firstRow[v]]] + 0.5));
    const extent = (v) => (display.open[v] ? (display.rowEnd[v] - display.rowStart[v]) * rowPx : rowPx);
    return { width, height, left, right, plotTop, plotBottom, rowPx, labels, stepPx, x, y, centre, extent };
}

/** Which row and step lie under a point, or null outside the plot. */
export function hitTest(layout, display, fr, px, py) {
    if (py < fr.plotTop || py >= fr.plotBottom || px < fr.left) return null;
    const row = Math.min(display.rows.length - 1, Math.floor((py - fr.plotTop) / fr.rowPx));
    const step = Math.max(0, Math.min(layout.steps - 1, Math.floor((px - fr.left) / fr.stepPx)));
    const node = display.rows[row];
    return { row, step, node, leaf: layout.leafAtRow[layout.firstRow[node]] };
}

/** The group under a hit: the active group holding the whole row there, or null where the row is split. */
export function groupUnder(layout, hit) {
    const g = groupAt(layout, hit.leaf, hit.step);
    return g && within(layout, hit.node, g.id) ? g : null;
}

/** The step from which a row's prompts are no longer all in one group (the steps' count: never). */
export function splitStep(layout, v) {
    let a = v;
    while (a >= 0 && !layout.groups.has(a)) a = layout.fullParent[a];
    return a < 0 ? 0 : layout.groups.get(a).end;
}

/** `text`, cut with an ellipsis to fit `maxWidth` pixels (squeezed letters are hard to read). */
export function fitText(ctx, text, maxWidth) {
    if (!ctx.measureText || maxWidth <= 0 || ctx.measureText(text).width <= maxWidth) return text;
    let lo = 0;
    let hi = text.length;
    while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (ctx.measureText(`${text.slice(0, mid)}\u2026`).width <= maxWidth) lo = mid;
        else hi = mid;
    }
    return lo ? `${text.slice(0, lo)}\u2026` : "";
}

function colourOf(colours, v, hovered) {
    if (hovered) return "#ffffff";
    const c = colours[v];
    return c < 0 ? TRUNK_COLOUR : PALETTE[c % PALETTE.length];
}

function bar(ctx, fr, g, yc, colour, layout) {
    ctx.strokeStyle = colour;
    // Thicker for bigger groups, never thicker than the rows the group covers.
    ctx.lineWidth = Math.max(1.5, Math.min(6, 1.5 + Math.log2(g.size), 0.8 * fr.extent(g.id)));
    ctx.beginPath();
    ctx.moveTo(fr.x(g.first), yc);
    ctx.lineTo(fr.x(g.end), yc);
    ctx.stroke();
    if (g.size > 1 && fr.extent(g.id) >= 28 && fr.x(g.end) - fr.x(g.first) >= 22 && layout) {
        ctx.fillStyle = ctx.strokeStyle;
        ctx.fillText(g.size.toLocaleString("en-US"), fr.x(g.first) + 2, yc - 8);
    }
}

/**
 * Paint the plan: a bar per active group over the steps it is shared (thicker for bigger groups) at the
 * middle of its rows, a joint where it splits; a row that is a collapsed group shows its bar while it is
 * whole and a fan from where it splits; labels when rows are tall enough; the found prompt's path in
 * yellow; the header (summary and status lines) and the axis. Returns the number of bars and fans
 * painted.
 * @param {CanvasRenderingContext2D} ctx already scaled so that one unit is one CSS pixel
 * @param {object} options {hover: group or null, found: leaf id or null, status: [text, colour] or null,
 *   stale: bool (dim the picture: it is not the plan of the inputs on screen), summaryLines: the
 *   summary as headerLines cut it}
 */
export function paint(ctx, layout, display, fr, theme, options = {}) {
    const { hover = null, found = null, status = null, stale = false } = options;
    const colours = layout.colours ?? (layout.colours = colourIndex(layout));
    ctx.fillStyle = theme.background;
    ctx.fillRect(0, 0, fr.width, fr.height);
    ctx.font = theme.font;
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillStyle = theme.text;
    const lines = options.summaryLines ?? [layout.model.summary];
    lines.forEach((line, i) => ctx.fillText(fitText(ctx, line, fr.width - 2 * PAD_PX), PAD_PX, 9 + LINE_PX * i));
    if (status) {
        ctx.fillStyle = status[1] ?? theme.axis;
        ctx.fillText(fitText(ctx, status[0], fr.width - 2 * PAD_PX), PAD_PX, 9 + LINE_PX * lines.length);
    }
    for (let r = 1; r < display.rows.length; r += 2) { // faint stripes: rows are easier to follow to their label
        ctx.fillStyle = theme.stripe ?? "#1d1d24";
        ctx.fillRect(fr.left, fr.y(r), fr.width - fr.left, fr.rowPx);
    }

    let painted = 0;
    // Open groups: their bar, and the joint to the groups they split into.
    for (const g of layout.groups.values()) {
        if (!display.open[g.id]) continue;
        painted++;
        const yc = fr.centre(g.id);
        bar(ctx, fr, g, yc, colourOf(colours, g.id, hover === g), layout);
        if (!g.children.length) continue;
        const ys = g.children.map((c) => fr.centre(c.id));
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(fr.x(g.end), Math.min(yc, ...ys));
        ctx.lineTo(fr.x(g.end), Math.max(yc, ...ys));
        ctx.stroke();
    }
    // Rows: a prompt, or a collapsed group drawn whole until it splits, then as a fan.
    display.rows.forEach((v, r) => {
        const yc = fr.y(r + 0.5);
        const g = layout.groups.get(v);
        if (g) {
            painted++;
            bar(ctx, fr, g, yc, colourOf(colours, v, hover === g), null);
        }
        if (layout.size[v] > 1) {
            const from = splitStep(layout, v);
            if (from < layout.steps) {
                painted++;
                ctx.fillStyle = colourOf(colours, v, false);
                ctx.globalAlpha = 0.4;
                ctx.beginPath();
                ctx.moveTo(fr.x(from), yc);
                ctx.lineTo(fr.x(layout.steps), fr.y(r) + 1);
                ctx.lineTo(fr.x(layout.steps), fr.y(r + 1) - 1);
                ctx.closePath();
                ctx.fill();
                ctx.globalAlpha = 1;
            }
        }
    });

    if (fr.labels) {
        const maxWidth = fr.width - fr.right - 2 * PAD_PX;
        display.rows.forEach((v, r) => {
            ctx.fillStyle = colours[v] < 0 ? theme.text : colourOf(colours, v, false);
            ctx.fillText(fitText(ctx, rowLabel(layout, v), maxWidth), fr.right + PAD_PX, fr.y(r + 0.5));
        });
    }

    if (found !== null && found !== undefined && found < layout.n) {
        const r = display.rowOfLeaf[found];
        if (fr.labels) { // the found prompt's name replaces its row's label
            ctx.fillStyle = theme.background;
            ctx.fillRect(fr.right, fr.y(r), fr.width - fr.right, fr.rowPx);
        }
        ctx.fillStyle = FOUND_COLOUR;
        ctx.globalAlpha = 0.18;
        ctx.fillRect(fr.left, fr.y(r), fr.width - fr.left, fr.rowPx);
        ctx.globalAlpha = 1;
        ctx.strokeStyle = FOUND_COLOUR;
        ctx.lineWidth = 2.5;
        ctx.beginPath();
        let previous = null;
        for (const g of pathOf(layout, found)) {
            const yc = fr.centre(g.id);
            if (previous !== null) ctx.lineTo(fr.x(g.first), yc); // the joint down to this group
            else ctx.moveTo(fr.x(g.first), yc);
            ctx.lineTo(fr.x(g.end), yc);
            previous = yc;
        }
        ctx.stroke();
        if (fr.labels) {
            const text = layout.model.prompts ? layout.model.prompts[found] : `prompt ${found}`;
            ctx.fillStyle = FOUND_COLOUR;
            const label = layout.size[display.rows[r]] > 1 ? `\u2192 ${text}` : text;
            ctx.fillText(fitText(ctx, label, fr.width - fr.right - 2 * PAD_PX), fr.right + PAD_PX, fr.y(r + 0.5));
        }
    }

    // Axis: first and last step and a few in between.
    ctx.strokeStyle = theme.axis;
    ctx.fillStyle = theme.axis;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(fr.x(0), fr.plotBottom + 2);
    ctx.lineTo(fr.x(layout.steps), fr.plotBottom + 2);
    ctx.stroke();
    const axis = layout.model.axis;
    const plan = layout.model.kind === "plan";
    const ticks = Math.max(1, Math.floor((fr.right - fr.left) / 48));
    const every = plan ? Math.max(1, Math.ceil(layout.steps / ticks)) : layout.steps / ticks;
    ctx.textAlign = "center";
    let lastTick = "";
    for (let k = 0; k <= layout.steps + 1e-9; k += every) {
        const value = axis.start + ((axis.stop - axis.start) * k) / layout.steps;
        lastTick = plan ? String(value) : value.toPrecision(2);
        ctx.fillText(lastTick, fr.x(k), fr.plotBottom + 12);
    }
    ctx.textAlign = "left";
    const lastTickWidth = ctx.measureText ? ctx.measureText(lastTick).width : 0;
    ctx.fillText(axis.title, Math.max(fr.right, fr.x(layout.steps) + lastTickWidth / 2) + PAD_PX / 2, fr.plotBottom + 12);

    if (stale) { // dim the picture: it shows other inputs than the node's
        ctx.fillStyle = theme.background;
        ctx.globalAlpha = 0.6;
        ctx.fillRect(0, fr.plotTop - 2, fr.width, fr.height - fr.plotTop + 2);
        ctx.globalAlpha = 1;
    }
    return painted;
}

/** Tooltip text for a hit: the group there (size, steps shared, first prompts), or how its row splits. */
export function describe(layout, hit, maxPrompts = 8) {
    const prompts = layout.model.prompts;
    const name = (leaf) => (prompts ? `\u2022 ${prompts[leaf]}` : `\u2022 prompt ${leaf}`);
    const g = groupUnder(layout, hit);
    const lines = [];
    let members;
    if (g) {
        members = membersOf(layout, g.id);
        if (layout.model.kind === "tree") {
            const height = g.id < layout.n ? 0 : layout.model.heights[g.id - layout.n];
            lines.push(g.size === 1 ? "1 prompt" : `${g.size} prompts, merged at height ${height.toPrecision(3)}`);
        } else {
            lines.push(g.size === 1
                ? `1 prompt, alone from step ${g.first}`
                : `${g.size} prompts share steps ${g.first}\u2013${g.end - 1} (of ${layout.steps})`);
        }
    } else {
        members = membersOf(layout, hit.node);
        const parts = new Set(members.map((leaf) => groupAt(layout, leaf, hit.step)?.id));
        const when = layout.model.kind === "plan" ? `at step ${hit.step}` : "here";
        lines.push(`${members.length} prompts in ${parts.size} groups ${when}`);
    }
    for (const leaf of members.slice(0, maxPrompts)) lines.push(name(leaf));
    if (members.length > maxPrompts) lines.push(`\u2026 and ${members.length - maxPrompts} more`);
    const hints = [];
    if (layout.size[hit.node] > 1) hints.push("click: open this group");
    if (layout.fullParent[hit.node] >= 0) hints.push("shift+click: fold into the group above");
    if (hints.length) lines.push(hints.join(" \u00b7 "));
    return lines.join("\n");
}
