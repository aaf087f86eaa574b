// One card per task: its state the moment it changes (the store follows the event stream),
// and for llama servers their models, port, rpc backends and tokens per second.

import { useSignal } from '../signal.js';
import { tasks, llama, backends, series, health, gpu, isLlama } from '../store.js';
import { post, taskBase } from '../api.js';
import { Badge, Uptime, confirmAction, say, bytes } from '../ui.jsx';
import { Chart } from '../chart.jsx';

const TPS_WINDOW = 15 * 60;

export async function act(node, name, what) {
  if (what === 'stop' && !(await confirmAction(`Stop ${node ? node + '/' : ''}${name}?`, 'Stop'))) return;
  try {
    await post(`${taskBase(node, name)}/${what === 'start' ? 'restart' : what}`, {});
    say(`${what}: ${name}`);
  } catch (e) {
    say(`${what} ${name}: ${e.message}`, true);
  }
}

const RUNNING = new Set(['ready', 'starting', 'stopping', 'crashed']);

export function Actions({ node, name, status }) {
  const running = RUNNING.has(status);
  return (
    <div class="actions">
      {running ? null : (
        <button type="button" onClick={() => act(node, name, 'start')} aria-label={`start ${name}`}>Start</button>
      )}
      {running ? (
        <button type="button" class="danger" onClick={() => act(node, name, 'stop')} aria-label={`stop ${name}`}>Stop</button>
      ) : null}
      <button type="button" onClick={() => act(node, name, 'restart')} aria-label={`restart ${name}`}>Restart</button>
      <a class="button" href={`#/logs?task=${encodeURIComponent(name)}${node ? '&node=' + encodeURIComponent(node) : ''}`}>Logs</a>
    </div>
  );
}

function Model({ m }) {
  const meta = m.meta || {};
  const id = m.id || m.name || m.model || 'model';
  const size = meta.size ?? m.size;
  const params = meta.n_params ?? m.n_params;
  const ctx = meta.n_ctx_train ?? m.n_ctx ?? m.ctx_size;
  return (
    <li>
      <span class="model-id">{String(id)}</span>
      <span class="muted">
        {size != null ? ` ${bytes(size)}` : ''}
        {params != null ? ` · ${(params / 1e9).toFixed(2)}B params` : ''}
        {ctx != null ? ` · ctx ${ctx}` : ''}
      </span>
    </li>
  );
}

function Sparkline({ name }) {
  const all = useSignal(series);
  const s = all.get(name);
  const cutoff = Date.now() / 1000 - TPS_WINDOW;
  const pts = s ? s.tps.filter((p) => p[0] >= cutoff && p[2] != null) : [];
  if (!pts.length) return <div class="muted small">no requests yet</div>;
  const last = pts[pts.length - 1][2];
  return (
    <div class="spark-row">
      <Chart
        spark
        height={36}
        label={`generation tokens per second of ${name}`}
        series={[{ label: 'gen t/s', color: '#3b82f6' }]}
        data={[pts.map((p) => p[0]), pts.map((p) => p[2])]}
      />
      <span class="tps">{last.toFixed(1)} t/s</span>
    </div>
  );
}

function LlamaDetails({ t }) {
  const st = useSignal(llama).get(t.name);
  const all = useSignal(backends);
  if (!st) return null;
  return (
    <div class="llama">
      <div class="kv">
        <span>port</span>
        <b>{st.port}</b>
      </div>
      {st.models && st.models.length ? (
        <ul class="models">
          {st.models.map((m, i) => (
            <Model key={i} m={m} />
          ))}
        </ul>
      ) : (
        <div class="muted small">no model loaded</div>
      )}
      {st.rpc_backends && st.rpc_backends.length ? (
        <ul class="backends" aria-label="rpc backends">
          {st.rpc_backends.map((addr) => {
            const b = all.find((x) => x.addr === addr) || {};
            const h = b.healthy === true ? 'up' : b.healthy === false ? 'down' : 'unknown';
            return (
              <li key={addr} class={`backend b-${h}`} title={b.last_error || ''}>
                <span class="dot" aria-hidden="true" />
                {addr} <span class="muted">{h}{b.latency_ms != null ? ` · ${b.latency_ms.toFixed(1)} ms` : ''}</span>
              </li>
            );
          })}
        </ul>
      ) : null}
      <Sparkline name={t.name} />
    </div>
  );
}

const GIB = 1024 * 1024 * 1024;

/// What a task's processes hold on this machine's GPUs, from the last `/gpu` answer.
function GpuUse({ name }) {
  const g = useSignal(gpu);
  if (!g) return null;
  const parts = [];
  for (const d of g.gpus) {
    const mine = d.processes.filter((p) => p.task === name);
    if (!mine.length) continue;
    const bytes = mine.reduce((s, p) => s + (p.used_memory_bytes || 0), 0);
    const sm = mine.some((p) => p.sm_utilization_pct != null)
      ? Math.min(100, mine.reduce((s, p) => s + (p.sm_utilization_pct || 0), 0))
      : null;
    parts.push(`GPU ${d.index}: ${(bytes / GIB).toFixed(1)} GiB${sm == null ? '' : `, ${sm}% SM`}`);
  }
  if (!parts.length) return null;
  return (
    <>
      <span>gpu</span>
      <b class="gpu-use">{parts.join('; ')}</b>
    </>
  );
}

export function Card({ t, node }) {
  return (
    <article class={`card c-${t.status}`} data-task={t.name} aria-label={`task ${t.name}`}>
      <header>
        <h3>{t.name}</h3>
        <Badge status={t.status} />
      </header>
      <div class="kv-grid">
        <span>node</span>
        <b>{node}</b>
        <span>uptime</span>
        <b>{t.status === 'ready' || t.status === 'starting' ? <Uptime since={t.started_at} /> : '–'}</b>
        <span>restarts</span>
        <b>{t.restarts}</b>
        <span>retries</span>
        <b>{t.retries}</b>
        {t.pid ? (
          <>
            <span>pid</span>
            <b>{t.pid}</b>
          </>
        ) : null}
        <span>kind</span>
        <b>{t.kind || 'command'}</b>
        <GpuUse name={t.name} />
      </div>
      <div class="cmd" title={t.command}>{t.command}</div>
      {t.last_error ? <div class="error-text">{t.last_error}</div> : null}
      {isLlama(t) ? <LlamaDetails t={t} /> : null}
      <Actions name={t.name} status={t.status} />
    </article>
  );
}

export function Overview() {
  const list = [...useSignal(tasks).values()];
  const h = useSignal(health);
  if (!list.length) {
    return (
      <section class="empty">
        <p>No tasks yet. Start one from a terminal:</p>
        <pre>corral run --name hello -- sh -c 'while true; do date; sleep 1; done'</pre>
      </section>
    );
  }
  list.sort((a, b) => a.name.localeCompare(b.name));
  return (
    <section class="cards" aria-label="tasks">
      {list.map((t) => (
        <Card key={t.name} t={t} node={h ? h.node : ''} />
      ))}
    </section>
  );
}
