// SPDX-License-Identifier: GPL-3.0-or-later
// Drives Debian's chromium (through playwright-core) against a running ComfyUI server with the hierdiff
// pack, and writes what it saw as JSON for the pytest side (tests/comfy/test_browser.py) to judge.
//
//   node drive.mjs JOB.json REPORT.json
//
// JOB: {"url": "http://127.0.0.1:PORT", "out_dir": DIR, "workflows": [{"name", "file", "run"}],
//       "big_plan_file": FILE | null, "big_plan_workflow": FILE | absent,
//       "preview": {"file", "steps", "extra_prompt"} | absent, "png": {"file", "steps": [K1, K2]} | absent,
//       "thumbnails": {RUN_NAME: EXAMPLE_FILE} | absent}
// Each workflow file is UI-format JSON. The page loads it and lists its node types and those the
// frontend does not know. With "run" (workflows already switched to the tiny test model) it also
// converts the graph to a prompt, queues it, waits for the run, then photographs every hierdiff plan
// widget and counts coloured pixels in the photograph. The last run workflow that drew plans is saved
// as a user would save it; after a page reload the saved JSON is loaded again, to check that the plans
// are drawn from the saved workflow alone. With "thumbnails", each example file is also shown with the
// plans of its tiny run and the whole graph photographed (thumb-NAME.png), for the template pictures.
// The big plan (2,000 prompts) is fed to a Hierarchical KSampler's onExecuted to time the drawing; its
// collapsed rows are listed, the biggest opened by a click, a prompt found by typing part of it, and
// the graph zoomed in to check that the picture is redrawn at the new resolution.
// "preview": the workflow is loaded and nothing queued; the sampler's picture is followed while steps,
// then the prompts, are edited (previews held back for a moment, to photograph the out-of-date state).
// "png": the workflow is run twice (steps K1, then K2) while the sampler's picture is followed; the
// second run's PNG is then opened in the page as a user would drop it.
import fs from "node:fs";
import path from "node:path";
import { launchChromium, openComfy } from "./comfy_page.mjs";

const [jobFile, reportFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, "utf8"));
const report = { console: [], page_errors: [], workflows: [], registered: [], reload: null, big_plan: null };
const RUN_TIMEOUT_MS = 120_000;
let savedWorkflow = null;

const browser = await launchChromium();
// playwright gives each context a fresh, temporary profile (user data dir).
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
page.on("console", (m) => {
    report.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? "" });
});
page.on("pageerror", (e) => report.page_errors.push({ message: e.message, stack: e.stack ?? "" }));

async function openApp() {
    await openComfy(page, job.url, () => document.querySelector(".graph-canvas-container, canvas#graph-canvas"));
}

// Pixels of a photograph: strongly coloured ones (the dendrogram's lines are saturated hues; the
// background, text and axis are greys) and the find colour's yellow (a found prompt's path).
async function countPixels(png) {
    return page.evaluate(async (b64) => {
        const img = new Image();
        img.src = `data:image/png;base64,${b64}`;
        await img.decode();
        const c = document.createElement("canvas");
        c.width = img.width;
        c.height = img.height;
        const ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let coloured = 0;
        let yellow = 0;
        for (let i = 0; i < d.length; i += 4) {
            const max = Math.max(d[i], d[i + 1], d[i + 2]);
            const min = Math.min(d[i], d[i + 1], d[i + 2]);
            if (max - min > 60) coloured++;
            if (d[i] > 230 && d[i + 1] > 200 && d[i + 2] < 60) yellow++;
        }
        return { coloured, yellow };
    }, png.toString("base64"));
}

/** Show a node at a graph zoom, centred, and wait for its DOM widget to follow the canvas. */
async function showNode(id, scale = 1) {
    await page.evaluate(([nodeId, zoom]) => {
        const app = window.comfyAPI.app.app;
        const node = app.graph.getNodeById(nodeId);
        app.canvas.ds.scale = zoom;
        app.canvas.centerOnNode(node);
        app.canvas.setDirty(true, true);
    }, [id, scale]);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(350);
}

