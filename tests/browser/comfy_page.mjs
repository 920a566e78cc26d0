// SPDX-License-Identifier: GPL-3.0-or-later
// What the browser scripts (drive.mjs, templates.mjs) share: Debian's chromium launched headless with
// nothing reaching outside loopback, and ComfyUI's app opened in a page with its run events recorded in
// window.__hierdiffEvents.
import { chromium } from "playwright-core";

/** Debian's chromium, headless, without background networking, updates or sync. */
export function launchChromium() {
    return chromium.launch({
        executablePath: "/usr/bin/chromium",
        headless: true,
        args: [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    });
}

/**
 * Open ComfyUI at `url` in `page` and wait until the app, its node types and `ready()` (run in the page)
 * are there; then record the run events (execution_start / _success / _error, executed).
 */
export async function openComfy(page, url, ready) {
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(
        () => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.KSampler,
        null, { timeout: 60_000 });
    await page.waitForFunction(ready, null, { timeout: 60_000 });
    await page.evaluate(() => {
        const api = window.comfyAPI.api.api;
        window.__hierdiffEvents = [];
        for (const type of ["execution_start", "execution_success", "execution_error", "executed"]) {
            api.addEventListener(type, (e) => window.__hierdiffEvents.push({ type, detail: e.detail }));
        }
    });
}
