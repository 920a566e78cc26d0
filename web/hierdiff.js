// SPDX-License-Identifier: GPL-3.0-or-later
// ComfyUI frontend extension of the hierdiff pack: after one of our nodes runs, draw its plan (which
// prompts share which steps) as a dendrogram against the step axis, with the savings line. The plan
// arrives in the node's UI output (`hierdiff_plan`, `hierdiff_summary`; Prompt Set Cluster reports the
// bare tree as `hierdiff_tree`, drawn against merge height) and is kept, compacted, in node.properties
// so that it is saved with the workflow and drawn again on load.
import { app } from "../../scripts/app.js";
import { compactPlan, compactTree, describe, frame, groupAt, hitTest, layoutPlan, paint, VIEW_FORMAT } from "./plan_view.js";

const EXTENSION = "hierdiff.PlanView";
const WIDGET = "hierdiff_plan_view";
const PROPERTY = "hierdiff_plan";
const MIN_WIDTH = 440;
// The picture asks for room for one label row per prompt (small sets), within these bounds.
const MIN_HEIGHT = 200;
const MAX_PREFERRED_HEIGHT = 420;
const ROW_PX = 15;

const THEME = {
    background: "#17171c",
    text: "#d8d8e0",
    axis: "#8a8a99",
    font: "11px sans-serif",
};

/** The view attached to one node: a canvas in a DOM widget, its layout and its hover state. */
class PlanView {
    constructor(node) {
        this.node = node;
        this.layout = null;
        this.error = null;
        this.hover = null;
        this.frameRequested = false;

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
        this.element.append(this.canvas, this.tooltip);

        this.widget = node.addDOMWidget(WIDGET, "hierdiff", this.element, {
            serialize: false, // not an input of the node: the plan is saved in node.properties instead
            hideOnZoom: false,
            getMinHeight: () => this.preferredHeight(),
        });
        this.widget.serialize = false;

        this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
        this.canvas.addEventListener("pointerleave", () => this.setHover(null));
        // Let the mouse wheel keep zooming the graph while the pointer is over the picture.
        this.element.addEventListener("wheel", (e) => {
            e.preventDefault();
            app.canvasEl?.dispatchEvent(new WheelEvent(e.type, e));
        }, { passive: false });
        this.resizeObserver = new ResizeObserver(() => this.requestPaint());
        this.resizeObserver.observe(this.element);
    }

    preferredHeight() {
        if (!this.layout) return MIN_HEIGHT;
        return Math.max(MIN_HEIGHT, Math.min(MAX_PREFERRED_HEIGHT, 44 + ROW_PX * this.layout.n));
    }

    show(view) {
        try {
            this.layout = layoutPlan(view);
            this.error = null;
        } catch (err) {
            this.layout = null;
            this.error = `cannot draw this plan: ${err.message}`;
        }
        this.hover = null;
        fitNode(this.node);
        this.requestPaint();
    }

    showError(message) {
        this.layout = null;
        this.error = message;
        this.requestPaint();
    }

    requestPaint() {
        if (this.frameRequested) return;
        this.frameRequested = true;
        requestAnimationFrame(() => {
            this.frameRequested = false;
            this.paint();
        });
    }

    paint() {
        const width = this.element.clientWidth;
        const height = this.element.clientHeight;
        if (width < 2 || height < 2) return;
        const dpr = window.devicePixelRatio || 1;
        if (this.canvas.width !== Math.round(width * dpr) || this.canvas.height !== Math.round(height * dpr)) {
            this.canvas.width = Math.round(width * dpr);
            this.canvas.height = Math.round(height * dpr);
        }
        const ctx = this.canvas.getContext("2d");
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        if (!this.layout) {
            ctx.fillStyle = THEME.background;
            ctx.fillRect(0, 0, width, height);
            ctx.fillStyle = THEME.text;
            ctx.font = THEME.font;
            ctx.fillText(this.error || "Run the workflow to see the hierarchy.", 8, 14, width - 16);
            return;
        }
        this.frame = frame(this.layout, width, height);
        const highlight = this.hover ? groupAt(this.layout, this.hover.leaf, this.hover.step) : null;
        this.painted = paint(ctx, this.layout, this.frame, THEME, highlight);
    }

    onPointerMove(e) {
        if (!this.layout || !this.frame) return;
        const rect = this.canvas.getBoundingClientRect();
        // The widget may be scaled by the graph's zoom: map back to CSS pixels of the canvas.
        const px = ((e.clientX - rect.left) * this.element.clientWidth) / rect.width;
        const py = ((e.clientY - rect.top) * this.element.clientHeight) / rect.height;
        this.setHover(hitTest(this.layout, this.frame, px, py), px, py);
    }

    setHover(hit, px, py) {
        const same = hit && this.hover && hit.leaf === this.hover.leaf && hit.step === this.hover.step;
        if (!same) {
            this.hover = hit;
            this.requestPaint();
        }
        if (!hit) {
            this.tooltip.style.display = "none";
            return;
        }
        this.tooltip.textContent = describe(this.layout, hit);
        this.tooltip.style.display = "block";
        const width = this.element.clientWidth;
        this.tooltip.style.left = `${Math.max(0, Math.min(px + 12, width - this.tooltip.offsetWidth - 2))}px`;
        this.tooltip.style.top = `${py + 14}px`;
    }

    remove() {
        this.resizeObserver.disconnect();
    }
}

/** Grow the node (never shrink it) so that the picture gets the room it asks for. */
function fitNode(node) {
    const [w, h] = node.computeSize();
    const size = [Math.max(node.size[0], w, MIN_WIDTH), Math.max(node.size[1], h)];
    if (size[0] !== node.size[0] || size[1] !== node.size[1]) node.setSize(size);
    node.setDirtyCanvas(true, true);
}

function viewOf(node) {
    if (!node.hierdiffView) node.hierdiffView = new PlanView(node);
    return node.hierdiffView;
}

/** Take a plan (or a bare tree) from a node's UI output: a JSON string or an already parsed object. */
function receivePlan(node, message) {
    const plan = message?.hierdiff_plan?.[0];
    const tree = message?.hierdiff_tree?.[0];
    const raw = plan ?? tree;
    if (raw === undefined || raw === null) return;
    const summary = message?.hierdiff_summary?.[0];
    const view = viewOf(node);
    let compact;
    try {
        const data = typeof raw === "string" ? JSON.parse(raw) : raw;
        compact = plan != null ? compactPlan(data, summary) : compactTree(data, summary);
    } catch (err) {
        view.showError(`cannot draw this plan: ${err.message}`);
        return;
    }
    node.properties = node.properties || {};
    node.properties[PROPERTY] = compact;
    view.show(compact);
}

app.registerExtension({
    name: EXTENSION,
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData?.name?.startsWith("Hier")) return;

        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = onExecuted?.apply(this, arguments);
            receivePlan(this, message);
            return result;
        };

        const onConfigure = nodeType.prototype.onConfigure;
        nodeType.prototype.onConfigure = function () {
            const result = onConfigure?.apply(this, arguments);
            const stored = this.properties?.[PROPERTY];
            if (stored && stored.format === VIEW_FORMAT) viewOf(this).show(stored);
            return result;
        };

        const onRemoved = nodeType.prototype.onRemoved;
        nodeType.prototype.onRemoved = function () {
            this.hierdiffView?.remove();
            return onRemoved?.apply(this, arguments);
        };
    },
});