/** Show a node's plan view at a graph zoom with its top left corner near the screen's, whole if it fits. */
async function showView(id, scale) {
    await showNode(id, scale);
    await page.evaluate((nodeId) => {
        const app = window.comfyAPI.app.app;
        const r = app.graph.getNodeById(nodeId).hierdiffView.element.getBoundingClientRect();
        const ds = app.canvas.ds;
        ds.offset = [ds.offset[0] - (r.x - 80) / ds.scale, ds.offset[1] - (r.y - 50) / ds.scale];
        app.canvas.setDirty(true, true);
    }, id);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(350);
}

/** The state of a node's plan view (web/hierdiff.js PlanView.state) and where it is on the screen. */
async function viewState(id) {
    return page.evaluate((nodeId) => {
        const node = window.comfyAPI.app.app.graph.getNodeById(nodeId);
        const view = node?.hierdiffView;
        if (!view) return null;
        const r = view.element.getBoundingClientRect();
        return { type: node.type, ...view.state(), rect: { x: r.x, y: r.y, width: r.width, height: r.height } };
    }, id);
}

/** Photograph a node's plan view where it is now; its state and pixel counts. */
async function photographView(id, name) {
    const state = await viewState(id);
    const file = path.join(job.out_dir, `${name}.png`);
    let pixels = { coloured: 0, yellow: 0 };
    if (state.rect.width > 0 && state.rect.height > 0) {
        pixels = await countPixels(await page.screenshot({ path: file, clip: state.rect }));
    }
    return { node: id, ...state, file, coloured_pixels: pixels.coloured, yellow_pixels: pixels.yellow };
}

/** Wait until a node's view state has the given field values; the last state seen. */
async function waitState(id, wanted, timeout = 60_000) {
    const deadline = Date.now() + timeout;
    let state = null;
    while (Date.now() < deadline) {
        state = await viewState(id);
        if (state && Object.entries(wanted).every(([k, v]) => state[k] === v)) return { ...state, waited: true };
        await page.waitForTimeout(100);
    }
    return { ...state, waited: false };
}

/** Node ids by type in the graph on screen. */
async function nodeIds() {
    return page.evaluate(() => Object.fromEntries(window.comfyAPI.app.app.graph.nodes.map((n) => [n.type, n.id])));
}

async function loadGraph(data) {
    await page.evaluate(async (graph) => {
        await window.comfyAPI.app.app.loadGraphData(graph, true, true, null);
    }, data);
}

// Photograph every plan widget on the graph (graph zoom 1, centred on the widget's node) and count
// its coloured pixels; hover over the left part of the picture (the shared trunk): the tooltip names
// the group there.
async function photographWidgets(prefix) {
    const ids = await page.evaluate(() => {
        const app = window.comfyAPI.app.app;
        return app.graph.nodes.filter((n) => n.hierdiffView).map((n) => n.id);
    });
    const shots = [];
    for (const id of ids) {
        await showNode(id);
        const shot = await photographView(id, `${prefix}-node${id}`);
        let tooltip = "";
        if (shot.rect.width > 0) {
            await page.mouse.move(shot.rect.x + shot.rect.width * 0.1, shot.rect.y + shot.rect.height * 0.5);
            await page.waitForTimeout(100);
            tooltip = await page.evaluate((nodeId) => {
                const view = window.comfyAPI.app.app.graph.getNodeById(nodeId).hierdiffView;
                return view.tooltip.style.display === "none" ? "" : view.tooltip.textContent;
            }, id);
            await page.mouse.move(1, 1);
        }
        shots.push({ ...shot, tooltip });
    }
    return shots;
}

/** Set a widget's value as an edit on screen does. */
async function setWidget(id, name, value) {
    await page.evaluate(([nodeId, widgetName, v]) => {
        const node = window.comfyAPI.app.app.graph.getNodeById(nodeId);
        const widget = node.widgets.find((w) => w.name === widgetName);
        widget.value = v;
        widget.callback?.(v);
        node.setDirtyCanvas(true, true);
    }, [id, name, value]);
}

