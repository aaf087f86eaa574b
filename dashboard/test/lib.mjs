// Helpers of the dashboard's browser tests and benchmark: a real corral daemon (started
// here, or given), its CLI, and headless Chromium driven through playwright-core.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const CHROMIUM = process.env.CORRAL_CHROMIUM || '/usr/bin/chromium';

export function need(cond, msg) {
  if (!cond) throw new Error(msg);
}

export async function loadPlaywright() {
  try {
    return (await import('playwright-core')).chromium;
  } catch (e) {
    throw new Error(`playwright-core is missing (${e.message}): run \`npm ci --prefix dashboard\``);
  }
}

/** Launches Debian's chromium, headless, with a fresh profile. */
export async function browser() {
  const chromium = await loadPlaywright();
  const profile = mkdtempSync(join(tmpdir(), 'corral-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 720 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--enable-precise-memory-info', '--disable-renderer-backgrounding',
      '--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
    ],
  });
}

/** A `corral serve` started here (its own home), which can be stopped and started again. */
export class Daemon {
  constructor(bin, home, extra = [], env = {}) {
    Object.assign(this, { bin, home, extra, env, child: null, port: 0, stderr: '' });
  }

  // `env`: more environment for the daemon, over the cleaned one.
  static async start(bin, extra = [], env = {}) {
    const home = mkdtempSync(join(tmpdir(), 'corral-dash-home-'));
    const d = new Daemon(bin, home, extra, env);
    await d.launch('127.0.0.1:0');
    return d;
  }

  async launch(listen) {
    const child = spawn(this.bin, ['serve', '--listen', listen, '--home', this.home, ...this.extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...cleanEnv(), ...this.env },
    });
    this.child = child;
    child.stderr.on('data', (b) => (this.stderr += b.toString()));
    const first = await new Promise((resolve, reject) => {
      const rl = createInterface({ input: child.stdout });
      rl.once('line', resolve);
      child.once('exit', (c) => reject(new Error(`corral serve exited (${c}): ${this.stderr}`)));
    });
    const m = /listening on http:\/\/(.+):(\d+)/.exec(first);
    need(m, `unexpected first line of corral serve: ${first}`);
    this.port = Number(m[2]);
    this.addr = `http://127.0.0.1:${this.port}`;
    this.token = readFileSync(join(this.home, 'token'), 'utf8').trim();
  }

  /** Stops the daemon and leaves its tasks running under their holders. */
  async stopLeavingRunning() {
    const exited = new Promise((r) => this.child.once('exit', r));
    await this.api('POST', '/shutdown', { leave_running: true });
    await exited;
  }

  /** Starts it again on the same port and home. */
  async restart() {
    await this.launch(`127.0.0.1:${this.port}`);
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }

  async api(method, path, body) {
    const resp = await fetch(this.addr + '/api/v1' + path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  cli(args) {
    return cli(this.bin, this.addr, this.token, args);
  }

  async loginUrl() {
    return JSON.parse(await this.cli(['login', '--json'])).url;
  }
}

function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CORRAL_') && !k.startsWith('SOLLOL_')) env[k] = v;
  }
  return env;
}

export function cli(bin, addr, token, args) {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { env: { ...cleanEnv(), CORRAL_ADDR: addr, CORRAL_TOKEN: token } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`corral ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Fails with `what` unless `f` returns a truthy value within `ms`. */
export async function waitFor(what, f, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function percentile(xs, p) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** A page that fails the test on any console error, page error or dialog. */
export async function watchedPage(ctx, problems) {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`(${r.status()} from ${r.request().method()} ${r.url()})`);
  });
  page.on('dialog', (d) => {
    problems.push(`a dialog opened: ${d.message()}`);
    d.dismiss();
  });
  return page;
}

export function shotsDir() {
  const dir = process.env.CORRAL_SCREENSHOTS || join(tmpdir(), 'corral-dashboard-screenshots');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Installs, in the page, a recorder of the delay between a line's write (the number of
 * milliseconds since the epoch it starts with, after `prefix`) and its row entering the DOM.
 */
export async function recordLatency(page, prefix) {
  await page.evaluate((prefix) => {
    window.__lat = [];
    const seen = new Set();
    const re = new RegExp(prefix + '(\\d{13}) (\\d+)');
    // Rows are added, or filled again as they scroll out and back (a pool): every change.
    const obs = new MutationObserver((muts) => {
      const now = Date.now();
      for (const m of muts) {
        const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
        const row = el && el.closest('.row');
        for (const n of [row, ...m.addedNodes]) {
          if (!n || !n.classList || !n.classList.contains('row')) continue;
          const t = re.exec(n.textContent);
          if (t && !seen.has(t[2])) {
            seen.add(t[2]);
            window.__lat.push(now - Number(t[1]));
          }
        }
      }
    });
    obs.observe(document.querySelector('.logbox'), { childList: true, subtree: true });
  }, prefix);
}
