// SPDX-License-Identifier: GPL-3.0-or-later
// ComfyUI frontend extension of the hierdiff pack: each hierarchical node draws its plan (which prompts
// share which steps) as a dendrogram against the step axis, with the savings line; Prompt Set Cluster
// draws its tree against merge height. Drawing is in plan_view.js; this file decides what to draw:
//
// - Live preview. While nothing runs, a node shows the plan of the inputs on screen: the pack's route
//   (nodes/routes.py, the one planner) is asked again, debounced, whenever steps, budget, tree_from or
//   the cluster's prompts, linkage or upstream nodes change. Until its answer arrives the old picture
//   is dimmed and marked out of date. The tree is the cluster's last run's when nothing upstream of it
//   changed since; else the route clusters the prompts with the offline sentence encoder, a preview
//   tree when the cluster clusters on CLIP's pooled output (the widget says so).
// - Runs. A queued run shows its own plan: known when it is queued if the tree is known (the cluster's
//   last run, unchanged since) and tree_from is prompt_tree; else the preview of the queued inputs,
//   marked as such, until the node reports its plan.
// - Saving. A plan is kept in its sampler node's properties only, packed (plan_view.packModel: a few
//   bytes per prompt, no prompt texts), with a key of the inputs it was made for. When a run is queued
//   the workflow sent with it (what SaveImage embeds in its PNGs) carries, for each sampler, the plan
//   that run will have when it is known then, else none: never an earlier run's.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
    cutRows, describe, findPrompts, frame, groupAt, headerHeight, headerLines, hitTest, layoutModel,
    modelFromLegacy, modelFromPlan,
    modelFromTree, PACKED_FORMAT, packModel, paint, rowLabel, STALE_COLOUR, TARGET_ROW_PX, treeModelOf,
    unpackModel,
} from "./plan_view.js";

const EXTENSION = "hierdiff.PlanView";
const WIDGET = "hierdiff_plan_view";
const PROPERTY = "hierdiff_plan";
const PREVIEW_ROUTE = "/hierdiff/plan_preview";
const PROMPTS_ROUTE = "/hierdiff/prompts";
const DEBOUNCE_MS = 350;
const POLL_MS = 250;
// Queueing waits at most this long for the plan it will embed; past it the run carries none.
const QUEUE_PLAN_TIMEOUT_MS = 5000;
// The canvas is redrawn at the screen's resolution up to this many pixels a side.
const MAX_BACKING_PX = 4096;
const MIN_WIDTH = 440;
const MIN_HEIGHT = 200;
const MAX_PREFERRED_HEIGHT = 420;
const HEADER_AND_AXIS_PX = 54;
const AXIS_PX = 20;
const FIND_WIDTH_PX = 130;

const PLANNERS = new Set(["HierKSampler", "HierSharedTrunkSampler", "HierGuider"]);
// Nodes that show the plan of the sampler upstream of this input.
const FOLLOWERS = { HierBranchSampler: "hier_latent", HierPlanPreview: "plan_json" };
const CLUSTER = "HierPromptSetCluster";

const THEME = {
    background: "#17171c",
    stripe: "#1d1d24",
    text: "#d8d8e0",
    axis: "#8a8a99",
    font: "11px sans-serif",
};
const INFO_COLOUR = "#8fb8ff";
const RUN_COLOUR = "#7fd28f";
const ERROR_COLOUR = "#ff7b72";

const views = new Set();
const runs = new Map(); // prompt id -> Map(node id -> {key, model}) of the runs queued from this page
let lastPromptId = null; // the prompt the server is running now (its messages come in order)
const started = new Set(); // prompts whose execution_start came before the answer to their queueing

// ----- the graph --------------------------------------------------------------------------------------------

function roleOf(node) {
    if (node.type === CLUSTER) return "cluster";
    if (PLANNERS.has(node.type)) return "planner";
    if (node.type in FOLLOWERS) return "follower";
    if (node.outputs?.some((o) => o.type === "PROMPT_TREE")) return "tree";
    return "other";
}

function linkOf(graph, id) {
    const links = graph?.links;
    return links?.get ? links.get(id) : links?.[id];
}

/** The node an input is connected to, through legacy Reroute nodes; null when unconnected. */
function upstream(node, inputName) {
    const slot = node.inputs?.findIndex((i) => i.name === inputName) ?? -1;
    let origin = slot >= 0 && node.inputs[slot].link != null ? node.getInputNode(slot) : null;
    for (let hops = 0; origin?.type === "Reroute" && hops < 32; hops++) origin = origin.getInputNode(0);
    return origin ?? null;
}

/** Nodes fed by an output slot. */
function downstream(node, slot) {
    return (node.outputs?.[slot]?.links ?? [])
        .map((id) => linkOf(node.graph, id))
        .map((link) => link && node.graph.getNodeById(link.target_id))
        .filter(Boolean);
}