// The live preview: edits change the picture with nothing queued; until the new preview arrives, the
// old picture is marked out of date (the previews are held back meanwhile so that it can be seen).
async function previewScenario(spec) {
    const out = {};
    let posts = 0;
    const countPosts = (r) => { if (r.method() === "POST" && new URL(r.url()).pathname.endsWith("/prompt")) posts++; };
    page.on("request", countPosts);
    await loadGraph(JSON.parse(fs.readFileSync(spec.file, "utf8")));
    const ids = await nodeIds();
    const sampler = ids.HierKSampler;
    const events = await page.evaluate(() => window.__hierdiffEvents.length);
    out.first = await waitState(sampler, { origin: "preview", stale: false, pending: false }, 240_000);
    await showNode(sampler);
    out.first_shot = await photographView(sampler, "preview-first");

    let release;
    const held = new Promise((r) => { release = r; });
    const hold = async (route) => {
        await held;
        await route.continue().catch(() => {}); // unroute may have let it through already
    };
    await page.route("**/hierdiff/plan_preview", hold);
    await setWidget(sampler, "steps", spec.steps);
    out.stale = await waitState(sampler, { stale: true }, 5_000);
    out.stale_shot = await photographView(sampler, "preview-stale");
    release();
    await page.unroute("**/hierdiff/plan_preview", hold);
    out.second = await waitState(sampler, { stale: false, pending: false, steps: spec.steps }, 60_000);
    out.second_shot = await photographView(sampler, "preview-after-steps");

    const cluster = ids.HierPromptSetCluster;
    const text = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id)
        .widgets.find((w) => w.name === "prompts").value, cluster);
    const count = text.split("\n").filter((line) => line.trim()).length;
    await setWidget(cluster, "prompts", `${text}\n${spec.extra_prompt}`);
    out.third = await waitState(sampler, { stale: false, pending: false, n: count + 1 }, 120_000);
    out.third_shot = await photographView(sampler, "preview-after-prompts");
    out.cluster = await waitState(cluster, { stale: false, pending: false, n: count + 1 }, 60_000);
    out.prompt_posts = posts;
    out.run_events = await page.evaluate((n) => window.__hierdiffEvents.slice(n).map((e) => e.type), events);
    page.off("request", countPosts);
    return out;
}

/** Queue the graph on screen as the Run button does, following one node's picture until the run ends. */
async function runFollowing(id) {
    return page.evaluate(async (nodeId) => {
        const app = window.comfyAPI.app.app;
        const api = window.comfyAPI.api.api;
        const view = app.graph.getNodeById(nodeId).hierdiffView;
        const p = await app.graphToPrompt();
        const r = await api.queuePrompt(0, p);
        const seen = [];
        const ended = () => window.__hierdiffEvents.find((e) => e.detail?.prompt_id === r.prompt_id
            && (e.type === "execution_success" || e.type === "execution_error"));
        const deadline = Date.now() + 120_000;
        while (!ended() && Date.now() < deadline) {
            const s = view.state();
            seen.push({ origin: s.origin, summary: s.summary, status: s.status });
            await new Promise((res) => setTimeout(res, 40));
        }
        const executed = window.__hierdiffEvents.filter((e) => e.type === "executed" && e.detail?.prompt_id === r.prompt_id);
        const history = await (await api.fetchApi(`/history/${r.prompt_id}`)).json();
        const entry = history[r.prompt_id];
        const save = Object.entries(entry?.prompt?.[2] ?? {}).find(([, v]) => v.class_type === "SaveImage")?.[0];
        return {
            prompt_id: r.prompt_id, status: ended()?.type ?? "timeout",
            summary: executed.find((e) => String(e.detail.node) === String(nodeId))?.detail.output?.hierdiff_summary?.[0] ?? null,
            image: save ? entry.outputs[save]?.images?.[0] ?? null : null,
            seen,
        };
    }, id);
}

// Two runs, then the second run's PNG opened: its plan must be that run's.
async function pngScenario(spec) {
    await loadGraph(JSON.parse(fs.readFileSync(spec.file, "utf8")));
    const sampler = (await nodeIds()).HierKSampler;
    const out = { runs: [] };
    for (const steps of spec.steps) {
        await setWidget(sampler, "steps", steps);
        out.runs.push(await runFollowing(sampler));
    }
    const image = out.runs[1].image;
    const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder, type: image.type });
    const bytes = await (await page.request.get(`${job.url}/view?${query}`)).body();
    await page.evaluate(async (b64) => {
        const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        await window.comfyAPI.app.app.handleFile(new File([data], "second_run.png", { type: "image/png" }));
    }, bytes.toString("base64"));
    const reopened = (await nodeIds()).HierKSampler;
    out.reopened = await waitState(reopened, { origin: "stored", stale: false }, 30_000);
    await showNode(reopened);
    out.reopened_shot = await photographView(reopened, "png-reopened");
    return out;
}

