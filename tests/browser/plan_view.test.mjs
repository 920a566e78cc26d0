// SPDX-License-Identifier: GPL-3.0-or-later
// Unit tests of web/plan_view.js under Node's test runner. The plans and the answers they are checked
// against come from hierdiff_core (written by tests/web/test_plan_view_js.py into HIERDIFF_PLAN_DIR):
//   <name>.plan.json     schedule.to_dict()
//   <name>.tree.json     the schedule's tree, PromptTree.to_dict()
//   <name>.expect.json   {"group_of": [[node id of prompt i's group at step k, for i] for k],
//                         "summary": hierdiff_core.report.summary_line(schedule)}
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import {
    cutRows, describe, EXPAND_ROWS, findPrompts, frame, groupAt, hitTest, layoutModel, membersOf, modelFromLegacy,
    modelFromPlan, modelFromTree, packModel, paint, pathOf, rowLabel, summaryLine, TARGET_ROW_PX, treeModelOf,
    unpackModel,
} from "../../web/plan_view.js";

const DIR = process.env.HIERDIFF_PLAN_DIR;
const load = (name, kind) => JSON.parse(fs.readFileSync(path.join(DIR, `${name}.${kind}.json`), "utf8"));
const THEME = { background: "#000", stripe: "#111", text: "#fff", axis: "#888", font: "11px sans-serif" };

/** A 2D context that draws nothing and counts what it was asked to draw. */
function recordingContext() {
    const calls = { stroke: 0, fill: 0, fillText: 0, texts: [], strokeColours: [] };
    return {
        calls,
        fillRect() {}, beginPath() {}, moveTo() {}, lineTo() {}, closePath() {},
        stroke() { calls.stroke++; calls.strokeColours.push(this.strokeStyle); },
        fill() { calls.fill++; },
        fillText(text) { calls.fillText++; calls.texts.push(text); },
    };
}

/** The group of every prompt at every step, as the drawing model sees it. */
function groupsOf(model) {
    const layout = layoutModel(model);
    return Array.from({ length: model.steps }, (_, k) =>
        Array.from({ length: model.n }, (_, i) => groupAt(layout, i, k)?.id ?? null));
}

for (const name of ["small", "medium", "large"]) {
    test(`${name}: the group under every prompt at every step is the planner's`, () => {
        assert.deepEqual(groupsOf(modelFromPlan(load(name, "plan"))), load(name, "expect").group_of);
    });

    test(`${name}: the packed plan kept in a workflow draws the same groups, without prompt texts`, () => {
        const plan = load(name, "plan");
        const packed = JSON.parse(JSON.stringify(packModel(modelFromPlan(plan), { key: "k" })));
        assert.equal(packed.key, "k");
        assert.ok(!JSON.stringify(packed).includes(plan.prompts[0]), "no prompt text");
        const model = unpackModel(packed);
        assert.equal(model.prompts, null);
        assert.deepEqual(groupsOf(model), load(name, "expect").group_of);
        assert.equal(model.summary, modelFromPlan(plan).summary);
    });

    test(`${name}: every group's members are one run of rows, as many as its size`, () => {
        const plan = load(name, "plan");
        const layout = layoutModel(modelFromPlan(plan));
        const rows = Array.from(layout.rowOf).sort((a, b) => a - b);
        assert.deepEqual(rows, Array.from({ length: plan.n_prompts }, (_, i) => i));
        for (const g of plan.nodes) {
            const members = membersOf(layout, g.id);
            assert.equal(members.length, g.size);
            const memberRows = members.map((leaf) => layout.rowOf[leaf]).sort((a, b) => a - b);
            assert.equal(memberRows[memberRows.length - 1] - memberRows[0], g.size - 1, `group ${g.id}`);
        }
    });

    test(`${name}: the summary line is the one hierdiff_core writes`, () => {
        const plan = load(name, "plan");
        const line = summaryLine(plan.n_prompts, plan.steps, plan.model_evaluations, plan.saving);
        assert.equal(line, load(name, "expect").summary);
    });
}

test("a packed plan of 2,000 prompts takes a few bytes per prompt", () => {
    const plan = load("large", "plan");
    const bytes = JSON.stringify(packModel(modelFromPlan(plan), { key: "0123456789a", tree_from: "prompt_tree" })).length;
    assert.ok(bytes <= 12 * plan.n_prompts, `${bytes} bytes`);
    assert.ok(JSON.stringify(plan).length > 20 * bytes, "far smaller than the plan JSON");
});