/** A widget's value; `linked` when its input is connected, so the value on screen is not the one used. */
function widget(node, name) {
    const linked = node.inputs?.some((i) => i.name === name && i.link != null) ?? false;
    return { value: node.widgets?.find((w) => w.name === name)?.value, linked };
}

/**
 * A signature of a node and everything upstream of it: types, modes and widget values. Equal
 * signatures mean that ComfyUI would use its cached outputs (the same tree) on the next run.
 */
function upstreamKey(node, memo, seen = new Set()) {
    if (memo.has(node.id)) return memo.get(node.id);
    if (seen.has(node.id)) return "cycle";
    seen.add(node.id);
    const values = (node.widgets ?? []).filter((w) => w.name !== WIDGET).map((w) => w.value);
    const inputs = (node.inputs ?? []).map((input, slot) => {
        if (input.link == null) return "-";
        const origin = node.getInputNode(slot);
        return origin ? upstreamKey(origin, memo, seen) : "?";
    });
    const key = `${node.type}#${node.mode}${JSON.stringify(values)}[${inputs.join(",")}]`;
    memo.set(node.id, key);
    return key;
}

/** The number of steps a planner plans: its steps widget, or (Hierarchical Guider) its sigmas node's. */
function stepsOf(node) {
    if (node.type !== "HierGuider") {
        const steps = widget(node, "steps");
        return steps.linked ? { problem: "steps come from another node: run to see the plan" } : { steps: steps.value };
    }
    for (const sampler of downstream(node, 0)) {
        const sigmas = upstream(sampler, "sigmas");
        const steps = sigmas && widget(sigmas, "steps");
        if (steps && !steps.linked && Number.isInteger(steps.value)) return { steps: steps.value, via: sigmas };
    }
    return { problem: "the steps come with the sigmas at run time: run to see the plan" };
}

/** What a tree source node sends to the route for its prompts and linkage; null if it cannot. */
function clusterFields(node) {
    if (node.type !== CLUSTER) return null;
    const prompts = widget(node, "prompts");
    if (prompts.linked || typeof prompts.value !== "string") return null;
    return { prompts: prompts.value, linkage: widget(node, "linkage").value, embedding: widget(node, "embedding").value };
}

/** The tree of a tree node's last run, while nothing upstream of it has changed since. */
function runTree(treeNode, treeKey) {
    const kept = treeNode?.hierdiffRunTree;
    return kept && kept.key === treeKey ? kept.tree : null;
}

/**
 * What a node's picture depends on: {key (changes whenever the picture would), request (for the route;
 * null when no preview can be made), problem (why not), ...}.
 */
function inputsOf(node, role, memo) {
    if (role === "cluster" || role === "tree") {
        const key = upstreamKey(node, memo);
        const tree = runTree(node, key);
        let request = clusterFields(node);
        if (tree) request = { prompts: tree.prompts, linkage: tree.method, embedding: "sentence", tree };
        const problem = request ? null : "the prompts come from another node: run to see the tree";
        return { key, request, problem, treeKey: key };
    }
    if (role === "follower") return { key: upstreamKey(node, memo), request: null, problem: "run to see the plan" };
    const treeNode = upstream(node, "prompt_tree");
    if (!treeNode) return { key: "unconnected", request: null, problem: "connect a prompt tree to see the plan" };
    const treeKey = upstreamKey(treeNode, memo);
    const { steps, problem, via } = stepsOf(node);
    const fields = {
        steps,
        budget: widget(node, "budget").value,
        budget_value: widget(node, "budget_value").value,
        tree_from: widget(node, "tree_from").value ?? "prompt_tree",
    };
    // Only when set, so that the keys of plans saved before spend existed still match.
    const spend = widget(node, "spend").value;
    if (spend && spend !== "sharing") {
        Object.assign(fields, { spend, sampler_name: widget(node, "sampler_name").value });
    }
    const fromModel = spend === "sharing_within_layout";
    let key = `${node.type}${JSON.stringify(fields)}${via ? upstreamKey(via, memo) : ""}|${treeKey}`;
    if (fields.tree_from === "first_step" || fromModel) {
        // The tree then comes from the model's predictions on the seed's noise: everything upstream
        // counts, and for a guider its sampler's inputs (noise, sigmas) too.
        key += `|${upstreamKey(node, memo)}|${downstream(node, 0).map((s) => upstreamKey(s, memo)).join(",")}`;
    }
    const tree = runTree(treeNode, treeKey);
    const base = tree
        ? { prompts: tree.prompts, linkage: tree.method, embedding: "sentence", tree }
        : clusterFields(treeNode);
    const why = problem
        ?? (fromModel ? "sharing within layouts plans from the model's first step: run to see the plan" : null)
        ?? (base ? null : "the tree comes from another node at run time: run to see the plan");
    return { key, request: why ? null : { ...base, ...fields }, problem: why, treeNode, treeKey, treeFrom: fields.tree_from };
}

