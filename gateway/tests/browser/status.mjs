// Drives the admin status page in Debian's chromium (through playwright-core)
// and prints what it saw as one JSON object; gateway/tests/status_page.rs
// starts the gateway, puts a load on it, runs this and checks the JSON.
//
//   node gateway/tests/browser/status.mjs <admin url> <token> <screenshot.png>
//
// Every request of the browser context is listened to and any to another
// origin than the admin listener is aborted and reported. CHROMIUM overrides
// the browser's path (default /usr/bin/chromium).

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [admin, token, screenshot] = process.argv.slice(2);
if (!admin || !token || !screenshot) {
  console.error("usage: node status.mjs <admin url> <token> <screenshot.png>");
  process.exit(2);
}
const origin = new URL(admin).origin;
// /stats answers the loaded page waits for before it is read (3: two
// intervals drawn); more for a fuller screenshot (STATUS_PAGE_ANSWERS=60).
const ANSWERS = Number(process.env.STATUS_PAGE_ANSWERS || 3);
const WAIT = 15000 + 2000 * ANSWERS;
const started = Date.now();
const out = {
  foreign_requests: [], requests_seen: 0, csp_violations: [], page_errors: [],
};

const userDataDir = mkdtempSync(join(tmpdir(), "status-page-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 900 },
  timeout: WAIT,
});

