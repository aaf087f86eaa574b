// What the dashboard knows, kept current by one event stream (SSE, `/api/v1/events`):
// every event that names a task makes the store read that task again, so a card changes
// the moment the state does, and nothing is polled. Metrics events feed the charts.

import { get, ApiError, enc } from './api.js';
import { signal } from './signal.js';

export const MAX_EVENTS = 5000;
const MAX_POINTS = 2000;

export const health = signal(null);
export const tasks = signal(new Map()); // name -> TaskInfo
export const llama = signal(new Map()); // name -> LlamaStatus
export const backends = signal([]);
export const gpu = signal(null); // GET /gpu: this machine's GPUs and their processes' tasks
export const events = signal([]); // newest last, at most MAX_EVENTS
export const connected = signal(false);
/** name -> {tps: [[ts, prompt, eval]], requests: [ts], restarts: [ts]} */
export const series = signal(new Map());
/** The hub's answer (`/nodes`), or null on a daemon that is not a hub. */
export const nodes = signal(null);
export const error = signal(null);

const pendingTasks = new Set();
let pendingList = false;
let pendingNodes = false;
let flushTimer = null;

function schedule() {
  if (flushTimer === null) flushTimer = setTimeout(flush, 30);
}

async function flush() {
  flushTimer = null;
  const names = [...pendingTasks];
  pendingTasks.clear();
  const work = [];
  if (pendingList) {
    pendingList = false;
    work.push(loadTasks());
  } else {
    for (const n of names) work.push(loadTask(n));
  }
  if (pendingNodes) {
    pendingNodes = false;
    work.push(loadNodes());
  }
  await Promise.allSettled(work);
}

// The GPUs are read again whenever a task changes (an event arrived), and once more a
// little later, since a process takes its GPU memory a moment after it starts (the
// daemon's answer is cached for a second); never on a repeating timer.
const GPU_AGAIN_MS = 2500;
let gpuAgain = null;

function loadGpuNowAndAgain() {
  loadGpu();
  clearTimeout(gpuAgain);
  gpuAgain = setTimeout(loadGpu, GPU_AGAIN_MS);
}

async function loadGpu() {
  try {
    const g = await get('/gpu');
    gpu.set(g && g.available ? g : null);
  } catch {
    /* none */
  }
}

export async function loadTasks() {
  loadGpuNowAndAgain();
  const list = await get('/tasks');
  const m = new Map();
  for (const t of list) m.set(t.name, t);
  tasks.set(m);
  await Promise.allSettled(list.filter(isLlama).map((t) => loadLlama(t.name)));
  if (list.some(isLlama)) loadBackends();
}

async function loadTask(name) {
  loadGpuNowAndAgain();
  try {
    const t = await get(`/tasks/${enc(name)}`);
    tasks.get().set(name, t);
    tasks.touch();
    if (isLlama(t)) {
      await loadLlama(name);
      loadBackends();
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      tasks.get().delete(name);
      tasks.touch();
    }
  }
}

async function loadLlama(name) {
  try {
    llama.get().set(name, await get(`/llama/${enc(name)}/status`));
    llama.touch();
  } catch {
    /* not a llama server after all */
  }
}

async function loadBackends() {
  try {
    backends.set(await get('/backends'));
  } catch {
    /* none */
  }
}

export async function loadNodes() {
  if (!health.get() || !health.get().hub) return;
  try {
    nodes.set(await get('/nodes'));
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) nodes.set(null);
  }
}

export const isLlama = (t) => t.kind === 'llama';

function seriesOf(task) {
  const m = series.get();
  let s = m.get(task);
  if (!s) {
    s = { tps: [], requests: [], restarts: [] };
    m.set(task, s);
  }
  return s;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > MAX_POINTS) arr.splice(0, arr.length - MAX_POINTS);
}

/** Takes one event into the store (live or from history). */
function take(ev) {
  const local = !!health.get() && ev.node === health.get().node;
  ev.local = local;
  if (ev.task) {
    const d = ev.details || {};
    if (ev.event_type === 'metrics') {
      const p = num(d.prompt_tokens_per_second);
      const g = num(d.eval_tokens_per_second ?? (d.kind === 'progress' ? d.tokens_per_second : null));
      const s = seriesOf(keyOf(ev));
      if (p !== null || g !== null) push(s.tps, [ev.timestamp, p, g]);
      if (d.kind === 'request' && d.complete !== false) push(s.requests, ev.timestamp);
      series.touch();
    } else if (ev.event_type === 'restart') {
      push(seriesOf(keyOf(ev)).restarts, ev.timestamp);
      series.touch();
    }
    if (local) {
      if (tasks.get().has(ev.task)) pendingTasks.add(ev.task);
      else pendingList = true;
      schedule();
    }
  }
  if (!local && nodes.get()) {
    pendingNodes = true;
    schedule();
  }
}

/** Which series an event belongs to: the task, prefixed by its node when not ours. */
export function keyOf(ev) {
  const h = health.get();
  return h && ev.node !== h.node ? `${ev.node}/${ev.task}` : ev.task;
}

function num(v) {
  return typeof v === 'number' && isFinite(v) ? v : null;
}

let source = null;
let pendingEvents = [];
let eventFrame = null;

function flushEvents() {
  eventFrame = null;
  const batch = pendingEvents;
  pendingEvents = [];
  const list = events.get().concat(batch);
  events.set(list.length > MAX_EVENTS ? list.slice(list.length - MAX_EVENTS) : list);
}

/** Starts the store: what is there now, then every event as it happens. */
export async function start() {
  try {
    health.set(await get('/health'));
    await Promise.all([loadTasks(), loadNodes()]);
    error.set(null);
  } catch (e) {
    error.set(e.message);
    return;
  }
  // The native EventSource reconnects by itself and resumes with `Last-Event-ID`.
  source = new EventSource('/api/v1/events');
  source.onopen = () => {
    connected.set(true);
    // What changed while we were away (e.g. the daemon restarted).
    pendingList = true;
    if (nodes.get()) pendingNodes = true;
    schedule();
  };
  source.onerror = () => {
    connected.set(false);
    if (source.readyState === EventSource.CLOSED) {
      // Refused (e.g. the session is gone): say so, and try again later.
      get('/health').catch(() => {});
      setTimeout(() => {
        source.close();
        start();
      }, 3000);
    }
  };
  source.onmessage = (m) => {
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    ev.id = Number(m.lastEventId) || 0;
    take(ev);
    pendingEvents.push(ev);
    if (eventFrame === null) eventFrame = requestAnimationFrame(flushEvents);
  };
}
