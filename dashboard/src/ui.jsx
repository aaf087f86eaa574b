// Small pieces the views share: status badges, times, the confirmation dialog.

import { useEffect, useRef, useState } from 'preact/hooks';
import { signal, useSignal } from './signal.js';
import { dateTime } from './logtext.js';

export function Badge({ status }) {
  return (
    <span class={`badge st-${status}`} data-status={status}>
      {status === 'starting' || status === 'stopping' ? <span class="spinner" aria-hidden="true" /> : null}
      {status}
    </span>
  );
}

/** A clock for the page (uptimes), ticking once a second; no request is made. */
export const now = signal(Date.now() / 1000);
setInterval(() => now.set(Date.now() / 1000), 1000);

export function duration(s) {
  if (s == null || !isFinite(s)) return '–';
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

export function Uptime({ since }) {
  const t = useSignal(now);
  return <span>{since ? duration(t - since) : '–'}</span>;
}

export function When({ ts }) {
  return ts ? <time datetime={new Date(ts * 1000).toISOString()}>{dateTime(ts)}</time> : <span>–</span>;
}

export function bytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

const confirmReq = signal(null);

/** Asks before doing something that cannot be undone by the page (stop). */
export function confirmAction(text, okLabel) {
  return new Promise((resolve) => confirmReq.set({ text, okLabel, resolve }));
}

export function ConfirmDialog() {
  const req = useSignal(confirmReq);
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (req && !d.open) d.showModal();
    if (!req && d.open) d.close();
  }, [req]);
  const done = (ok) => {
    const r = confirmReq.get();
    confirmReq.set(null);
    if (r) r.resolve(ok);
  };
  return (
    <dialog ref={ref} class="confirm" onCancel={() => done(false)}>
      <p>{req ? req.text : ''}</p>
      <div class="actions">
        <button type="button" onClick={() => done(false)}>Cancel</button>
        <button type="button" class="danger" onClick={() => done(true)} autofocus>
          {req ? req.okLabel : 'OK'}
        </button>
      </div>
    </dialog>
  );
}

const toast = signal(null);
export function say(text, bad = false) {
  toast.set({ text, bad, at: Date.now() });
  setTimeout(() => {
    const t = toast.get();
    if (t && Date.now() - t.at >= 4900) toast.set(null);
  }, 5000);
}

export function Toast() {
  const t = useSignal(toast);
  return (
    <div class={t ? (t.bad ? 'toast bad' : 'toast') : 'toast hidden'} role="status" aria-live="polite">
      {t ? t.text : ''}
    </div>
  );
}

/** A hook for an async loader: [value, error, reload]. */
export function useLoad(fn, deps) {
  const [state, set] = useState({ v: null, e: null });
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    fn().then(
      (v) => live && set({ v, e: null }),
      (e) => live && set({ v: null, e: e.message || String(e) }),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  return [state.v, state.e, () => setN((x) => x + 1)];
}
