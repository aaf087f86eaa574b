// Logs: one task's run (history, then live), a past run, or several tasks interleaved by
// time or side by side; filters, search, pause and follow, jump to a time, download.

import { useEffect, useRef, useState } from 'preact/hooks';
import { useSignal } from '../signal.js';
import { tasks } from '../store.js';
import { get, enc } from '../api.js';
import { LogModel, Viewport } from '../logview.js';
import { searchRe, LEVEL_NAMES, asJson, dateTime } from '../logtext.js';

const STREAMS = ['stdout', 'stderr', 'system'];
const TAILS = [1000, 10000, 100000, 250000];

function Pane({ sources, filter, showTask, paneRef, onPick, onStats, tail }) {
  const box = useRef(null);
  const key = JSON.stringify(sources) + tail;
  useEffect(() => {
    let vp = null;
    const model = new LogModel((rowsChanged) => {
      if (!vp) return;
      if (rowsChanged) vp.update();
      onStats(model, vp);
    });
    vp = new Viewport(box.current, model, { showTask, onPick });
    vp.onFollow = () => onStats(model, vp);
    Object.assign(model.filter, filter);
    model.follow(sources.map((s) => ({ ...s, tail })));
    paneRef.current = { model, vp };
    onStats(model, vp);
    return () => {
      model.close();
      vp.destroy();
      box.current && (box.current.textContent = '');
      paneRef.current = null;
    };
  }, [key]);
  useEffect(() => {
    const p = paneRef.current;
    if (!p) return;
    p.model.setFilter(filter);
    p.vp.current = -1;
    p.vp.invalidate();
    p.vp.update();
  }, [filter]);
  return <div class="logbox" ref={box} tabIndex={0} role="log" aria-label={`log of ${sources.map((s) => s.task).join(', ')}`} />;
}

function parseHash() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  return { tasks: q.getAll('task'), node: q.get('node'), run: q.get('run'), mode: q.get('mode') || 'merged' };
}

function setHash(p) {
  const q = new URLSearchParams();
  for (const t of p.tasks) q.append('task', t);
  if (p.node) q.set('node', p.node);
  if (p.run) q.set('run', p.run);
  if (p.mode !== 'merged') q.set('mode', p.mode);
  location.hash = '#/logs?' + q.toString();
}

function Detail({ row, onClose }) {
  if (!row) return null;
  const json = row.json ? asJson(row.text) : null;
  return (
    <aside class="detail" aria-label="line details">
      <header>
        <b>{row.task}</b> <span class="muted">seq {row.seq} · {row.stream} · {dateTime(row.ts)}</span>
        <button type="button" onClick={onClose} aria-label="close details">×</button>
      </header>
      <pre>{json ? JSON.stringify(json, null, 2) : row.text}</pre>
    </aside>
  );
}

