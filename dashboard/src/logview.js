// The log viewer's engine, outside any framework: the rows of one or more runs (history,
// then live, over SSE), the filtered view of them, and a virtualized list that puts only
// the visible rows in the page. Incoming records are queued and taken in once per frame,
// so 10,000 lines a second cost one layout per frame, not one per line.
//
// A list library measures every row when the count changes; with rows of one height the
// visible window is a division, which stays O(visible rows) at 100,000 rows and more.

import { plain, asJson, levelOf, renderLine, clock } from './logtext.js';
import { get, taskBase, enc, loggedOut } from './api.js';
import { events, tasks } from './store.js';

export const ROW = 18; // px, one line
const OVERSCAN = 10;
/** Rows kept in memory per view; older ones are let go (the download has them all). */
export const MAX_ROWS = 250000;

/** One source of rows: a task's runs (following the next one), or one fixed run. */
class Follower {
  constructor(model, { node, task, run, tail }) {
    Object.assign(this, { model, node, task, fixedRun: run, tail });
    this.run = null;
    this.abort = null;
    this.closed = false;
    this.lastSeq = 0;
    this.unsub = null;
  }

  async start() {
    let run = this.fixedRun;
    if (!run) run = await this.currentRun();
    if (this.closed) return;
    if (!run) {
      this.model.note(this.task, `${this.task}: no run yet; waiting for it to start`);
      this.waitForNextRun(null);
      return;
    }
    this.open(run, this.tail);
  }

  async currentRun() {
    try {
      if (this.node) {
        const list = await get(`/nodes/${enc(this.node)}/tasks`);
        return (list.find((t) => t.name === this.task) || {}).run_id || null;
      }
      // A task this daemon does not have (yet): wait for an event rather than ask.
      if (!tasks.get().has(this.task)) return null;
      return (await get(taskBase(null, this.task))).run_id || null;
    } catch (e) {
      this.model.note(this.task, `cannot read the task: ${e.message}`);
      return null;
    }
  }

  open(run, tail) {
    this.run = run;
    this.lastSeq = 0;
    this.model.runs.set(this.key(), run);
    const q = tail === null ? 'since=0' : `tail=${tail}`;
    this.stream(run, `/api/v1${taskBase(this.node, this.task)}/logs?run=${enc(run)}&${q}`);
  }

  /**
   * Reads the run's SSE stream with fetch rather than EventSource: a chunk carries many
   * records and is handled in one go (10,000 lines a second are 10,000 DOM events with
   * EventSource). When the connection drops (the daemon restarted) it reconnects with
   * `Last-Event-ID`: the last seq held, so the stream goes on after it, nothing twice.
   */
  async stream(run, url) {
    let backoff = 250;
    const key = this.key();
    while (!this.closed && this.run === run) {
      const headers = { Accept: 'text/event-stream' };
      if (this.lastSeq > 0) headers['Last-Event-ID'] = String(this.lastSeq);
      this.abort = new AbortController();
      let ended = false;
      try {
        const resp = await fetch(url, { headers, credentials: 'same-origin', signal: this.abort.signal });
        if (!resp.ok) {
          if (resp.status === 401) loggedOut.set(true);
          const body = await resp.json().catch(() => ({}));
          this.model.note(this.task, `the log answered ${resp.status}: ${(body.error && body.error.message) || resp.statusText}`);
          this.model.setState(key, 'closed');
          if (resp.status < 500) return;
          throw new Error('retry');
        }
        this.model.setState(key, 'live');
        backoff = 250;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          const cut = buf.lastIndexOf('\n\n');
          if (cut < 0) continue;
          const text = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const frame of text.split('\n\n')) {
            const d = frame.indexOf('data: ');
            if (d < 0) continue; // a heartbeat comment
            const kind = frame.startsWith('event: gap') ? 1 : frame.startsWith('event: end') ? 2 : 0;
            this.model.queue(this, frame.slice(d + 6), kind);
            if (kind === 2) ended = true;
          }
        }
      } catch {
        /* the connection dropped or could not be made: try again below */
      }
      if (this.closed) return;
      if (ended) {
        this.model.setState(key, 'ended');
        if (!this.fixedRun) this.waitForNextRun(run);
        return;
      }
      this.model.setState(key, 'reconnecting');
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 3000);
    }
  }

  /**
   * After a run ends (or before the first): this node's task list (which the store reads
   * again whenever an event names the task) says when a new run starts; for another node,
   * an event of that node's task makes us ask.
   */
  waitForNextRun(prev) {
    if (this.unsub) this.unsub();
    const found = (run) => {
      if (this.closed || !run || run === prev) return false;
      if (this.unsub) this.unsub();
      this.unsub = null;
      this.open(run, prev ? null : this.tail);
      return true;
    };
    if (!this.node) {
      const look = (m) => {
        const t = m.get(this.task);
        return found(t && t.run_id);
      };
      this.unsub = tasks.subscribe(look);
      if (!look(tasks.get())) this.currentRun().then((r) => this.unsub && found(r));
      return;
    }
    let seen = events.get().length;
    this.unsub = events.subscribe((list) => {
      const fresh = list.slice(Math.min(seen, list.length));
      seen = list.length;
      if (fresh.some((e) => e.task === this.task && e.node === this.node)) this.currentRun().then(found);
    });
    this.currentRun().then(found);
  }

  key() {
    return (this.node ? this.node + '/' : '') + this.task;
  }

  close() {
    this.closed = true;
    if (this.abort) this.abort.abort();
    if (this.unsub) this.unsub();
  }
}

