// SPDX-License-Identifier: GPL-3.0-or-later
// Drives Debian's chromium (through playwright-core) against a running ComfyUI server with the hierdiff
// pack, and writes what it saw as JSON for the pytest side (tests/comfy/test_browser.py) to judge.
//
//   node drive.mjs JOB.json REPORT.json
//
// JOB: {"url": "http://127.0.0.1:PORT", "out_dir": DIR, "workflows": [{"name", "file", "run"}],
//       "big_plan_file": FILE | null, "thumbnails": {RUN_NAME: EXAMPLE_FILE} | absent}
// Each workflow file is UI-format JSON. The page loads it and lists its node types and those the
// frontend does not know. With "run" (workflows already switched to the tiny test model) it also
// converts the graph to a prompt, queues it, waits for the run, then photographs every hierdiff plan
// widget and counts coloured pixels in the photograph. The last run workflow that drew plans is saved
// as a user would save it; after a page reload the saved JSON is loaded again, to check that the plans
// are drawn from the saved workflow alone. With "thumbnails", each example file is also shown with the
// plans of its tiny run and the whole graph photographed (thumb-NAME.png), for the template pictures.
// The big plan (2,000 prompts) is fed to a node's onExecuted to time the drawing.
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [jobFile, reportFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, "utf8"));
const report = { console: [], page_errors: [], workflows: [], registered: [], reload: null, big_plan: null };
const RUN_TIMEOUT_MS = 120_000;
let savedWorkflow = null;

const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
});
// playwright gives each context a fresh, temporary profile (user data dir).
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
page.on("console", (m) => {
    report.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? "" });
});
page.on("pageerror", (e) => report.page_errors.push({ message: e.message, stack: e.stack ?? "" }));

async function openApp() {
    await page.goto(job.url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(
        () => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.KSampler
            && document.querySelector(".graph-canvas-container, canvas#graph-canvas"),
        null, { timeout: 60_000 });
    await page.evaluate(() => {
        const api = window.comfyAPI.api.api;
        window.__hierdiffEvents = [];
        for (const type of ["execution_start", "execution_success", "execution_error", "executed"]) {
            api.addEventListener(type, (e) => window.__hierdiffEvents.push({ type, detail: e.detail }));
        }
    });
}

// Photograph every plan widget on the graph (graph zoom 1, centred on the widget's node) and count
// the pixels that are strongly coloured (the dendrogram's lines are saturated hues; the background,
// text and axis are greys).
async function photographWidgets(prefix) {
    const ids = await page.evaluate(() => {
        const app = window.comfyAPI.app.app;
        return app.graph.nodes.filter((n) => n.hierdiffView).map((n) => n.id);
    });
    const shots = [];
    for (const id of ids) {
        await page.evaluate((nodeId) => {
            const app = window.comfyAPI.app.app;
            const node = app.graph.getNodeById(nodeId);
            app.canvas.ds.scale = 1;
            app.canvas.centerOnNode(node);
            app.canvas.setDirty(true, true);
        }, id);
        // DOM widgets follow the canvas on the next frames.
        await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
        await page.waitForTimeout(250);
        const info = await page.evaluate((nodeId) => {
            const node = window.comfyAPI.app.app.graph.getNodeById(nodeId);
            const r = node.hierdiffView.element.getBoundingClientRect();
            return { type: node.type, painted: node.hierdiffView.painted ?? 0,
                rect: { x: r.x, y: r.y, width: r.width, height: r.height } };
        }, id);
        const file = path.join(job.out_dir, `${prefix}-node${id}.png`);
        let coloured = 0;
        if (info.rect.width > 0 && info.rect.height > 0) {
            const png = await page.screenshot({ path: file, clip: info.rect });
            coloured = await page.evaluate(async (b64) => {
                const img = new Image();
                img.src = `data:image/png;base64,${b64}`;
                await img.decode();
                const c = document.createElement("canvas");
                c.width = img.width;
                c.height = img.height;
                const ctx = c.getContext("2d");
                ctx.drawImage(img, 0, 0);
                const d = ctx.getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) {
                    const max = Math.max(d[i], d[i + 1], d[i + 2]);
                    const min = Math.min(d[i], d[i + 1], d[i + 2]);
                    if (max - min > 60) n++;
                }
                return n;
            }, png.toString("base64"));
        }
        // Hover over the left part of the picture (the shared trunk): the tooltip names the group there.
        let tooltip = "";
        if (info.rect.width > 0) {
            await page.mouse.move(info.rect.x + info.rect.width * 0.1, info.rect.y + info.rect.height * 0.5);
            await page.waitForTimeout(100);
            tooltip = await page.evaluate((nodeId) => {
                const view = window.comfyAPI.app.app.graph.getNodeById(nodeId).hierdiffView;
                return view.tooltip.style.display === "none" ? "" : view.tooltip.textContent;
            }, id);
            await page.mouse.move(1, 1);
        }
        shots.push({ node: id, ...info, file, coloured_pixels: coloured, tooltip });
    }
    return shots;
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
    if (job.big_plan_file) {
        const planJson = fs.readFileSync(job.big_plan_file, "utf8");
        report.big_plan = await page.evaluate(async (plan) => {
            const app = window.comfyAPI.app.app;
            const node = app.graph.nodes.find((n) => n.hierdiffView) ?? null;
            if (!node) return { error: "no node with a plan widget" };
            const t0 = performance.now();
            node.onExecuted({ hierdiff_plan: [plan] });
            node.hierdiffView.paint(); // synchronously, to time layout and painting together
            const ms = performance.now() - t0;
            return { node: node.id, ms, painted: node.hierdiffView.painted,
                stored_bytes: JSON.stringify(node.properties.hierdiff_plan).length };
        }, planJson);
        report.big_plan.widgets = await photographWidgets("big-plan");
    }
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
