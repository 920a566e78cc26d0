// SPDX-License-Identifier: GPL-3.0-or-later
// The example workflows as ComfyUI's template browser offers them, in the real frontend (Debian's chromium
// through playwright-core), against a running server with the hierdiff pack and its testkit:
//
//   node templates.mjs JOB.json REPORT.json
//
// JOB: {"url", "out_dir", "module": the pack's folder name under custom_nodes,
//       "templates": [{"title", "file": the template's JSON, "tiny_prompt": the same graph on the tiny
//                      model as an API prompt (same node ids)}],
//       "tooltips": {"file", "type": node type, "widgets": [names]} | absent}
// For each template: it is loaded as the template browser loads it; every node's box on the canvas (title
// bar included) and the note's text and whether the note shows all of it are reported. Then the graph on
// screen is queued, with the tiny model's prompt sent in its place (the page keeps the template's graph,
// so its plan widgets draw this run's plans as current), and once every plan is drawn the editor's chrome
// is hidden (focus mode, no canvas menu, minimap or canvas info), the graph fitted into the window and
// its region photographed: thumb-N.png, with the plan widgets' boxes in that photograph, and what lies
// on top at points across it (only the canvas and the nodes' own widgets may).
// Then the template browser is opened at the pack's templates: their cards' titles, descriptions and
// thumbnails, photographed (templates-browser.png). With "tooltips", each named widget of the node is
// hovered and its tooltip read and photographed (tooltip-NAME.png).
import fs from "node:fs";
import path from "node:path";
import { launchChromium, openComfy } from "./comfy_page.mjs";

const [jobFile, reportFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, "utf8"));
const report = { templates: [], browser: null, tooltips: [], page_errors: [] };
const RUN_TIMEOUT_MS = 240_000;
const VIEWPORT = { width: 1600, height: 1000 };
// Canvas units of empty canvas kept around the graph in a thumbnail.
const MARGIN = 24;

const browser = await launchChromium();
const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1 });
const page = await context.newPage();
page.on("pageerror", (e) => report.page_errors.push({ message: e.message, stack: e.stack ?? "" }));

async function openApp() {
    await openComfy(page, job.url, () => window.comfyAPI.app.app.extensionManager?.setting);
    await settle();
}

async function settle(ms = 300) {
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(ms);
}

async function setChrome(hidden) {
    await page.evaluate(async (hide) => {
        const app = window.comfyAPI.app.app;
        const settings = app.extensionManager.setting;
        await settings.set("Comfy.Graph.CanvasInfo", !hide);
        await settings.set("Comfy.Graph.CanvasMenu", !hide);
        await settings.set("Comfy.Minimap.Visible", !hide);
        if (app.extensionManager.focusMode !== hide) await app.extensionManager.command.execute("Workspace.ToggleFocusMode");
    }, hidden);
    await settle(500);
}

/** Every node's box on the canvas (title bar included), the note's text and whether it shows whole. */
async function graphBoxes() {
    return page.evaluate(() => {
        const app = window.comfyAPI.app.app;
        return app.graph.nodes.map((n) => {
            const box = Array.from(n.getBounding());
            const out = { id: n.id, type: n.type, title: n.title, box, size: Array.from(n.size) };
            if (n.type === "MarkdownNote" || n.type === "Note") {
                out.text = n.widgets?.[0]?.value ?? "";
                // The rendered Markdown: where its last block ends, against the box it has.
                const el = n.widgets?.[0]?.element?.querySelector(".tiptap, .ProseMirror");
                const blocks = el ? [...el.children] : [];
                const rect = el?.getBoundingClientRect();
                const top = rect?.top ?? 0;
                out.note_box = el ? { height: rect.height, blocks: blocks.length,
                    text_bottom: Math.max(0, ...blocks.map((b) => b.getBoundingClientRect().bottom - top)) } : null;
            }
            return out;
        });
    });
}

/** The plan views' states (web/hierdiff.js PlanView.state) by node id. */
async function viewStates() {
    return page.evaluate(() => Object.fromEntries(window.comfyAPI.app.app.graph.nodes
        .filter((n) => n.hierdiffView).map((n) => [n.id, n.hierdiffView.state()])));
}

/** Queue the graph on screen with `prompt` (API format, the graph's node ids or some of them) sent as its prompt. */
async function runAs(prompt) {
    const queued = await page.evaluate(async (output) => {
        const app = window.comfyAPI.app.app;
        const p = await app.graphToPrompt();
        const foreign = Object.keys(output).filter((id) => !(id in p.output));
        if (foreign.length) return { error: `nodes ${foreign} are not in the graph on screen` };
        try {
            const r = await window.comfyAPI.api.api.queuePrompt(0, { ...p, output });
            return { prompt_id: r.prompt_id };
        } catch (err) {
            return { error: String(err?.message ?? err), detail: err?.response ?? null };
        }
    }, prompt);
    if (!queued.prompt_id) return queued;
    const handle = await page.waitForFunction((pid) => window.__hierdiffEvents.find(
        (e) => (e.type === "execution_success" || e.type === "execution_error") && e.detail?.prompt_id === pid),
    queued.prompt_id, { timeout: RUN_TIMEOUT_MS, polling: 200 });
    const end = await handle.jsonValue();
    return { prompt_id: queued.prompt_id, status: end.type, error: end.type === "execution_error" ? end.detail : null };
}