/**
 * The rows of a view and what is shown of them. `rows` are in time order; `view` holds
 * the indices of the rows that pass the filters.
 */
export class LogModel {
  constructor(onChange) {
    this.rows = [];
    this.view = [];
    this.followers = [];
    this.pending = [];
    this.held = [];
    this.paused = false;
    this.runs = new Map();
    this.states = new Map();
    this.filter = { streams: new Set(['stdout', 'stderr', 'system', 'file']), levels: null, re: null, only: false };
    this.onChange = onChange;
    this.frame = null;
    this.dropped = 0;
    this.received = 0;
  }

  follow(sources) {
    for (const s of sources) {
      const f = new Follower(this, s);
      this.followers.push(f);
      f.start();
    }
  }

  close() {
    for (const f of this.followers) f.close();
    if (this.frame !== null) cancelAnimationFrame(this.frame);
  }

  setState(key, state) {
    this.states.set(key, state);
    this.changed(false);
  }

  note(task, text) {
    this.pending.push([null, JSON.stringify({ note: text, task }), 3]);
    this.schedule();
  }

  queue(f, data, kind) {
    this.pending.push([f, data, kind]);
    this.schedule();
  }

  schedule() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.take());
  }

  /** Takes the queued records in: parse, add to the rows, extend the view. */
  take() {
    this.frame = null;
    const batch = this.pending;
    this.pending = [];
    const multi = this.followers.length > 1;
    let firstChanged = this.rows.length;
    const fresh = [];
    for (const [f, data, kind] of batch) {
      let v;
      try {
        v = JSON.parse(data);
      } catch {
        continue;
      }
      const task = f ? f.task : v.task;
      const node = f ? f.node : null;
      let row;
      const endTs = lastTs(fresh.length ? fresh : this.rows);
      if (kind === 0) {
        if (f && v.seq <= f.lastSeq && v.run_id === f.run) continue; // never twice
        if (f) f.lastSeq = v.seq;
        const text = plain(v.line);
        const json = asJson(text);
        row = {
          k: 0, seq: v.seq, ts: v.ts, stream: v.stream, line: v.line, text, run: v.run_id,
          task, node, level: v.stream === 'system' ? 'info' : levelOf(text, json), json: !!json,
        };
        this.received++;
      } else if (kind === 1) {
        const g = v.gap;
        row = { k: 1, ts: endTs, stream: 'system', text: `records ${g.from}–${g.to} no longer exist: ${g.reason}`, task, node, level: 'warn', seq: g.to };
        if (f) f.lastSeq = g.to;
      } else if (kind === 2) {
        const e = v.end;
        const how = e.signal != null ? `signal ${e.signal}` : e.exit_code != null ? `exit code ${e.exit_code}` : '';
        row = { k: 2, ts: endTs, stream: 'system', text: `run ended: ${e.status}${how ? ', ' + how : ''}`, task, node, level: e.status === 'succeeded' ? 'info' : 'error', seq: 0 };
      } else {
        row = { k: 3, ts: endTs, stream: 'system', text: v.note, task: v.task, node, level: 'info', seq: 0 };
      }
      row.line = row.line ?? row.text;
      fresh.push(row);
    }
    if (this.paused) {
      this.held.push(...fresh);
      this.changed(false);
      return;
    }
    for (const row of fresh) {
      const n = this.rows.length;
      if (multi && n > 0 && row.ts < this.rows[n - 1].ts) {
        // Interleaved by time: a late row of one source goes where it belongs.
        const at = upperBound(this.rows, row.ts);
        this.rows.splice(at, 0, row);
        firstChanged = Math.min(firstChanged, at);
      } else {
        this.rows.push(row);
      }
    }
    if (this.rows.length > MAX_ROWS) {
      const cut = this.rows.length - Math.floor(MAX_ROWS * 0.9);
      this.rows.splice(0, cut);
      this.dropped += cut;
      firstChanged = 0;
      this.rebuild();
    } else if (firstChanged < this.rows.length) {
      this.extend(firstChanged);
    }
    this.changed(true);
  }

  setPaused(p) {
    this.paused = p;
    if (!p && this.held.length) {
      for (const r of this.held) this.rows.push(r);
      this.held = [];
      if (this.followers.length > 1) this.rows.sort((a, b) => a.ts - b.ts);
      this.rebuild();
      this.changed(true);
    } else {
      this.changed(false);
    }
  }

  passes(r) {
    const f = this.filter;
    if (!f.streams.has(r.stream) && r.k === 0) return false;
    if (f.levels && !f.levels.has(r.level) && r.k === 0) return false;
    if (f.only && f.re) {
      f.re.lastIndex = 0;
      if (!f.re.test(r.text)) return false;
    }
    return true;
  }

  setFilter(patch) {
    Object.assign(this.filter, patch);
    this.rebuild();
    this.changed(true);
  }

  rebuild() {
    const v = [];
    for (let i = 0; i < this.rows.length; i++) if (this.passes(this.rows[i])) v.push(i);
    this.view = v;
  }

  /** The view after rows from index `from` on changed. */
  extend(from) {
    let cut = this.view.length;
    while (cut > 0 && this.view[cut - 1] >= from) cut--;
    this.view.length = cut;
    for (let i = from; i < this.rows.length; i++) if (this.passes(this.rows[i])) this.view.push(i);
  }

  changed(rows) {
    this.onChange(rows);
  }

  /** Index in the view of the next (dir 1) or previous (-1) row matching the search. */
  findMatch(fromView, dir) {
    const re = this.filter.re;
    if (!re) return -1;
    for (let i = fromView + dir; i >= 0 && i < this.view.length; i += dir) {
      re.lastIndex = 0;
      if (re.test(this.rows[this.view[i]].text)) return i;
    }
    return -1;
  }

  /** Index in the view of the first row at or after `ts`. */
  atTime(ts) {
    let lo = 0;
    let hi = this.view.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.rows[this.view[mid]].ts < ts) lo = mid + 1;
      else hi = mid;
    }
    return Math.min(lo, this.view.length - 1);
  }
}

