// Events: the live timeline (newest first) with component, level, task and node filters;
// errors stand out; a click shows the event's details and the log lines around it.

import { useState } from 'preact/hooks';
import { useSignal } from '../signal.js';
import { events } from '../store.js';
import { enc, taskBase } from '../api.js';
import { dateTime, clock } from '../logtext.js';

const SHOWN = 500;
const LEVELS = ['debug', 'info', 'warning', 'error', 'critical'];

async function around(ev) {
  if (!ev.task || !ev.run_id) return [];
  const node = ev.local ? null : ev.node;
  const resp = await fetch(`/api/v1${taskBase(node, ev.task)}/logs?run=${enc(ev.run_id)}&tail=5000&follow=false`, {
    headers: { Accept: 'application/x-ndjson' },
    credentials: 'same-origin',
  });
  if (!resp.ok) throw new Error(`the log answered ${resp.status}`);
  const recs = (await resp.text())
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((r) => r.seq != null);
  let at = recs.findIndex((r) => r.ts >= ev.timestamp);
  if (at < 0) at = recs.length - 1;
  return recs.slice(Math.max(0, at - 6), at + 6);
}

function Detail({ ev, onClose }) {
  const [lines, setLines] = useState(null);
  const [err, setErr] = useState('');
  const [for_, setFor] = useState(null);
  if (for_ !== ev) {
    setFor(ev);
    setLines(null);
    setErr('');
    around(ev).then(setLines, (e) => setErr(e.message));
  }
  return (
    <aside class="detail" aria-label="event details">
      <header>
        <b>{ev.event_type}</b> <span class="muted">{dateTime(ev.timestamp)}</span>
        <button type="button" onClick={onClose} aria-label="close details">×</button>
      </header>
      <pre>{JSON.stringify({ ...ev, local: undefined }, null, 2)}</pre>
      <h4>Log lines around it</h4>
      {err ? <p class="error-text">{err}</p> : null}
      {lines ? (
        <pre class="around">
          {lines.map((r) => (
            <div key={r.seq} class={r.ts >= ev.timestamp - 0.001 && r.ts <= ev.timestamp + 0.5 ? 'hit' : ''}>
              {clock(r.ts)} {r.stream.padEnd(6)} {r.line}
            </div>
          ))}
        </pre>
      ) : err ? null : (
        <p class="muted">loading…</p>
      )}
      {ev.task && ev.run_id && ev.local ? (
        <a class="button" href={`#/logs?task=${enc(ev.task)}&run=${enc(ev.run_id)}`}>Open the run's log</a>
      ) : null}
    </aside>
  );
}

function uniq(list, f) {
  return [...new Set(list.map(f).filter(Boolean))].sort();
}

export function Events({ fleet = false }) {
  const list = useSignal(events);
  const [component, setComponent] = useState('');
  const [level, setLevel] = useState('');
  const [task, setTask] = useState('');
  const [node, setNode] = useState('');
  const [picked, setPicked] = useState(null);
  const minLevel = level ? LEVELS.indexOf(level) : 0;
  const shown = [];
  for (let i = list.length - 1; i >= 0 && shown.length < SHOWN; i--) {
    const e = list[i];
    if (component && e.component !== component) continue;
    if (LEVELS.indexOf(e.level) < minLevel) continue;
    if (task && e.task !== task) continue;
    if (node && e.node !== node) continue;
    shown.push(e);
  }
  const sel = (label, value, set, options) => (
    <label>
      {label}{' '}
      <select value={value} onChange={(e) => set(e.target.value)} aria-label={label}>
        <option value="">all</option>
        {options.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    </label>
  );
  return (
    <section class="events">
      <div class="toolbar" role="toolbar" aria-label="event filters">
        {sel('component', component, setComponent, ['coordinator', 'rpc_backend', 'model', 'system', 'task'])}
        {sel('level ≥', level, setLevel, LEVELS)}
        {sel('task', task, setTask, uniq(list, (e) => e.task))}
        {sel('node', node, setNode, uniq(list, (e) => e.node))}
        <span class="muted small">{shown.length} shown of {list.length}</span>
      </div>
      <ol class="timeline" aria-label={fleet ? 'fleet events' : 'events'}>
        {shown.map((e) => (
          <li key={`${e.id}-${e.timestamp}-${e.node}`} class={`ev lv-${e.level}`}>
            <button type="button" class="ev-line" onClick={() => setPicked(e)}>
              <span class="ts">{clock(e.timestamp)}</span>
              <span class="lvl">{e.level}</span>
              <span class="node">{e.node}</span>
              <span class="comp">{e.component}</span>
              <span class="task">{e.task || ''}</span>
              <span class="etype">{e.event_type}</span>
              <span class="msg">{e.message}</span>
            </button>
          </li>
        ))}
      </ol>
      {picked ? <Detail ev={picked} onClose={() => setPicked(null)} /> : null}
    </section>
  );
}