try {
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin !== origin) {
      out.foreign_requests.push(url);
      return route.abort();
    }
    return route.continue();
  });
  context.on("request", (r) => {
    out.requests_seen++;
    if (new URL(r.url()).origin !== origin && !out.foreign_requests.includes(r.url())) {
      out.foreign_requests.push(r.url());
    }
  });
  const watch = (page) => {
    page.on("console", (m) => {
      if (/Content[- ]Security[- ]Policy/i.test(m.text())) out.csp_violations.push(m.text());
    });
    page.on("pageerror", (e) => out.page_errors.push(String(e)));
    return page;
  };
  // Each page is a new tab: its sessionStorage starts empty.
  const newPage = async () => watch(await context.newPage());
  const values = (page) => page.evaluate(() => Object.fromEntries(
    [...document.querySelectorAll("[data-metric]")].map((e) => [e.dataset.metric, e.dataset.value ?? ""])));
  const visible = (page, sel) => page.locator(sel).isVisible();
  // WCAG contrast of every visible text (4.5:1, 3:1 for large text) and of
  // the chart lines against the chart (3:1, non-text graphics).
  const contrast = (page) => page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const ratio = (a, b) => {
      const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
      return (x + 0.05) / (y + 0.05);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const problems = [];
    for (const el of document.querySelectorAll("body *")) {
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.getClientRects().length) continue;
      const st = getComputedStyle(el);
      if (st.visibility === "hidden") continue;
      const size = parseFloat(st.fontSize), bold = Number(st.fontWeight) >= 700;
      const need = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
      const r = ratio(rgb(st.color).slice(0, 3), background(el));
      if (r < need) problems.push(el.tagName + " '" + el.textContent.trim().slice(0, 30) + "': " + r.toFixed(2));
    }
    for (const line of document.querySelectorAll("svg.chart polyline")) {
      const r = ratio(rgb(getComputedStyle(line).stroke).slice(0, 3), background(line.ownerSVGElement));
      if (r < 3) problems.push("chart line " + line.getAttribute("class") + ": " + r.toFixed(2));
    }
    return problems;
  });

  // The loaded page (3. below) opens first and collects its answers while
  // the other tabs run.
  const loadedPage = await newPage();
  const answers = [];
  loadedPage.on("response", (r) => {
    if (r.url() === origin + "/stats" && r.status() === 200) answers.push(r.json());
  });
  await loadedPage.goto(origin + "/status#token=" + encodeURIComponent(token), { timeout: WAIT });
  const loadedUrl = loadedPage.url();

  // 1. No token: the form, no data.
  {
    const page = await newPage();
    const resp = await page.goto(origin + "/status", { timeout: WAIT });
    await page.locator("#token-form").waitFor({ state: "visible", timeout: WAIT });
    out.missing_token = {
      status: resp.status(),
      headers: resp.headers(),
      form_visible: await visible(page, "#token-form"),
      alert_visible: await visible(page, "#auth-error"),
      dashboard_visible: await visible(page, "#dashboard"),
      input_labelled: await page.evaluate(() =>
        [...document.querySelectorAll("input, meter")].every((e) => e.labels && e.labels.length > 0)),
      metrics_labelled: await page.evaluate(() =>
        [...document.querySelectorAll("[data-metric]")].every((e) => {
          const l = document.getElementById(e.getAttribute("aria-labelledby") || "");
          return !!(l && l.textContent.trim());
        })),
      lang: await page.evaluate(() => document.documentElement.lang),
    };
    await page.close();
  }

  // 2. A wrong token in the fragment: the message, no numbers; then the
  // right token typed into the form shows the data.
  {
    const page = await newPage();
    await page.goto(origin + "/status#token=wrong-" + encodeURIComponent(token), { timeout: WAIT });
    await page.locator("#auth-error").waitFor({ state: "visible", timeout: WAIT });
    out.wrong_token = {
      message: await page.locator("#auth-error").textContent(),
      role: await page.locator("#auth-error").getAttribute("role"),
      url: page.url(),
      stored: await page.evaluate(() => sessionStorage.getItem("gateway-admin-token")),
      form_visible: await visible(page, "#token-form"),
      dashboard_visible: await visible(page, "#dashboard"),
      metrics: await values(page),
      contrast_problems: await contrast(page),
    };
    await page.locator("#token").fill(token);
    await page.getByRole("button", { name: "Show status" }).click();
    await page.waitForFunction(() => {
      const e = document.querySelector('[data-metric="cache_bytes"]');
      return e && e.dataset.value !== "";
    }, null, { timeout: WAIT });
    out.form_token = {
      alert_visible: await visible(page, "#auth-error"),
      dashboard_visible: await visible(page, "#dashboard"),
      metrics: await values(page),
    };
    await page.close();
  }

  // 3. The right token in the fragment, under load: wait for ANSWERS /stats
  // answers, read the page, then ask the gateway.
  {
    const page = loadedPage, url = loadedUrl;
    await page.waitForFunction((n) => {
      const root = document.documentElement;
      window.__answers = (window.__answers || new Set()).add(root.dataset.sample);
      return root.dataset.previous && window.__answers.size >= n;
    }, ANSWERS, { timeout: WAIT, polling: 50 });
    const seen = await page.evaluate(() => ({
      sample: Number(document.documentElement.dataset.sample),
      previous: Number(document.documentElement.dataset.previous),
      metrics: Object.fromEntries([...document.querySelectorAll("[data-metric]")]
        .map((e) => [e.dataset.metric, e.dataset.value ?? ""])),
      texts: Object.fromEntries([...document.querySelectorAll("[data-metric]")]
        .map((e) => [e.dataset.metric, e.textContent])),
      limits_rows: [...document.querySelectorAll("#limits tbody tr")].map((tr) =>
        [...tr.cells].map((c) => c.textContent)),
      server_rows: [...document.querySelectorAll("#servers tbody tr")].map((tr) =>
        [...tr.cells].map((c) => c.textContent)),
      chart_lines: [...document.querySelectorAll("svg.chart")].map((s) => s.querySelectorAll("polyline").length),
      reload: document.getElementById("reload").textContent,
      stored: sessionStorage.getItem("gateway-admin-token"),
    }));
    // Fresh numbers right after the read: the cache first, then /stats, so
    // that /stats has counted at least every request the cache has.
    const ask = async (path) => (await fetch(origin + path, {
      headers: { Authorization: "Bearer " + token },
      signal: AbortSignal.timeout(WAIT),
    })).json();
    const fresh_cache = await ask("/cache/stats");
    const fresh_stats = await ask("/stats");
    const all = await Promise.all(answers);
    await page.screenshot({ path: screenshot, fullPage: true });
    seen.contrast_problems = await contrast(page);
    out.loaded = {
      url,
      ...seen,
      answers: all.length,
      sample_stats: all.find((a) => a.uptime_ms === seen.sample) ?? null,
      previous_stats: all.find((a) => a.uptime_ms === seen.previous) ?? null,
      fresh_stats,
      fresh_cache,
    };
    // 4. A phone's width: nothing wider than the screen (tables scroll in
    // their own box).
    await page.setViewportSize({ width: 390, height: 844 });
    out.phone = await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => done({
      viewport_width: window.innerWidth,
      scroll_width: document.documentElement.scrollWidth,
    }))));
    await page.close();
  }
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
out.elapsed_ms = Date.now() - started;
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.error ? 1 : 0);