export function Logs() {
  const all = useSignal(tasks);
  const [p, setP] = useState(parseHash);
  useEffect(() => {
    const on = () => setP(parseHash());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  const names = [...all.keys()].sort();
  const chosen = p.tasks.length ? p.tasks : names.slice(0, 1);
  const [q, setQ] = useState('');
  const [regex, setRegex] = useState(false);
  const [caseSens, setCase] = useState(false);
  const [only, setOnly] = useState(false);
  const [streams, setStreams] = useState(new Set(['stdout', 'stderr', 'system', 'file']));
  const [levels, setLevels] = useState(new Set(LEVEL_NAMES));
  const [paused, setPaused] = useState(false);
  const [stats, setStats] = useState({ lines: 0, shown: 0, held: 0, follow: true, match: '' });
  const [picked, setPicked] = useState(null);
  const [runs, setRuns] = useState([]);
  const [when, setWhen] = useState('');
  const [jumpMsg, setJumpMsg] = useState('');
  const [tail, setTail] = useState(10000);
  const panes = [useRef(null), useRef(null), useRef(null), useRef(null)];
  const search = useRef(null);

  let re = null;
  let reError = '';
  try {
    re = searchRe(q, regex, caseSens);
  } catch (e) {
    reError = e.message;
  }
  const [filter, setFilter] = useState({ streams, levels, re: null, only });
  useEffect(() => {
    setFilter({ streams, levels: levels.size === LEVEL_NAMES.length ? null : levels, re, only: only && !!re });
  }, [q, regex, caseSens, only, streams, levels]);

  const single = chosen.length === 1;
  const known = single && all.has(chosen[0]);
  useEffect(() => {
    setRuns([]);
    if (known && !p.node) get(`/runs?task=${enc(chosen[0])}&limit=100`).then(setRuns, () => {});
  }, [chosen.join('\n'), p.node, known]);

  // The counters change every frame at high rates: show them at most four times a second.
  const statsTimer = useRef(null);
  const latest = useRef(null);
  const onStats = (model, vp) => {
    latest.current = [model, vp];
    if (statsTimer.current) return;
    statsTimer.current = setTimeout(() => {
      statsTimer.current = null;
      const [m, v] = latest.current;
      if (panes[0].current && panes[0].current.model === m) showStats(m, v);
    }, 250);
  };
  const showStats = (model, vp) =>
    setStats({
      lines: model.rows.length,
      shown: model.view.length,
      held: model.held.length,
      follow: vp.follow,
      dropped: model.dropped,
      states: [...model.states.values()].join(', '),
      run: [...model.runs.values()].join(', '),
      received: model.received,
      lastSeq: model.followers.length === 1 ? model.followers[0].lastSeq : 0,
    });

  const sources = chosen.map((t) => ({ task: t, node: p.node || null, run: single ? p.run : null }));
  const groups = p.mode === 'split' && !single ? sources.map((s) => [s]) : [sources];
  // A new set of panes starts from zero (a late update of the old one is dropped above).
  useEffect(() => {
    setStats({ lines: 0, shown: 0, held: 0, follow: true, match: '', received: 0, lastSeq: 0 });
  }, [JSON.stringify(groups), tail]);

  const first = () => panes[0].current;
  const go = (dir) => {
    const f = first();
    if (!f) return;
    const from = f.vp.current >= 0 ? f.vp.current : dir > 0 ? -1 : f.model.view.length;
    const i = f.model.findMatch(from, dir);
    if (i < 0) {
      setStats((s) => ({ ...s, match: 'no more matches' }));
      return;
    }
    f.vp.current = i;
    f.vp.scrollToView(i);
    setStats((s) => ({ ...s, match: `match at line ${i + 1}`, follow: false }));
  };
  const follow = (on) => {
    for (const r of panes) if (r.current) r.current.vp.setFollow(on);
    setStats((s) => ({ ...s, follow: on }));
  };
  const pause = (on) => {
    setPaused(on);
    for (const r of panes) if (r.current) r.current.model.setPaused(on);
  };
  const jump = () => {
    const f = first();
    if (!f || !when) return;
    const ts = new Date(when).getTime() / 1000;
    if (!isFinite(ts) || !f.model.view.length) return;
    const i = f.model.atTime(ts);
    f.vp.scrollToView(i);
    setJumpMsg(`line ${i + 1}`);
  };
  useEffect(() => {
    const key = (e) => {
      if (e.target.closest && e.target.closest('input, select, textarea')) {
        if (e.key === 'Enter' && e.target === search.current) {
          e.preventDefault();
          go(e.shiftKey ? -1 : 1);
        }
        return;
      }
      if (e.key === '/') {
        e.preventDefault();
        search.current.focus();
      } else if (e.key === 'n') go(1);
      else if (e.key === 'N') go(-1);
      else if (e.key === 'End') follow(true);
      else if (e.key === ' ' && e.target.classList.contains('logbox')) {
        e.preventDefault();
        pause(!paused);
      }
    };
    addEventListener('keydown', key);
    return () => removeEventListener('keydown', key);
  });

  const toggle = (set, setter, v) => {
    const n = new Set(set);
    n.has(v) ? n.delete(v) : n.add(v);
    setter(n);
  };
  const runIds = stats.run ? stats.run.split(', ').filter(Boolean) : [];

  return (
    <section class="logs">
      <div class="toolbar" role="toolbar" aria-label="log tools">
        <label class="pick">
          <span class="sr">tasks</span>
          <select
            multiple={chosen.length > 1}
            aria-label="tasks"
            value={chosen.length > 1 ? chosen : chosen[0]}
            onChange={(e) => setHash({ ...p, tasks: [...e.target.selectedOptions].map((o) => o.value), run: null })}
          >
            {(p.node ? chosen : names).map((n) => (
              <option key={n} value={n}>
                {p.node ? p.node + '/' : ''}
                {n}
              </option>
            ))}
          </select>
        </label>
        {!p.node && names.length > 1 ? (
          <details class="merge">
            <summary>Merge…</summary>
            {names.map((n) => (
              <label key={n}>
                <input
                  type="checkbox"
                  checked={chosen.includes(n)}
                  onChange={() => {
                    const next = chosen.includes(n) ? chosen.filter((x) => x !== n) : [...chosen, n];
                    if (next.length) setHash({ ...p, tasks: next, run: null });
                  }}
                />
                {n}
              </label>
            ))}
            <label>
              <input type="checkbox" checked={p.mode === 'split'} onChange={(e) => setHash({ ...p, tasks: chosen, mode: e.target.checked ? 'split' : 'merged' })} />
              side by side
            </label>
          </details>
        ) : null}
        {single && runs.length ? (
          <select aria-label="run" value={p.run || ''} onChange={(e) => setHash({ ...p, tasks: chosen, run: e.target.value || null })}>
            <option value="">current run (follow)</option>
            {runs.map((r) => (
              <option key={r.run_id} value={r.run_id}>
                {dateTime(r.started_at)} · #{r.attempt} · {r.status}
              </option>
            ))}
          </select>
        ) : null}
        <select aria-label="history to load" value={tail} onChange={(e) => setTail(Number(e.target.value))}>
          {TAILS.map((t) => (
            <option key={t} value={t}>
              last {t.toLocaleString('en')} lines
            </option>
          ))}
        </select>
        <input
          ref={search}
          type="search"
          class={reError ? 'search bad' : 'search'}
          placeholder="search (/ to focus, Enter: next)"
          aria-label="search"
          value={q}
          onInput={(e) => setQ(e.target.value)}
          title={reError}
        />
        <label title="regular expression">
          <input type="checkbox" checked={regex} onChange={(e) => setRegex(e.target.checked)} aria-label="regular expression" />
          .*
        </label>
        <label title="match case">
          <input type="checkbox" checked={caseSens} onChange={(e) => setCase(e.target.checked)} aria-label="match case" />
          Aa
        </label>
        <label title="show only matching lines">
          <input type="checkbox" checked={only} onChange={(e) => setOnly(e.target.checked)} aria-label="only matching lines" />
          only
        </label>
        <button type="button" onClick={() => go(-1)} aria-label="previous match">↑</button>
        <button type="button" onClick={() => go(1)} aria-label="next match">↓</button>
        <span class="muted small match">{reError ? 'bad expression' : stats.match}</span>
      </div>
      <div class="toolbar">
        {STREAMS.map((s) => (
          <label key={s} class={`chip s-${s}`}>
            <input type="checkbox" checked={streams.has(s)} onChange={() => toggle(streams, setStreams, s)} aria-label={`stream ${s}`} />
            {s}
          </label>
        ))}
        <span class="sep" />
        {LEVEL_NAMES.map((l) => (
          <label key={l} class={`chip l-${l}`}>
            <input type="checkbox" checked={levels.has(l)} onChange={() => toggle(levels, setLevels, l)} aria-label={`level ${l}`} />
            {l}
          </label>
        ))}
        <span class="sep" />
        <button type="button" aria-pressed={paused} onClick={() => pause(!paused)}>
          {paused ? `Resume (${stats.held})` : 'Pause'}
        </button>
        <button type="button" aria-pressed={stats.follow} onClick={() => follow(!stats.follow)}>
          {stats.follow ? 'Following' : 'Follow'}
        </button>
        <input type="datetime-local" step="0.001" aria-label="jump to time" value={when} onInput={(e) => setWhen(e.target.value)} />
        <button type="button" onClick={jump}>Jump</button>
        <span class="muted small">{jumpMsg}</span>
        {!p.node
          ? runIds.map((r) => (
              <a key={r} class="button" href={`/api/v1/runs/${enc(r)}/log`} download={`${chosen.length === 1 ? chosen[0] : 'run'}-${r}.log`}>
                Download{runIds.length > 1 ? ' ' + r.slice(0, 8) : ''}
              </a>
            ))
          : null}
      </div>
      <div class={`panes n${groups.length}`}>
        {groups.map((g, i) => (
          <Pane
            key={JSON.stringify(g)}
            sources={g}
            tail={tail}
            filter={filter}
            showTask={g.length > 1}
            paneRef={panes[i] || { current: null }}
            onPick={setPicked}
            onStats={i === 0 ? onStats : () => {}}
          />
        ))}
      </div>
      <footer class="statusbar" data-received={stats.received} data-last-seq={stats.lastSeq} data-lines={stats.lines}>
        <span class="count">{stats.lines} lines</span>
        <span>{stats.shown} shown</span>
        {stats.dropped ? <span>{stats.dropped} oldest let go (download has all)</span> : null}
        <span class="state">{stats.states}</span>
      </footer>
      <Detail row={picked} onClose={() => setPicked(null)} />
    </section>
  );
}
