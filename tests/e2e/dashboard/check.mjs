// Walks the dashboard in headless Chromium as a tenant and as an operator would, checks what
// each page shows, and keeps a screenshot of each. Run by tests/e2e/dashboard.rs with a
// running fleet; every argument comes as an environment variable:
//
//   BASE            the API's base URL
//   TENANT          the tenant, TENANT_TOKEN its token; OPERATOR_TOKEN an operator's
//   JOB             a finished job of the tenant with RESULTS results and one failed item
//   FAILED_REASON   a piece of that item's failure reason
//   FINE_TUNE       a finished fine-tune of the tenant, MODEL the model it registered
//   OTHER_TENANT    another tenant, OTHER_JOB one of its jobs (the tenant must not see it)
//   WORKER          a live worker's id
//   SHOTS           where the screenshots go
//   MODULES         node_modules holding playwright-core; CHROMIUM the browser
//
// Prints one line per check; exits 1 at the first one that fails.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("BASE");
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });
const { chromium } = await import(pathToFileURL(join(env("MODULES"), "playwright-core", "index.mjs")).href);

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
let failed = false;

function check(what, ok, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${ok ? "" : `: ${detail}`}`);
  if (!ok) failed = true;
  return ok;
}

async function text() {
  return await page.locator("body").innerText();
}

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(token) {
  await page.goto(`${base}/ui/logout`);
  await page.goto(`${base}/ui`);
  check("a page without a session leads to sign-in", page.url().endsWith("/ui/login"), page.url());
  await page.fill("input[name=token]", token);
  await Promise.all([page.waitForURL(`${base}/ui`), page.click("button[type=submit]")]);
}

// Every image on the page has loaded with pixels.
async function imagesLoaded(selector) {
  const images = page.locator(selector);
  const n = await images.count();
  for (let i = 0; i < n; i++) {
    await images.nth(i).scrollIntoViewIfNeeded();
  }
  await page.waitForFunction(
    (sel) => [...document.querySelectorAll(sel)].every((img) => img.complete),
    selector,
    { timeout: 20000 },
  );
  const widths = await images.evaluateAll((imgs) => imgs.map((img) => img.naturalWidth));
  return { n, loaded: widths.filter((w) => w > 0).length };
}

try {
  // A wrong token is refused with a reason.
  await page.goto(`${base}/ui/login`);
  await page.fill("input[name=token]", "fleet_nobody_" + "x".repeat(43));
  await page.click("button[type=submit]");
  check("a wrong token is refused", (await text()).includes("unknown or revoked"), await text());

  // The tenant.
  const tenant = env("TENANT");
  await signIn(env("TENANT_TOKEN"));
  let body = await text();
  check("the overview names the tenant", body.includes(`tenant ${tenant}`), body);
  check("a tenant sees no workers", !body.includes("Workers"), body);
  check("the overview lists the job", body.includes(env("JOB")), body);
  await shot("overview-tenant");

  await page.goto(`${base}/ui/jobs`);
  body = await text();
  check("the jobs page lists the job and the fine-tune", body.includes(env("JOB")) && body.includes(env("FINE_TUNE")), body);
  await shot("jobs");

  await page.goto(`${base}/ui/jobs/${tenant}/${env("JOB")}`);
  body = await text();
  check("the job page says it succeeded with item errors", body.includes("succeeded_with_item_errors"), body);
  check("the job page shows the failed item and its reason", body.includes("Failed items (1)") && body.includes(env("FAILED_REASON")), body);
  const sheet = await imagesLoaded(".sheet img");
  check("the contact sheet shows every result, loaded", sheet.n === Number(env("RESULTS")) && sheet.loaded === sheet.n,
    JSON.stringify(sheet));
  await shot("job");

  await page.goto(`${base}/ui/jobs/${env("OTHER_TENANT")}/${env("OTHER_JOB")}`);
  check("another tenant's job is no job", (await text()).includes("No such job"), await text());

  await page.goto(`${base}/ui/fine-tunes`);
  body = await text();
  check("the fine-tune is listed with its figures", body.includes(env("FINE_TUNE")) && body.includes("loss") && body.includes("learning rate"), body);
  const curve = await imagesLoaded("img.curve");
  check("the loss and learning-rate curves show", curve.n >= 1 && curve.loaded === curve.n, JSON.stringify(curve));
  await shot("fine-tunes");

  await page.goto(`${base}/ui/models`);
  body = await text();
  check("the tenant's model is listed with its lineage", body.includes(env("MODEL")) && body.includes("fine-tuned from matting-ref@1.0.0"), body);
  check("shared models name their source and licence", body.includes("AGPL-3.0") || body.includes("made by the fleet"), body);
  await shot("models");

  // The operator.
  await signIn(env("OPERATOR_TOKEN"));
  body = await text();
  check("the operator sees the live worker", body.includes("Workers") && body.includes(env("WORKER")), body);
  check("a worker without NVML says why", body.includes("no NVML"), body);
  check("the operator sees the tenant's jobs", body.includes(env("JOB")), body);
  await shot("overview-operator");
} catch (e) {
  check("the walk through the pages", false, e.stack || String(e));
  await shot("error").catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