/** Wait until every plan view draws a current plan (not stale, nothing pending): its run's, or a preview. */
async function waitPlansDrawn(timeout = 60_000) {
    const deadline = Date.now() + timeout;
    let states = {};
    while (Date.now() < deadline) {
        states = await viewStates();
        const all = Object.values(states);
        // A node whose run reports no plan (Hierarchical Guider) shows the preview of the same inputs.
        if (all.length && all.every((s) => ["run", "preview"].includes(s.origin) && !s.stale && !s.pending
            && s.painted >= 1)) {
            return { waited: true, states };
        }
        await page.waitForTimeout(150);
    }
    return { waited: false, states };
}

/**
 * Take the run's pictures off the nodes (the tiny model's noise, the plan PNG) and give the nodes back
 * the sizes they had before the run: the thumbnail shows the template's graph, with its plans drawn.
 */
async function clearOutputImages(loaded) {
    await page.evaluate((sizes) => {
        const app = window.comfyAPI.app.app;
        app.nodeOutputs = {};
        for (const node of app.graph.nodes) {
            node.imgs = undefined;
            node.images = undefined;
            for (let i = (node.widgets?.length ?? 0) - 1; i >= 0; i--) {
                if (!node.widgets[i].name?.startsWith("$$")) continue; // the frontend's preview widgets
                node.widgets[i].onRemove?.();
                node.widgets.splice(i, 1);
            }
            const size = sizes[node.id];
            const least = node.computeSize();
            if (size) node.setSize([Math.max(size[0], least[0]), Math.max(size[1], least[1])]);
        }
        app.canvas.setDirty(true, true);
    }, Object.fromEntries(loaded.map((n) => [n.id, n.size])));
    await settle(300);
}

/** Fit the graph into the window and return its region on the screen (MARGIN canvas units around it). */
async function fitGraph() {
    return page.evaluate((margin) => {
        const app = window.comfyAPI.app.app;
        const boxes = app.graph.nodes.map((n) => n.getBounding());
        const x0 = Math.min(...boxes.map((b) => b[0])) - margin;
        const y0 = Math.min(...boxes.map((b) => b[1])) - margin;
        const x1 = Math.max(...boxes.map((b) => b[0] + b[2])) + margin;
        const y1 = Math.max(...boxes.map((b) => b[1] + b[3])) + margin;
        const canvas = app.canvasEl.getBoundingClientRect();
        const scale = Math.min(canvas.width / (x1 - x0), canvas.height / (y1 - y0));
        const ds = app.canvas.ds;
        ds.scale = scale;
        ds.offset = [-x0 + (canvas.width / scale - (x1 - x0)) / 2, -y0 + (canvas.height / scale - (y1 - y0)) / 2];
        app.canvas.setDirty(true, true);
        const [sx, sy] = ds.convertOffsetToCanvas([x0, y0]);
        return {
            clip: { x: Math.round(canvas.x + sx), y: Math.round(canvas.y + sy),
                width: Math.floor((x1 - x0) * scale), height: Math.floor((y1 - y0) * scale) },
            canvas: { x: canvas.x, y: canvas.y, width: canvas.width, height: canvas.height },
            scale,
        };
    }, MARGIN);
}

/** What lies on top across a region: elements other than the canvas and the nodes' own widgets. */
async function chromeOver(clip) {
    return page.evaluate((r) => {
        const app = window.comfyAPI.app.app;
        const widgetRoots = app.graph.nodes.flatMap((n) => (n.widgets ?? []).map((w) => w.element).filter(Boolean));
        const foreign = new Set();
        for (let i = 0; i <= 24; i++) {
            for (let j = 0; j <= 16; j++) {
                const x = r.x + (r.width - 1) * (i / 24);
                const y = r.y + (r.height - 1) * (j / 16);
                const top = document.elementFromPoint(x, y);
                if (!top || top === app.canvasEl || widgetRoots.some((root) => root.contains(top))) continue;
                // The frontend's layer that holds the DOM widgets, when nothing is in it at this point.
                if (top.closest?.(".dom-widget") || top.querySelector?.("canvas#graph-canvas")) continue;
                foreign.add(`${top.tagName.toLowerCase()}.${String(top.className).split(" ").slice(0, 3).join(".")}`);
            }
        }
        return [...foreign];
    }, clip);
}

/** The plan views' boxes in a photograph of `clip`. */
async function viewBoxes(clip) {
    return page.evaluate((r) => window.comfyAPI.app.app.graph.nodes.filter((n) => n.hierdiffView).map((n) => {
        const b = n.hierdiffView.element.getBoundingClientRect();
        return { node: n.id, type: n.type, x: b.x - r.x, y: b.y - r.y, width: b.width, height: b.height };
    }), clip);
}