// The big plan on a Hierarchical KSampler: collapsed rows, a click that opens one, a prompt found by
// typing part of it, and the picture redrawn when the graph is zoomed in.
async function bigPlanScenario(planJson) {
    if (job.big_plan_workflow) {
        await loadGraph(JSON.parse(fs.readFileSync(job.big_plan_workflow, "utf8")));
        await showNode((await nodeIds()).HierKSampler); // on screen, so that it paints
    }
    const big = await page.evaluate(async (plan) => {
        const app = window.comfyAPI.app.app;
        const node = app.graph.nodes.find((n) => n.type === "HierKSampler") ?? app.graph.nodes.find((n) => n.hierdiffView);
        if (!node) return { error: "no node with a plan widget" };
        const t0 = performance.now();
        node.onExecuted({ hierdiff_plan: [plan] });
        node.hierdiffView.paint(); // synchronously, to time layout and painting together
        const ms = performance.now() - t0;
        return { node: node.id, ms, painted: node.hierdiffView.painted,
            stored_bytes: JSON.stringify(node.properties.hierdiff_plan).length };
    }, planJson);
    if (big.error) return big;
    await showNode(big.node);
    big.widgets = [await photographView(big.node, "big-plan")];
    big.collapsed = await viewState(big.node);

    // Open the biggest row with a click on its label.
    const target = await page.evaluate((nodeId) => {
        const view = window.comfyAPI.app.app.graph.getNodeById(nodeId).hierdiffView;
        const { display, data } = view.drawn;
        const sizes = display.rows.map((v) => data.layout.size[v]);
        const row = sizes.indexOf(Math.max(...sizes));
        const r = view.element.getBoundingClientRect();
        const k = r.width / view.element.clientWidth;
        return { row, size: sizes[row], x: r.x + (view.frame.right + 20) * k, y: r.y + view.frame.y(row + 0.5) * k };
    }, big.node);
    await page.mouse.click(target.x, target.y);
    await page.waitForTimeout(300);
    big.clicked = target;
    big.opened = await photographView(big.node, "big-plan-opened");

    // Find a prompt by typing part of it into the find box.
    const box = await page.evaluate((nodeId) => {
        const r = window.comfyAPI.app.app.graph.getNodeById(nodeId).hierdiffView.findBox.getBoundingClientRect();
        return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
    }, big.node);
    await page.mouse.click(box.x, box.y);
    await page.keyboard.type(job.big_plan_find);
    await page.waitForTimeout(300);
    big.found = await photographView(big.node, "big-plan-found");
    await page.mouse.move(1, 1);

    await showView(big.node, 2);
    big.zoomed = await photographView(big.node, "big-plan-zoomed");
    await showNode(big.node, 1);
    return big;
}

