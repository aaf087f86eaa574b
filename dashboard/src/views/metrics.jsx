// Metrics: prompt and generation tokens per second over time per llama server (from the
// parsed `metrics` events), requests per minute, and restarts over time.

import { useSignal } from '../signal.js';
import { series } from '../store.js';
import { Chart } from '../chart.jsx';

function perMinute(times) {
  const buckets = new Map();
  for (const t of times) {
    const m = Math.floor(t / 60) * 60;
    buckets.set(m, (buckets.get(m) || 0) + 1);
  }
  const xs = [...buckets.keys()].sort((a, b) => a - b);
  return [xs, xs.map((x) => buckets.get(x))];
}

export function Metrics() {
  const all = useSignal(series);
  const names = [...all.keys()].sort();
  if (!names.length) {
    return (
      <section class="empty">
        <p>No metrics yet: llama servers report tokens per second once they answer requests.</p>
      </section>
    );
  }
  return (
    <section class="metrics">
      {names.map((n) => {
        const s = all.get(n);
        const tps = [s.tps.map((p) => p[0]), s.tps.map((p) => p[1]), s.tps.map((p) => p[2])];
        return (
          <article class="panel" key={n} data-task={n}>
            <h3>{n}</h3>
            {s.tps.length ? (
              <>
                <h4>tokens per second</h4>
                <Chart
                  label={`tokens per second of ${n}`}
                  series={[
                    { label: 'prompt t/s', color: '#f59e0b' },
                    { label: 'generation t/s', color: '#3b82f6' },
                  ]}
                  data={tps}
                />
              </>
            ) : null}
            {s.requests.length ? (
              <>
                <h4>requests per minute ({s.requests.length} in all)</h4>
                <Chart bars height={120} label={`requests per minute of ${n}`} series={[{ label: 'requests', color: '#10b981' }]} data={perMinute(s.requests)} />
              </>
            ) : null}
            {s.restarts.length ? (
              <>
                <h4>restarts per minute ({s.restarts.length} in all)</h4>
                <Chart bars height={120} label={`restarts of ${n}`} series={[{ label: 'restarts', color: '#ef4444' }]} data={perMinute(s.restarts)} />
              </>
            ) : null}
          </article>
        );
      })}
    </section>
  );
}