async function template(spec, index) {
    const out = { title: spec.title, file: spec.file };
    await setChrome(false);
    await page.evaluate(async (data) => {
        await window.comfyAPI.app.app.loadGraphData(data, true, true, null, { openSource: "template" });
    }, JSON.parse(fs.readFileSync(spec.file, "utf8")));
    await settle(500);
    out.loaded = await graphBoxes();
    out.run = await runAs(spec.tiny_prompt);
    if (out.run.status !== "execution_success") return out;
    out.drawn = await waitPlansDrawn();
    await clearOutputImages(out.loaded);
    await setChrome(true);
    out.fit = await fitGraph();
    await settle(900);
    out.after_run = await graphBoxes();
    out.views = await viewBoxes(out.fit.clip);
    out.chrome = await chromeOver(out.fit.clip);
    out.thumbnail = path.join(job.out_dir, `thumb-${index}.png`);
    await page.screenshot({ path: out.thumbnail, clip: out.fit.clip });
    await setChrome(false);
    return out;
}

/** The template browser at the pack's templates: each card's title, description and thumbnail. */
async function templateBrowser() {
    await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    const dialog = page.locator(".workflow-template-selector-dialog");
    await dialog.waitFor({ timeout: 30_000 });
    await dialog.getByText(job.module, { exact: true }).first().click();
    await page.waitForTimeout(1500);
    await page.waitForFunction(() => [...document.querySelectorAll(".workflow-template-selector-dialog img")]
        .every((img) => img.complete), null, { timeout: 30_000 }).catch(() => {});
    const cards = await page.evaluate(() => [...document.querySelectorAll(".workflow-template-selector-dialog h3.line-clamp-1")]
        .map((h) => {
            let card = h;
            while (card && !card.querySelector("img")) card = card.parentElement;
            const img = card?.querySelector("img");
            return { title: h.textContent.trim(), description: h.nextElementSibling?.textContent.trim() ?? "",
                src: img ? decodeURIComponent(new URL(img.src).pathname) : null,
                natural: img ? [img.naturalWidth, img.naturalHeight] : null };
        }));
    const file = path.join(job.out_dir, "templates-browser.png");
    await page.screenshot({ path: file });
    await page.keyboard.press("Escape");
    return { cards, file };
}

/** Hover a widget of the first node of a type; its tooltip text and a photograph of both. */
async function tooltip(type, name) {
    const at = await page.evaluate(([nodeType, widgetName]) => {
        const app = window.comfyAPI.app.app;
        const node = app.graph.nodes.find((n) => n.type === nodeType);
        app.canvas.ds.scale = 1;
        app.canvas.centerOnNode(node);
        app.canvas.setDirty(true, true);
        const widget = node.widgets.find((w) => w.name === widgetName);
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + 60, node.pos[1] + widget.y + 10]);
        const r = app.canvasEl.getBoundingClientRect();
        return { x: x + r.x, y: y + r.y };
    }, [type, name]);
    await settle(300);
    await page.mouse.move(at.x - 4, at.y - 2);
    await page.mouse.move(at.x, at.y);
    const shown = await page.waitForFunction(() => {
        const tip = document.querySelector(".node-tooltip");
        return tip && tip.textContent.trim() ? { text: tip.textContent.trim(), box: tip.getBoundingClientRect().toJSON() } : null;
    }, null, { timeout: 10_000 }).then((h) => h.jsonValue()).catch(() => null);
    const out = { name, text: shown?.text ?? null };
    if (shown) {
        const x0 = Math.max(0, Math.min(shown.box.x, at.x) - 110);
        const y0 = Math.max(0, Math.min(shown.box.y, at.y) - 12);
        const x1 = Math.max(shown.box.x + shown.box.width, at.x) + 12;
        const y1 = Math.max(shown.box.y + shown.box.height, at.y) + 24;
        out.file = path.join(job.out_dir, `tooltip-${name}.png`);
        await page.screenshot({ path: out.file, clip: { x: x0, y: y0, width: x1 - x0, height: y1 - y0 } });
    }
    await page.mouse.move(2, VIEWPORT.height - 2);
    await page.mouse.click(2, VIEWPORT.height - 2);
    return out;
}

try {
    await openApp();
    for (const [index, spec] of job.templates.entries()) report.templates.push(await template(spec, index));
    report.browser = await templateBrowser();
    if (job.tooltips) {
        await page.reload({ waitUntil: "domcontentloaded" });
        await openApp();
        await page.evaluate(async (data) => {
            await window.comfyAPI.app.app.loadGraphData(data, true, true, null);
        }, JSON.parse(fs.readFileSync(job.tooltips.file, "utf8")));
        await settle(500);
        for (const name of job.tooltips.widgets) report.tooltips.push(await tooltip(job.tooltips.type, name));
    }
} catch (err) {
    report.fatal = String(err?.stack ?? err);
} finally {
    fs.writeFileSync(reportFile, JSON.stringify(report, null, 1));
    await browser.close();
}
