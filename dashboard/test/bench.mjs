// The dashboard's part of scripts/bench.sh: in headless Chromium against a real daemon,
// (1) the time from a line's write to its row in the page's DOM at 1,000 lines/s (p50,
// p99), and (2) the highest line rate the page keeps up with for a whole window (30 s;
// `--quick`: 10 s) without falling behind: the newest line shown was never written more
// than two seconds earlier, and a second after the writer's end the page shows its last line.
// Usage: CORRAL_BIN=target/release/corral node dashboard/test/bench.mjs [--quick]
import { Daemon, browser, watchedPage, waitFor, percentile, recordLatency, need } from './lib.mjs';

const quick = process.argv.includes('--quick');
const bin = process.env.CORRAL_BIN;
need(bin, 'set CORRAL_BIN to the corral program (scripts/bench.sh does)');
const WINDOW = quick ? 10 : 30;
const LAT_SECS = quick ? 5 : 15;
const RATES = [1000, 2000, 5000, 10000, 20000, 50000, 100000];

const writer = (rate, secs, prefix) => [
  'import sys, time',
  `rate, total = ${rate}, ${rate * secs}`,
  't0 = time.time(); n = 0; w = sys.stdout.write',
  'while n < total:',
  '    due = min(total, int((time.time() - t0) * rate) + 1)',
  '    while n < due:',
  `        n += 1; w("${prefix}%d %d\\n" % (int(time.time() * 1000), n))`,
  '    sys.stdout.flush(); time.sleep(0.001)',
].join('\n');

const d = await Daemon.start(bin);
const ctx = await browser();
const problems = [];
try {
  const page = await watchedPage(ctx, problems);
  await page.goto(await d.loginUrl());
  await page.waitForSelector('header.top nav');

  // (1) Write-to-DOM latency at 1,000 lines/s.
  await d.cli(['run', '--name', 'lat', '--restart', 'no', '--', 'python3', '-u', '-c',
    `import time; time.sleep(1.5)\n${writer(1000, LAT_SECS, 'lat ')}`]);
  await page.goto(`${d.addr}/#/logs?task=lat`);
  await page.waitForSelector('.logbox');
  await recordLatency(page, 'lat ');
  await waitFor('the latency run', async () => Number(await page.locator('.statusbar').getAttribute('data-received')) >= 1000 * LAT_SECS, (LAT_SECS + 30) * 1000);
  const lat = await page.evaluate(() => window.__lat);
  const p50 = percentile(lat, 50);
  const p99 = percentile(lat, 99);

  // (2) The highest rate kept up with for a whole window.
  let best = 0;
  const tried = [];
  for (const rate of RATES) {
    const name = `rate${rate}`;
    await d.cli(['run', '--name', name, '--restart', 'no', '--', 'python3', '-c', `import time; time.sleep(1.5)\n${writer(rate, WINDOW, 'r ')}`]);
    await page.goto(`${d.addr}/#/logs?task=${name}`);
    await page.waitForSelector('.logbox');
    await page.selectOption('select[aria-label="history to load"]', '1000');
    // The newest writer line in the page: its write time and number.
    const newest = () =>
      page.evaluate(() => {
        let best = null;
        for (const r of document.querySelectorAll('.logbox .row')) {
          const m = /r (\d{13}) (\d+)/.exec(r.textContent);
          if (m && (!best || Number(m[2]) > best.n)) best = { ms: Number(m[1]), n: Number(m[2]) };
        }
        return best;
      });
    await waitFor(`the first lines at ${rate}/s`, newest, 20000);
    const total = rate * WINDOW;
    const start = Date.now();
    let maxLag = 0;
    let last = null;
    // A second past the window: the writer is done, and the page must show its last line.
    while (Date.now() - start < (WINDOW + 1) * 1000) {
      await new Promise((r) => setTimeout(r, 500));
      last = await newest();
      const lag = last.n >= total ? 0 : (Date.now() - last.ms) / 1000;
      maxLag = Math.max(maxLag, lag);
      if (process.env.CORRAL_BENCH_DEBUG) console.error({ rate, t: Date.now() - start, n: last.n, lag });
    }
    const behind = (total - last.n) / rate;
    const ok = last.n >= total && maxLag <= 2;
    tried.push({ rate, behind_s: Number(behind.toFixed(2)), max_lag_s: Number(maxLag.toFixed(2)), ok });
    await d.cli(['stop', name]).catch(() => {});
    if (!ok) break;
    best = rate;
  }
  const out = {
    dashboard_latency_ms: { rate: 1000, lines: lat.length, p50, p99 },
    dashboard_max_rate: { window_s: WINDOW, lines_per_s: best, tried },
    console_errors: problems.length,
  };
  console.log(JSON.stringify(out, null, 2));
  console.log(`dashboard: write-to-DOM at 1,000 lines/s: p50 ${p50} ms, p99 ${p99} ms; highest rate kept up with for ${WINDOW} s: ${best.toLocaleString('en')} lines/s`);
} finally {
  await ctx.close().catch(() => {});
  await d.stop();
}
