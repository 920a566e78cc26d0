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
    compactPlan, compactTree, describe, frame, groupAt, hitTest, layoutPlan, membersOf, MIN_GROUP_PX, paint, summaryLine,
} from "../../web/plan_view.js";

const DIR = process.env.HIERDIFF_PLAN_DIR;
const load = (name, kind) => JSON.parse(fs.readFileSync(path.join(DIR, `${name}.${kind}.json`), "utf8"));
const THEME = { background: "#000", text: "#fff", axis: "#888", font: "11px sans-serif" };

/** A 2D context that draws nothing and counts what it was asked to draw. */
function recordingContext() {
    const calls = { stroke: 0, fill: 0, fillText: 0, texts: [] };
    return {
        calls,
        fillRect() {}, beginPath() {}, moveTo() {}, lineTo() {}, closePath() {},
        stroke() { calls.stroke++; },
        fill() { calls.fill++; },
        fillText(text) { calls.fillText++; calls.texts.push(text); },
    };
}

for (const name of ["small", "medium"]) {
    test(`${name}: the group under every prompt at every step is the planner's`, () => {
        const plan = load(name, "plan");
        const expect = load(name, "expect");
        const layout = layoutPlan(compactPlan(plan));
        for (let k = 0; k < plan.steps; k++) {
            const got = Array.from({ length: plan.n_prompts }, (_, i) => groupAt(layout, i, k)?.id ?? null);
            assert.deepEqual(got, expect.group_of[k], `step ${k}`);
        }
    });

    test(`${name}: every group's members are one run of rows, as many as its size`, () => {
        const plan = load(name, "plan");
        const layout = layoutPlan(compactPlan(plan));
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

test("small: with room for every group, every group is painted and every prompt labelled", () => {
    const plan = load("small", "plan");
    const layout = layoutPlan(compactPlan(plan, "the summary"));
    const fr = frame(layout, 600, 40 + 20 * plan.n_prompts);
    assert.ok(fr.labels);
    const ctx = recordingContext();
    const painted = paint(ctx, layout, fr, THEME, null);
    assert.equal(painted, plan.nodes.length);
    for (const prompt of plan.prompts) assert.ok(ctx.calls.texts.includes(prompt), prompt);
    assert.ok(ctx.calls.texts.includes("the summary"));
});

test("large: 2,000 prompts paint as collapsed groups, bounded by the picture's height", () => {
    const plan = load("large", "plan");
    const t0 = performance.now();
    const layout = layoutPlan(compactPlan(plan));
    const fr = frame(layout, 480, 300);
    const ctx = recordingContext();
    const painted = paint(ctx, layout, fr, THEME, null);
    const ms = performance.now() - t0;
    assert.equal(fr.labels, false);
    assert.ok(ctx.calls.fill > 0, "thin subtrees are drawn as fans");
    // Every group drawn in full is at least MIN_GROUP_PX tall, and groups nest, so at one step at most
    // (plot height / MIN_GROUP_PX) of them are drawn; the fans and roots add at most as many again.
    const bound = 2 * plan.steps * Math.ceil((fr.plotBottom - fr.plotTop) / MIN_GROUP_PX);
    assert.ok(painted < plan.nodes.length / 2, `${painted} of ${plan.nodes.length} groups painted`);
    assert.ok(painted <= bound, `${painted} > ${bound}`);
    assert.ok(ms < 1000, `layout and paint took ${ms} ms`);
});

test("hit test and tooltip name the group under the pointer", () => {
    const plan = load("small", "plan");
    const layout = layoutPlan(compactPlan(plan));
    const fr = frame(layout, 600, 300);
    const row = Math.floor(layout.n / 2);
    const hit = hitTest(layout, fr, fr.x(0) + 1, fr.y(row) + fr.rowPx / 2);
    assert.deepEqual(hit, { leaf: layout.leafAtRow[row], step: 0 });
    const g = groupAt(layout, hit.leaf, 0);
    const text = describe(layout, hit, 100);
    assert.ok(text.startsWith(g.size === 1 ? "1 prompt" : `${g.size} prompts share steps ${g.first}`), text);
    for (const leaf of membersOf(layout, g.id)) assert.ok(text.includes(plan.prompts[leaf]));
    assert.equal(hitTest(layout, fr, 5, fr.plotTop - 1), null);
});

test("a bare tree is drawn against merge height: one root at the left, every prompt alone at the right", () => {
    const tree = load("medium", "tree");
    const layout = layoutPlan(compactTree(tree));
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
});

test("anything that is not a plan is refused with a message", () => {
    assert.throws(() => compactPlan({ format: "something else" }), /not a hierdiff plan/);
    assert.throws(() => compactPlan(null), /not a hierdiff plan/);
    assert.throws(() => compactTree({ format: "hierdiff.plan" }), /not a hierdiff tree/);
});