test("small: with room for every prompt, every group is painted and every prompt labelled", () => {
    const plan = load("small", "plan");
    const layout = layoutModel(modelFromPlan(plan, "the summary"));
    const display = cutRows(layout, plan.n_prompts);
    assert.deepEqual(display.rows.slice().sort((a, b) => a - b), plan.prompts.map((_, i) => i));
    const fr = frame(layout, display, 600, 54 + 20 * plan.n_prompts);
    assert.ok(fr.labels);
    const ctx = recordingContext();
    const painted = paint(ctx, layout, display, fr, THEME, { status: ["preview: not run yet", "#8fb8ff"] });
    assert.equal(painted, plan.nodes.length);
    for (const prompt of plan.prompts) assert.ok(ctx.calls.texts.includes(prompt), prompt);
    assert.ok(ctx.calls.texts.includes("the summary"));
    assert.ok(ctx.calls.texts.includes("preview: not run yet"));
});

for (const name of ["medium", "large"]) {
    test(`${name}: a large set is drawn as its top groups, each labelled with its size and a prompt`, () => {
        const plan = load(name, "plan");
        const t0 = performance.now();
        const layout = layoutModel(modelFromPlan(plan));
        const height = 420;
        const maxRows = Math.floor((height - 54) / TARGET_ROW_PX);
        const display = cutRows(layout, maxRows);
        const fr = frame(layout, display, 480, height);
        const ctx = recordingContext();
        const painted = paint(ctx, layout, display, fr, THEME);
        const ms = performance.now() - t0;
        assert.equal(display.rows.length, maxRows);
        assert.ok(fr.labels, "rows tall enough for labels");
        // The rows hold every prompt once, and a group's label is its size and its first prompt.
        assert.equal(display.rows.reduce((sum, v) => sum + layout.size[v], 0), plan.n_prompts);
        for (const v of display.rows) {
            const label = rowLabel(layout, v);
            const first = Math.min(...membersOf(layout, v));
            assert.equal(label, layout.size[v] > 1 ? `[${layout.size[v]}] ${plan.prompts[first]}` : plan.prompts[v]);
            assert.ok(ctx.calls.texts.includes(label));
        }
        // The rows are the highest groups: every merge above them is higher than every merge inside them.
        const heights = modelFromPlan(plan).heights;
        const openHeights = [];
        const innerHeights = [];
        for (let v = plan.n_prompts; v < 2 * plan.n_prompts - 1; v++) {
            (display.open[v] ? openHeights : innerHeights).push(heights[v - plan.n_prompts]);
        }
        assert.ok(Math.min(...openHeights) >= Math.max(...innerHeights));
        assert.ok(painted <= 3 * display.rows.length, `${painted} bars and fans for ${display.rows.length} rows`);
        assert.ok(painted < plan.nodes.length / 2, `${painted} of ${plan.nodes.length} groups painted`);
        assert.ok(ms < 1000, `layout and paint took ${ms} ms`);
    });
}

test("a click opens a group into its own top groups; folding closes it again", () => {
    const layout = layoutModel(modelFromPlan(load("large", "plan")));
    const before = cutRows(layout, 12);
    const big = before.rows.reduce((a, b) => (layout.size[a] >= layout.size[b] ? a : b));
    const opened = cutRows(layout, 12, [{ op: "open", node: big }]);
    assert.equal(opened.rows.length, before.rows.length + EXPAND_ROWS - 1);
    const inside = opened.rows.filter((v) => membersOf(layout, v).every((leaf) => before.rowOfLeaf[leaf] === before.rows.indexOf(big)));
    assert.equal(inside.reduce((sum, v) => sum + layout.size[v], 0), layout.size[big]);
    const folded = cutRows(layout, 12, [{ op: "open", node: big }, { op: "fold", node: big }]);
    assert.deepEqual(folded.rows.filter((v) => v !== big), before.rows.filter((v) => v !== big));
    assert.ok(folded.rows.includes(big));
});