/** A short, stable hash of an inputs key (cyrb53), kept with a saved plan instead of the key itself. */
function hashKey(text) {
    let h1 = 0xdeadbeef;
    let h2 = 0x41c6ce57;
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        h1 = Math.imul(h1 ^ c, 2654435761);
        h2 = Math.imul(h2 ^ c, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
    return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

async function postJson(route, body, signal) {
    const response = await api.fetchApi(route, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
    });
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(answer.error ?? `HTTP ${response.status}`);
    return answer;
}

/** The model of a route answer: the plan, or the bare tree when no steps were asked for. */
function modelOfAnswer(answer) {
    return answer.plan ? modelFromPlan(answer.plan, answer.summary) : modelFromTree(answer.tree);
}

// ----- the view ----------------------------------------------------------------------------------------------

/** The picture attached to one node: a canvas in a DOM widget, a find box, and what it shows. */
class PlanView {
    constructor(node) {
        this.node = node;
        this.role = roleOf(node);
        // What is drawn: {model, key (of the inputs it was made for), origin: "run" | "stored" | "preview"
        // | "running", notes, treeFrom}; null before anything is known.
        this.data = null;
        this.running = null; // {pid, before} while a run queued from this page is on
        this.inputs = null;
        this.problem = null;
        this.error = null;
        this.requested = null; // key of the preview asked for
        this.timer = null;
        this.abort = null;
        this.ops = [];
        this.treeId = null;
        this.hover = null;
        this.find = null; // {query, matches, index}
        this.frameRequested = false;
        this.paintedRatio = 0;

        this.element = document.createElement("div");
        this.element.className = "hierdiff-plan-view";
        Object.assign(this.element.style, { position: "relative", width: "100%", height: "100%" });
        this.canvas = document.createElement("canvas");
        Object.assign(this.canvas.style, { display: "block", width: "100%", height: "100%" });
        this.tooltip = document.createElement("div");
        Object.assign(this.tooltip.style, {
            position: "absolute", display: "none", pointerEvents: "none", whiteSpace: "pre",
            maxWidth: "420px", overflow: "hidden", padding: "4px 6px", borderRadius: "4px",
            font: THEME.font, color: THEME.text, background: "rgba(30,30,38,0.95)",
            border: "1px solid #555", zIndex: "10",
        });
        this.findBox = document.createElement("input");
        this.findBox.type = "search";
        this.findBox.placeholder = "find a prompt";
        Object.assign(this.findBox.style, {
            position: "absolute", bottom: "2px", right: "4px", width: `${FIND_WIDTH_PX}px`, height: "16px",
            font: THEME.font, color: THEME.text, background: "#23232b", border: "1px solid #444",
            borderRadius: "3px", padding: "0 4px", boxSizing: "border-box",
        });
        this.element.append(this.canvas, this.tooltip, this.findBox);

        this.widget = node.addDOMWidget(WIDGET, "hierdiff", this.element, {
            serialize: false, // not an input of the node
            hideOnZoom: false,
            getMinHeight: () => this.preferredHeight(),
        });
        this.widget.serialize = false;

        this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
        this.canvas.addEventListener("pointerleave", () => this.setHover(null));
        this.canvas.addEventListener("click", (e) => this.onClick(e));
        this.findBox.addEventListener("input", () => this.search(this.findBox.value));
        for (const type of ["keydown", "keyup", "keypress"]) {
            // Typed letters are a query, not the graph's shortcuts.
            this.findBox.addEventListener(type, (e) => {
                e.stopPropagation();
                if (type === "keydown" && e.key === "Enter") this.nextMatch(e.shiftKey ? -1 : 1);
                if (type === "keydown" && e.key === "Escape") { this.findBox.value = ""; this.search(""); }
            });
        }
        // Let the mouse wheel keep zooming the graph while the pointer is over the picture.
        this.element.addEventListener("wheel", (e) => {
            e.preventDefault();
            app.canvasEl?.dispatchEvent(new WheelEvent(e.type, e));
        }, { passive: false });
        this.resizeObserver = new ResizeObserver(() => this.requestPaint());
        this.resizeObserver.observe(this.element);
        views.add(this);
    }

    preferredHeight() {
        const n = this.shown()?.model?.n ?? 0;
        return Math.max(MIN_HEIGHT, Math.min(MAX_PREFERRED_HEIGHT, HEADER_AND_AXIS_PX + TARGET_ROW_PX * n));
    }

    /** The source whose picture a follower shows (its sampler's view), else this view itself. */
    source() {
        if (this.role !== "follower") return this;
        let node = this.node;
        for (let hops = 0; hops < 16 && node && !PLANNERS.has(node.type); hops++) {
            node = FOLLOWERS[node.type] ? upstream(node, FOLLOWERS[node.type]) : null;
        }
        return node?.hierdiffView && node.hierdiffView !== this ? node.hierdiffView : this;
    }

    shown() {
        const source = this.source();
        return source === this ? this.data : source.shown();
    }

    // ----- what to show --------------------------------------------------------------------------------------

    /** Put a model on screen; the layout (and the user's opened groups, when the tree is the same) follows. */
    setData(data) {
        if (data?.model) {
            data.layout = data.layout ?? layoutModel(data.model);
            const treeId = hashKey(Array.prototype.join.call(data.model.merges, ","));
            if (treeId !== this.treeId) this.ops = [];
            this.treeId = treeId;
        }
        this.data = data;
        this.hover = null;
        this.display = null;
        if (this.find) this.search(this.find.query);
        this.fetchPrompts();
        fitNode(this.node);
        this.requestPaint();
    }

    /** A plan or tree the node reported in a run (`message`: its UI output). */
    receive(message, pid) {
        const planRaw = message?.hierdiff_plan?.[0];
        const treeRaw = message?.hierdiff_tree?.[0];
        const raw = planRaw ?? treeRaw;
        if (raw === undefined || raw === null) return;
        let parsed;
        let model;
        try {
            parsed = typeof raw === "string" ? JSON.parse(raw) : raw;
            model = planRaw != null ? modelFromPlan(parsed, message?.hierdiff_summary?.[0]) : modelFromTree(parsed);
        } catch (err) {
            this.error = `cannot draw this plan: ${err.message}`;
            this.requestPaint();
            return;
        }
        const queued = runs.get(pid)?.get(String(this.node.id));
        const inputs = this.inputs ?? inputsOf(this.node, this.role, new Map());
        const key = queued?.key ?? inputs.key;
        const treeFrom = queued?.treeFrom ?? inputs.treeFrom;
        this.running = null;
        this.error = null;
        // A preview still on its way for these same inputs would replace the run's own plan with a guess.
        if (this.requested === key) this.cancelPreview();
        this.setData({ model, key, origin: "run", notes: [], treeFrom });
        if (treeRaw != null) {
            this.node.hierdiffRunTree = { tree: parsed, key };
        } else if (this.role === "planner" && treeFrom === "prompt_tree") {
            // The plan's tree is the prompt tree's, as that tree node made it for these inputs.
            const treeKey = queued?.treeKey ?? inputs.treeKey;
            const treeNode = inputs.treeNode ?? upstream(this.node, "prompt_tree");
            if (treeNode && treeKey && !runTree(treeNode, treeKey)) {
                treeNode.hierdiffRunTree = { tree: treeOfPlan(parsed), key: treeKey };
            }
        }
        this.node.properties = this.node.properties ?? {};
        if (this.role === "planner" && planRaw != null) {
            this.node.properties[PROPERTY] = packModel(model, { key: hashKey(key), tree_from: treeFrom });
        } else {
            delete this.node.properties[PROPERTY]; // one copy per plan: its sampler's
        }
    }

    /** A plan kept in the node's properties (a loaded workflow or PNG). */
    loadStored(stored) {
        try {
            const model = stored.format === PACKED_FORMAT ? unpackModel(stored) : modelFromLegacy(stored);
            // Earlier versions kept no key: such a plan is drawn, marked as of unknown inputs.
            this.setData({ model, key: stored.key ? `#${stored.key}` : "#unknown", origin: "stored", notes: [],
                treeFrom: stored.tree_from ?? "prompt_tree" });
        } catch (err) {
            this.error = `cannot draw the saved plan: ${err.message}`;
            this.requestPaint();
        }
    }

    /** Whether the picture is the one of these inputs (a saved plan keeps only a hash of its key). */
    isCurrent(data, key) {
        if (!data) return false;
        return data.key === key || (data.key.startsWith("#") && data.key === `#${hashKey(key)}`);
    }

    /** Called every POLL_MS: compare the inputs with the picture's, ask for a preview when they differ. */
    refresh(memo) {
        this.trackZoom();
        if (this.source() !== this) {
            this.requestPaint(); // a follower repaints with its sampler
            return;
        }
        const inputs = inputsOf(this.node, this.role, memo);
        this.inputs = inputs;
        if (this.running) return;
        // A cluster prefers the tree a current plan was made with (a loaded workflow) to a preview tree.
        if (this.role === "cluster" && (!this.data || this.data.origin === "preview") && this.adoptPlannersTree(inputs, memo)) {
            this.cancelPreview();
            return;
        }
        if (this.isCurrent(this.data, inputs.key)) {
            if (this.data.key.startsWith("#")) this.data.key = inputs.key; // confirmed: keep the key itself
            this.cancelPreview();
            return;
        }
        this.problem = inputs.problem;
        if (inputs.request && this.requested !== inputs.key && this.role !== "tree") this.schedulePreview(inputs);
        this.requestPaint();
    }

    /** A cluster shows the tree of a downstream sampler's plan while that plan is current (a loaded workflow). */
    adoptPlannersTree(inputs, memo) {
        for (const node of downstream(this.node, 0)) {
            const view = node.hierdiffView;
            const data = view?.data;
            if (view?.role !== "planner" || !data?.model || data.treeFrom !== "prompt_tree") continue;
            if (this.data?.model && this.data.model.n !== data.model.n) continue; // not this cluster's prompts
            if (!["run", "stored"].includes(data.origin)) continue;
            if (!view.isCurrent(data, inputsOf(node, "planner", memo).key)) continue;
            this.setData({ model: treeModelOf(data.model), key: inputs.key, origin: data.origin, notes: [] });
            return true;
        }
        return false;
    }

    cancelPreview() {
        clearTimeout(this.timer);
        this.timer = null;
        this.abort?.abort();
        this.abort = null;
        this.requested = null;
        this.error = null;
    }

    schedulePreview(inputs) {
        this.cancelPreview();
        this.requested = inputs.key;
        this.timer = setTimeout(() => this.preview(inputs), DEBOUNCE_MS);
    }

    async preview(inputs) {
        this.timer = null;
        this.abort = new AbortController();
        const request = this.role === "cluster"
            ? { prompts: inputs.request.prompts, linkage: inputs.request.linkage,
                embedding: inputs.request.embedding, tree: inputs.request.tree }
            : inputs.request;
        try {
            const answer = await postJson(PREVIEW_ROUTE, request, this.abort.signal);
            if (this.requested !== inputs.key || this.running) return; // the inputs changed meanwhile
            this.requested = null;
            this.error = null;
            this.setData({ model: modelOfAnswer(answer), key: inputs.key, origin: "preview", notes: answer.notes ?? [],
                treeFrom: inputs.request.tree_from });
        } catch (err) {
            if (err.name === "AbortError" || this.requested !== inputs.key) return;
            this.error = err.message;
            this.requestPaint();
        }
    }

    /** Labels for a plan that came without its prompts (a saved one): the cluster's, read by the pack. */
    async fetchPrompts() {
        const model = this.data?.model;
        if (!model || model.prompts || this.role !== "planner") return;
        const fields = clusterFields(upstream(this.node, "prompt_tree") ?? {});
        if (!fields) return;
        try {
            const { prompts } = await postJson(PROMPTS_ROUTE, { prompts: fields.prompts });
            if (this.data?.model === model && prompts.length === model.n) {
                model.prompts = prompts;
                for (const view of views) {
                    if (view.source() !== this && view.data?.model?.merges !== model.merges) continue;
                    if (view.find) view.search(view.find.query);
                    view.requestPaint();
                }
            }
        } catch {
            // no labels: rows are named by prompt number
        }
    }

    // ----- runs ---------------------------------------------------------------------------------------------

    startRun(pid, queued) {
        const before = this.data;
        this.cancelPreview();
        this.running = { pid, before };
        if (queued.model) {
            this.setData({ model: queued.model, key: queued.key, origin: "running", notes: [], known: true,
                treeFrom: queued.treeFrom });
        } else if (before && this.isCurrent(before, queued.key)) {
            // The picture of this run's own inputs: exact when it is a run's of this session (same inputs,
            // same cached tree), else a preview until the node reports.
            this.setData({ ...before, origin: "running", known: before.origin === "run" });
        } else {
            this.setData(null); // never a plan of other inputs
        }
    }

    endRun(pid) {
        if (this.running?.pid !== pid) return;
        const { before } = this.running;
        this.running = null;
        if (this.data?.origin === "running") this.setData(before);
    }

    /** The status line: where the picture comes from, whether it is current, notes, the find box's matches. */
    status(data) {
        const source = this.source();
        const inputs = source.inputs;
        const parts = [];
        let colour = THEME.axis;
        if (source.running) {
            colour = RUN_COLOUR;
            if (data?.known) parts.push("running: this run's plan (its tree is known from the last run)");
            else if (data) parts.push("running: preview of this run's inputs until the node reports its plan");
            else parts.push("running: the plan is shown when the node has made it");
        } else if (data && inputs && !source.isCurrent(data, inputs.key)) {
            colour = STALE_COLOUR;
            const why = source.error ?? source.problem;
            parts.push(why ? `out of date: ${why}` : "out of date: updating the preview\u2026");
            if (source.error) colour = ERROR_COLOUR;
        } else if (data?.origin === "preview") {
            colour = INFO_COLOUR;
            parts.push("preview");
        } else if (data?.origin === "run") {
            parts.push(this.role === "cluster" || this.role === "tree" ? "tree of the last run" : "plan of the last run");
        } else if (data?.origin === "stored") {
            parts.push("saved with the workflow by its run");
        }
        if (data && (source.running || source.isCurrent(data, inputs?.key ?? ""))) parts.push(...(data.notes ?? []));
        if (this.find?.query) {
            const { matches, index } = this.find;
            parts.push(matches.length ? `find: ${index + 1} of ${matches.length} (enter: next)` : "find: no prompt holds it");
        }
        return parts.length ? [parts.join(" \u00b7 "), colour] : null;
    }

    // ----- drawing -----------------------------------------------------------------------------------------

    requestPaint() {
        if (this.frameRequested) return;
        this.frameRequested = true;
        requestAnimationFrame(() => {
            this.frameRequested = false;
            this.paint();
        });
    }

    /** Pixels per CSS pixel of the canvas: the screen's, times the graph's zoom (the widget is scaled). */
    pixelRatio() {
        const width = this.element.clientWidth;
        const height = this.element.clientHeight;
        const rect = this.element.getBoundingClientRect();
        const zoom = width > 0 && rect.width > 0 ? rect.width / width : 1;
        const ratio = (window.devicePixelRatio || 1) * zoom;
        return Math.max(0.25, Math.min(ratio, MAX_BACKING_PX / Math.max(1, width), MAX_BACKING_PX / Math.max(1, height)));
    }

    /** Redraw at the new resolution when the graph was zoomed: crisp lines and text, not a scaled bitmap. */
    trackZoom() {
        if (Math.abs(this.pixelRatio() - this.paintedRatio) > 0.01) this.requestPaint();
    }

    displayFor(data, height, header) {
        const maxRows = Math.max(1, Math.floor((height - header - AXIS_PX) / TARGET_ROW_PX));
        const ops = this.source().ops;
        const cached = this.display;
        if (cached && cached.layout === data.layout && cached.maxRows === maxRows && cached.opsLength === ops.length) {
            return cached;
        }
        this.display = { ...cutRows(data.layout, maxRows, ops), layout: data.layout, maxRows, opsLength: ops.length };
        return this.display;
    }

    paint() {
        const width = this.element.clientWidth;
        const height = this.element.clientHeight;
        if (width < 2 || height < 2) return;
        const ratio = this.pixelRatio();
        const backingWidth = Math.round(width * ratio);
        const backingHeight = Math.round(height * ratio);
        if (this.canvas.width !== backingWidth || this.canvas.height !== backingHeight) {
            this.canvas.width = backingWidth;
            this.canvas.height = backingHeight;
        }
        this.paintedRatio = ratio;
        const ctx = this.canvas.getContext("2d");
        ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
        const data = this.shown();
        const status = this.status(data);
        if (!data?.model) {
            this.findBox.style.display = "none";
            ctx.fillStyle = THEME.background;
            ctx.fillRect(0, 0, width, height);
            ctx.font = THEME.font;
            ctx.textBaseline = "middle";
            ctx.fillStyle = this.error ? ERROR_COLOUR : THEME.text;
            const source = this.source();
            const text = this.error ?? source.problem
                ?? (source.requested ? "computing the preview\u2026" : "Run the workflow to see the hierarchy.");
            ctx.fillText(text, 8, 9, width - 16);
            if (status) {
                ctx.fillStyle = status[1];
                ctx.fillText(status[0], 8, 25, width - 16);
            }
            this.painted = 0;
            this.frame = null;
            return;
        }
        ctx.font = THEME.font;
        const lines = headerLines(ctx, data.model.summary, width, status?.[0]);
        const summaryLines = status ? lines.slice(0, -1) : lines;
        const header = headerHeight(lines.length);
        const display = this.displayFor(data, height, header);
        this.frame = frame(data.layout, display, width, height, header);
        const stale = this.isStale(data);
        const found = this.find?.matches.length ? this.find.matches[this.find.index] : null;
        this.painted = paint(ctx, data.layout, display, this.frame, THEME, {
            hover: this.hover, found, status, stale, summaryLines,
        });
        this.drawn = { data, display, stale, status: status?.[0] ?? "" };
        // Finding is for sets that do not show every prompt at once (or one is being looked for).
        const findable = display.rows.length < data.model.n || !this.frame.labels || Boolean(this.find);
        this.findBox.style.display = findable ? "block" : "none";
    }

    search(query) {
        const model = this.shown()?.model;
        const matches = model ? findPrompts(model, query) : [];
        this.find = query.trim() ? { query, matches, index: 0 } : null;
        this.requestPaint();
    }

    nextMatch(direction) {
        if (!this.find?.matches.length) return;
        const count = this.find.matches.length;
        this.find.index = (this.find.index + direction + count) % count;
        this.requestPaint();
    }

    pointerAt(e) {
        const rect = this.canvas.getBoundingClientRect();
        // The widget is scaled by the graph's zoom: back to CSS pixels of the canvas.
        return [((e.clientX - rect.left) * this.element.clientWidth) / rect.width,
            ((e.clientY - rect.top) * this.element.clientHeight) / rect.height];
    }

    onPointerMove(e) {
        const data = this.shown();
        if (!data?.model || !this.frame || !this.drawn) return;
        const [px, py] = this.pointerAt(e);
        this.setHover(hitTest(data.layout, this.drawn.display, this.frame, px, py), px, py);
    }

    onClick(e) {
        const data = this.shown();
        if (!data?.model || !this.frame || !this.drawn) return;
        const [px, py] = this.pointerAt(e);
        const hit = hitTest(data.layout, this.drawn.display, this.frame, px, py);
        if (!hit) return;
        const layout = data.layout;
        const ops = this.source().ops;
        if (e.shiftKey) {
            const parent = layout.fullParent[hit.node];
            if (parent >= 0) ops.push({ op: "fold", node: parent });
        } else if (layout.size[hit.node] > 1) {
            ops.push({ op: "open", node: hit.node });
        }
        this.display = null;
        this.setHover(null);
        for (const view of views) if (view.source() === this.source()) view.requestPaint();
    }

    setHover(hit, px, py) {
        const data = this.shown();
        const group = hit && data?.layout ? groupAt(data.layout, hit.leaf, hit.step) : null;
        if (group !== this.hover) {
            this.hover = group;
            this.requestPaint();
        }
        if (!hit) {
            this.tooltip.style.display = "none";
            return;
        }
        this.tooltip.textContent = describe(data.layout, hit);
        this.tooltip.style.display = "block";
        const width = this.element.clientWidth;
        this.tooltip.style.left = `${Math.max(0, Math.min(px + 12, width - this.tooltip.offsetWidth - 2))}px`;
        this.tooltip.style.top = `${py + 14}px`;
    }

    /** Whether `data` is drawn dimmed: not the picture of the inputs on screen, and no run of ours is on. */
    isStale(data) {
        const source = this.source();
        return Boolean(data?.model) && !source.running && source.inputs !== null
            && !source.isCurrent(data, source.inputs?.key ?? "");
    }

    /** What tests and tools read: where the picture comes from and what it holds. */
    state() {
        const data = this.shown();
        const display = this.drawn?.display;
        return {
            origin: data?.origin ?? null,
            stale: this.isStale(data),
            status: this.status(data)?.[0] ?? "",
            summary: data?.model?.summary ?? null,
            n: data?.model?.n ?? 0,
            steps: data?.model?.steps ?? 0,
            pending: Boolean(this.source().requested),
            rows: display && data?.layout ? display.rows.length : 0,
            labels: display && data?.layout ? display.rows.map((v) => rowLabel(data.layout, v)) : [],
            found: this.find?.matches.length ? this.find.matches[this.find.index] : null,
            canvas: { width: this.canvas.width, height: this.canvas.height, cssWidth: this.element.clientWidth,
                cssHeight: this.element.clientHeight, ratio: this.paintedRatio },
            painted: this.painted ?? 0,
        };
    }

    remove() {
        this.cancelPreview();
        this.resizeObserver.disconnect();
        views.delete(this);
    }
}

/** The prompt tree inside a plan JSON, as PromptTree.to_dict() writes it. */
function treeOfPlan(plan) {
    const link = plan.linkage;
    return { format: "hierdiff.tree", version: 1, n_prompts: plan.n_prompts, method: link.method,
        metric: link.metric, exact: link.exact, prompts: plan.prompts, merges: link.merges };
}

/** Grow the node (never shrink it) so that the picture gets the room it asks for. */
function fitNode(node) {
    const [w, h] = node.computeSize();
    const size = [Math.max(node.size[0], w, MIN_WIDTH), Math.max(node.size[1], h)];
    if (size[0] !== node.size[0] || size[1] !== node.size[1]) node.setSize(size);
    node.setDirtyCanvas(true, true);
}

/** Whether a view's node is still in its graph: loading a workflow empties the graph without removing views. */
function isLive(view) {
    const graph = view.node.graph;
    return Boolean(graph) && graph.getNodeById(view.node.id) === view.node;
}

function viewOf(node) {
    if (!node.hierdiffView) node.hierdiffView = new PlanView(node);
    return node.hierdiffView;
}

// ----- queueing: the plan a run's PNGs carry ------------------------------------------------------------

/** The plan a run of these inputs will make, when it is known before it runs (else null). */
async function plannedBeforeRun(inputs) {
    const request = inputs.request;
    if (!request?.tree || request.tree_from !== "prompt_tree") return null;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), QUEUE_PLAN_TIMEOUT_MS);
    try {
        const answer = await postJson(PREVIEW_ROUTE, request, abort.signal);
        return answer.tree_source === "run" ? modelOfAnswer(answer) : null;
    } catch {
        return null;
    } finally {
        clearTimeout(timer);
    }
}