function lastTs(rows) {
  return rows.length ? rows[rows.length - 1].ts : Date.now() / 1000;
}

function upperBound(rows, ts) {
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (rows[mid].ts <= ts) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The visible window of a model: a scroller, a spacer of the full height, and rows. */
export class Viewport {
  constructor(scroller, model, { showTask, onPick }) {
    this.el = scroller;
    this.model = model;
    this.showTask = showTask;
    this.onPick = onPick;
    this.spacer = document.createElement('div');
    this.spacer.className = 'spacer';
    scroller.appendChild(this.spacer);
    this.mounted = new Map(); // row -> element
    this.follow = true;
    this.current = -1; // view index of the selected match
    this.programmatic = -1;
    scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    scroller.addEventListener('click', (e) => {
      const rowEl = e.target.closest('.row');
      if (rowEl && rowEl.__row) this.onPick(rowEl.__row);
    });
    // Keyboard: Enter opens the selected match (n/N move it), as a click does.
    scroller.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter' || this.current < 0) return;
      const row = this.model.rows[this.model.view[this.current]];
      if (row) this.onPick(row);
    });
    this.resize = new ResizeObserver(() => this.render());
    this.resize.observe(scroller);
  }

  destroy() {
    this.resize.disconnect();
  }

  onScroll() {
    const el = this.el;
    if (Math.abs(el.scrollTop - this.programmatic) > 1) {
      const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - ROW * 2;
      if (this.follow !== atBottom) {
        this.follow = atBottom;
        this.onFollow && this.onFollow(atBottom);
      }
    }
    this.render();
  }

  setFollow(on) {
    this.follow = on;
    if (on) this.toBottom();
    this.onFollow && this.onFollow(on);
  }

  toBottom() {
    const top = Math.max(0, this.model.view.length * ROW - this.el.clientHeight);
    this.programmatic = top;
    this.el.scrollTop = top;
  }

  scrollToView(i) {
    const top = Math.max(0, i * ROW - this.el.clientHeight / 2);
    if (this.follow) this.setFollow(false);
    this.programmatic = top;
    this.el.scrollTop = top;
    this.render();
  }

  /** Drops every built row (the search or the display changed). */
  invalidate() {
    for (const el of this.mounted.values()) el.remove();
    this.mounted.clear();
    this.render();
  }

  update() {
    this.spacer.style.height = this.model.view.length * ROW + 'px';
    if (this.follow) this.toBottom();
    this.render();
  }

  render() {
    const { rows, view } = this.model;
    const el = this.el;
    const first = Math.max(0, Math.floor(el.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((el.scrollTop + el.clientHeight) / ROW) + OVERSCAN);
    const want = new Map();
    for (let i = first; i < last; i++) want.set(rows[view[i]], i);
    const free = [];
    for (const [row, rowEl] of this.mounted) {
      if (!want.has(row)) {
        free.push(rowEl);
        this.mounted.delete(row);
      }
    }
    const re = this.model.filter.re;
    const currentRow = this.current >= 0 ? rows[view[this.current]] : null;
    for (const [row, i] of want) {
      let rowEl = this.mounted.get(row);
      if (!rowEl) {
        // Rows that scrolled out are filled again rather than made anew.
        const reuse = free.pop();
        rowEl = this.fill(reuse || this.make(), row, re);
        this.mounted.set(row, rowEl);
        if (!reuse) el.appendChild(rowEl);
      }
      const y = `translateY(${i * ROW}px)`;
      if (rowEl.style.transform !== y) rowEl.style.transform = y;
      rowEl.classList.toggle('current', row === currentRow);
    }
    for (const f of free) f.remove();
  }

  make() {
    const el = document.createElement('div');
    for (const cls of this.showTask ? ['ts', 'task', 'stream', 'text'] : ['ts', 'stream', 'text']) {
      const s = document.createElement('span');
      s.className = cls;
      el.appendChild(s);
    }
    return el;
  }

  fill(el, row, re) {
    el.className = `row s-${row.stream} l-${row.level}${row.k ? ' k' + row.k : ''}`;
    el.__row = row;
    if (row.seq) el.dataset.seq = row.seq;
    else delete el.dataset.seq;
    const [ts, ...rest] = el.children;
    ts.textContent = clock(row.ts);
    const [stream, text] = this.showTask ? rest.slice(1) : rest;
    if (this.showTask) rest[0].textContent = (row.node ? row.node + '/' : '') + row.task;
    stream.textContent = row.k === 1 ? 'gap' : row.stream === 'system' ? 'sys' : row.stream === 'stderr' ? 'err' : row.stream === 'stdout' ? 'out' : row.stream;
    if (!re && !row.json && !row.line.includes('\x1b')) {
      text.textContent = row.line;
    } else {
      text.textContent = '';
      renderLine(text, row.line, row.json ? asJson(row.text) : null, re);
    }
    return el;
  }
}
