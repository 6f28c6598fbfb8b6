// The supervisor page in a real browser (Debian's chromium, driven by playwright-core), as a
// supervisor uses it. Talks to tests/supervisor.rs over stdio: prints READY once logged in (the
// test then streams a call that turns into a clone), ACKED <alert id> after acknowledging, DONE.
// Any failed expectation throws: non-zero exit, the reason on stderr.
//
//   node tests/browser/supervisor.mjs URL TOKEN_A TOKEN_B SCREENSHOT_DIR
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(path.resolve(process.env.PLAYWRIGHT_CORE || ".deps/node/node_modules/playwright-core"));
const [url, tokenA, tokenB, shots] = process.argv.slice(2);
const say = (line) => process.stdout.write(line + "\n");
const check = (ok, what) => { if (!ok) throw new Error("expected: " + what); };

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => { process.stderr.write("page error: " + e + "\n"); process.exitCode = 3; });
  const shot = (name) => page.screenshot({ path: path.join(shots, name + ".png"), fullPage: true });

  // Not logged in: the login form. A wrong token is refused with a reason.
  await page.goto(url + "/supervisor");
  check(page.url().endsWith("/supervisor/login"), "redirect to the login form, got " + page.url());
  await shot("1-login");
  await page.fill("#token", "not-a-token");
  await page.click("#login");
  await page.waitForSelector(".error");
  check((await page.textContent(".error")).includes("not a tenant"), "the refusal says why");

  await page.fill("#token", tokenA);
  await page.click("#login");
  await page.waitForURL(url + "/supervisor");
  await page.waitForSelector("#tenant:has-text('bank-a')");
  check(!page.url().includes(tokenA), "no token in the URL");
  const cookie = (await context.cookies()).find((c) => c.name === "cg_session");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "an HttpOnly SameSite=Strict session cookie: " + JSON.stringify(cookie));
  check(!JSON.stringify(await context.cookies()).includes(tokenA), "the token is not in a cookie");
  await page.waitForSelector("#link:has-text('live')");
  say("READY");

  // The call appears while it streams, then turns red when the clone starts.
  const row = 'tr[data-call="sup-1"]';
  await page.waitForSelector(row, { timeout: 60000 });
  await shot("2-call-live");
  await page.waitForSelector(row + ".suspected", { timeout: 90000 });
  await shot("3-call-red");

  // Open it: the timeline has window points, the fused line and the threshold.
  await page.click(row);
  await page.waitForSelector("#detail:not([hidden])");
  await page.waitForFunction(() => document.querySelectorAll("#timeline circle.window").length >= 3);
  check(await page.$("#timeline path.fused"), "a fused-score line");
  check(await page.$("#timeline line.threshold"), "the threshold line");
  await page.waitForSelector("#timeline line.alert", { state: "attached" });
  await page.waitForSelector("#evidence li:not(.muted)");
  // The transcript (whisper transcribes suspected calls first).
  await page.waitForFunction(() => {
    const p = document.querySelector("#transcript p");
    return p && !p.classList.contains("muted") && p.textContent.trim().length > 0;
  }, null, { timeout: 120000 });
  await shot("4-call-detail");

  // Acknowledge its alert, with a note.
  const item = "#alerts li[data-alert]";
  await page.waitForSelector(item + " form.ack");
  const alertId = await page.getAttribute(item, "data-alert");
  await page.fill(item + " input[name=by]", "supervisor-1");
  await page.fill(item + " input[name=note]", "called the customer back on file");
  await page.click(item + " button[type=submit]");
  await page.waitForSelector(item + " .acked");
  check((await page.textContent(item + " .acked")).includes("supervisor-1"), "who acknowledged");
  await shot("5-acknowledged");
  say("ACKED " + alertId);

  // Log out: the session is gone.
  await page.click("#logout");
  await page.waitForURL(url + "/supervisor/login");
  const after = await page.request.get(url + "/supervisor/api/state");
  check(after.status() === 401, "logged out: the API refuses, got " + after.status());

  // Another tenant sees none of it.
  await page.fill("#token", tokenB);
  await page.click("#login");
  await page.waitForSelector("#tenant:has-text('bank-b')");
  await page.waitForSelector("#link:has-text('live')");
  await page.waitForTimeout(1500);
  const text = await page.textContent("body");
  check(!text.includes("sup-1") && !text.includes(alertId), "bank-b sees no bank-a call or alert");
  check((await page.$$("#alerts li")).length === 0, "no alerts for bank-b");
  const other = await page.request.get(url + "/supervisor/api/calls/sup-1");
  check(other.status() === 404, "bank-a's call is not found for bank-b, got " + other.status());
  await shot("6-other-tenant");
  say("DONE");
} finally {
  await browser.close();
}
