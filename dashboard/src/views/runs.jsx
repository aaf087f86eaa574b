// Runs: every run of every task (or of one), newest first: status, exit code or signal,
// duration, error message, its log, and its diagnostics when a failed run has them.

import { useEffect, useState } from 'preact/hooks';
import { useSignal } from '../signal.js';
import { tasks, events } from '../store.js';
import { get, enc } from '../api.js';
import { When, duration, useLoad } from '../ui.jsx';

function Diagnostics({ run }) {
  const [d, err] = useLoad(() => get(`/runs/${enc(run)}/diagnostics`), [run]);
  if (err) return <span class="muted small">no diagnostics</span>;
  if (!d) return <span class="muted small">…</span>;
  return (
    <span>
      <a href={`/api/v1/runs/${enc(run)}/diagnostics.tar.gz`} download>diagnostics</a>
      {d.signal_name ? <span class="muted small"> {d.signal_name}</span> : null}
    </span>
  );
}

export function Runs() {
  const names = [...useSignal(tasks).keys()].sort();
  const [task, setTask] = useState('');
  const evs = useSignal(events);
  // Read again when a run starts or ends (an event says so), never on a timer.
  const ends = evs.filter((e) => e.event_type === 'exit' || e.event_type === 'start').length;
  const [runs, err] = useLoad(() => get(`/runs?limit=200${task ? '&task=' + enc(task) : ''}`), [task, ends]);
  const [diag, setDiag] = useState(null);
  useEffect(() => setDiag(null), [task]);
  return (
    <section class="runs">
      <div class="toolbar">
        <label>
          task{' '}
          <select value={task} onChange={(e) => setTask(e.target.value)} aria-label="task">
            <option value="">all</option>
            {names.map((n) => (
              <option key={n}>{n}</option>
            ))}
          </select>
        </label>
      </div>
      {err ? <p class="error-text">{err}</p> : null}
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th>task</th>
              <th>run</th>
              <th>#</th>
              <th>status</th>
              <th>exit</th>
              <th>started</th>
              <th>duration</th>
              <th>lines</th>
              <th>error</th>
              <th>log</th>
            </tr>
          </thead>
          <tbody>
            {(runs || []).map((r) => (
              <tr key={r.run_id} class={`run r-${r.status}`}>
                <td>{r.task}</td>
                <td class="mono" title={r.run_id}>{r.run_id.slice(0, 8)}</td>
                <td>{r.attempt}</td>
                <td>
                  <span class={`badge rs-${r.status}`}>{r.status}</span>
                </td>
                <td>{r.signal != null ? `signal ${r.signal}` : r.exit_code != null ? r.exit_code : '–'}</td>
                <td>
                  <When ts={r.started_at} />
                </td>
                <td>{duration((r.ended_at || Date.now() / 1000) - r.started_at)}</td>
                <td>{r.lines}</td>
                <td class="error-text">{r.error_message || ''}</td>
                <td class="links">
                  <a href={`#/logs?task=${enc(r.task)}&run=${enc(r.run_id)}`}>view</a>{' '}
                  <a href={`/api/v1/runs/${enc(r.run_id)}/log`} download={`${r.task}-${r.run_id}.log`}>download</a>{' '}
                  {r.status === 'failed' || r.status === 'lost' ? (
                    diag === r.run_id ? (
                      <Diagnostics run={r.run_id} />
                    ) : (
                      <button type="button" class="link" onClick={() => setDiag(r.run_id)}>diagnostics?</button>
                    )
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