async function runWorkflow(workflow) {
    const result = { name: workflow.name };
    const graphData = JSON.parse(fs.readFileSync(workflow.file, "utf8"));
    const loaded = await page.evaluate(async (data) => {
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(data, true, true, null);
        const types = app.graph.nodes.map((n) => n.type);
        return {
            node_types: types,
            missing: types.filter((t) => !window.LiteGraph.registered_node_types[t]),
        };
    }, graphData);
    Object.assign(result, loaded);
    if (!workflow.run) return result;
    const queued = await page.evaluate(async () => {
        const app = window.comfyAPI.app.app;
        const api = window.comfyAPI.api.api;
        const p = await app.graphToPrompt();
        try {
            const r = await api.queuePrompt(0, p);
            return { prompt_id: r.prompt_id, prompt: p.output };
        } catch (err) {
            return { error: String(err?.message ?? err), detail: err?.response ?? null, prompt: p.output };
        }
    });
    result.prompt = queued.prompt;
    if (!queued.prompt_id) {
        result.queue_error = queued.error;
        result.queue_error_detail = queued.detail;
        return result;
    }
    result.prompt_id = queued.prompt_id;
    const handle = await page.waitForFunction((pid) => window.__hierdiffEvents.find(
        (e) => (e.type === "execution_success" || e.type === "execution_error") && e.detail?.prompt_id === pid),
    queued.prompt_id, { timeout: RUN_TIMEOUT_MS, polling: 200 });
    const end = await handle.jsonValue();
    result.status = end.type;
    result.error = end.type === "execution_error" ? end.detail : null;
    result.executed = await page.evaluate((pid) => window.__hierdiffEvents
        .filter((e) => e.type === "executed" && e.detail?.prompt_id === pid)
        .map((e) => ({ node: e.detail.node, keys: Object.keys(e.detail.output ?? {}),
            summary: e.detail.output?.hierdiff_summary ?? null })), queued.prompt_id);
    await page.waitForTimeout(300);
    result.widgets = await photographWidgets(workflow.name);
    result.plans = await page.evaluate(() => Object.fromEntries(window.comfyAPI.app.app.graph.nodes
        .filter((n) => n.properties?.hierdiff_plan)
        .map((n) => [n.id, { type: n.type, plan: n.properties.hierdiff_plan }])));
    if (result.widgets.length) {
        savedWorkflow = { name: workflow.name,
            json: await page.evaluate(() => JSON.stringify(window.comfyAPI.app.app.graph.serialize())) };
    }
    return result;
}

try {
    await openApp();
    report.registered = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types));
    for (const workflow of job.workflows) {
        report.workflows.push(await runWorkflow(workflow));
    }
    if (job.preview) report.preview = await previewScenario(job.preview);
    if (job.png) report.png = await pngScenario(job.png);
    if (savedWorkflow) {
        // Reload the page and load the saved JSON: the plan widgets must come back from the saved
        // workflow alone (no execution after the reload).
        const saved = savedWorkflow.json;
        await page.reload();
        await openApp();
        await page.evaluate(async (data) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(JSON.parse(data), true, true, null);
        }, saved);
        await page.waitForTimeout(300);
        report.reload = { name: savedWorkflow.name, widgets: await photographWidgets("reloaded"),
            saved_bytes: saved.length };
    }
    if (job.big_plan_file) report.big_plan = await bigPlanScenario(fs.readFileSync(job.big_plan_file, "utf8"));
    for (const [runName, exampleFile] of Object.entries(job.thumbnails ?? {})) {
        // Plans of this run first; a node that was cached (not run again) takes the plan it had in an
        // earlier run (the examples share their first nodes).
        const runs = [report.workflows.find((w) => w.name === runName), ...report.workflows];
        const data = JSON.parse(fs.readFileSync(exampleFile, "utf8"));
        for (const node of data.nodes) {
            const found = runs.map((w) => w.plans?.[node.id]).find((p) => p && p.type === node.type);
            if (found) node.properties = { ...node.properties, hierdiff_plan: found.plan };
        }
        const clip = await page.evaluate(async (graph) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(graph, true, true, null);
            // Fit the whole graph into the free part of the window (below the toolbars, right of the
            // side bar) and return its box on the screen.
            const area = { x: 70, y: 100, width: window.innerWidth - 80, height: window.innerHeight - 110 };
            const xs = app.graph.nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
            const ys = app.graph.nodes.flatMap((n) => [n.pos[1] - 36, n.pos[1] + n.size[1]]);
            const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
            const scale = Math.min(area.width / (x1 - x0), area.height / (y1 - y0));
            const canvas = app.canvasEl.getBoundingClientRect();
            app.canvas.ds.scale = scale;
            app.canvas.ds.offset = [(area.x - canvas.x) / scale - x0, (area.y - canvas.y) / scale - y0];
            app.canvas.setDirty(true, true);
            return { x: area.x, y: area.y, width: (x1 - x0) * scale, height: (y1 - y0) * scale };
        }, data);
        await page.waitForTimeout(800);
        const file = path.join(job.out_dir, `thumb-${path.basename(exampleFile, ".json")}.png`);
        await page.screenshot({ path: file, clip });
    }
} catch (err) {
    report.fatal = String(err?.stack ?? err);
} finally {
    fs.writeFileSync(reportFile, JSON.stringify(report, null, 1));
    await browser.close();
}