/** Every node of a serialised workflow, its subgraphs' included. */
function workflowNodes(workflow) {
    const subgraphs = workflow?.definitions?.subgraphs ?? [];
    return [...(workflow?.nodes ?? []), ...subgraphs.flatMap((s) => s.nodes ?? [])];
}

/**
 * Before a run is queued: drop every kept plan from the workflow sent with it, then put back, on each
 * sampler, the plan this run will have where it is known now. Returns the run's bookkeeping.
 */
async function prepareRun(workflow) {
    for (const entry of workflowNodes(workflow)) {
        if (entry.properties && PROPERTY in entry.properties) {
            entry.properties = { ...entry.properties };
            delete entry.properties[PROPERTY];
        }
    }
    const top = new Map((workflow?.nodes ?? []).map((entry) => [String(entry.id), entry]));
    const memo = new Map();
    const queued = new Map();
    const planned = [];
    for (const view of views) {
        if (view.node.graph !== app.graph || !isLive(view) || view.role === "other") continue;
        const inputs = inputsOf(view.node, view.role, memo);
        const record = { key: inputs.key, treeKey: inputs.treeKey, treeFrom: inputs.treeFrom, model: null };
        queued.set(String(view.node.id), record);
        if (view.role === "planner" && view.node.mode === 0) {
            planned.push(plannedBeforeRun(inputs).then((model) => {
                record.model = model;
                const entry = top.get(String(view.node.id));
                if (model && entry) {
                    entry.properties = { ...entry.properties,
                        [PROPERTY]: packModel(model, { key: hashKey(inputs.key), tree_from: inputs.treeFrom }) };
                }
            }));
        }
    }
    await Promise.all(planned);
    return queued;
}

