// Redis: the publisher's status and counters, and its on/off switch.

import { useState } from 'preact/hooks';
import { useSignal } from '../signal.js';
import { events } from '../store.js';
import { get, put } from '../api.js';
import { useLoad, say } from '../ui.jsx';

export function Redis() {
  // Read again when events flow (each is one the publisher was handed), at most once a second.
  const n = useSignal(events).length;
  const [tick, setTick] = useState(0);
  const [lastN, setLastN] = useState(n);
  const [at, setAt] = useState(0);
  if (n !== lastN && Date.now() - at > 1000) {
    setLastN(n);
    setAt(Date.now());
    setTick(tick + 1);
  }
  const [st, err, reload] = useLoad(() => get('/publishers/redis'), [tick]);
  const [busy, setBusy] = useState(false);
  const toggle = async () => {
    setBusy(true);
    try {
      await put('/publishers/redis', { enabled: !st.enabled });
      say(`Redis publisher ${st.enabled ? 'off' : 'on'}`);
    } catch (e) {
      say(`Redis: ${e.message}`, true);
    }
    setBusy(false);
    reload();
  };
  if (err) return <p class="error-text">{err}</p>;
  if (!st) return <p class="muted">loading…</p>;
  const rows = [
    ['server', st.server],
    ['connected', st.connected ? 'yes' : 'no'],
    ['TLS', st.tls ? 'yes' : 'no'],
    ['db', st.db],
    ['channels', (st.channels || []).join(', ')],
    ['stream', `${st.stream} (max ${st.stream_maxlen})`],
    ['published', st.published],
    ['failed', st.failed],
    ['dropped', st.dropped],
    ['queued', st.queued],
    ['raw lines', `${st.raw_lines} (≤ ${st.raw_lines_per_second}/s)`],
    ['raw published', st.raw_published],
    ['raw held back', st.raw_held_back],
    ['raw dropped', st.raw_dropped],
  ];
  return (
    <section class="redis panel">
      <header class="row-head">
        <h3>Redis publisher</h3>
        <label class="switch">
          <input type="checkbox" role="switch" checked={st.enabled} disabled={busy} onChange={toggle} aria-label="publish to Redis" />
          <span>{st.enabled ? 'on' : 'off'}</span>
        </label>
      </header>
      {st.last_error ? <p class="error-text">{st.last_error}</p> : null}
      <dl class="kv-grid">
        {rows.map(([k, v]) => (
          <>
            <dt key={k}>{k}</dt>
            <dd key={k + 'v'} data-key={k}>{String(v)}</dd>
          </>
        ))}
      </dl>
    </section>
  );
}