test("finding a prompt: its path is the group holding it at every step", () => {
    const plan = load("large", "plan");
    const model = modelFromPlan(plan);
    const layout = layoutModel(model);
    const matches = findPrompts(model, "PROMPT 1234:");
    assert.deepEqual(matches, [1234]);
    assert.deepEqual(findPrompts(model, "  "), []);
    const path = pathOf(layout, 1234);
    for (let k = 0; k < plan.steps; k++) {
        const g = groupAt(layout, 1234, k);
        assert.ok(!g || path.includes(g), `step ${k}`);
    }
    for (let i = 1; i < path.length; i++) assert.equal(path[i].first, path[i - 1].end, "one group after the other");
    const display = cutRows(layout, 20);
    const ctx = recordingContext();
    paint(ctx, layout, display, frame(layout, display, 600, 420), THEME, { found: 1234 });
    assert.ok(ctx.calls.strokeColours.includes("#ffe600"), "the path is drawn in the find colour");
    assert.ok(ctx.calls.texts.some((t) => t.includes(plan.prompts[1234])), "the found prompt is named");
});

test("hit test and tooltip name the group under the pointer", () => {
    const plan = load("small", "plan");
    const layout = layoutModel(modelFromPlan(plan));
    const display = cutRows(layout, plan.n_prompts);
    const fr = frame(layout, display, 600, 300);
    const row = Math.floor(display.rows.length / 2);
    const hit = hitTest(layout, display, fr, fr.x(0) + 1, fr.y(row) + fr.rowPx / 2);
    assert.equal(hit.node, display.rows[row]);
    assert.equal(hit.step, 0);
    const g = groupAt(layout, hit.leaf, 0);
    const text = describe(layout, hit, 100);
    assert.ok(text.startsWith(g.size === 1 ? "1 prompt" : `${g.size} prompts share steps ${g.first}`), text);
    for (const leaf of membersOf(layout, g.id)) assert.ok(text.includes(plan.prompts[leaf]));
    assert.equal(hitTest(layout, display, fr, 5, fr.plotTop - 1), null);
});

test("a collapsed row that splits says into how many groups at that step", () => {
    const plan = load("large", "plan");
    const layout = layoutModel(modelFromPlan(plan));
    const display = cutRows(layout, 10);
    const fr = frame(layout, display, 600, 300);
    const row = display.rows.findIndex((v) => layout.size[v] > 50);
    const hit = hitTest(layout, display, fr, fr.x(plan.steps - 1) + 1, fr.y(row) + fr.rowPx / 2);
    assert.match(describe(layout, hit), /^\d+ prompts in \d+ groups at step \d+/);
});

test("a bare tree is drawn against merge height: one root at the left, every prompt alone at the right", () => {
    const tree = load("medium", "tree");
    for (const model of [modelFromTree(tree), treeModelOf(modelFromPlan(load("medium", "plan")))]) {
        const layout = layoutModel(model);
        const root = 2 * tree.n_prompts - 2;
        for (let leaf = 0; leaf < tree.n_prompts; leaf++) {
            assert.equal(groupAt(layout, leaf, 0).id, root);
            assert.equal(groupAt(layout, leaf, layout.steps - 1).id, leaf);
        }
        // Nested groups: a group's members are exactly its child groups' members.
        for (const g of layout.groups.values()) {
            if (!g.children.length) continue;
            const fromChildren = g.children.flatMap((c) => membersOf(layout, c.id)).sort((a, b) => a - b);
            assert.deepEqual(fromChildren, membersOf(layout, g.id).sort((a, b) => a - b));
        }
    }
});

test("a plan saved by an earlier version (the compact view) still draws its groups", () => {
    const plan = load("medium", "plan");
    const view = { format: "hierdiff.plan.view", version: 1, kind: "plan", axis: { title: "step", start: 0, stop: plan.steps },
        prompts: plan.prompts, n_prompts: plan.n_prompts, steps: plan.steps, summary: "old",
        merges: plan.linkage.merges.flatMap((m) => [m[0], m[1]]),
        nodes: plan.nodes.flatMap((g) => [g.id, g.parent ?? -1, g.size, g.height, g.first_step, g.end_step]) };
    assert.deepEqual(groupsOf(modelFromLegacy(view)), load("medium", "expect").group_of);
});

test("anything that is not a plan is refused with a message", () => {
    assert.throws(() => modelFromPlan({ format: "something else" }), /not a hierdiff plan/);
    assert.throws(() => modelFromPlan(null), /not a hierdiff plan/);
    assert.throws(() => modelFromTree({ format: "hierdiff.plan" }), /not a hierdiff tree/);
    assert.throws(() => unpackModel({ format: "hierdiff.plan.view" }), /not a packed hierdiff plan/);
    const plan = load("small", "plan");
    assert.throws(() => modelFromPlan({ ...plan, linkage: { ...plan.linkage, merges: plan.linkage.merges.slice(1) } }),
        /need \d+ merges/);
});