function installQueueHook() {
    const queuePrompt = api.queuePrompt;
    api.queuePrompt = async function (number, data, ...rest) {
        let queued = null;
        try {
            queued = await prepareRun(data?.workflow);
        } catch (err) {
            console.warn("hierdiff: the queued workflow keeps no plan:", err);
        }
        const response = await queuePrompt.call(this, number, data, ...rest);
        const pid = response?.prompt_id;
        if (queued && pid) {
            runs.set(pid, queued);
            // The server may start the run before its answer to the queueing arrives here.
            if (started.has(pid)) onRunEvent("execution_start", { prompt_id: pid });
        }
        return response;
    };
}

function onRunEvent(type, detail) {
    const pid = detail?.prompt_id;
    if (type === "execution_start" || type === "executing") lastPromptId = pid ?? lastPromptId;
    if (type === "execution_start" && pid) {
        started.add(pid);
        if (started.size > 64) started.delete(started.values().next().value);
    }
    const queued = runs.get(pid);
    if (!queued) return;
    if (type === "execution_start") {
        for (const view of views) {
            const record = queued.get(String(view.node.id));
            if (record && view.node.graph === app.graph && isLive(view) && view.source() === view) view.startRun(pid, record);
        }
    } else if (["execution_success", "execution_error", "execution_interrupted"].includes(type)) {
        for (const view of views) view.endRun(pid);
        runs.delete(pid);
    }
}

// ----- registration ---------------------------------------------------------------------------------------

app.registerExtension({
    name: EXTENSION,
    setup() {
        installQueueHook();
        for (const type of ["execution_start", "executing", "execution_success", "execution_error",
            "execution_interrupted"]) {
            api.addEventListener(type, (e) => onRunEvent(type, e.detail));
        }
        setInterval(() => {
            const memo = new Map();
            for (const view of views) {
                if (isLive(view)) view.refresh(memo);
                else view.remove();
            }
        }, POLL_MS);
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData?.name?.startsWith("Hier")) return;

        const onNodeCreated = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            const result = onNodeCreated?.apply(this, arguments);
            if (roleOf(this) !== "other") viewOf(this);
            return result;
        };

        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = onExecuted?.apply(this, arguments);
            if (message?.hierdiff_plan || message?.hierdiff_tree) {
                // A follower's plan is its sampler's: it reaches the sampler even when the sampler's own
                // report is missing (a run where everything upstream of the output was cached).
                const view = viewOf(this);
                view.source().receive(message, lastPromptId);
            }
            return result;
        };

        const onConfigure = nodeType.prototype.onConfigure;
        nodeType.prototype.onConfigure = function () {
            const result = onConfigure?.apply(this, arguments);
            const stored = this.properties?.[PROPERTY];
            if (stored?.format) viewOf(this).loadStored(stored);
            return result;
        };

        const onDrawForeground = nodeType.prototype.onDrawForeground;
        nodeType.prototype.onDrawForeground = function () {
            this.hierdiffView?.trackZoom();
            return onDrawForeground?.apply(this, arguments);
        };

        const onRemoved = nodeType.prototype.onRemoved;
        nodeType.prototype.onRemoved = function () {
            this.hierdiffView?.remove();
            return onRemoved?.apply(this, arguments);
        };
    },
});
